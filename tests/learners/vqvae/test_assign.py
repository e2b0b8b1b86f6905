"""Assignment: codes equal the nearest code of the encoder output; distributions; Ray Data path; CLI."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from engine.cli import main
from learners.data.schema import N_FEATURES
from learners.vqvae.assign import assign, merchant_distributions
from learners.vqvae.checkpoint import load_model
from learners.vqvae.dataset import rows_from_table
from tests.learners.vqvae.conftest import make_buyers, write_prepared

pytestmark = pytest.mark.ray


def brute_force_codes(run_dir, table: pa.Table) -> np.ndarray:
    model, state = load_model(run_dir)
    rows = rows_from_table(table, int(state.config["max_seq_len"]))
    batch = rows.batch(state.stats)
    with torch.no_grad():
        z = model.encode(*batch.inputs()).numpy()
    codebook = model.quantizer.codebook.numpy()
    return ((z[:, None, :] - codebook[None, :, :]) ** 2).sum(-1).argmin(1)


def test_codes_and_merchant_distributions(full_run, planted_data, tmp_path):
    data_dir, table, _ = planted_data
    result = assign(full_run.run_dir, data_dir, tmp_path)
    codes = pq.read_table(tmp_path / "codes.parquet")
    assert result.buyers_read == table.num_rows == codes.num_rows
    assert codes.column("buyer_id").to_pylist() == table.column("buyer_id").to_pylist()
    assert np.array_equal(codes.column("code").to_numpy(), brute_force_codes(full_run.run_dir, table))
    dist = pl.read_parquet(tmp_path / "merchant_distributions.parquet")
    sums = (
        dist.group_by("merchant_id")
        .agg(pl.col("p").sum(), pl.col("buyer_share").sum(), pl.col("n").sum(), pl.col("visits").sum())
        .sort("merchant_id")
    )
    assert np.allclose(sums["p"].to_numpy(), 1.0) and np.allclose(sums["buyer_share"].to_numpy(), 1.0)
    expected = (
        pl.from_arrow(table.select(["merchant_id", "n_sessions"]))
        .group_by("merchant_id")
        .agg(pl.len(), pl.col("n_sessions").sum())
        .sort("merchant_id")
    )
    assert sums["n"].to_list() == expected["len"].to_list()
    assert sums["visits"].to_list() == expected["n_sessions"].to_list()


def test_distributions_weigh_codes_by_visits():
    codes = pa.table({"merchant_id": ["m", "m", "m"], "buyer_id": ["a", "b", "c"], "code": [0, 1, 1]})
    visits = pa.table({"merchant_id": ["m"] * 3, "buyer_id": ["a", "b", "c"], "n_sessions": [6, 1, 1]})
    dist = merchant_distributions(codes, visits).to_pydict()
    assert dist["code"] == [0, 1] and dist["n"] == [1, 2] and dist["visits"] == [6, 2]
    assert dist["p"] == pytest.approx([0.75, 0.25])
    assert dist["buyer_share"] == pytest.approx([1 / 3, 2 / 3])


def test_distributions_need_every_buyers_visits():
    codes = pa.table({"merchant_id": ["m", "m"], "buyer_id": ["a", "b"], "code": [0, 1]})
    visits = pa.table({"merchant_id": ["m"], "buyer_id": ["a"], "n_sessions": [2]})
    with pytest.raises(ValueError, match="buyer 'b'"):
        merchant_distributions(codes, visits)


def test_quarantined_buyers_are_counted(full_run, tmp_path):
    table, _ = make_buyers(12, seed=9)
    feats = table.column("features").to_pylist()
    feats[3] = [float("inf")] * N_FEATURES
    field = table.schema.field("features")
    table = table.set_column(table.schema.get_field_index("features"), field, pa.array(feats, field.type))
    data_dir = write_prepared(tmp_path / "data", table)
    result = assign(full_run.run_dir, data_dir, tmp_path / "codes")
    assert (result.buyers_read, result.buyers_assigned, result.buyers_quarantined) == (12, 11, 1)
    q = pq.read_table(tmp_path / "codes" / "quarantine.parquet")
    assert q.column("buyer_id").to_pylist() == ["b3"]
    manifest = json.loads((tmp_path / "codes" / "manifest.json").read_text())
    assert manifest["counts"]["buyers_read"] == 12


def test_ray_data_path_gives_the_same_codes(full_run, planted_data, tmp_path):
    data_dir, _, _ = planted_data
    assign(full_run.run_dir, data_dir, tmp_path / "local")
    assign(full_run.run_dir, data_dir, tmp_path / "ray", use_ray=True, concurrency=1)
    key = ["merchant_id", "buyer_id"]
    local = pl.read_parquet(tmp_path / "local" / "codes.parquet").sort(key)
    remote = pl.read_parquet(tmp_path / "ray" / "codes.parquet").sort(key)
    assert local.equals(remote)


def test_cli_assign(full_run, planted_data, tmp_path, capsys):
    data_dir, table, _ = planted_data
    assert main(["assign", str(full_run.run_dir), str(data_dir), "--out", str(tmp_path)]) == 0
    assert f"assigned {table.num_rows:,} of {table.num_rows:,} buyers" in capsys.readouterr().out
    assert main(["assign", str(full_run.run_dir), str(tmp_path / "missing"), "--out", str(tmp_path)]) == 2
