"""Assign buyers to types with a fitted run: one batched encoder pass, no retraining.

``assign(RUN, DATA, OUT)`` writes
  OUT/codes.parquet                  merchant_id, buyer_id, code
  OUT/merchant_distributions.parquet merchant_id, code, p, n, visits, buyer_share (each merchant's mix)
  OUT/quarantine.parquet             merchant_id, buyer_id, reason of buyers that could not be encoded
  OUT/manifest.json                  inputs, counts (read = assigned + quarantined), timing
In-process by default; ``use_ray=True`` streams the buyers table through Ray Data ``map_batches``
with one model copy per actor, for inputs larger than one process should hold.
"""

from __future__ import annotations

import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch import Tensor

from learners.vqvae.checkpoint import load_model
from learners.vqvae.dataset import READ_COLUMNS, FeatureStats, buyers_path, read_buyers, rows_from_table
from learners.vqvae.model import BuyerVQVAE

CODES = pa.schema(
    [
        pa.field("merchant_id", pa.string(), nullable=False),
        pa.field("buyer_id", pa.string(), nullable=False),
        pa.field("code", pa.int32(), nullable=False),
    ]
)
MERCHANT_DISTRIBUTIONS = pa.schema(
    [
        pa.field("merchant_id", pa.string(), nullable=False),
        pa.field("code", pa.int32(), nullable=False),
        pa.field("p", pa.float64(), nullable=False),
        pa.field("n", pa.int64(), nullable=False),
        pa.field("visits", pa.int64(), nullable=False),
        pa.field("buyer_share", pa.float64(), nullable=False),
    ]
)
QUARANTINE = pa.schema([("merchant_id", pa.string()), ("buyer_id", pa.string()), ("reason", pa.string())])
CODES_FILE = "codes.parquet"
DISTRIBUTIONS_FILE = "merchant_distributions.parquet"


def assign_codes(
    model: BuyerVQVAE, inputs: tuple[Tensor, ...], threads: int = 0, batch_size: int = 65536
) -> Tensor:
    """Code of every buyer of ``inputs`` (features, events, gaps, lengths), in row order.

    The buyers are dealt to ``threads`` Python threads (default: torch's thread count), each running
    torch on one core: no OpenMP barrier per operation, so assignment keeps its pace when other
    processes share the cores, where 2 intra-op threads slow down many-fold.
    """
    n, threads = len(inputs[0]), threads or torch.get_num_threads()

    def work(part: int) -> Tensor:
        torch.set_num_threads(1)  # this worker thread's own setting; the caller's is left alone
        mine = [t[part::threads] for t in inputs]
        with torch.inference_mode():
            codes = [
                model.assign(*(t[start : start + batch_size] for t in mine))
                for start in range(0, len(mine[0]), batch_size)
            ]
        return torch.cat(codes) if codes else torch.zeros(0, dtype=torch.int64)

    out = torch.empty(n, dtype=torch.int64)
    with ThreadPoolExecutor(threads) as pool:
        for part, codes in enumerate(pool.map(work, range(threads))):
            out[part::threads] = codes
    return out


class CodeAssigner:
    """A loaded run that maps BUYERS tables to codes tables (also the Ray Data actor class)."""

    def __init__(self, run_dir: str | Path, batch_size: int = 65536, threads: int = 0) -> None:
        model, state = load_model(run_dir)
        self.model: BuyerVQVAE = model
        self.stats: FeatureStats = state.stats
        self.max_seq_len = int(state.config["max_seq_len"])
        self.codes = int(state.config["codes"])
        self.batch_size = batch_size
        self.threads = threads

    def codes_of(self, table: pa.Table) -> tuple[pa.Table, pa.Table]:
        """Codes of the usable rows of ``table`` and the quarantined rows (merchant_id, buyer_id, reason)."""
        rows = rows_from_table(table, self.max_seq_len)
        codes = assign_codes(self.model, rows.inputs(self.stats), self.threads, self.batch_size).numpy()
        out = pa.table(
            {
                "merchant_id": rows.merchant_id,
                "buyer_id": rows.buyer_id,
                "code": pa.array(codes.astype(np.int32)),
            },
            schema=CODES,
        )
        return out, rows.quarantined.cast(QUARANTINE)

    def __call__(self, table: pa.Table) -> pa.Table:
        """Ray Data batch function: codes plus a ``reason`` column (null when assigned)."""
        codes, quarantined = self.codes_of(table)
        assigned = codes.append_column("reason", pa.nulls(codes.num_rows, pa.string()))
        dropped = pa.table(
            {
                "merchant_id": quarantined.column("merchant_id"),
                "buyer_id": quarantined.column("buyer_id"),
                "code": pa.array(np.full(quarantined.num_rows, -1, np.int32)),
                "reason": quarantined.column("reason"),
            }
        )
        return pa.concat_tables([assigned, dropped.cast(assigned.schema)])


def buyer_visits(path: str | Path) -> pa.Table:
    """merchant_id, buyer_id, n_sessions of a BUYERS table: how many visits each buyer made."""
    return pq.read_table(path, columns=["merchant_id", "buyer_id", "n_sessions"])


def merchant_distributions(codes: pa.Table, visits: pa.Table) -> pa.Table:
    """Each merchant's mix over the codes its buyers have (``visits`` as from ``buyer_visits``).

    ``p`` is the share of the merchant's visits made by buyers of a code, ``n`` those buyers,
    ``visits`` their sessions and ``buyer_share`` their share of its buyers. A simulated buyer plays
    one visit, so populations draw codes by ``p``: a type whose buyers come back often makes more of
    a store's visits, as it does in the real sessions that simulations are compared with.
    """
    frame = pl.from_arrow(codes)
    sessions = pl.from_arrow(visits)
    assert isinstance(frame, pl.DataFrame) and isinstance(sessions, pl.DataFrame)
    joined = frame.join(sessions, on=["merchant_id", "buyer_id"], how="left")
    missing = joined.filter(pl.col("n_sessions").is_null())
    if missing.height:
        row = missing.row(0, named=True)
        raise ValueError(
            f"{missing.height} coded buyer(s) have no visit count, e.g. merchant {row['merchant_id']!r}"
            f" buyer {row['buyer_id']!r}: pass the BUYERS table the codes were assigned from"
        )
    counts = (
        joined.group_by("merchant_id", "code")
        .agg(pl.len().cast(pl.Int64).alias("n"), pl.col("n_sessions").sum().cast(pl.Int64).alias("visits"))
        .with_columns(
            (pl.col("visits") / pl.col("visits").sum().over("merchant_id")).alias("p"),
            (pl.col("n") / pl.col("n").sum().over("merchant_id")).alias("buyer_share"),
        )
        .sort("merchant_id", "code")
        .select("merchant_id", "code", "p", "n", "visits", "buyer_share")
    )
    return counts.to_arrow().cast(MERCHANT_DISTRIBUTIONS)


@dataclass
class AssignResult:
    out: Path
    buyers_read: int
    buyers_assigned: int
    buyers_quarantined: int
    seconds: float

    @property
    def buyers_per_s(self) -> float:
        return self.buyers_read / self.seconds if self.seconds > 0 else float("inf")


def _assign_in_process(run_dir: Path, path: Path) -> tuple[pa.Table, pa.Table]:
    return CodeAssigner(run_dir).codes_of(read_buyers(path))


def _assign_with_ray(run_dir: Path, path: Path, concurrency: int) -> tuple[pa.Table, pa.Table]:
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(address=os.environ.get("RAY_ADDRESS", "local"), include_dashboard=False)
    try:
        # Each model actor holds a CPU; the read tasks need one too, or the pipeline never starts.
        concurrency = max(1, min(concurrency, int(ray.cluster_resources().get("CPU", 1)) - 1))
        ds = ray.data.read_parquet(str(path), columns=list(READ_COLUMNS))
        mapped = ds.map_batches(
            CodeAssigner,
            fn_constructor_kwargs={"run_dir": str(run_dir)},
            batch_format="pyarrow",
            batch_size=16384,
            concurrency=concurrency,
        )
        parts = [
            pa.Table.from_batches([b]) if isinstance(b, pa.RecordBatch) else b
            for b in mapped.iter_batches(batch_format="pyarrow", batch_size=None)
        ]
    finally:
        if started:
            ray.shutdown()
    everything = (
        pa.concat_tables(parts)
        if parts
        else pa.table({n: [] for n in ("merchant_id", "buyer_id", "code", "reason")})
    )
    bad = everything.column("code").to_numpy() < 0
    codes = everything.filter(pa.array(~bad)).select(["merchant_id", "buyer_id", "code"]).cast(CODES)
    quarantined = (
        everything.filter(pa.array(bad)).select(["merchant_id", "buyer_id", "reason"]).cast(QUARANTINE)
    )
    return codes, quarantined


def assign(
    run_dir: str | Path, data_dir: str | Path, out: str | Path, use_ray: bool = False, concurrency: int = 2
) -> AssignResult:
    """Assign every buyer of ``DATA/buyers.parquet`` with the run in ``run_dir``; write ``out``."""
    run_dir, out = Path(run_dir), Path(out)
    path = buyers_path(data_dir)
    start = time.perf_counter()
    if use_ray:
        codes, quarantined = _assign_with_ray(run_dir.resolve(), path.resolve(), concurrency)
    else:
        codes, quarantined = _assign_in_process(run_dir, path)
    seconds = time.perf_counter() - start
    out.mkdir(parents=True, exist_ok=True)
    pq.write_table(codes, out / CODES_FILE)
    pq.write_table(merchant_distributions(codes, buyer_visits(path)), out / DISTRIBUTIONS_FILE)
    pq.write_table(quarantined, out / "quarantine.parquet")
    read = pq.read_metadata(path).num_rows
    if read != codes.num_rows + quarantined.num_rows:
        raise RuntimeError(
            f"{path}: {read} buyers read but {codes.num_rows} assigned + {quarantined.num_rows} quarantined"
        )
    manifest = {
        "kind": "vqvae-codes",
        "run": str(run_dir.resolve()),
        "data": str(Path(data_dir).resolve()),
        "ray": use_ray,
        "counts": {
            "buyers_read": read,
            "buyers_assigned": codes.num_rows,
            "buyers_quarantined": quarantined.num_rows,
        },
        "seconds": seconds,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return AssignResult(out, read, codes.num_rows, quarantined.num_rows, seconds)
