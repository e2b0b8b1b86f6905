"""Draft a YAML source mapping from a sample of raw logs (`simpersona mapping draft`).

``draft_mapping(inputs, config)`` reads the first ``config.rows`` rows with the pipeline's own readers
(CSV plain or gzip, with or without a header; Parquet; JSON lines), profiles every column and proposes:

* the layout: format, CSV delimiter, whether the first line is a header (column names are invented
  for a header-less file);
* which column feeds each canonical field, by name first (``seller_id`` -> merchant_id, ``user_id`` ->
  buyer_id, ...), then by content for what the names do not tell (the time column by what parses, the
  event column by its few distinct values, the buyer by how often consecutive rows repeat it, the
  product by the most distinct values, the category by fewer);
* how to read the timestamps, checked with the same parser ``prepare`` uses (``iso``, a strptime
  pattern, ``unix_s``, ``unix_ms``; day resolution for date-only values such as ``MMDD`` or ``M-D``),
  with a zone hint from the hour of least activity and a valid range when a few rows lie on stray
  days far from the rest;
* every distinct event code with its count, mapped where the name is obvious (view/pv/click ->
  product_view, cart -> add_to_cart, buy/order -> purchase, fav -> favorite, ...) and left as a
  commented TODO otherwise (numeric codes always).

The result is YAML text with comments (hand formatted). What the sample cannot tell (the meaning of
numeric codes, a year the dates do not carry) is left empty with a TODO comment, so that the mapping
fails to load with a message naming the key until the user fills it in.
"""

from __future__ import annotations

import csv
import datetime as dt
import gzip
import json
import re
import statistics
from collections import Counter
from collections.abc import Sequence
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import yaml

from learners.data.canonical import INT_TEXT, ISO_TEXT, NUMBER_TEXT, as_text, parse_timestamps
from learners.data.mapping import (
    CsvOptions,
    EventTypeSpec,
    FieldSource,
    SourceMapping,
    TimestampSpec,
    mapping_from_dict,
)
from learners.data.readers import READ_ERRORS, file_format, read_raw
from learners.data.schema import EVENT_TYPES, SESSION_GAP_SECONDS, event_vocabulary_lines

SNIFF_BYTES = 1 << 16
SNIFF_LINES = 200
DELIMITERS = (",", "\t", ";", "|")
FIT_SHARE = 0.95
"""Share of a column's non-empty sampled values a timestamp format must read to be proposed."""
CODE_MAX_DISTINCT = 50
"""An event column has at most this many distinct values in the sample."""
COMMENT_COLUMN = 36
"""Column where the trailing comments of the drafted YAML start."""
TROUGH_LOCAL_HOUR = 4
"""Local hour around which shoppers are least active (the zone hint puts the quietest hours here)."""
STRAY_DENSITY = 0.01
"""A tail of days is stray when its rows per day are below this share of the bulk's."""
STRAY_MAX_SHARE = 0.02
"""At most this share of the sampled rows may lie outside a proposed valid range."""

# Source event names (lower case, runs of non-alphanumerics as "_") -> canonical event type.
EVENT_WORDS: dict[str, str] = {
    word: event
    for event, words in {
        "page_view": "page_view pageview page screen_view home landing visit browse",
        "search": "search searches query find search_query keyword",
        "product_view": "view views viewed pv click clicks clicked product_view productview view_item"
        " item_view detail detail_view product_detail view_product",
        "favorite": "fav favs favorite favourite favorited add_to_favorites wish wishlist add_to_wishlist"
        " like liked bookmark save saved collect",
        "add_to_cart": "cart add_to_cart addtocart add_cart cart_add addtobasket add_to_basket basket atc",
        "remove_from_cart": "remove_from_cart removefromcart remove_cart cart_remove remove remove_from_basket delete_from_cart",
        "checkout": "checkout check_out begin_checkout start_checkout",
        "purchase": "buy bought purchase purchased order ordered order_placed transaction sale pay paid payment",
    }.items()
    for word in words.split()
}
assert set(EVENT_WORDS.values()) <= set(EVENT_TYPES)

# Canonical field (or "event") -> words of a source column name that name it. Checked in this order;
# a column goes to the first role it fits.
ROLE_WORDS: dict[str, frozenset[str]] = {
    "session_id": frozenset({"session", "sessionid", "sid"}),
    "merchant_id": frozenset(
        {"seller", "sellerid", "merchant", "merchantid", "shop", "shopid", "store", "storeid", "vendor"}
        | {"vendorid", "retailer", "storefront"}
    ),
    "buyer_id": frozenset(
        {"user", "userid", "uid", "customer", "customerid", "buyer", "buyerid", "client", "clientid"}
        | {"visitor", "visitorid", "member", "memberid", "shopper", "account", "accountid"}
    ),
    "product_id": frozenset(
        {"item", "itemid", "product", "productid", "sku", "skuid", "goods", "article", "asin", "offer"}
    ),
    "category_id": frozenset({"category", "categoryid", "cat", "catid", "categ"}),
    "event": frozenset(
        {"event", "eventtype", "action", "actiontype", "type", "behavior", "behaviour", "behaviortype"}
        | {"kind", "activity", "interaction", "act"}
    ),
    "price": frozenset({"price", "amount", "cost", "revenue"}),
    "query": frozenset({"query", "keyword", "keywords", "term", "searchterm", "q"}),
}
TIME_WORDS = frozenset(
    {"time", "timestamp", "date", "datetime", "ts", "created", "when", "stamp", "day", "at", "dt"}
)
BRAND_WORDS = frozenset({"brand", "brandid"})
CONTENT_NOTE = "guessed from the values (the column name does not say): check"

# Timestamp patterns tried on text values, most specific first: (strptime pattern, resolution).
PATTERNS: tuple[tuple[str, str], ...] = (
    ("%Y-%m-%d %H:%M:%S UTC", "second"),
    ("%Y-%m-%d %H:%M:%S%z", "second"),
    ("%Y-%m-%d %H:%M:%S", "second"),
    ("%Y-%m-%d %H:%M", "second"),
    ("%Y/%m/%d %H:%M:%S", "second"),
    ("%Y/%m/%d %H:%M", "second"),
    ("%d/%m/%Y %H:%M:%S", "second"),
    ("%m/%d/%Y %H:%M:%S", "second"),
    ("%d/%m/%Y %H:%M", "second"),
    ("%m/%d/%Y %H:%M", "second"),
    ("%d.%m.%Y %H:%M:%S", "second"),
    ("%Y%m%d%H%M%S", "second"),
    ("%Y/%m/%d", "day"),
    ("%d/%m/%Y", "day"),
    ("%m/%d/%Y", "day"),
    ("%d.%m.%Y", "day"),
    ("%Y%m%d", "day"),
    ("%m%d", "day"),
    ("%m-%d", "day"),
    ("%m/%d", "day"),
)
NAME_ONLY_PATTERNS = frozenset({"%Y%m%d", "%m%d", "%Y%m%d%H%M%S"})
"""Patterns of bare digits, which ids can match too: proposed only for a column named like a time."""
YEARLESS_PROBE = 2000  # a leap year, so that Feb 29 reads while a yearless pattern is probed
UNIX_S_RANGE = (946_684_800, 4_102_444_800)  # 2000-01-01 .. 2100-01-01
ZONE_BY_OFFSET: dict[int, str] = {
    -10: "Pacific/Honolulu",
    -8: "America/Los_Angeles",
    -7: "America/Denver",
    -6: "America/Chicago",
    -5: "America/New_York",
    -3: "America/Sao_Paulo",
    0: "Europe/London",
    1: "Europe/Berlin",
    2: "Europe/Athens",
    3: "Europe/Moscow",
    4: "Asia/Dubai",
    5: "Asia/Karachi",
    7: "Asia/Bangkok",
    8: "Asia/Shanghai",
    9: "Asia/Tokyo",
    10: "Australia/Sydney",
}
YAML_WORDS = frozenset({"y", "n", "yes", "no", "on", "off", "true", "false", "null", "~"})
PLAIN_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-.]*$")
YEAR_IN_PATH = re.compile(r"(?<![0-9])(19[9][0-9]|20[0-9]{2})(?![0-9])")


@dataclass
class DraftConfig:
    """How `simpersona mapping draft` samples the inputs and names the mapping."""

    rows: int = 10_000
    """Rows read from the inputs (in order, from the first file on) to draft the mapping."""
    name: str | None = None
    """The mapping's name, and the merchant_id constant of a single-store log (default: the output file's stem, else the first input's)."""
    max_codes: int = CODE_MAX_DISTINCT
    """Most distinct event codes listed; a column with more is not taken for the event column."""


@dataclass
class Sample:
    """The first rows of the inputs, every column."""

    table: pa.Table
    """Sampled rows: text columns for CSV and JSON lines, the file's own types for Parquet."""
    format: str
    """csv, parquet or jsonl."""
    csv: CsvOptions | None
    """The CSV layout found (None for other formats)."""
    files: list[Path]
    """The files the rows come from."""
    unreadable: int
    """Sampled lines the readers rejected (truncated, bad quoting, bad JSON, ...)."""
    unreadable_example: str | None = None
    """The first rejected line's file:line and reason."""
    nested: list[str] = field(default_factory=list)
    """JSON keys holding objects or lists (not usable as columns)."""


@dataclass
class ColumnProfile:
    """What a column's sampled values look like."""

    name: str
    texts: pa.Array
    """The values as text, empty as null."""
    native: pa.DataType
    non_null: int
    distinct: int
    ints: float
    """Share of non-empty values that are integers."""
    numbers: float
    """Share of non-empty values that are numbers."""
    decimals: bool
    """Some values have a decimal point (prices, not ids)."""
    run_share: float
    """Share of rows whose value repeats the previous row's (logs grouped by that column)."""
    spaces: bool
    """Some values hold spaces (not an id)."""
    tokens: frozenset[str]
    """The name's words, lower case."""


@dataclass
class TimestampGuess:
    """How the chosen time column reads."""

    column: str
    format: str
    resolution: str
    read: int
    total: int
    example: str
    year: int | None = None
    year_note: str = ""
    timezone: str = "UTC"
    zone_note: str = ""
    min: dt.date | None = None
    max: dt.date | None = None
    range_note: str = ""
    format_note: str = ""


@dataclass
class EventCode:
    code: str
    rows: int
    event: str | None
    """The canonical type the code obviously means, or None (left for the user)."""


@dataclass
class Draft:
    """A drafted mapping: its YAML text and what the user still has to fill in."""

    text: str
    fields: dict[str, str | None]
    """Canonical field (and "event") -> source column as the YAML names it, or None; merchant_id may
    be "=CONSTANT"."""
    timestamp: TimestampGuess | None
    codes: list[EventCode]
    todo: list[str]
    """Keys left for the user (the mapping does not load until they are filled in)."""
    sample: Sample
    notes: dict[str, str] = field(default_factory=dict)


# --- sampling ------------------------------------------------------------------------------------


def _sniff_format(path: Path) -> str:
    fmt = file_format(path)
    if fmt is not None:
        return fmt
    head = _head_bytes(path, 4)
    if head.startswith(b"PAR1"):
        return "parquet"
    return "jsonl" if _head_bytes(path, 256).lstrip().startswith(b"{") else "csv"


def _head_bytes(path: Path, n: int) -> bytes:
    try:
        with open(path, "rb") as fh:
            magic = fh.read(2)
        opener = gzip.open if magic == b"\x1f\x8b" else open
        with opener(path, "rb") as fh:
            return fh.read(n)
    except READ_ERRORS as err:
        raise ValueError(
            f"{path}: cannot read the file ({type(err).__name__}: {err}); fix: check that it exists and is readable"
        ) from None


def _split(line: str, delimiter: str) -> list[str]:
    try:
        return next(csv.reader([line], delimiter=delimiter))
    except (csv.Error, StopIteration):
        return []


def _looks_like_value(cell: str) -> bool:
    """A cell that is data rather than a column name: a number, a date or time, or empty."""
    text = cell.strip()
    return not text or bool(re.match(NUMBER_TEXT, text)) or bool(re.match(r"^[0-9][0-9\s.:/\-+TZ]*$", text))


def sniff_csv(path: Path) -> CsvOptions:
    """The delimiter and header of a CSV file, from its first lines; column names for a header-less one."""
    head = _head_bytes(path, SNIFF_BYTES).decode("utf-8", errors="replace").lstrip("\ufeff")
    lines = [line for line in head.replace("\r\n", "\n").replace("\r", "\n").split("\n")[:SNIFF_LINES]]
    if len(head) >= SNIFF_BYTES and len(lines) > 1:
        lines = lines[:-1]  # the last line may be cut by the byte limit
    lines = [line for line in lines if line.strip()]
    if not lines:
        raise ValueError(f"{path}: the file holds no rows; fix: point at a log file with data")
    if ".tsv" in [s.lower() for s in path.suffixes]:
        delimiter = "\t"
    else:

        def score(d: str) -> tuple[float, int]:
            widths = Counter(len(_split(line, d)) for line in lines[:50])
            width, n = widths.most_common(1)[0]
            return (n / min(len(lines), 50) if width >= 2 else 0.0, width)

        delimiter = max(DELIMITERS, key=score)
    rows = [_split(line, delimiter) for line in lines]
    first, rest = rows[0], rows[1:]
    header = all(c.strip() and not _looks_like_value(c) for c in first) and not any(
        j < len(r) and r[j] == first[j] for r in rest for j in range(len(first))
    )
    if header:
        return CsvOptions(delimiter=delimiter, header=True)
    return CsvOptions(
        delimiter=delimiter, header=False, columns=tuple(f"column_{j + 1}" for j in range(len(first)))
    )


def _jsonl_keys(path: Path, rows: int) -> tuple[list[str], list[str]]:
    """Keys of the first JSON objects in first-seen order, and the keys holding nested values."""
    keys: dict[str, None] = {}
    nested: dict[str, None] = {}
    magic = _head_bytes(path, 2)
    opener = gzip.open if magic == b"\x1f\x8b" else open
    with opener(path, "rb") as fh:
        for i, raw in enumerate(fh):
            if i >= rows:
                break
            try:
                obj = json.loads(raw)
            except ValueError:
                continue
            if isinstance(obj, dict):
                for key, value in obj.items():
                    (nested if isinstance(value, (dict, list)) else keys)[key] = None
    return [k for k in keys if k not in nested], list(nested)


def _probe(names: list[str], fmt: str, csv_options: CsvOptions | None) -> SourceMapping:
    """A mapping that lets the readers read a file whose columns are not known yet."""
    first = FieldSource(column=names[0])
    return SourceMapping(
        name="draft",
        fields={"merchant_id": first, "buyer_id": first, "ts": first},
        timestamp=TimestampSpec(),
        event_type=EventTypeSpec(column=names[0], map={}),
        format=fmt,
        csv=csv_options or CsvOptions(),
        source="mapping draft",
    )


def sample_inputs(inputs: Sequence[Path], rows: int) -> Sample:
    """The first ``rows`` rows of the inputs (files in order, all in the first file's layout)."""
    if not inputs:
        raise ValueError(
            "mapping draft: no input files given; fix: pass one or more log files or directories"
        )
    if rows < 1:
        raise ValueError(f"mapping draft: --rows must be at least 1, got {rows}")
    first = Path(inputs[0])
    fmt = _sniff_format(first)
    csv_options: CsvOptions | None = None
    nested: list[str] = []
    if fmt == "csv":
        csv_options = sniff_csv(first)
        if csv_options.header:
            names = _split(
                _head_bytes(first, SNIFF_BYTES).decode("utf-8", "replace").lstrip("\ufeff").splitlines()[0],
                csv_options.delimiter or ",",
            )
        else:
            names = list(csv_options.columns or ())
    elif fmt == "parquet":
        try:
            names = pq.ParquetFile(first).schema_arrow.names
        except READ_ERRORS as err:
            raise ValueError(
                f"{first}: cannot read the file ({type(err).__name__}: {err}); fix: check that it is a Parquet file"
            ) from None
    else:
        names, nested = _jsonl_keys(first, rows)
    if not names:
        raise ValueError(f"{first}: no columns found in the first rows; fix: check the file's format")
    probe = _probe(names, fmt, csv_options)
    tables: list[pa.Table] = []
    taken = unreadable = 0
    example: str | None = None
    used: list[Path] = []
    for index, path in enumerate(Path(p) for p in inputs):
        if taken >= rows:
            break
        if _sniff_format(path) != fmt:
            continue
        used.append(path)
        with closing(read_raw(path, index, probe, columns=names)) as chunks:
            for chunk in chunks:
                bad = chunk.quarantine
                if bad.num_rows:
                    unreadable += bad.num_rows
                    if example is None:
                        row = bad.slice(0, 1).to_pylist()[0]
                        example = f"{row['file']}:{row['line']}: {row['reason']}"
                table = chunk.table.slice(0, rows - taken)
                if table.column_names != names:
                    raise ValueError(
                        f"{path}: its columns ({', '.join(table.column_names)}) differ from {first}'s"
                        f" ({', '.join(names)}); fix: draft a mapping for each layout separately"
                    )
                tables.append(table)
                taken += table.num_rows
                if taken >= rows:
                    break
    table = pa.concat_tables(tables) if tables else pa.table({n: pa.array([], pa.string()) for n in names})
    return Sample(table, fmt, csv_options, used, unreadable, example, nested)


# --- profiling -----------------------------------------------------------------------------------


def name_tokens(name: str) -> frozenset[str]:
    """The words of a column name: split at non-alphanumerics and camelCase, lower case, plus the
    whole name squashed (``userId`` -> user, id, userid)."""
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1 \2", name)
    words = [w.lower() for w in re.split(r"[^A-Za-z0-9]+", spaced) if w]
    return frozenset([*words, "".join(words)])


def profile_column(name: str, values: pa.ChunkedArray | pa.Array) -> ColumnProfile:
    """Counts and shapes of one sampled column."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    native = values.type
    texts = as_text(values)
    present = texts.drop_null()
    non_null = len(present)
    if non_null:
        ints = pc.mean(pc.match_substring_regex(present, INT_TEXT).cast(pa.int8())).as_py()
        numbers = pc.mean(pc.match_substring_regex(present, NUMBER_TEXT).cast(pa.int8())).as_py()
        decimals = bool(pc.any(pc.match_substring(present, ".")).as_py()) and numbers > FIT_SHARE
        spaces = bool(pc.any(pc.match_substring(present, " ")).as_py())
        distinct = pc.count_distinct(present).as_py()
    else:
        ints = numbers = 0.0
        decimals = spaces = False
        distinct = 0
    run_share = 0.0
    if len(texts) > 1:
        same = pc.equal(texts.slice(1), texts.slice(0, len(texts) - 1))
        run_share = pc.mean(pc.fill_null(same, False).cast(pa.int8())).as_py() or 0.0
    return ColumnProfile(
        name=name,
        texts=texts,
        native=native,
        non_null=non_null,
        distinct=distinct,
        ints=ints or 0.0,
        numbers=numbers or 0.0,
        decimals=decimals,
        run_share=run_share,
        spaces=spaces,
        tokens=name_tokens(name),
    )


def _id_like(p: ColumnProfile) -> bool:
    return p.non_null > 0 and not p.decimals and not p.spaces and not pa.types.is_timestamp(p.native)


# --- timestamps ----------------------------------------------------------------------------------


def _read_share(values: pa.Array, spec: TimestampSpec) -> tuple[int, pa.Array]:
    try:
        parsed = parse_timestamps(values, spec)
    except (pa.ArrowException, ValueError):
        return 0, pa.nulls(len(values), pa.timestamp("ms", "UTC"))
    return len(values) - parsed.null_count, parsed


def timestamp_candidates(p: ColumnProfile) -> list[tuple[str, str, int]]:
    """(format, resolution, values read) of each format that reads at least FIT_SHARE of the column."""
    if p.non_null == 0:
        return []
    need = FIT_SHARE * p.non_null
    if pa.types.is_timestamp(p.native):
        return [("iso", "second", p.non_null)]
    found: list[tuple[str, str, int]] = []
    texts = p.texts.drop_null()
    if p.ints >= FIT_SHARE:
        numbers = pc.cast(texts.filter(pc.match_substring_regex(texts, INT_TEXT)), pa.int64())
        for fmt, scale in (("unix_s", 1), ("unix_ms", 1000)):
            low, high = UNIX_S_RANGE[0] * scale, UNIX_S_RANGE[1] * scale
            inside = pc.sum(pc.and_(pc.greater_equal(numbers, low), pc.less(numbers, high)).cast(pa.int64()))
            if (inside.as_py() or 0) >= need:
                found.append((fmt, "second", int(inside.as_py())))
    iso = pc.sum(pc.match_substring_regex(texts, ISO_TEXT).cast(pa.int64())).as_py() or 0
    if iso >= need:
        day = pc.all(pc.equal(pc.utf8_length(texts), 10)).as_py()
        read, _ = _read_share(texts, TimestampSpec(format="iso"))
        if read >= need:
            found.append(("iso", "day" if day else "second", read))
    if found:
        return found
    for pattern, resolution in PATTERNS:
        if pattern in NAME_ONLY_PATTERNS and not (p.tokens & TIME_WORDS):
            continue
        shaped = pc.sum(pc.match_substring_regex(texts, pattern_shape(pattern)).cast(pa.int64())).as_py()
        if (shaped or 0) < need:  # the parser only runs on columns of the right shape
            continue
        yearless = "%Y" not in pattern and "%y" not in pattern
        spec = TimestampSpec(format=pattern, year=YEARLESS_PROBE if yearless else None, resolution=resolution)
        read, _ = _read_share(texts, spec)
        if read >= need:
            found.append((pattern, resolution, read))
            break
    return found


def pattern_shape(pattern: str) -> str:
    """A regex that every value a strptime pattern reads matches (a cheap filter before parsing)."""
    pieces = {
        "Y": "[0-9]{4}",
        "y": "[0-9]{2}",
        "m": "[0-9]{1,2}",
        "d": "[0-9]{1,2}",
        "H": "[0-9]{1,2}",
        "M": "[0-9]{1,2}",
        "S": "[0-9]{1,2}",
        "z": "(Z|[+-][0-9]{2}:?[0-9]{2})",
    }
    parts = re.split(r"%(.)", pattern)
    regex = "".join(re.escape(part) if i % 2 == 0 else pieces[part] for i, part in enumerate(parts))
    return f"^{regex}$"


def _example(p: ColumnProfile) -> str:
    values = p.texts.drop_null()
    return str(values[0].as_py()) if len(values) else ""


def _zone_hint(instants: pa.Array) -> tuple[str, str]:
    """(IANA zone, note) from the UTC hour of least activity; ("UTC", why not) when unclear."""
    hours = pc.hour(instants.drop_null()).to_numpy(zero_copy_only=False)
    days = len(set(pc.floor_temporal(instants.drop_null(), unit="day").to_pylist()))
    if len(hours) < 500 or days < 2:
        return "UTC", "too few rows over too few days to hint at a zone; give the store's IANA zone"
    counts = np.bincount(hours, minlength=24).astype(float)
    window = counts + np.roll(counts, 1) + np.roll(counts, -1)
    quiet = int(np.argmin(window))
    if window[quiet] > 0.5 * window.mean():
        return "UTC", "activity is flat over the day, no zone hint; give the store's IANA zone"
    offset = (TROUGH_LOCAL_HOUR - quiet + 12) % 24 - 12
    zone = ZONE_BY_OFFSET.get(offset, f"Etc/GMT{-offset:+d}" if offset else "UTC")
    sign = f"UTC{offset:+d}" if offset else "UTC"
    return zone, (
        f"hint: activity is lowest around {quiet:02d}:00 UTC, about {TROUGH_LOCAL_HOUR:02d}:00 at {sign};"
        " check, and use the store's own zone"
    )


def _local_days(instants: pa.Array, zone: str) -> np.ndarray:
    local = pc.local_timestamp(instants.drop_null().cast(pa.timestamp("ms", zone)))
    ms = local.cast(pa.int64()).to_numpy(zero_copy_only=False)
    return ms // 86_400_000


def stray_range(days: np.ndarray) -> tuple[int | None, int | None, str]:
    """A valid range of day numbers when a few rows lie on stray days far from the bulk: (first, last,
    note); (None, None, "") when the days look continuous."""
    if len(days) == 0:
        return None, None, ""
    values, counts = np.unique(days, return_counts=True)
    if len(values) < 3:
        return None, None, ""
    floor = 0.05 * statistics.median(counts.tolist())
    core = values[counts >= floor]
    a, b = int(core.min()), int(core.max())
    inside = (values >= a) & (values <= b)
    density = counts[inside].sum() / (b - a + 1)
    low = high = None
    left, right = values < a, values > b
    if left.any() and counts[left].sum() / (a - int(values.min())) < STRAY_DENSITY * density:
        low = a
    if right.any() and counts[right].sum() / (int(values.max()) - b) < STRAY_DENSITY * density:
        high = b
    mask = np.zeros(len(values), bool)
    if low is not None:
        mask |= left
    if high is not None:
        mask |= right
    outside = int(counts[mask].sum())
    if outside == 0 or outside > STRAY_MAX_SHARE * len(days):
        return None, None, ""
    stray = values[mask]
    first, last = (dt.date(1970, 1, 1) + dt.timedelta(days=int(d)) for d in (stray.min(), stray.max()))
    where = f"on {first}" if first == last else f"on {len(stray)} days between {first} and {last}"
    note = (
        f"{outside:,} of {len(days):,} sampled rows {'lies' if outside == 1 else 'lie'} {where}, far from"
        " the bulk: quarantined as outside the valid range; delete min/max to keep such rows"
    )
    return low, high, note


def _year_from_paths(paths: Sequence[Path]) -> tuple[int | None, str]:
    for path in paths:
        found = YEAR_IN_PATH.findall(str(path))
        if found:
            return int(found[-1]), f"from the file path ({path}): check"
    return None, ""


def guess_timestamp(
    profiles: dict[str, ColumnProfile], sample: Sample, taken: set[str]
) -> TimestampGuess | None:
    """The time column and how to read it (name hints first, finer resolution first)."""
    best: tuple[tuple[int, int, int, int], str, tuple[str, str, int]] | None = None
    for order, (name, p) in enumerate(profiles.items()):
        if name in taken:
            continue
        for candidate in timestamp_candidates(p):
            score = (bool(p.tokens & TIME_WORDS), candidate[1] == "second", candidate[2], -order)
            if best is None or score > best[0]:
                best = (score, name, candidate)
    if best is None:
        return None
    _, name, (fmt, resolution, read) = best
    p = profiles[name]
    guess = TimestampGuess(name, fmt, resolution, read, p.non_null, _example(p))
    if "%d" in fmt and "%m" in fmt and not fmt.startswith("%Y"):  # d/m or m/d: same when days <= 12
        swapped = fmt.replace("%d", "%D").replace("%m", "%d").replace("%D", "%m")
        yearless_probe = YEARLESS_PROBE if "%Y" not in fmt and "%y" not in fmt else None
        also, _ = _read_share(p.texts.drop_null(), TimestampSpec(format=swapped, year=yearless_probe))
        if also >= FIT_SHARE * p.non_null:
            guess.format_note = f"ambiguous: {swapped!r} reads these values too; check which is meant"
    yearless = "%" in fmt and "%Y" not in fmt and "%y" not in fmt
    if yearless:
        guess.year, guess.year_note = _year_from_paths(sample.files)
    spec = TimestampSpec(
        format=fmt, year=guess.year or (YEARLESS_PROBE if yearless else None), resolution=resolution
    )
    instants = parse_timestamps(sample.table.column(name).combine_chunks(), spec)
    aware = fmt in ("unix_s", "unix_ms") or "%z" in fmt or (pa.types.is_timestamp(p.native) and p.native.tz)
    if resolution == "day":
        guess.zone_note = "dates only: a day stamp is midnight UTC of its date whatever the zone"
    elif fmt.endswith(" UTC"):
        guess.zone_note = "the values say UTC"
    elif fmt == "iso" and bool(
        pc.any(pc.match_substring_regex(p.texts.drop_null(), r"(Z|[+-][0-9]{2}(:?[0-9]{2})?)$")).as_py()
    ):
        guess.zone_note = "values with a zone suffix keep it; this zone reads the others"
    elif aware:
        guess.timezone, guess.zone_note = _zone_hint(instants)
    else:
        guess.zone_note = "the values carry no zone: give the zone they were logged in"
    if yearless and guess.year is None:
        return guess  # no valid range without the year
    days = (
        _local_days(instants, guess.timezone)
        if resolution == "second"
        else instants.drop_null().cast(pa.int64()).to_numpy(zero_copy_only=False) // 86_400_000
    )
    low, high, guess.range_note = stray_range(days)
    epoch = dt.date(1970, 1, 1)
    guess.min = epoch + dt.timedelta(days=low) if low is not None else None
    guess.max = epoch + dt.timedelta(days=high) if high is not None else None
    return guess


# --- roles ---------------------------------------------------------------------------------------


def _codes(p: ColumnProfile) -> list[tuple[str, int]]:
    counts = pc.value_counts(p.texts.drop_null()).to_pylist()
    return sorted(((c["values"], c["counts"]) for c in counts), key=lambda kv: (-kv[1], kv[0]))


def event_word(code: str) -> str | None:
    """The canonical type an event code obviously means (by its name), or None."""
    key = re.sub(r"[^a-z0-9]+", "_", code.strip().lower()).strip("_")
    return EVENT_WORDS.get(key)


def _event_ok(p: ColumnProfile, max_codes: int) -> bool:
    return 0 < p.distinct <= max_codes and p.distinct < max(2, 0.5 * p.non_null)


def _name_score(p: ColumnProfile, role: str) -> int:
    """2: the name says this role with an id word; 1: it says the role; 0: it does not."""
    if not p.tokens & ROLE_WORDS[role]:
        return 0
    return 2 if p.tokens & {"id", "no", "key"} else 1


def assign_roles(
    profiles: dict[str, ColumnProfile], taken: set[str], max_codes: int
) -> tuple[dict[str, str | None], dict[str, str]]:
    """Canonical field (and "event") -> column, and a note per field guessed from content."""
    roles: dict[str, str | None] = dict.fromkeys(ROLE_WORDS)
    notes: dict[str, str] = {}
    order = {name: i for i, name in enumerate(profiles)}

    def free() -> list[ColumnProfile]:
        return [p for n, p in profiles.items() if n not in taken]

    def fits(p: ColumnProfile, role: str) -> bool:
        if role == "event":  # named so: few distinct values suffice
            return 0 < p.distinct <= max_codes
        if role == "price":
            return p.numbers >= FIT_SHARE
        if role == "query":
            return True
        return _id_like(p)

    for role in ROLE_WORDS:
        candidates = [p for p in free() if _name_score(p, role) and fits(p, role)]
        if role == "buyer_id":  # "user_session" is a session; the buyer is the user column
            candidates = [p for p in candidates if not p.tokens & ROLE_WORDS["session_id"]]
        if candidates:
            chosen = max(candidates, key=lambda p: (_name_score(p, role), p.non_null, -order[p.name]))
            roles[role] = chosen.name
            taken.add(chosen.name)
    if roles["merchant_id"] is None and roles["product_id"] is None:
        brands = [p for p in free() if p.tokens & BRAND_WORDS and _id_like(p)]
        if brands:
            roles["merchant_id"] = brands[0].name
            taken.add(brands[0].name)
            notes["merchant_id"] = (
                "no product column: the brand plays the storefront (a buyer is a user at a brand)"
            )

    # What the names did not tell, from the values.
    if roles["event"] is None:
        options = [p for p in free() if _event_ok(p, max_codes) and p.distinct <= 0.05 * p.non_null]
        if options:
            worded = lambda p: sum(event_word(c) is not None for c, _ in _codes(p))  # noqa: E731
            chosen = max(options, key=lambda p: (worded(p), p.ints < FIT_SHARE, -p.distinct, -order[p.name]))
            roles["event"] = chosen.name
            taken.add(chosen.name)
            notes["event"] = CONTENT_NOTE + "; the column with few distinct values"
    ids = [p for p in free() if _id_like(p) and p.distinct > 1]
    if roles["buyer_id"] is None and ids:
        chosen = max(ids, key=lambda p: (p.run_share, -order[p.name]))
        if chosen.run_share >= 0.2:
            roles["buyer_id"] = chosen.name
            taken.add(chosen.name)
            ids.remove(chosen)
            notes["buyer_id"] = (
                CONTENT_NOTE + f"; {chosen.run_share:.0%} of rows repeat the previous row's value"
                " (logs grouped by buyer)"
            )
    if roles["product_id"] is None and ids:
        chosen = max(ids, key=lambda p: (p.distinct, -order[p.name]))
        roles["product_id"] = chosen.name
        taken.add(chosen.name)
        ids.remove(chosen)
        notes["product_id"] = CONTENT_NOTE + f"; the most distinct values ({chosen.distinct:,})"
    if roles["category_id"] is None and roles["product_id"] is not None and ids:
        product = profiles[roles["product_id"]]
        fewer = [p for p in ids if p.distinct < product.distinct]
        if fewer:
            chosen = max(fewer, key=lambda p: (p.distinct, -order[p.name]))
            roles["category_id"] = chosen.name
            taken.add(chosen.name)
            notes["category_id"] = (
                CONTENT_NOTE + f"; fewer distinct values ({chosen.distinct:,}) than the products"
            )
    if roles["price"] is None:
        prices = [p for p in free() if p.decimals and p.numbers >= FIT_SHARE]
        if prices:
            roles["price"] = prices[0].name
            taken.add(prices[0].name)
            notes["price"] = CONTENT_NOTE + "; decimal numbers"
    return roles, notes


# --- the draft -----------------------------------------------------------------------------------


def _scalar(value: str) -> str:
    """A YAML scalar for text: plain when safe, else double-quoted (JSON strings are valid YAML)."""
    if PLAIN_KEY.match(value) and value.lower() not in YAML_WORDS and not re.match(NUMBER_TEXT, value):
        return value
    return json.dumps(value, ensure_ascii=False)


def _line(text: str, comment: str = "") -> str:
    if not comment:
        return text
    return (
        f"{text:<{COMMENT_COLUMN - 1}} # {comment}"
        if len(text) < COMMENT_COLUMN - 1
        else f"{text}  # {comment}"
    )


def _numeric(code: str) -> bool:
    return bool(re.match(NUMBER_TEXT, code))


def _default_name(inputs: Sequence[Path], out: Path | None) -> str:
    stem = (out or Path(inputs[0])).name.split(".")[0]
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", stem).strip("-")
    return name or "my-shop"


def draft_mapping(inputs: Sequence[Path], config: DraftConfig, out: Path | None = None) -> Draft:
    """Sample the inputs and draft a mapping (see the module docstring)."""
    inputs = [Path(p) for p in inputs]
    sample = sample_inputs(inputs, config.rows)
    if sample.table.num_rows == 0:
        raise ValueError(
            f"mapping draft: no readable rows in {', '.join(map(str, inputs))} ({sample.unreadable} unreadable"
            f"{': ' + sample.unreadable_example if sample.unreadable_example else ''}); fix: check the files"
        )
    name = config.name or _default_name(inputs, out)
    profiles = {n: profile_column(n, sample.table.column(n)) for n in sample.table.column_names}
    taken: set[str] = set()
    ts = guess_timestamp(profiles, sample, taken)
    if ts is not None:
        taken.add(ts.column)
    roles, notes = assign_roles(profiles, taken, config.max_codes)
    fields: dict[str, str | None] = {
        "merchant_id": roles["merchant_id"] or f"={name}",
        "buyer_id": roles["buyer_id"],
        "ts": ts.column if ts else None,
        **{k: roles[k] for k in ("session_id", "product_id", "category_id", "price", "query")},
        "event": roles["event"],
    }
    codes: list[EventCode] = []
    if roles["event"] is not None:
        codes = [EventCode(c, n, event_word(c)) for c, n in _codes(profiles[roles["event"]])]
    header_less = sample.csv is not None and not sample.csv.header
    rename: dict[str, str] = {}
    if header_less:
        for role, column in fields.items():
            if column is not None and not column.startswith("="):
                rename[column] = {"ts": "ts", "event": "event_type"}.get(role, role)
    text, todo = _render(name, inputs, sample, fields, ts, codes, notes, profiles, rename)
    named = {k: rename.get(v, v) if v is not None else None for k, v in fields.items()}
    draft = Draft(text, named, ts, codes, todo, sample, notes)
    if not todo:
        mapping_from_dict(yaml.safe_load(text), source="mapping draft")  # a complete draft must load
    return draft


def _render(
    name: str,
    inputs: Sequence[Path],
    sample: Sample,
    fields: dict[str, str | None],
    ts: TimestampGuess | None,
    codes: list[EventCode],
    notes: dict[str, str],
    profiles: dict[str, ColumnProfile],
    rename: dict[str, str],
) -> tuple[str, list[str]]:
    todo: list[str] = []

    def col(column: str) -> str:
        return _scalar(rename.get(column, column))

    files = (
        str(sample.files[0]) if len(sample.files) == 1 else f"{len(sample.files)} files from {inputs[0]} on"
    )
    out = [
        f"# Drafted by `simpersona mapping draft` from the first {sample.table.num_rows:,} rows of {files}.",
        "# Check every line marked TODO or 'guessed', then count what prepare would keep, drop and quarantine:",
        "#   simpersona prepare INPUT... --mapping THIS_FILE --check",
    ]
    if sample.unreadable:
        out.append(
            f"# {sample.unreadable:,} sampled line(s) were unreadable and will be quarantined"
            f" (first: {sample.unreadable_example})."
        )
    out += [
        "#",
        "# Canonical event types (the values of event_type.map), in funnel order:",
        *event_vocabulary_lines("#   "),
        f"name: {_scalar(name)}",
        f"format: {sample.format}",
    ]
    if sample.csv is not None:
        out += ["csv:", f"  delimiter: {json.dumps(sample.csv.delimiter)}"]
        if sample.csv.header:
            out.append("  header: true")
        else:
            names = [col(c) for c in sample.csv.columns or ()]
            out += [
                _line("  header: false", "the first line is data"),
                _line(f"  columns: [{', '.join(names)}]", "names made up for this mapping, in file order"),
            ]
    out.append("fields:")
    used = {c for c in fields.values() if c is not None and not c.startswith("=")}
    merchant = fields["merchant_id"] or ""
    if merchant.startswith("="):
        out.append(
            _line(
                f"  merchant_id: {{constant: {_scalar(merchant[1:])}}}",
                "no store column found: one store (name a column for a multi-store log)",
            )
        )
    else:
        out.append(
            _line(
                f"  merchant_id: {col(merchant)}",
                notes.get("merchant_id", "a buyer is one user at one merchant"),
            )
        )
    for key, missing in (
        ("buyer_id", "TODO: the column of the user (customer, visitor) id"),
        ("ts", "TODO: the column of the event time"),
        (
            "session_id",
            f"none found: sessions split after {SESSION_GAP_SECONDS // 60} minutes without events",
        ),
        ("product_id", "none found"),
        ("category_id", "none found"),
        ("price", "none found"),
        ("query", "none found"),
    ):
        column = fields[key]
        if column is not None:
            out.append(_line(f"  {key}: {col(column)}", notes.get(key, "")))
        elif key in ("buyer_id", "ts"):
            out.append(_line(f"  {key}:", missing))
            todo.append(f"fields.{key}")
        else:
            out.append(f"  # {key}: {missing}")
    unused = [c for c in profiles if c not in used]
    if unused:
        out.append(f"  # not used: {', '.join(col(c) for c in unused)}")
    if sample.nested:
        out.append(f"  # not usable (nested JSON values): {', '.join(sample.nested)}")

    out.append("timestamp:")
    if ts is None:
        out.append(
            _line(
                "  format: iso", "TODO: no column reads as times; give a strptime pattern, unix_s or unix_ms"
            )
        )
        todo.append("timestamp.format")
    else:
        shown = f"e.g. {json.dumps(ts.example, ensure_ascii=False)}"
        read = f"{ts.read:,} of {ts.total:,} sampled values read"
        out.append(
            _line(
                f"  format: {_scalar(ts.format)}",
                f"{read}, {shown}" + (f"; {ts.format_note}" if ts.format_note else ""),
            )
        )
        yearless = "%" in ts.format and "%Y" not in ts.format and "%y" not in ts.format
        if yearless:
            if ts.year is None:
                out.append(
                    _line("  year:", "TODO: the year of these dates (the values carry none), e.g. 2014")
                )
                todo.append("timestamp.year")
            else:
                out.append(_line(f"  year: {ts.year}", ts.year_note))
        out.append(_line(f"  timezone: {ts.timezone}", ts.zone_note))
        out.append(
            _line(
                f"  resolution: {ts.resolution}",
                "no time of day in the values" if ts.resolution == "day" else "",
            )
        )
        if ts.min is not None:
            out.append(_line(f'  min: "{ts.min.isoformat()}"', ts.range_note))
        if ts.max is not None:
            out.append(_line(f'  max: "{ts.max.isoformat()}"', "" if ts.min is not None else ts.range_note))

    out.append("event_type:")
    event = fields["event"]
    if event is None:
        out.append(_line("  column:", "TODO: the column of the event code (view, cart, order, ...)"))
        out.append("  map:")
        todo += ["event_type.column", "event_type.map"]
    else:
        out.append(_line(f"  column: {col(event)}", notes.get("event", "")))
        out.append("  map:")
        mapped = [c for c in codes if c.event is not None]
        for c in mapped:
            out.append(_line(f"    {_scalar(c.code)}: {c.event}", f"{c.rows:,} rows"))
        left = [c for c in codes if c.event is None]
        for c in left:
            why = (
                "numeric code: look up its meaning in the source's documentation"
                if _numeric(c.code)
                else "TODO: a type above, or list it under drop"
            )
            out.append(
                _line(f"    # {json.dumps(c.code, ensure_ascii=False)}: TODO", f"{c.rows:,} rows; {why}")
            )
        if left:
            todo.append("event_type.map (" + ", ".join(repr(c.code) for c in left) + ")")
        out.append(
            _line(
                "  # drop: []",
                "codes to leave out on purpose: counted per code in the manifest, not quarantined",
            )
        )
    return "\n".join(out) + "\n", todo
