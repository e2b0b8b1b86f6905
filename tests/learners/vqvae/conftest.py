"""Small BUYERS-schema tables with planted buyer types, built from simulated event sequences."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from learners.data.schema import BUYERS, EVENT_CODE, EVENT_TYPES, FUNNEL_DEPTH, N_FEATURES, TABLE_FILES

# Planted types: event-type probabilities (in EVENT_TYPES order), mean events, mean log gap.
PLANTED = {
    "window_shopper": ([0.30, 0.10, 0.58, 0.01, 0.01, 0.0, 0.0, 0.0], 25, 3.0),
    "decisive_buyer": ([0.05, 0.05, 0.40, 0.0, 0.20, 0.0, 0.15, 0.15], 8, 5.0),
    "cart_abandoner": ([0.10, 0.05, 0.45, 0.05, 0.30, 0.05, 0.0, 0.0], 15, 4.0),
    "collector": ([0.10, 0.0, 0.45, 0.40, 0.02, 0.0, 0.01, 0.02], 12, 6.0),
}


def buyer_features(events: np.ndarray, gaps: np.ndarray) -> np.ndarray:
    """A FEATURE_NAMES vector computed from one buyer's sequence (sessions split at log gap > 7)."""
    counts = np.bincount(events, minlength=len(EVENT_TYPES)).astype(np.float64)
    n = len(events)
    sessions = 1 + int((gaps[1:] > 7.0).sum())
    views = counts[EVENT_CODE["product_view"]]
    carts = counts[EVENT_CODE["add_to_cart"]]
    buys = counts[EVENT_CODE["purchase"]]
    depth = max(FUNNEL_DEPTH[EVENT_TYPES[e]] for e in events)
    within = gaps[1:][gaps[1:] <= 7.0]
    return np.array(
        [
            *np.log1p(counts),
            *(counts / n),
            np.log1p(n),
            np.log1p(sessions),
            np.log1p(n / sessions),
            np.log1p(views * 0.8),
            np.log1p(min(views, 5)),
            np.log1p(sessions),
            float(within.mean()) if within.size else 0.0,
            np.log1p(gaps.sum() / 86400),
            0.2 if views > 1 else 0.0,
            carts / max(views, 1),
            buys / max(views, 1),
            buys / max(carts, 1),
            np.log1p(30.0),
            0.0,  # price_index: every product at its category's price
            0.0,  # markdown_share: no sales
            depth / 5,
        ],
        dtype=np.float32,
    )


def make_buyers(n: int, seed: int = 0, merchants: int = 4) -> tuple[pa.Table, np.ndarray]:
    """A BUYERS table of ``n`` buyers drawn from the planted types, and the type index per buyer."""
    rng = np.random.default_rng(seed)
    names = list(PLANTED)
    types = rng.integers(len(names), size=n)
    rows: dict[str, list] = {f.name: [] for f in BUYERS}
    start = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
    for i, t in enumerate(types):
        probs, mean_len, mean_gap = PLANTED[names[t]]
        length = max(1, int(rng.poisson(mean_len)))
        events = rng.choice(len(EVENT_TYPES), size=length, p=np.asarray(probs) / sum(probs))
        gaps = np.maximum(rng.normal(mean_gap, 0.7, size=length), 0.0).astype(np.float32)
        gaps[0] = 0.0
        feats = buyer_features(events, gaps)
        assert feats.shape == (N_FEATURES,)
        buys = int((events == EVENT_CODE["purchase"]).sum())
        rows["merchant_id"].append(f"m{i % merchants}")
        rows["buyer_id"].append(f"b{i}")
        rows["n_events"].append(length)
        rows["n_sessions"].append(1 + int((gaps[1:] > 7.0).sum()))
        rows["first_ts"].append(start)
        rows["last_ts"].append(start + dt.timedelta(seconds=float(np.expm1(gaps).sum())))
        rows["features"].append(feats.tolist())
        rows["event_seq"].append(events.astype(np.int8).tolist())
        rows["gap_seq"].append(gaps.tolist())
        rows["n_purchases"].append(buys)
        rows["converted"].append(buys > 0)
        rows["depth"].append(max(FUNNEL_DEPTH[EVENT_TYPES[e]] for e in events))
    return pa.Table.from_pydict(rows, schema=BUYERS), types


def write_prepared(directory: Path, table: pa.Table) -> Path:
    """A minimal prepared directory: only the buyers table."""
    directory.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, directory / TABLE_FILES["buyers"])
    return directory


@pytest.fixture(scope="session")
def planted_data(tmp_path_factory) -> tuple[Path, pa.Table, np.ndarray]:
    """A prepared directory with 400 buyers of 4 planted types."""
    table, types = make_buyers(400, seed=1)
    return write_prepared(tmp_path_factory.mktemp("planted"), table), table, types


TINY = dict(
    codes=8,
    code_dim=6,
    hidden=16,
    event_dim=8,
    max_seq_len=16,
    epochs=3,
    warmup_epochs=1,
    batch_size=64,
    dead_after=5,
    workers=2,
)


@pytest.fixture(scope="session")
def ray_local():
    """A private local Ray instance (never another session's cluster)."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def full_run(ray_local, planted_data, tmp_path_factory):
    """An uninterrupted 3-epoch fit with 2 Ray Train workers."""
    from learners.vqvae.fit import VQVAEConfig, fit_codebook

    data_dir, _, _ = planted_data
    return fit_codebook(data_dir, VQVAEConfig(**TINY), tmp_path_factory.mktemp("full") / "run")
