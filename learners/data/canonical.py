"""Canonicalization of a raw chunk under a SourceMapping, vectorised with pyarrow.compute.

``canonicalize(chunk, mapping)`` returns (CANONICAL_EVENTS table, QUARANTINE table). Each row is
checked in a fixed order (missing merchant_id, missing buyer_id, timestamp, valid range, event code,
price); the first failing check is the row's quarantine reason. Only quarantined rows go through
per-row Python (to format their reason and raw text). Rows the mapping leaves out on purpose (a code
under ``event_type.drop``, a ``drop_rows`` rule, the repeats of one page's event an exploded JSON line
lists per item) are taken out before any check by ``drop_declared``, which counts them per code or
rule: they are neither kept nor quarantined, whatever else is wrong with them.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import io
import json
import zoneinfo
from collections.abc import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from learners.data.mapping import DropRule, FieldSource, SourceMapping, TimestampSpec
from learners.data.readers import MISSING_WORDS, RawChunk, quarantine_table
from learners.data.schema import CANONICAL_EVENTS, PRODUCT_EVENT_TYPES, QUARANTINE, TS_TYPE

NAIVE_MS = pa.timestamp("ms")
NO_PRODUCT_TYPES = ("page_view", "search")
"""Event types whose canonical row holds no product id or price, whatever the log wrote there."""
INT_TEXT = r"^-?([0-9]{1,18}|[1-8][0-9]{18})$"
"""An integer int64 holds (unix nanoseconds have 19 digits)."""
NUMBER_TEXT = r"^[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]{1,3})?$"
ISO_TEXT = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}([T ][0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]{1,9})?)?)?(Z|[+-][0-9]{2}(:?[0-9]{2})?)?$"
ZONE_SUFFIX = r"(Z|[+-][0-9]{2}(:?[0-9]{2})?)$"
YEAR_JOIN = "|"
TEXT_ID_FIELDS = ("session_id", "product_id", "category_id", "query")

TimestampParser = Callable[[pa.Array], pa.Array]
"""Source timestamp column -> timestamp[ms, UTC], null where a value cannot be read."""


def as_text(values: pa.Array) -> pa.Array:
    """A column as text exactly as the source wrote it; empty strings become null."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if not pa.types.is_string(values.type):
        values = values.cast(pa.string())
    if values.null_count == len(values):
        return values
    empty = pc.equal(pc.binary_length(values), 0)
    if pc.any(empty).as_py():
        values = pc.if_else(empty, pa.scalar(None, pa.string()), values)
    return values


def id_text(values: pa.Array) -> tuple[pa.Array, pa.Array]:
    """An id column as text, null where empty or a word for no value (``MISSING_WORDS``: Diginetica
    writes ``NA`` for an anonymous user); and where it was such a word."""
    text = as_text(values)
    said_none = pc.fill_null(pc.is_in(text, value_set=pa.array(MISSING_WORDS, pa.string())), False)
    if pc.any(said_none).as_py():
        text = pc.if_else(said_none, pa.scalar(None, pa.string()), text)
    return text, said_none


def _empty(source: FieldSource) -> str:
    """How a reason names an empty field: its column, or both with a fallback."""
    if source.fallback is None:
        return f"column '{source.column}' is empty"
    return f"columns '{source.column}' and '{source.fallback}' are empty"


def _id_column(table: pa.Table, source: FieldSource) -> tuple[pa.Array, pa.Array]:
    """``id_text`` of a field's column, its ``fallback`` column's where it is empty."""
    text, said_none = id_text(table.column(source.column))
    if source.fallback is None:
        return text, said_none
    other, _ = id_text(table.column(source.fallback))
    return pc.coalesce(text, other), pc.and_(said_none, pc.is_null(other))


def event_codes(values: pa.Array, named: list[str] | tuple[str, ...]) -> pa.Array:
    """An event-code column as text; empty cells are the code ``""`` where the mapping names it, else null."""
    codes = as_text(values)
    return pc.fill_null(codes, "") if "" in named else codes


def _ms_array(ms: np.ndarray, valid: np.ndarray, tz: str | None) -> pa.Array:
    return pa.array(ms, pa.int64(), mask=~valid).cast(pa.timestamp("ms", tz))


def _strict_python(texts: list[str], fmt: str) -> tuple[np.ndarray, np.ndarray]:
    """Python's strict strptime for values Arrow's lenient parser may have normalised (e.g. Feb 30)."""
    ms = np.zeros(len(texts), np.int64)
    valid = np.zeros(len(texts), bool)
    for i, text in enumerate(texts):
        try:
            value = dt.datetime.strptime(text, fmt)
        except ValueError:
            continue
        if value.tzinfo is not None:
            value = value.astimezone(dt.UTC).replace(tzinfo=None)
        ms[i] = (value - dt.datetime(1970, 1, 1)) // dt.timedelta(milliseconds=1)
        valid[i] = True
    return ms, valid


def _parse_pattern(texts: pa.Array, fmt: str) -> pa.Array:
    """strptime over the distinct values only; naive wall time (UTC when the pattern has %z)."""
    encoded = pc.dictionary_encode(texts)
    distinct = encoded.dictionary
    parsed = pc.strptime(distinct, format=fmt, unit="ms", error_is_null=True)
    aware = parsed.type.tz is not None
    # %S of a millisecond timestamp prints fractions: format whole seconds for the round trip.
    seconds = parsed.cast(pa.timestamp("s", parsed.type.tz), safe=False)
    exact = pc.fill_null(pc.equal(pc.strftime(seconds, format=fmt), distinct), False).to_numpy(
        zero_copy_only=False
    )
    ms = pc.fill_null(parsed.cast(pa.int64()), 0).to_numpy(zero_copy_only=False).copy()
    valid = exact.copy()
    suspects = np.flatnonzero(~exact)
    if len(suspects):
        redo_ms, redo_valid = _strict_python([distinct[int(i)].as_py() for i in suspects], fmt)
        ms[suspects] = redo_ms
        valid[suspects] = redo_valid
    values = _ms_array(ms, valid, "UTC" if aware else None)
    return pc.take(values, encoded.indices)


UNIX_UNITS = {"unix_s": "s", "unix_ms": "ms", "unix_us": "us", "unix_ns": "ns"}
"""The unix keywords of ``TimestampSpec.format`` and the unit of their integers."""
PLAUSIBLE_YEARS = (1970, 2100)
"""Timestamps outside these years are quarantined: a unix time read in too small a unit (milliseconds
as seconds) lands tens of thousands of years ahead, past what a date can hold."""


def _unix(ints: pa.Array, unit: str) -> pa.Array:
    """Integers since 1970 in ``unit`` -> timestamp[ms, UTC]; out of int64 range -> far future (quarantined)."""
    ints = ints.cast(pa.int64())
    if unit in ("us", "ns"):
        return pc.divide(ints, 1000 if unit == "us" else 1_000_000).cast(TS_TYPE)
    if unit == "ms":
        return ints.cast(TS_TYPE)
    limit = 2**62 // 1000
    return pc.multiply(
        pc.min_element_wise(pc.max_element_wise(ints, -limit, skip_nulls=False), limit, skip_nulls=False),
        1000,
    ).cast(TS_TYPE)


def _parse_unix(texts: pa.Array, unit: str) -> pa.Array:
    ok = pc.fill_null(pc.match_substring_regex(texts, INT_TEXT), False)
    return _unix(pc.if_else(ok, texts, pa.scalar(None, pa.string())).cast(pa.int64()), unit)


def _iso_python(texts: list[str | None], aware: bool) -> pa.Array:
    out: list[dt.datetime | None] = []
    for text in texts:
        try:
            value = dt.datetime.fromisoformat(text) if text is not None else None
        except ValueError:
            value = None
        if value is not None and aware:
            value = value.astimezone(dt.UTC)
        out.append(value)
    return pa.array(out, TS_TYPE if aware else NAIVE_MS)


def _parse_iso(texts: pa.Array) -> tuple[pa.Array, pa.Array]:
    """(instants of values with a zone, naive wall times of values without), each null elsewhere."""
    ok = pc.fill_null(pc.match_substring_regex(texts, ISO_TEXT), False)
    zoned = pc.and_(ok, pc.fill_null(pc.match_substring_regex(texts, ZONE_SUFFIX), False))
    results = []
    for subset, target in ((zoned, TS_TYPE), (pc.and_(ok, pc.invert(zoned)), NAIVE_MS)):
        chosen = pc.if_else(subset, texts, pa.scalar(None, pa.string()))
        try:
            results.append(chosen.cast(target))
        except pa.ArrowInvalid:
            results.append(_iso_python(chosen.to_pylist(), aware=target.tz is not None))
    return results[0], results[1]


def _finish(naive: pa.Array | None, aware: pa.Array | None, spec: TimestampSpec) -> pa.Array:
    """Combine wall times and instants into timestamp[ms, UTC] (midnight UTC of the date for day resolution)."""
    parts = []
    if naive is not None:
        if spec.resolution == "day":
            parts.append(pc.floor_temporal(naive, unit="day").cast(TS_TYPE))
        else:
            parts.append(
                pc.assume_timezone(naive, spec.timezone, ambiguous="earliest", nonexistent="earliest").cast(
                    TS_TYPE
                )
            )
    if aware is not None:
        aware = aware.cast(TS_TYPE)
        if spec.resolution == "day":
            local = pc.local_timestamp(aware.cast(pa.timestamp("ms", spec.timezone)))
            aware = pc.floor_temporal(local, unit="day").cast(TS_TYPE)
        parts.append(aware)
    return parts[0] if len(parts) == 1 else pc.coalesce(*parts)


def parse_timestamps(values: pa.Array, spec: TimestampSpec) -> pa.Array:
    """Read a timestamp column under the mapping's spec -> timestamp[ms, UTC], null where unreadable."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    kind = values.type
    if pa.types.is_timestamp(kind):
        cast = values.cast(pa.timestamp("ms", kind.tz))
        return _finish(cast if kind.tz is None else None, cast if kind.tz is not None else None, spec)
    if pa.types.is_integer(kind) and spec.format in UNIX_UNITS:
        return _finish(None, _unix(values, UNIX_UNITS[spec.format]), spec)
    texts = as_text(values)
    if spec.format in UNIX_UNITS:
        return _finish(None, _parse_unix(texts, UNIX_UNITS[spec.format]), spec)
    if spec.format == "iso":
        aware, naive = _parse_iso(texts)
        return _finish(naive, aware, spec)
    fmt = spec.format
    if spec.year is not None:
        texts = pc.binary_join_element_wise(str(spec.year), texts, YEAR_JOIN)
        fmt = f"%Y{YEAR_JOIN}{fmt}"
    parsed = _parse_pattern(texts, fmt)
    if parsed.type.tz is not None:
        return _finish(None, parsed, spec)
    return _finish(parsed, None, spec)


def _bound_ms(bound: dt.datetime, spec: TimestampSpec) -> int:
    zone = dt.UTC if spec.resolution == "day" else zoneinfo.ZoneInfo(spec.timezone)
    instant = bound.replace(tzinfo=zone)
    return int(instant.timestamp() * 1000)


def describe_format(spec: TimestampSpec) -> str:
    """How the mapping expects timestamps, for quarantine reasons."""
    if spec.format == "unix_s":
        return "unix seconds"
    if spec.format == "unix_ms":
        return "unix milliseconds"
    if spec.format == "unix_us":
        return "unix microseconds"
    if spec.format == "unix_ns":
        return "unix nanoseconds"
    if spec.format == "iso":
        return "an ISO 8601 date/datetime"
    year = f" with year {spec.year}" if spec.year is not None else ""
    return f"format '{spec.format}'{year}"


def _numbers(values: pa.Array) -> pa.Array:
    """Prices as float64 (null when empty or not a number)."""
    if (
        pa.types.is_integer(values.type)
        or pa.types.is_floating(values.type)
        or pa.types.is_decimal(values.type)
    ):
        return values.cast(pa.float64())
    texts = as_text(values)
    ok = pc.fill_null(pc.match_substring_regex(texts, NUMBER_TEXT), False)
    return pc.if_else(ok, texts, pa.scalar(None, pa.string())).cast(pa.float64())


class _Checks:
    """Per-row failure masks in check order, each with its column and reason.

    Reasons are fixed texts per check (the offending value is in the quarantine's ``raw``), so the
    quarantine can be counted by reason.
    """

    def __init__(self, n: int):
        self.n = n
        self.masks: list[np.ndarray] = []
        self.describe: list[tuple[str | None, str]] = []

    def add(self, mask: pa.Array, column: str | None, reason: str) -> None:
        array = pc.fill_null(mask, False).to_numpy(zero_copy_only=False)
        if array.any():
            self.masks.append(array)
            self.describe.append((column, reason))

    def first_failure(self) -> np.ndarray:
        """Index of the first failing check per row, -1 when none fails."""
        if not self.masks:
            return np.full(self.n, -1, np.int64)
        stacked = np.vstack(self.masks)
        return np.where(stacked.any(axis=0), stacked.argmax(axis=0), -1)


def _raw_text(chunk: RawChunk, columns: list[str], rows: np.ndarray) -> list[str]:
    """The quarantined rows as the user wrote them (CSV) or as JSON of the mapped columns."""
    picked = chunk.table.take(pa.array(rows, pa.int64())).to_pylist()
    if chunk.delimiter is not None:
        # Quoted as CSV writes them, so a field holding the delimiter reads as one ("Budapest, Hungary").
        out = io.StringIO()
        writer = csv.writer(out, delimiter=chunk.delimiter, lineterminator="\n")
        rows = []
        for row in picked:
            out.seek(0)
            out.truncate()
            writer.writerow(["" if v is None else str(v) for v in row.values()])
            rows.append(out.getvalue().rstrip("\n"))
        return rows
    return [json.dumps({c: row.get(c) for c in columns}, default=str, ensure_ascii=False) for row in picked]


def _rule_hits(values: pa.Array, rule: DropRule) -> pa.Array:
    if rule.below is not None:
        return pc.fill_null(pc.less(_numbers(values), rule.below), False)
    if rule.above is not None:
        return pc.fill_null(pc.greater(_numbers(values), rule.above), False)
    text = as_text(values)
    if rule.starts_with is not None:
        return pc.fill_null(pc.starts_with(text, rule.starts_with), False)
    return pc.fill_null(pc.is_in(text, value_set=pa.array(rule.values, pa.string())), False)


ONE_EVENT_LABEL = "items past the first of one page, search, product view or checkout event"
"""How the counts name the rows of an exploded line past its first where the event is about one page:
GA4 lists every product a category page showed in one ``view_item_list``, one page view."""
ONE_PAGE_TYPES = ("page_view", "search", "product_view", "checkout")
"""Event types of one page each: a product page shows one product, a listing many."""


def _one_event_repeats(chunk: RawChunk, mapping: SourceMapping) -> np.ndarray:
    """Rows that repeat the row before them from the same line (``jsonl.explode``), with the same code
    and time, of an event type of one page (``ONE_PAGE_TYPES``): one event listed once per item. A
    line's own events (OTTO's, a visit's hits) each have their time, and stay."""
    n = chunk.table.num_rows
    repeats = np.zeros(n, bool)
    if mapping.jsonl.explode is None or n < 2:
        return repeats
    repeats[1:] = chunk.lines[1:] == chunk.lines[:-1]
    if not repeats.any():  # a line per row: nothing was exploded into several
        return repeats
    stamps = as_text(chunk.table.column(mapping.fields["ts"].column)).to_numpy(zero_copy_only=False)
    repeats[1:] &= stamps[1:] == stamps[:-1]
    spec = mapping.event_type
    if spec.column is None:
        return repeats if spec.constant in ONE_PAGE_TYPES else np.zeros(n, bool)
    codes = event_codes(chunk.table.column(spec.column), list(spec.map))
    text = codes.to_numpy(zero_copy_only=False)
    repeats[1:] &= text[1:] == text[:-1]
    one_page = [code for code, kind in spec.map.items() if kind in ONE_PAGE_TYPES]
    hits = pc.fill_null(pc.is_in(codes, value_set=pa.array(one_page, pa.string())), False)
    return repeats & hits.to_numpy(zero_copy_only=False)


def drop_declared(chunk: RawChunk, mapping: SourceMapping) -> tuple[RawChunk, dict[str, int]]:
    """The chunk without the rows a ``drop_rows`` rule or ``event_type.drop`` leaves out, and those
    that repeat one event per listed item (``ONE_EVENT_LABEL``), and their count per rule (its label,
    the first rule a row meets), per code and for the repeats.

    The returned chunk keeps the reader's quarantine; its ``rows_read`` is the original's minus the
    dropped rows, so rows_read = kept + quarantined + dropped still balances for the caller.
    """
    drop = mapping.event_type.drop
    n = chunk.table.num_rows
    exploded = mapping.jsonl.explode is not None
    if n == 0 or not (mapping.drop_rows or exploded or (drop and mapping.event_type.column is not None)):
        return chunk, {}
    dropped: dict[str, int] = {}
    hit = np.zeros(n, bool)
    for rule in mapping.drop_rows:
        mine = _rule_hits(chunk.table.column(rule.column).combine_chunks(), rule).to_numpy(
            zero_copy_only=False
        )
        mine &= ~hit
        if mine.any():
            dropped[rule.label] = int(mine.sum())
            hit |= mine
    if drop and mapping.event_type.column is not None:
        codes = event_codes(chunk.table.column(mapping.event_type.column), drop)
        mine = pc.fill_null(pc.is_in(codes, value_set=pa.array(drop, pa.string())), False).to_numpy(
            zero_copy_only=False
        )
        mine &= ~hit
        if mine.any():
            for item in pc.value_counts(codes.filter(pa.array(mine))).to_pylist():
                dropped[item["values"]] = item["counts"]
            hit |= mine
    mine = _one_event_repeats(chunk, mapping) & ~hit
    if mine.any():
        dropped[ONE_EVENT_LABEL] = int(mine.sum())
        hit |= mine
    if not hit.any():
        return chunk, {}
    keep = ~hit
    kept = dataclasses.replace(chunk, table=chunk.table.filter(pa.array(keep)), lines=chunk.lines[keep])
    return kept, dict(sorted(dropped.items()))


def canonicalize(
    chunk: RawChunk, mapping: SourceMapping, parse_ts: TimestampParser | None = None
) -> tuple[pa.Table, pa.Table]:
    """Canonical events and quarantined rows of one raw chunk; ``parse_ts`` overrides timestamp reading."""
    n = chunk.table.num_rows
    if n == 0:
        return CANONICAL_EVENTS.empty_table(), chunk.quarantine.cast(QUARANTINE)
    table = chunk.table
    fields = mapping.fields
    checks = _Checks(n)
    out: dict[str, pa.Array] = {}

    for name in ("merchant_id", "buyer_id"):
        source = fields[name]
        if source.column is None:
            out[name] = pa.repeat(pa.scalar(source.constant, pa.string()), n)
            continue
        out[name], said_none = _id_column(table, source)
        # The word's own reason first: its cell is null now, so "is empty" would catch it too.
        checks.add(
            said_none,
            source.column,
            f"missing {name} (column '{source.column}' holds NA, null or a like word for no value)",
        )
        checks.add(
            pc.is_null(out[name]),
            source.column,
            f"missing {name} ({_empty(source)})",
        )

    ts_col = fields["ts"].column
    spec = mapping.timestamp
    raw_ts = table.column(ts_col).combine_chunks()
    ts = (parse_ts or (lambda v: parse_timestamps(v, spec)))(raw_ts)
    ts_missing = pc.is_null(raw_ts) if not pa.types.is_string(raw_ts.type) else pc.is_null(as_text(raw_ts))
    checks.add(ts_missing, ts_col, f"missing timestamp (column '{ts_col}' is empty)")
    checks.add(
        pc.is_null(ts),
        ts_col,
        f"unparseable timestamp in column '{ts_col}' (expected {describe_format(spec)})",
    )
    ms = ts.cast(pa.int64())
    first, last = (int(dt.datetime(y, 1, 1, tzinfo=dt.UTC).timestamp() * 1000) for y in PLAUSIBLE_YEARS)
    fix = (
        "fix: timestamp.format for the numbers' unit (10 digits unix_s, 13 unix_ms, 16 unix_us, 19 unix_ns)"
        if spec.format in UNIX_UNITS
        else "a stray value?"
    )
    checks.add(
        pc.or_(pc.less(ms, first), pc.greater_equal(ms, last)),
        ts_col,
        f"timestamp before {PLAUSIBLE_YEARS[0]} or after {PLAUSIBLE_YEARS[1]} read as {describe_format(spec)}; {fix}",
    )
    if spec.min is not None or spec.max is not None:
        low = _bound_ms(spec.min, spec) if spec.min is not None else None
        high = _bound_ms(spec.max, spec) if spec.max is not None else None
        outside = pc.or_(
            pc.less(ms, low if low is not None else -(2**62)),
            pc.greater(ms, high if high is not None else 2**62),
        )
        zone = "UTC" if spec.resolution == "day" else spec.timezone
        if spec.min is not None and spec.max is not None:
            bounds = f"outside {spec.min.isoformat()} .. {spec.max.isoformat()}"
        else:
            bounds = (
                f"before {spec.min.isoformat()}" if spec.min is not None else f"after {spec.max.isoformat()}"
            )
        checks.add(outside, ts_col, f"timestamp {bounds} ({zone}, timestamp.min/max)")
    out["ts"] = ts

    code_col = mapping.event_type.column
    if code_col is None:
        out["event_type"] = pa.repeat(pa.scalar(mapping.event_type.constant, pa.string()), n)
    else:
        known = list(mapping.event_type.map)
        codes = event_codes(table.column(code_col), known)
        index = pc.index_in(codes, value_set=pa.array(known, pa.string()))
        out["event_type"] = pc.take(pa.array(list(mapping.event_type.map.values()), pa.string()), index)
        known_text = ", ".join(repr(k) for k in known)
        checks.add(
            pc.is_null(codes),
            code_col,
            f"missing event code (column '{code_col}' is empty); map the empty code ('': TYPE) or drop it"
            " (drop: [''])",
        )
        checks.add(
            pc.is_null(index),
            code_col,
            f"unknown event code in column '{code_col}'; known codes: {known_text}",
        )

    for name in TEXT_ID_FIELDS:
        source = fields.get(name)
        if source is None:
            out[name] = pa.nulls(n, pa.string())
        elif source.column is None:
            out[name] = pa.repeat(pa.scalar(source.constant, pa.string()), n)
        else:
            out[name] = _id_column(table, source)[0]
    product = fields.get("product_id")
    if product is not None and product.column is not None:
        # A product event of a log that names products must say which: replay cannot show "a" product.
        checks.add(
            pc.and_(
                pc.is_in(out["event_type"], value_set=pa.array(PRODUCT_EVENT_TYPES)),
                pc.is_null(out["product_id"]),
            ),
            product.column,
            f"missing product id ({_empty(product)}) on a product event"
            + ("" if product.fallback else "; a column to read where it is empty: {column: ..., else: ...}"),
        )
    price_source = fields.get("price")
    if price_source is None:
        out["price"] = pa.nulls(n, pa.float64())
    else:
        price_col = price_source.column
        raw_price = table.column(price_col).combine_chunks()
        present = pc.invert(
            pc.is_null(as_text(raw_price) if pa.types.is_string(raw_price.type) else raw_price)
        )
        price = _numbers(raw_price)
        bad = pc.or_kleene(
            pc.is_null(price), pc.or_kleene(pc.less(price, 0.0), pc.invert(pc.is_finite(price)))
        )
        checks.add(
            pc.and_(present, bad),
            price_col,
            f"bad price in column '{price_col}' (expected a non-negative number)",
        )
        out["price"] = pc.if_else(pc.and_(present, pc.invert(bad)), price, pa.scalar(None, pa.float64()))
    # A search or a listing shows no single product: an id logged on it (Trivago's reference holds the
    # search text or the clicked filter) would become a product of the storefront.
    pageless = pc.fill_null(pc.is_in(out["event_type"], value_set=pa.array(NO_PRODUCT_TYPES)), False)
    if pc.any(pageless).as_py():
        for name, kind in (("product_id", pa.string()), ("price", pa.float64())):
            out[name] = pc.if_else(pageless, pa.scalar(None, kind), out[name])
    out["src_order"] = pa.array((np.int64(chunk.file_index) << np.int64(40)) | chunk.lines, pa.int64())

    events = pa.Table.from_arrays([out[f.name] for f in CANONICAL_EVENTS], schema=CANONICAL_EVENTS)
    failure = checks.first_failure()
    bad_rows = np.flatnonzero(failure >= 0)
    if not len(bad_rows):
        return events, chunk.quarantine.cast(QUARANTINE)
    events = events.filter(pa.array(failure < 0))
    columns = [c for c, _ in (checks.describe[k] for k in failure[bad_rows])]
    reasons = [checks.describe[k][1] for k in failure[bad_rows]]
    raws = _raw_text(chunk, mapping.columns_used(), bad_rows)
    rejected = quarantine_table(chunk.file, chunk.lines[bad_rows].tolist(), columns, reasons, raws)
    quarantine = pa.concat_tables([chunk.quarantine.cast(QUARANTINE), rejected])
    return events, quarantine.sort_by([("line", "ascending")])
