"""Raw logs -> a prepared directory: events, quarantine, sessions, buyers, catalogs, merchants, manifest.

Bounded memory for inputs of any size: adapter chunks stream in; each canonical event gets its
buyer's hash bucket and, once more than ``partition_rows`` events have arrived, is spilled to that
bucket's Arrow IPC file (partitions.py). Runs of consecutive buckets then come back as partitions of
complete buyers, each ordered, sessionized and featurized on its own (``partition_tables``: the
pure table function the Ray path calls too) and streamed into Parquet files by a writer thread.
Catalogs and the merchant summary merge the partitions' partial aggregates at the end. Reading
counts each product's prices too (features.price_partial), so every buyer's ``price_index`` and
``markdown_share`` compare with the whole input's prices, whatever the partitioning. On two cores
every stage overlaps another: reading with bucketing, bucketing with spilling, reading a partition
back with building the previous one, building one table with another, and building with writing.

Every output is ordered by buyer hash (hence by bucket), independent of how buckets are grouped
into partitions, so the same input and config give byte-identical Parquet files, and the Ray path
(prepare_ray.py) gives equal tables. The manifest is written last and checks the row accounting:
rows_read = rows_kept + rows_quarantined + rows_dropped (rows a mapping leaves out on purpose, by code).
row_check.py does that accounting alone, writing nothing (`simpersona prepare --check`); prepared_manifest.py
builds the manifest.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from collections import Counter, deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm import tqdm

from learners.config import config_to_dict, option
from learners.data import schema
from learners.data.adapter import Adapter, CanonicalChunk
from learners.data.catalogs import (
    build_catalogs,
    build_merchants,
    catalog_partial,
    catalogs_table,
    merchant_partial,
    merchants_table,
    merge_catalog_partials,
)
from learners.data.features import (
    PriceReferences,
    buyer_frame,
    buyers_table,
    merge_price_partials,
    price_partial,
    reference_prices,
)
from learners.data.partitions import BuyerPartitions, assign_buckets
from learners.data.prepared_manifest import build_manifest, file_digest
from learners.data.readers import delimiter_fix, other_delimiter
from learners.data.sessions import events_table, order_frame, sessions_table

_QUARANTINE_FLUSH_ROWS = 100_000
_DAY_MS = 86_400_000
DICTIONARY_COLUMNS = frozenset(
    {"merchant_id", "event_type", "product_id", "category_id", "query", "file", "column", "reason"}
    | {"event_seq", "gap_seq"}
)
"""Columns with few distinct values, Parquet dictionary-encoded (a list column: its elements). The
near-unique ids (buyer, session) and timestamps are not: hashing them costs more writer time than
the dictionary saves."""
_MAX_PENDING_WRITES = 3
_READ_AHEAD_CHUNKS = 2
_TABLE_THREADS = 2
PRICE_PARTIALS_KEPT = 8
"""Per-chunk price partials kept before they are summed into one (bounded memory on huge inputs: a
partial holds a row per product and price that the chunk logged)."""

T = TypeVar("T")


@dataclass
class PrepareConfig:
    """How `simpersona prepare` turns canonical events into the prepared tables."""

    max_seq_len: int = 256
    """Most recent events kept per buyer in event_seq/gap_seq (the encoder's input length)."""
    session_gap_s: int = schema.SESSION_GAP_SECONDS
    """Inactivity (seconds) after which a new session starts when the source has no session ids; a gap of exactly this long stays in the session."""
    partition_rows: int = 2_000_000
    """Events processed together in one partition; smaller inputs are never spilled (peak memory about 1 KB per event)."""
    n_buckets: int = 256
    """Hash buckets of buyers spilled to disk; partitions are runs of consecutive buckets (outputs do not depend on it)."""
    spill_dir: str | None = None
    """Directory for the temporary spill files (default: the system temp dir)."""
    compression: str = "zstd"
    """Parquet compression codec of the outputs (zstd, snappy, gzip, lz4, none)."""
    use_ray: bool = field(default=False, metadata=option(flag="--ray", switch=True))
    """Distribute the work with Ray Data (also automatic inside a connected multi-node Ray cluster)."""


@dataclass
class PartitionResult:
    """What one partition of complete buyers contributes to the outputs."""

    events: pa.Table
    sessions: pa.Table
    buyers: pa.Table
    catalog_partial: pa.Table
    merchant_partial: pa.Table


def _buyer_tables(
    ordered: pl.DataFrame, max_seq_len: int, references: PriceReferences
) -> tuple[pa.Table, pa.Table]:
    buyers = buyer_frame(ordered, max_seq_len=max_seq_len, references=references)
    return buyers_table(buyers), merchant_partial(buyers).to_arrow()


def partition_tables(
    events: pa.Table | pl.DataFrame,
    *,
    day_resolution: bool,
    config: PrepareConfig,
    references: PriceReferences,
) -> Iterator[tuple[str, pa.Table]]:
    """Canonical (or bucketed, see partitions.py) events of complete buyers -> this partition's
    tables, as (PartitionResult field, table) pairs in a fixed order, each as soon as it is ready (so
    a caller can write one while the next is built). ``references``: the whole input's
    ``features.reference_prices``."""
    frame = events if isinstance(events, pl.DataFrame) else pl.from_arrow(events)
    assert isinstance(frame, pl.DataFrame)
    ordered = order_frame(frame, day_resolution=day_resolution, session_gap_s=config.session_gap_s)
    # The tables depend only on `ordered`, and polars releases the GIL: building them side by side
    # keeps both cores busy where one table's work is sequential.
    with ThreadPoolExecutor(max_workers=_TABLE_THREADS, thread_name_prefix="partition-table") as pool:
        sessions = pool.submit(sessions_table, ordered)
        buyers = pool.submit(_buyer_tables, ordered, config.max_seq_len, references)
        catalog = pool.submit(lambda: catalog_partial(ordered).to_arrow())
        yield "events", events_table(ordered)
        yield "sessions", sessions.result()
        buyers_result, merchant_result = buyers.result()
        yield "buyers", buyers_result
        yield "catalog_partial", catalog.result()
        yield "merchant_partial", merchant_result


def build_partition(
    events: pa.Table, *, day_resolution: bool, config: PrepareConfig, references: PriceReferences
) -> PartitionResult:
    """Canonical events of complete buyers -> this partition's outputs."""
    tables = partition_tables(events, day_resolution=day_resolution, config=config, references=references)
    return PartitionResult(**dict(tables))


def read_ahead(items: Iterable[T], depth: int = _READ_AHEAD_CHUNKS) -> Iterator[T]:
    """``items`` in order, produced on a background thread up to ``depth`` items ahead.

    Reading and canonicalizing (pyarrow, GIL released) then overlap the caller's bucketing and
    spilling of the previous chunks; reading back a partition's spill overlaps building the last one.
    """
    iterator = iter(items)
    end = object()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="read-ahead") as pool:
        pending = deque(pool.submit(next, iterator, end) for _ in range(max(depth, 1)))
        while (item := pending.popleft().result()) is not end:
            pending.append(pool.submit(next, iterator, end))
            yield item


def frames(tables: Iterable[pa.Table]) -> Iterator[pl.DataFrame]:
    """Each table as a polars frame, dropping the Arrow table first (its strings are copied)."""
    for table in tables:
        frame = pl.from_arrow(table)
        assert isinstance(frame, pl.DataFrame)
        del table
        yield frame


def check_chunk(chunk: CanonicalChunk) -> None:
    """Raise when an adapter breaks the rows-read invariant (a bug, never bad input)."""
    kept, quarantined = chunk.events.num_rows, chunk.quarantine.num_rows
    dropped = sum(chunk.dropped.values())
    if chunk.rows_read != kept + quarantined + dropped:
        raise RuntimeError(
            f"adapter chunk lost rows: rows_read={chunk.rows_read} != kept {kept} + quarantined {quarantined}"
            f" + dropped {dropped}"
        )


def parquet_options(table_schema: pa.Schema, compression: str) -> dict[str, Any]:
    """Parquet writer options of a prepared table: ``compression``, dictionary encoding for
    DICTIONARY_COLUMNS, and min/max statistics for the columns readers filter on (merchant, fixed-width
    values). Statistics of the string ids cost a third of the writer's time and serve no reader."""
    return {
        "compression": compression,
        "use_dictionary": [
            f"{f.name}.list.element" if pa.types.is_list(f.type) else f.name
            for f in table_schema
            if f.name in DICTIONARY_COLUMNS
        ],
        "write_statistics": [
            f.name
            for f in table_schema
            if f.name == "merchant_id" or pa.types.is_primitive(f.type) or pa.types.is_timestamp(f.type)
        ],
    }


@dataclass
class EventSummary:
    """What prepare's manifest and ``prepare --check`` say about the kept events, summed over chunks."""

    by_type: Counter[str] = field(default_factory=Counter)
    """Kept events per canonical type."""
    first: datetime | None = None
    last: datetime | None = None
    """The first and last kept event's time."""
    max_day: int = 0
    """The highest day of the month of any kept event (UTC): 12 or less leaves day and month open."""

    def add(self, events: pa.Table) -> None:
        if events.num_rows == 0:
            return
        for item in events["event_type"].value_counts().to_pylist():
            self.by_type[item["values"]] += item["counts"]
        low, high = pc.min(events["ts"]).as_py(), pc.max(events["ts"]).as_py()
        self.first = low if self.first is None else min(self.first, low)
        self.last = high if self.last is None else max(self.last, high)
        self.max_day = max(self.max_day, pc.max(pc.day(events["ts"])).as_py() or 0)

    def by_type_in_order(self) -> dict[str, int]:
        """Kept events per type, in funnel order, types without events left out."""
        return {t: self.by_type[t] for t in schema.EVENT_TYPES if self.by_type[t]}

    def time_range(self) -> dict[str, str] | None:
        """The manifest's time_range: first and last kept event's time, ISO text; None if none kept."""
        if self.first is None or self.last is None:
            return None
        return {"first": self.first.isoformat(), "last": self.last.isoformat()}


class OutputWriters:
    """Streaming Parquet writers for a prepared dir's per-partition tables and quarantine.

    Writes run on one background thread (in submission order; pyarrow releases the GIL), so a
    partition's events are compressed while its sessions and buyers are being built.
    """

    STREAMED = {
        "events": schema.EVENTS,
        "sessions": schema.SESSIONS,
        "buyers": schema.BUYERS,
        "quarantine": schema.QUARANTINE,
    }

    def __init__(self, out: Path, compression: str) -> None:
        self.out = out
        self.compression = compression
        self._writers = {
            name: pq.ParquetWriter(
                out / schema.TABLE_FILES[name], table_schema, **parquet_options(table_schema, compression)
            )
            for name, table_schema in self.STREAMED.items()
        }
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="parquet-writer")
        self._pending: deque[Future[None]] = deque()
        self._quarantine: list[pa.Table] = []
        self.rows: Counter[str] = Counter()
        self.quarantine_reasons: Counter[str] = Counter()
        self.events = EventSummary()
        """The written events' types and times, for the manifest."""
        self.sessions_over_a_day = 0
        """Sessions whose last event is more than a day after their first (the manifest's figure)."""

    def __enter__(self) -> OutputWriters:
        return self

    def __exit__(self, *exc: object) -> None:
        self._thread.shutdown(wait=True)
        for writer in self._writers.values():
            writer.close()

    def add_quarantine(self, table: pa.Table) -> None:
        if table.num_rows == 0:
            return
        self._quarantine.append(table.cast(schema.QUARANTINE))
        for item in table["reason"].value_counts().to_pylist():
            self.quarantine_reasons[item["values"]] += item["counts"]
        if sum(t.num_rows for t in self._quarantine) >= _QUARANTINE_FLUSH_ROWS:
            self._flush_quarantine()

    def _flush_quarantine(self) -> None:
        if self._quarantine:
            self.write("quarantine", pa.concat_tables(self._quarantine))
            self._quarantine = []

    def write(self, name: str, table: pa.Table) -> None:
        """Queue ``table`` for the ``name`` file; at most a few tables wait, bounding memory."""
        while len(self._pending) >= _MAX_PENDING_WRITES:
            self._pending.popleft().result()
        self._pending.append(self._thread.submit(self._writers[name].write_table, table))
        self.rows[name] += table.num_rows

    def add_partition(self, tables: Iterable[tuple[str, pa.Table]]) -> PartitionResult:
        """Write a partition's streamed tables as they come; returns the whole PartitionResult."""
        result: dict[str, pa.Table] = {}
        for name, table in tables:
            if name in self.STREAMED:
                self.write(name, table)
            if name == "events":
                self.events.add(table)
            if name == "sessions" and table.num_rows:
                span = pc.subtract(table["end"].cast(pa.int64()), table["start"].cast(pa.int64()))
                self.sessions_over_a_day += pc.sum(pc.greater(span, _DAY_MS).cast(pa.int64())).as_py() or 0
            result[name] = table
        return PartitionResult(**result)

    def finish(self, catalogs: pa.Table, merchants: pa.Table) -> None:
        """Flush and close the streamed files, then write catalogs and merchants."""
        self._flush_quarantine()
        while self._pending:
            self._pending.popleft().result()
        for writer in self._writers.values():
            writer.close()
        for name, table in (("catalogs", catalogs), ("merchants", merchants)):
            pq.write_table(
                table, self.out / schema.TABLE_FILES[name], **parquet_options(table.schema, self.compression)
            )
            self.rows[name] = table.num_rows


class PartialAggregates:
    """Catalog and merchant partials collected from partitions, compacted as they grow."""

    def __init__(self, compact_rows: int) -> None:
        self.compact_rows = compact_rows
        self.catalog: list[pl.DataFrame] = []
        self.merchant: list[pl.DataFrame] = []

    def add(self, result: PartitionResult) -> None:
        for target, table in (
            (self.catalog, result.catalog_partial),
            (self.merchant, result.merchant_partial),
        ):
            frame = pl.from_arrow(table)
            assert isinstance(frame, pl.DataFrame)
            target.append(frame)
        if sum(f.height for f in self.catalog) > self.compact_rows:
            self.catalog = [merge_catalog_partials(self.catalog)]

    def tables(self) -> tuple[pa.Table, pa.Table]:
        catalogs = build_catalogs(self.catalog)
        return catalogs_table(catalogs), merchants_table(build_merchants(self.merchant, catalogs))


def finish_outputs(
    writers: OutputWriters,
    partials: PartialAggregates,
    *,
    inputs: Sequence[Path],
    adapter: Adapter,
    config: PrepareConfig,
    rows_read: int,
    rows_kept: int,
    dropped_codes: Counter[str] | None = None,
) -> dict[str, Any]:
    """Write catalogs, merchants and the manifest (last, so its presence marks a complete directory)."""
    # Hashing the inputs and merging the partials overlap the writer thread's last writes.
    digests = [file_digest(Path(p)) for p in inputs]
    catalogs, merchants = partials.tables()
    writers.finish(catalogs, merchants)
    counts = {
        "rows_read": rows_read,
        "rows_kept": rows_kept,
        "rows_quarantined": writers.rows["quarantine"],
        "rows_dropped": sum((dropped_codes or Counter()).values()),
        "events": writers.rows["events"],
        "sessions": writers.rows["sessions"],
        "buyers": writers.rows["buyers"],
        "merchants": writers.rows["merchants"],
        "products": writers.rows["catalogs"],
    }
    manifest = build_manifest(
        digests, adapter, config_to_dict(config), counts, writers.quarantine_reasons, dropped_codes
    )
    if writers.events.time_range() is not None:
        manifest["time_range"] = writers.events.time_range()
    manifest["sessions_over_a_day"] = writers.sessions_over_a_day
    manifest["day_month_open"] = day_month_open(adapter, writers.events.max_day)
    manifest["events_by_type"] = writers.events.by_type_in_order()
    (writers.out / schema.MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest


def day_month_open(adapter: Adapter, max_day: int) -> bool:
    """Whether the adapter reads dates by a pattern with a day and a month, and no kept event's day is
    above 12: the same values would read as other dates with the two swapped (UCI's 12/1/10)."""
    mappings = getattr(adapter, "mappings", None) or [getattr(adapter, "mapping", None)]
    patterns = [m.timestamp.format for m in mappings if m is not None]
    return 0 < max_day <= 12 and any("%d" in f and "%m" in f for f in patterns)


def use_ray(config: PrepareConfig) -> bool:
    """Ray when asked for, or when this process is connected to a multi-node Ray cluster."""
    if config.use_ray:
        return True
    ray = sys.modules.get("ray")  # never import Ray just to find out it is not running
    if ray is None or not ray.is_initialized():
        return False
    return sum(1 for node in ray.nodes() if node.get("Alive")) > 1


def prepare(
    inputs: Sequence[Path], adapter: Adapter, config: PrepareConfig, out: Path, progress: bool = False
) -> dict[str, Any]:
    """Run the pipeline from input files to the prepared directory ``out``; returns the manifest.

    The tables are built in a staging directory beside ``out`` and moved into it only when the run
    succeeds, so a run that fails (a wrong mapping, a file that cannot be read, no row kept) leaves
    an earlier output in ``out`` as it was. A run that keeps no row at all fails with the reasons."""
    inputs = [Path(p) for p in inputs]
    if not inputs:
        raise ValueError("prepare: no input files given; pass one or more files or directories")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", suffix=".preparing", dir=out.parent))
    try:
        manifest = _prepare_into(inputs, adapter, config, staging, progress)
        if manifest["counts"]["rows_kept"] == 0:
            raise ValueError(nothing_kept(inputs, manifest, staging / schema.TABLE_FILES["quarantine"]))
        publish(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return manifest


def publish(staging: Path, out: Path) -> None:
    """Move a finished run's files from ``staging`` into ``out``, replacing those of an earlier run;
    the old manifest goes first and the new one last, so ``out`` never looks complete in between."""
    out.mkdir(parents=True, exist_ok=True)
    (out / schema.MANIFEST_FILE).unlink(missing_ok=True)
    for item in sorted(staging.iterdir()):
        if item.name != schema.MANIFEST_FILE:
            os.replace(item, out / item.name)
    os.replace(staging / schema.MANIFEST_FILE, out / schema.MANIFEST_FILE)


def nothing_kept(inputs: Sequence[Path], manifest: dict[str, Any], quarantine: Path) -> str:
    """The error of a run that kept no row: what became of the rows, an example, and the likely fix."""
    c = manifest["counts"]
    named = ", ".join(str(p) for p in inputs[:3]) + (
        f" and {len(inputs) - 3} more" if len(inputs) > 3 else ""
    )
    lines = [f"prepare: no row of {named} was kept ({c['rows_read']:,} read"]
    lines[0] += f", {c['rows_quarantined']:,} quarantined, {c['rows_dropped']:,} dropped on purpose)"
    for reason, n in list(manifest["quarantine_by_reason"].items())[:3]:
        lines.append(f"  {n:,} rows: {reason}")
    example = pq.read_table(quarantine).slice(0, 1).to_pylist() if quarantine.exists() else []
    if example:
        row = example[0]
        column = f" column '{row['column']}'" if row.get("column") else ""
        lines.append(f"  e.g. {row['file']}:{row['line']}{column}: {row['raw']}")
    reasons = " ".join(manifest["quarantine_by_reason"])
    if "found 1" in reasons:
        other = other_delimiter(str(example[0]["raw"]), None) if example else None
        fix = delimiter_fix(other) if other is not None else "check the mapping's csv"
        lines.append(
            f"fix: the rows do not split into the mapping's columns; is the delimiter right? ({fix})"
        )
    elif c["rows_read"] == 0:
        lines.append("fix: the inputs hold no rows; check the paths")
    elif c["rows_dropped"] == c["rows_read"]:
        lines.append("fix: every row's event code is listed under event_type.drop in the mapping")
    else:
        lines.append("fix: see the reasons above; `simpersona prepare ... --check` lists examples of each")
    lines.append("nothing was written")
    return "\n".join(lines)


def _prepare_into(
    inputs: list[Path], adapter: Adapter, config: PrepareConfig, out: Path, progress: bool
) -> dict[str, Any]:
    """The pipeline, writing into the empty directory ``out``."""
    if use_ray(config):
        from learners.data.prepare_ray import prepare_with_ray

        return prepare_with_ray(inputs, adapter, config, out, progress=progress)
    partials = PartialAggregates(compact_rows=config.partition_rows)
    rows_read = rows_kept = 0
    dropped_codes: Counter[str] = Counter()
    price_partials: list[pl.DataFrame] = []
    with (
        OutputWriters(out, config.compression) as writers,
        BuyerPartitions(config.n_buckets, config.partition_rows, config.spill_dir) as partitions,
    ):
        with tqdm(desc="read", unit=" rows", unit_scale=True, disable=None if progress else True) as bar:
            for chunk in read_ahead(adapter.read(inputs)):
                check_chunk(chunk)
                rows_read += chunk.rows_read
                rows_kept += chunk.events.num_rows
                dropped_codes.update(chunk.dropped)
                if chunk.events.num_rows:
                    price_partials.append(price_partial(chunk.events))
                    if len(price_partials) > PRICE_PARTIALS_KEPT:
                        price_partials = [merge_price_partials(price_partials)]
                    partitions.add(assign_buckets(chunk.events, config.n_buckets))
                writers.add_quarantine(chunk.quarantine)
                bar.update(chunk.rows_read)
        references = reference_prices(price_partials)
        with tqdm(
            total=len(partitions), desc="build", unit=" partitions", disable=None if progress else True
        ) as bar:
            for events in read_ahead(frames(partitions.partitions()), depth=1):
                tables = partition_tables(
                    events, day_resolution=adapter.day_resolution, config=config, references=references
                )
                partials.add(writers.add_partition(tables))
                bar.update(1)
        return finish_outputs(
            writers,
            partials,
            inputs=inputs,
            adapter=adapter,
            config=config,
            rows_read=rows_read,
            rows_kept=rows_kept,
            dropped_codes=dropped_codes,
        )
