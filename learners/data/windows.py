"""Time windows of a prepared directory: the strict evaluation protocol's earlier and later windows.

The study's strict variant (docs/architecture.md) takes a held-out merchant's code distribution
from its buyers' behaviour in an earlier window and its real rates from a later one. ``window_cutoff`` picks the boundary (a
quantile of the event times); ``window_prepared`` re-runs ``prepare`` on the events before it, so
the earlier window gets its own buyers table (features and sequences from those events only) that
``assign`` encodes unchanged. The source is the prepared ``events.parquet`` itself, read through
``PreparedEventsAdapter``: its sessions and within-day order are kept, and every row is accounted
for like any other input (rows outside the window are not read into the window's directory, and the
manifest's ``window`` entry says how many there were).
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from learners.data import schema
from learners.data.adapter import CanonicalChunk
from learners.data.prepare import PrepareConfig, prepare

_EMPTY_QUARANTINE = schema.QUARANTINE.empty_table()


def _manifest(data_dir: Path) -> dict:
    path = data_dir / schema.MANIFEST_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: run `simpersona prepare ... --out {data_dir}` first")
    return json.loads(path.read_text())


class PreparedEventsAdapter:
    """Reads a prepared ``events.parquet`` back as canonical events (an Adapter).

    ``src_order`` is the row's position in the file, which is already in buyer order, so re-running
    the ordering rules reproduces each buyer's sequence; the prepared ``session_id`` is kept as the
    source's own session id. Rows are filtered by ``merchants`` and ``[since, until)`` while reading.
    """

    name = "prepared-events"

    def __init__(
        self,
        day_resolution: bool,
        merchants: Collection[str] | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> None:
        self.day_resolution = day_resolution
        self.merchants = None if merchants is None else pa.array(sorted(set(merchants)), pa.string())
        self.since, self.until = since, until

    def _keep(self, batch: pa.RecordBatch) -> pa.Array:
        keep = pa.array(np.ones(batch.num_rows, bool))
        if self.merchants is not None:
            keep = pc.and_(keep, pc.is_in(batch.column("merchant_id"), value_set=self.merchants))
        ts = batch.column("ts")
        if self.since is not None:
            keep = pc.and_(keep, pc.greater_equal(ts, pa.scalar(self.since, schema.TS_TYPE)))
        if self.until is not None:
            keep = pc.and_(keep, pc.less(ts, pa.scalar(self.until, schema.TS_TYPE)))
        return keep

    def read(self, inputs: Sequence[Path]) -> Iterator[CanonicalChunk]:
        for index, path in enumerate(inputs):
            offset = 0
            for batch in pq.ParquetFile(path).iter_batches(batch_size=1 << 18):
                keep = self._keep(batch)
                rows = pa.array(np.arange(offset, offset + batch.num_rows, dtype=np.int64) | (index << 40))
                offset += batch.num_rows
                kept = pa.Table.from_batches([batch]).append_column("src_order", rows).filter(keep)
                yield CanonicalChunk(
                    events=kept.select(schema.CANONICAL_EVENTS.names).cast(schema.CANONICAL_EVENTS),
                    quarantine=_EMPTY_QUARANTINE,
                    rows_read=kept.num_rows,
                )


def window_cutoff(
    data_dir: str | Path, quantile: float, merchants: Collection[str] | None = None
) -> datetime:
    """The event time below which ``quantile`` of the (listed merchants') events fall, at day precision.

    Rounded down to midnight UTC so that day-resolution sources never split a day (a day is a session).
    """
    if not 0.0 < quantile < 1.0:
        raise ValueError(f"window quantile must be in (0, 1), got {quantile}")
    events = pq.read_table(Path(data_dir) / schema.TABLE_FILES["events"], columns=["merchant_id", "ts"])
    if merchants is not None:
        events = events.filter(pc.is_in(events["merchant_id"], value_set=pa.array(sorted(merchants))))
    if events.num_rows == 0:
        raise ValueError(f"{data_dir}: no events to split into windows")
    ms = pc.cast(events["ts"], pa.int64()).to_numpy()
    cut = int(np.quantile(ms, quantile, method="lower"))
    day = datetime.fromtimestamp(cut / 1000, tz=UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    if day.timestamp() * 1000 <= ms.min():
        raise ValueError(
            f"{data_dir}: every event is on or after {day.date()}; the earlier window would be empty"
            " (raise the window quantile)"
        )
    return day


def window_prepared(
    data_dir: str | Path,
    out: str | Path,
    *,
    until: datetime | None = None,
    since: datetime | None = None,
    merchants: Collection[str] | None = None,
    config: PrepareConfig | None = None,
) -> dict:
    """Prepare ``out`` from the events of ``data_dir`` in ``[since, until)`` (of ``merchants``).

    Returns the new manifest, which also records the window, the source and the rows it left out.
    """
    data_dir = Path(data_dir)
    source = _manifest(data_dir)
    adapter = PreparedEventsAdapter(source.get("ts_resolution") == "day", merchants, since, until)
    config = config or PrepareConfig(**{k: v for k, v in source.get("config", {}).items() if k != "use_ray"})
    events = data_dir / schema.TABLE_FILES["events"]
    manifest = prepare([events], adapter, config, Path(out))
    source_events = pq.read_metadata(events).num_rows
    manifest["window"] = {
        "source": str(data_dir.resolve()),
        "since": since.isoformat() if since else None,
        "until": until.isoformat() if until else None,
        "merchants": None if merchants is None else sorted(merchants),
        "source_events": source_events,
        "events_outside": source_events - manifest["counts"]["rows_read"],
    }
    (Path(out) / schema.MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest
