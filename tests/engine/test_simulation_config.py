"""Simulated visits sized to the data: at least N per merchant and K per real session."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from engine.simulation_config import SimulationConfig, build_population, buyers_per_merchant


@pytest.fixture()
def data(tmp_path):
    pq.write_table(
        pa.table({"merchant_id": ["big", "small"], "sessions": [700, 30]}), tmp_path / "merchants.parquet"
    )
    codes = pa.table(
        {"merchant_id": ["big", "big", "small"], "code": [0, 1, 1], "p": [0.5, 0.5, 1.0], "n": [5, 5, 3]}
    )
    pq.write_table(codes, tmp_path / "distributions.parquet")
    return tmp_path


def test_each_merchant_gets_the_larger_of_the_floor_and_its_sessions_times_the_factor(data):
    config = SimulationConfig(data=str(data), buyers_per_merchant=200, buyers_per_real_session=5.0)
    assert buyers_per_merchant(config, ["big", "small"]) == {"big": 3500, "small": 200}
    fixed = SimulationConfig(data=str(data), buyers_per_merchant=200)
    assert buyers_per_merchant(fixed, ["big", "small"]) == {"big": 200, "small": 200}


def test_the_population_follows_the_per_merchant_counts(data):
    config = SimulationConfig(
        data=str(data),
        distributions=str(data / "distributions.parquet"),
        buyers_per_merchant=10,
        buyers_per_real_session=0.1,
    )
    buyers = build_population(config)
    merchants, counts = np.unique([b.merchant_id for b in buyers], return_counts=True)
    assert dict(zip(merchants.tolist(), counts.tolist(), strict=True)) == {"big": 70, "small": 10}
    assert [b.sim_buyer_id for b in buyers] == list(range(80))


def test_sizing_needs_the_prepared_data():
    with pytest.raises(ValueError, match="needs `data`"):
        buyers_per_merchant(SimulationConfig(buyers_per_real_session=5.0), ["big"])
