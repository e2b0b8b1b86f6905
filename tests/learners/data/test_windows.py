"""Time windows of a prepared directory (the strict protocol's earlier window)."""

from __future__ import annotations

import json

import polars as pl
import pytest

from learners.data.adapters import get_adapter
from learners.data.prepare import PrepareConfig, prepare
from learners.data.synth import SynthConfig, synthesize
from learners.data.windows import window_cutoff, window_prepared


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("windows")
    synthesize(SynthConfig(buyers=300, merchants=4, seed=5), root / "raw")
    logs = sorted((root / "raw" / "logs").iterdir())
    prepare(logs, get_adapter(mapping=root / "raw" / "mapping.yaml"), PrepareConfig(), root / "data")
    return root / "data"


def test_cutoff_is_a_midnight_splitting_the_events(prepared):
    cut = window_cutoff(prepared, 0.5)
    assert (cut.hour, cut.minute, cut.second) == (0, 0, 0) and cut.tzinfo is not None
    ts = pl.read_parquet(prepared / "events.parquet", columns=["ts"])["ts"]
    before = (ts < cut).mean()
    assert 0.0 < before <= 0.5
    with pytest.raises(ValueError, match="quantile"):
        window_cutoff(prepared, 1.0)


def test_earlier_window_keeps_each_buyers_sequence(prepared, tmp_path):
    events = pl.read_parquet(prepared / "events.parquet")
    merchants = sorted(events["merchant_id"].unique().to_list())[:2]
    cut = window_cutoff(prepared, 0.5)
    manifest = window_prepared(prepared, tmp_path / "early", until=cut, merchants=merchants)

    expected = events.filter((pl.col("ts") < cut) & pl.col("merchant_id").is_in(merchants))
    early = pl.read_parquet(tmp_path / "early" / "events.parquet")
    key = ["merchant_id", "buyer_id", "seq"]
    columns = ["merchant_id", "buyer_id", "session_id", "ts", "event_type", "product_id"]
    # The window cuts no buyer's history apart: the kept events, in the same order, with the same sessions.
    assert early.sort(key).select(columns).equals(expected.sort(key).select(columns))
    counts = manifest["counts"]
    assert counts["rows_read"] == counts["rows_kept"] == expected.height
    assert manifest["window"]["events_outside"] == events.height - expected.height
    assert (
        json.loads((tmp_path / "early" / "manifest.json").read_text())["window"]["until"] == cut.isoformat()
    )
    buyers = pl.read_parquet(tmp_path / "early" / "buyers.parquet")
    assert buyers.height == expected.select("merchant_id", "buyer_id").n_unique()
    # Features describe the earlier window only: the event counts are the window's.
    assert int(buyers["n_events"].sum()) == expected.height


def test_window_rejects_an_empty_earlier_window(prepared):
    # The lowest quantile falls on the first event's day, whose midnight precedes every event.
    with pytest.raises(ValueError, match="empty"):
        window_cutoff(prepared, 1e-9)
