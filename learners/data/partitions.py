"""Hash partitioning of canonical events by buyer, spilled to disk so memory stays bounded.

Each event gets the hash bucket of its buyer ``(merchant_id, buyer_id)``: bucket = the range of
``sessions.buyer_hash`` values it falls in (not a residue), so ordering buyers by hash orders them by
bucket too, and any run of consecutive buckets holds complete buyers. ``BuyerPartitions`` keeps the
first ``partition_rows`` events in memory; past that it spills every bucket to its own Arrow IPC
file under a temp dir and later hands back runs of consecutive buckets of about ``partition_rows``
events each. Spills go out in batches of at least ``partition_rows / 4`` events: every spill writes
one record batch per bucket, and many small batches cost more to write and to read back than the
same rows in a few large ones.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa

from learners.data import schema
from learners.data.sessions import buyer_hash

BUCKET = "_bucket"
"""Column added to canonical events: the buyer's hash bucket (int32)."""
SPILL_SCHEMA = schema.CANONICAL_EVENTS.append(pa.field(BUCKET, pa.int32(), nullable=False))
_HALF = 1 << 32
_SPILL_BATCH_SHARE = 4
"""Spill once this fraction (1/n) of ``partition_rows`` events has arrived."""


def assign_buckets(events: pa.Table, n_buckets: int) -> pa.Table:
    """Canonical events plus ``_bucket``: which of ``n_buckets`` ranges of buyer hashes the buyer is in."""
    if not 1 <= n_buckets < _HALF:
        raise ValueError(f"n_buckets must be between 1 and {_HALF - 1}, got {n_buckets}")
    frame = pl.from_arrow(events.select(["merchant_id", "buyer_id"]))
    assert isinstance(frame, pl.DataFrame)
    buckets = frame.select(((buyer_hash() // _HALF) * n_buckets // _HALF).cast(pl.Int32))
    return events.append_column(pa.field(BUCKET, pa.int32(), nullable=False), buckets.to_series().to_arrow())


class BuyerPartitions:
    """Collects bucketed events; yields tables of complete buyers, about ``partition_rows`` each.

    Use as a context manager: the spill directory is removed on exit.
    """

    def __init__(self, n_buckets: int, partition_rows: int, spill_dir: str | None = None) -> None:
        if partition_rows < 1:
            raise ValueError(f"partition_rows must be >= 1, got {partition_rows}")
        self.n_buckets = n_buckets
        self.partition_rows = partition_rows
        self.spill_dir = spill_dir
        self.counts = np.zeros(n_buckets, dtype=np.int64)
        self._memory: list[pa.Table] = []
        self._memory_rows = 0
        self._root: Path | None = None
        self._writers: dict[int, pa.ipc.RecordBatchFileWriter] = {}

    def __enter__(self) -> BuyerPartitions:
        return self

    def __exit__(self, *exc: object) -> None:
        self._close_writers()
        if self._root is not None:
            shutil.rmtree(self._root, ignore_errors=True)

    @property
    def spilled(self) -> bool:
        return self._root is not None

    def add(self, events: pa.Table) -> None:
        """Take canonical events carrying ``_bucket`` (see assign_buckets)."""
        events = events.cast(SPILL_SCHEMA)
        self.counts += np.bincount(events[BUCKET].to_numpy(), minlength=self.n_buckets)
        self._memory.append(events)
        self._memory_rows += events.num_rows
        if not self.spilled:
            if self._memory_rows <= self.partition_rows:
                return
            if self.spill_dir:
                Path(self.spill_dir).mkdir(parents=True, exist_ok=True)
            self._root = Path(tempfile.mkdtemp(prefix="simpersona-spill-", dir=self.spill_dir))
        if self._memory_rows * _SPILL_BATCH_SHARE >= self.partition_rows:
            self._spill()

    def _spill(self) -> None:
        """Write the held events, one record batch per non-empty bucket."""
        assert self._root is not None
        if not self._memory:
            return
        events = pa.concat_tables(self._memory)
        self._memory, self._memory_rows = [], 0
        buckets = events[BUCKET].to_numpy()
        # uint16 keys get numpy's radix sort: several times faster than sorting int32.
        keys = buckets.astype(np.uint16) if self.n_buckets <= 1 << 16 else buckets
        by_bucket = events.take(pa.array(np.argsort(keys, kind="stable"))).combine_chunks()
        sizes = np.bincount(buckets, minlength=self.n_buckets)
        start = 0
        for bucket in np.flatnonzero(sizes):
            writer = self._writers.get(int(bucket))
            if writer is None:
                writer = pa.ipc.new_file(self._root / f"bucket-{bucket:05d}.arrow", SPILL_SCHEMA)
                self._writers[int(bucket)] = writer
            writer.write_table(by_bucket.slice(start, int(sizes[bucket])))
            start += int(sizes[bucket])

    def _close_writers(self) -> None:
        for writer in self._writers.values():
            writer.close()
        self._writers.clear()

    def bucket_runs(self) -> list[list[int]]:
        """Non-empty buckets grouped in order into runs of about ``partition_rows`` events."""
        runs: list[list[int]] = []
        current: list[int] = []
        size = 0
        for bucket in np.flatnonzero(self.counts):
            current.append(int(bucket))
            size += int(self.counts[bucket])
            if size >= self.partition_rows:
                runs.append(current)
                current, size = [], 0
        if current:
            runs.append(current)
        return runs

    def __len__(self) -> int:
        """How many partitions ``partitions()`` yields."""
        if not self.spilled:
            return 1 if self._memory else 0
        return len(self.bucket_runs())

    def partitions(self) -> Iterator[pa.Table]:
        """Tables of complete buyers: everything at once when nothing was spilled, else bucket runs."""
        if not self.spilled:
            if self._memory:
                yield pa.concat_tables(self._memory)
            return
        self._spill()
        self._close_writers()
        assert self._root is not None
        for run in self.bucket_runs():
            paths = [self._root / f"bucket-{b:05d}.arrow" for b in run]
            # Left in chunks: the consumer's pl.from_arrow rechunks anyway, so combining here would
            # copy every row twice. The mappings stay valid after the files are unlinked, and
            # unlinking each run as soon as it is read keeps the spill's disk and page cache small.
            yield pa.concat_tables(pa.ipc.open_file(pa.memory_map(str(path))).read_all() for path in paths)
            for path in paths:
                path.unlink()
