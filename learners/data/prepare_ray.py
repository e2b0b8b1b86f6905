"""The Ray Data path of `prepare`: the same table functions as prepare.py, distributed over a cluster.

  inputs --from_items.map_batches--> one task per file: adapter.read -> assign_buckets, price_partial
         (the driver sums the chunks' price partials into the reference prices every part uses)
         --groupby(_part).map_groups--> build_partition per part (the one shuffle, by buyer hash)
         --to_arrow_refs--> the driver fetches parts in order into the local path's Parquet writers

A part is a run of consecutive hash buckets (``bucket * n_parts // n_buckets``, n_parts from
``partition_rows``), so every output stays ordered by bucket first, exactly as on the local path.
Each file is read by one task with the adapter (so ``src_order`` gets the file's index added, as the
local path's multi-file read does). Chunk and partition results travel as Arrow IPC blobs because one
step emits several tables (events and quarantine; events, sessions, buyers and partials). The
outputs equal the local path's tables row for row; Parquet row groups may be cut differently.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import ray

from learners.data.adapter import Adapter
from learners.data.features import PriceReferences, merge_price_partials, price_partial, reference_prices
from learners.data.partitions import BUCKET, assign_buckets
from learners.data.prepare import (
    PRICE_PARTIALS_KEPT,
    OutputWriters,
    PartialAggregates,
    PartitionResult,
    PrepareConfig,
    build_partition,
    check_chunk,
    finish_outputs,
)

_FILE_SHIFT = 40  # src_order = (file_index << 40) | line, as the adapters number rows
PART = "_part"
"""Group key of the shuffle: ``bucket * n_parts // n_buckets``, so a part is a run of whole buckets."""
_RESULT_TABLES = ("events", "sessions", "buyers", "catalog_partial", "merchant_partial")


def to_ipc(table: pa.Table) -> bytes:
    """An Arrow table as IPC stream bytes."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def from_ipc(blob: bytes) -> pa.Table:
    return pa.ipc.open_stream(pa.py_buffer(blob)).read_all()


def read_file(batch: pa.Table, adapter: Adapter, n_buckets: int) -> Iterator[pa.Table]:
    """Ray UDF: for each (index, path) row, one output row per adapter chunk of that file."""
    for item in batch.to_pylist():
        index, path = item["index"], Path(item["path"])
        for number, chunk in enumerate(adapter.read([path])):
            check_chunk(chunk)
            events = chunk.events
            if index:
                shifted = pc.add(events["src_order"], pa.scalar(index << _FILE_SHIFT, pa.int64()))
                events = events.set_column(events.schema.get_field_index("src_order"), "src_order", shifted)
            yield pa.table(
                {
                    "index": pa.array([index], pa.int64()),
                    "chunk": pa.array([number], pa.int64()),
                    "rows_read": pa.array([chunk.rows_read], pa.int64()),
                    "rows_kept": pa.array([events.num_rows], pa.int64()),
                    "dropped": pa.array([json.dumps(chunk.dropped)], pa.string()),
                    "events": pa.array([to_ipc(assign_buckets(events, n_buckets))], pa.large_binary()),
                    "prices": pa.array([to_ipc(price_partial(events).to_arrow())], pa.large_binary()),
                    "quarantine": pa.array([to_ipc(chunk.quarantine)], pa.large_binary()),
                }
            )


def unpack_events(batch: pa.Table, n_parts: int, n_buckets: int) -> pa.Table:
    """Ray UDF: chunk rows -> their canonical events, with ``_part``: a run of consecutive buckets."""
    events = pa.concat_tables([from_ipc(blob) for blob in batch["events"].to_pylist()])
    buckets = events[BUCKET].to_numpy().astype(np.int64)
    return events.append_column(PART, pa.array(buckets * n_parts // n_buckets, pa.int32()))


def build_part(
    events: pa.Table, day_resolution: bool, config: PrepareConfig, references: PriceReferences
) -> pa.Table:
    """Ray UDF (map_groups): one part's events -> one row of IPC blobs of its PartitionResult."""
    part = events[PART][0].as_py()
    result = build_partition(
        events.drop_columns([PART]), day_resolution=day_resolution, config=config, references=references
    )
    row: dict[str, Any] = {PART: pa.array([part], pa.int32())}
    for name in _RESULT_TABLES:
        row[name] = pa.array([to_ipc(getattr(result, name))], pa.large_binary())
    return pa.table(row)


@ray.remote
def _parts_in(block: pa.Table) -> list[int]:
    return block[PART].to_pylist()


def ordered_results(results: ray.data.Dataset) -> Iterator[PartitionResult]:
    """Results in part order, fetching one block at a time (blocks stay in the object store)."""
    refs = results.to_arrow_refs()
    where = sorted(
        (part, i, row)
        for i, parts in enumerate(ray.get([_parts_in.remote(r) for r in refs]))
        for row, part in enumerate(parts)
    )
    cached: tuple[int, pa.Table] | None = None
    for _, i, row in where:
        if cached is None or cached[0] != i:
            cached = (i, ray.get(refs[i]))
        block = cached[1].slice(row, 1)
        yield PartitionResult(**{n: from_ipc(block[n][0].as_py()) for n in _RESULT_TABLES})


def _name_file_as_given(
    quarantine: pa.Table, items: list[dict[str, Any]], inputs: Sequence[Path], index: int
) -> pa.Table:
    """Quarantine rows name the file as the user gave it (tasks read it by absolute path)."""
    if quarantine.num_rows == 0:
        return quarantine
    files = quarantine["file"]
    given = pc.if_else(pc.equal(files, items[index]["path"]), str(inputs[index]), files)
    return quarantine.set_column(quarantine.schema.get_field_index("file"), "file", given)


def prepare_with_ray(
    inputs: Sequence[Path], adapter: Adapter, config: PrepareConfig, out: Path, progress: bool = False
) -> dict[str, Any]:
    """prepare() on Ray Data; connects to (or starts) Ray when this process is not connected yet."""
    started = not ray.is_initialized()
    if started:
        ray.init(log_to_driver=False)
    context = ray.data.DataContext.get_current()
    saved = (context.enable_progress_bars, context.execution_options.preserve_order)
    try:
        # Chunks in input order, so the quarantine is written in the same order as the local path's.
        context.enable_progress_bars = progress
        context.execution_options.preserve_order = True
        items = [{"index": i, "path": str(Path(p).resolve())} for i, p in enumerate(inputs)]
        chunks = (
            ray.data.from_items(items, override_num_blocks=len(items))
            .map_batches(
                read_file,
                batch_size=1,
                batch_format="pyarrow",
                fn_kwargs={"adapter": adapter, "n_buckets": config.n_buckets},
            )
            .materialize()
        )
        with OutputWriters(out, config.compression) as writers:
            rows_read = rows_kept = 0
            dropped_codes: Counter[str] = Counter()
            price_partials: list[pl.DataFrame] = []
            meta = chunks.select_columns(
                ["index", "rows_read", "rows_kept", "dropped", "quarantine", "prices"]
            )
            for batch in meta.iter_batches(batch_size=1, batch_format="pyarrow"):
                index = batch["index"][0].as_py()
                rows_read += batch["rows_read"][0].as_py()
                rows_kept += batch["rows_kept"][0].as_py()
                dropped_codes.update(json.loads(batch["dropped"][0].as_py()))
                quarantine = from_ipc(batch["quarantine"][0].as_py())
                writers.add_quarantine(_name_file_as_given(quarantine, items, inputs, index))
                prices = pl.from_arrow(from_ipc(batch["prices"][0].as_py()))
                assert isinstance(prices, pl.DataFrame)
                price_partials.append(prices)
                if len(price_partials) > PRICE_PARTIALS_KEPT:
                    price_partials = [merge_price_partials(price_partials)]
            partials = PartialAggregates(compact_rows=config.partition_rows)
            if rows_kept:
                n_parts = max(1, min(config.n_buckets, -(-rows_kept // config.partition_rows)))
                results = (
                    chunks.select_columns(["events"])
                    .map_batches(
                        unpack_events,
                        batch_size=1,
                        batch_format="pyarrow",
                        fn_kwargs={"n_parts": n_parts, "n_buckets": config.n_buckets},
                    )
                    .groupby(PART, num_partitions=n_parts)
                    .map_groups(
                        build_part,
                        batch_format="pyarrow",
                        fn_kwargs={
                            "day_resolution": adapter.day_resolution,
                            "config": config,
                            "references": reference_prices(price_partials),
                        },
                    )
                )
                for result in ordered_results(results):
                    partials.add(writers.add_partition(vars(result).items()))
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
    finally:
        context.enable_progress_bars, context.execution_options.preserve_order = saved
        if started:
            ray.shutdown()
