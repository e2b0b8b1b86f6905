"""Hash partitioning of canonical events by buyer, spilled to disk so memory stays bounded.

Each event gets the hash bucket of its buyer ``(merchant_id, buyer_id)``: bucket = the range of
``sessions.buyer_hash`` values it falls in (not a residue), so ordering buyers by hash orders them by
bucket too, and any run of consecutive buckets holds complete buyers. The hash and the event's code
travel with the event (SPILL_SCHEMA), so ordering neither hashes again nor carries event names.
``BuyerPartitions`` keeps the first ``partition_rows`` events in memory; past that it spills every
bucket to its own Arrow IPC file under a temp dir (on a thread of its own) and later hands back runs
of consecutive buckets of about ``partition_rows`` events each. Spills go out in batches of at least
``partition_rows / 4`` events: every spill writes one record batch per bucket, and many small
batches cost more to write and to read back than the same rows in a few large ones.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa

from learners.data import schema
from learners.data.sessions import BUYER_HASH, CODE, buyer_hash, event_codes

BUCKET = "_bucket"
"""Column added to canonical events: the buyer's hash bucket (int32)."""
SPILL_SCHEMA = pa.schema(
    [f for f in schema.CANONICAL_EVENTS if f.name != "event_type"]
    + [
        pa.field(CODE, pa.int8(), nullable=False),
        pa.field(BUYER_HASH, pa.uint64(), nullable=False),
        pa.field(BUCKET, pa.int32(), nullable=False),
    ]
)
"""Bucketed events: canonical events with ``event_type`` as its code, the buyer hash and bucket."""
_HALF = 1 << 32
_SPILL_BATCH_SHARE = 4
"""Spill once this fraction (1/n) of ``partition_rows`` events has arrived."""


def assign_buckets(events: pa.Table, n_buckets: int) -> pa.Table:
    """Canonical events -> SPILL_SCHEMA: ``_bucket`` is which of ``n_buckets`` ranges of buyer hashes
    the buyer is in; ``_code`` and ``_hash`` as sessions.order_frame would compute them."""
    if not 1 <= n_buckets < _HALF:
        raise ValueError(f"n_buckets must be between 1 and {_HALF - 1}, got {n_buckets}")
    frame = pl.from_arrow(events.select(["merchant_id", "buyer_id", "event_type"]))
    assert isinstance(frame, pl.DataFrame)
    keys = frame.select(event_codes().alias(CODE), buyer_hash().alias(BUYER_HASH)).with_columns(
        ((pl.col(BUYER_HASH) // _HALF) * n_buckets // _HALF).cast(pl.Int32).alias(BUCKET)
    )
    columns = {name: events[name] for name in events.column_names if name != "event_type"}
    columns.update({name: keys[name].to_arrow() for name in keys.columns})
    return pa.Table.from_arrays([columns[name] for name in SPILL_SCHEMA.names], schema=SPILL_SCHEMA)


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
        self._spiller: ThreadPoolExecutor | None = None
        self._spilling: Future[None] | None = None

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
        """Take bucketed events (see assign_buckets)."""
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
        """Hand the held events to the spill thread (at most one batch in flight, bounding memory):
        sorting and writing them overlap the reading of the next batch."""
        assert self._root is not None
        if not self._memory:
            return
        events = pa.concat_tables(self._memory)
        self._memory, self._memory_rows = [], 0
        self._wait_for_spill()
        if self._spiller is None:
            self._spiller = ThreadPoolExecutor(max_workers=1, thread_name_prefix="spill")
        self._spilling = self._spiller.submit(self._write_buckets, events)

    def _wait_for_spill(self) -> None:
        spilling, self._spilling = self._spilling, None
        if spilling is not None:
            spilling.result()

    def _write_buckets(self, events: pa.Table) -> None:
        """Write ``events``, one record batch per non-empty bucket."""
        assert self._root is not None
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
        try:
            self._wait_for_spill()
        finally:
            if self._spiller is not None:
                self._spiller.shutdown(wait=True)
                self._spiller = None
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
            # One chunk per column: Arrow concatenates a thousand record batches several times
            # faster than polars rechunks them after pl.from_arrow. The mappings stay valid after
            # the files are unlinked, and unlinking each run as soon as it is read keeps the
            # spill's disk and page cache small.
            runs = (pa.ipc.open_file(pa.memory_map(str(path))).read_all() for path in paths)
            yield pa.concat_tables(runs).combine_chunks()
            for path in paths:
                path.unlink()
