"""synth_prepared: the planted-type input of benchmarks and tests, a synthetic log and its prepared directory."""

from __future__ import annotations

import json

import pyarrow.parquet as pq

from learners.data.synth import SynthConfig, synth_prepared


def test_every_synthetic_event_and_buyer_is_prepared(tmp_path):
    raw, data = synth_prepared(SynthConfig(buyers=120, merchants=3, seed=2), tmp_path)
    assert (raw, data) == (tmp_path / "raw", tmp_path / "data")
    counts = json.loads((data / "manifest.json").read_text())["counts"]
    assert counts["rows_quarantined"] == 0 and counts["rows_read"] == counts["events"]
    truth = pq.read_table(raw / "truth.parquet", columns=["merchant_id", "buyer_id"])
    buyers = pq.read_table(data / "buyers.parquet", columns=["merchant_id", "buyer_id"])
    assert sorted(truth.to_pylist(), key=str) == sorted(buyers.to_pylist(), key=str)
