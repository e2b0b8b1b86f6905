"""`simpersona prepare --check`: what prepare would keep, quarantine and drop, without writing a table.

The same adapters, chunk checks and row accounting as prepare.py, over every input row, so a new log's
problems (a column that does not parse, codes left out on purpose) show before a long run.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.compute as pc

from learners.data.adapter import Adapter
from learners.data.prepare import EventSummary, check_chunk, day_month_open
from learners.data.prepared_manifest import by_count, check_accounting


@dataclass
class RowCheck:
    """What `prepare` would do with every input row, without writing anything (``check_rows``)."""

    counts: dict[str, int]
    """rows_read, rows_kept, rows_quarantined, rows_dropped (the manifest's figures of the same name)."""
    quarantine_by_reason: dict[str, int]
    """Quarantined rows per reason, most frequent first (the manifest's quarantine_by_reason)."""
    rows_dropped_by_code: dict[str, int]
    """Rows left out on purpose per source event code (the manifest's rows_dropped_by_code)."""
    kept_by_event_type: dict[str, int]
    """Kept rows per canonical event type, in funnel order."""
    examples: dict[str, list[dict[str, Any]]]
    """Up to ``examples`` quarantined rows per reason (file, line, column, raw)."""
    time_range: dict[str, str] | None = None
    """First and last kept event's time, ISO text in UTC (the manifest's time_range); None if none kept."""
    day_month_open: bool = False
    """The manifest's day_month_open: no kept day above 12 under a day-and-month pattern."""


def check_rows(inputs: Sequence[Path], adapter: Adapter, examples: int = 2) -> RowCheck:
    """Read every input row through ``adapter`` and count what prepare would keep, quarantine and
    drop (the same figures as its manifest), writing no table."""
    inputs = [Path(p) for p in inputs]
    if not inputs:
        raise ValueError("prepare: no input files given; pass one or more files or directories")
    counts = dict.fromkeys(("rows_read", "rows_kept", "rows_quarantined", "rows_dropped"), 0)
    reasons: Counter[str] = Counter()
    dropped_codes: Counter[str] = Counter()
    kept = EventSummary()
    shown: dict[str, list[dict[str, Any]]] = {}
    for chunk in adapter.read(inputs):
        check_chunk(chunk)
        kept.add(chunk.events)
        dropped = chunk.dropped
        counts["rows_read"] += chunk.rows_read
        counts["rows_kept"] += chunk.events.num_rows
        counts["rows_quarantined"] += chunk.quarantine.num_rows
        counts["rows_dropped"] += sum(dropped.values())
        dropped_codes.update(dropped)
        for item in chunk.quarantine["reason"].value_counts().to_pylist():
            reason = item["values"]
            reasons[reason] += item["counts"]
            rows = shown.setdefault(reason, [])
            if len(rows) < examples:
                some = chunk.quarantine.filter(pc.equal(chunk.quarantine["reason"], reason))
                columns = ["file", "line", "column", "raw"]
                rows.extend(some.slice(0, examples - len(rows)).select(columns).to_pylist())
    check_accounting(counts)
    return RowCheck(
        counts=counts,
        quarantine_by_reason=by_count(reasons),
        rows_dropped_by_code=by_count(dropped_codes),
        kept_by_event_type=kept.by_type_in_order(),
        examples=shown,
        time_range=kept.time_range(),
        day_month_open=day_month_open(adapter, kept.max_day),
    )
