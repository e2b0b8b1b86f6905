"""The generic source mapping: one raw log format described in YAML, validated strictly.

``load_mapping(path)`` reads a mapping file (``yaml.safe_load``); ``mapping_from_dict`` builds the same
objects from a dict (tests, the synthetic generator, dedicated adapters). A log shipped as files of
several layouts (YOOCHOOSE's clicks and buys) is one mapping file with a layout per entry of
``sources``, each naming the files it reads (``load_mappings``). Every problem fails fast with a
``ValueError`` naming the mapping, the key and the fix.
"""

from __future__ import annotations

import datetime as dt
import zoneinfo
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from learners.data.schema import EVENT_TYPES

FORMATS = ("csv", "parquet", "jsonl")
TIMESTAMP_KEYWORDS = ("unix_s", "unix_ms", "unix_us", "unix_ns", "iso")
RESOLUTIONS = ("second", "day")
REQUIRED_FIELDS = ("merchant_id", "buyer_id", "ts")
OPTIONAL_FIELDS = ("session_id", "product_id", "category_id", "price", "query")
TOP_KEYS = ("name", "format", "csv", "jsonl", "fields", "timestamp", "event_type", "drop_rows", "match")
CSV_KEYS = ("delimiter", "header", "columns")
JSONL_KEYS = ("explode", "keep_empty")
DROP_TESTS = ("starts_with", "below", "above", "in")
RULE_LABEL = "where "
"""How a drop_rows rule's label begins in rows_dropped_by_code, unlike an event code's."""
TIMESTAMP_KEYS = ("format", "year", "timezone", "resolution", "min", "max")
EVENT_TYPE_KEYS = ("column", "map", "drop", "constant")


@dataclass(frozen=True)
class CsvOptions:
    """How a CSV file is laid out."""

    delimiter: str | None = None
    """One character; None means from the extension (tab for .tsv, else comma)."""
    header: bool = True
    """Whether the first line names the columns."""
    columns: tuple[str, ...] | None = None
    """Column names in order, required when there is no header."""


@dataclass(frozen=True)
class JsonlOptions:
    """How a JSON-lines file nests its events."""

    explode: str | None = None
    """A key whose value is a list of objects, one event each (OTTO: one session per line with its
    ``events``): each becomes a row, its keys read as columns beside the line's own scalar keys."""
    keep_empty: bool = False
    """A line whose ``explode`` list is empty or absent is still one row, the list's keys empty (a GA4
    export lists the ``items`` of an event, and a page view has none); without it such a line is
    quarantined."""


@dataclass(frozen=True)
class DropRule:
    """Rows left out on purpose by a value (``drop_rows``): UCI Online Retail's cancellations are
    invoices starting with C, with a negative quantity. Exactly one test is set."""

    column: str
    """The source column tested."""
    starts_with: str | None = None
    """Drop rows whose value starts with this text."""
    below: float | None = None
    """Drop rows whose value is a number below this one."""
    above: float | None = None
    """Drop rows whose value is a number above this one (Adobe Analytics' exclude_hit above 0)."""
    values: tuple[str, ...] = ()
    """Drop rows whose value is one of these (``in:`` in YAML)."""

    @property
    def label(self) -> str:
        """How the manifest and the console name the rule (rows_dropped_by_code)."""
        if self.starts_with is not None:
            return f"{RULE_LABEL}{self.column} starts with {self.starts_with!r}"
        if self.below is not None:
            return f"{RULE_LABEL}{self.column} < {self.below:g}"
        if self.above is not None:
            return f"{RULE_LABEL}{self.column} > {self.above:g}"
        return f"{RULE_LABEL}{self.column} in [{', '.join(repr(v) for v in self.values)}]"


@dataclass(frozen=True)
class FieldSource:
    """Where a canonical field comes from: a source column or a constant."""

    column: str | None = None
    """The source column name."""
    constant: str | None = None
    """A fixed value for every row (e.g. the merchant of a single-store log)."""
    fallback: str | None = None
    """An id column read where ``column`` is empty (``{column: Lineitem sku, else: Lineitem name}``:
    Shopify's custom items have no SKU)."""


@dataclass(frozen=True)
class TimestampSpec:
    """How to read the timestamp column."""

    format: str = "iso"
    """A strptime pattern, or one of unix_s, unix_ms, unix_us, unix_ns (integer seconds, milli-, micro-,
    nanoseconds since 1970; GA4 exports microseconds), iso."""
    year: int | None = None
    """The year of patterns that carry none (e.g. %m%d)."""
    timezone: str = "UTC"
    """IANA zone of naive timestamps and of the valid range bounds."""
    resolution: str = "second"
    """second, or day when only the date is known (ts is then midnight UTC of that date)."""
    min: dt.datetime | None = None
    """Earliest valid timestamp (inclusive, naive, in `timezone`); earlier rows are quarantined."""
    max: dt.datetime | None = None
    """Latest valid timestamp (inclusive, naive, in `timezone`); later rows are quarantined."""


@dataclass(frozen=True)
class EventTypeSpec:
    """Which column holds the event code and what each code means, or the one type of every row."""

    column: str | None = None
    """The source column holding the event code (None with ``constant``)."""
    map: dict[str, str] = field(default_factory=dict)
    """Source code (as text) -> canonical event type (schema.EVENT_TYPES)."""
    drop: tuple[str, ...] = ()
    """Source codes (as text) whose rows are left out on purpose: counted per code, not quarantined."""
    constant: str | None = None
    """The canonical event type of every row, for a log of one kind of event (a file of product views
    only, as YOOCHOOSE's clicks or Diginetica's item views): instead of column and map."""


@dataclass(frozen=True)
class SourceMapping:
    """A complete description of one raw log format."""

    name: str
    """A label used in manifests and messages."""
    fields: dict[str, FieldSource]
    """Canonical field -> its source; merchant_id, buyer_id and ts are always present."""
    timestamp: TimestampSpec
    """How to read timestamps."""
    event_type: EventTypeSpec
    """How to read event codes."""
    format: str | None = None
    """csv, parquet or jsonl; None means from each file's extension."""
    csv: CsvOptions = field(default_factory=CsvOptions)
    """CSV layout (ignored for other formats)."""
    jsonl: JsonlOptions = field(default_factory=JsonlOptions)
    """JSON-lines nesting (ignored for other formats). In JSON lines a column may also be a dotted path
    into nested objects (``device.category``)."""
    source: str = "<mapping>"
    """Where the mapping came from (a file path), for messages."""
    match: str | None = None
    """Glob of the file names this layout reads, in a mapping of several ``sources`` (load_mappings)."""
    drop_rows: tuple[DropRule, ...] = ()
    """Rows left out on purpose by a column's value, counted per rule like dropped codes."""

    @property
    def day_resolution(self) -> bool:
        """True when timestamps carry only a date."""
        return self.timestamp.resolution == "day"

    def columns_used(self) -> list[str]:
        """Source columns the mapping reads, in a stable order without repeats."""
        names = [src.column for src in self.fields.values() if src.column is not None]
        names += [src.fallback for src in self.fields.values() if src.fallback is not None]
        if self.event_type.column is not None:
            names.append(self.event_type.column)
        names += [rule.column for rule in self.drop_rows]
        return list(dict.fromkeys(names))


def _fail(source: str, key: str, problem: str, fix: str) -> ValueError:
    return ValueError(f"mapping {source}: key '{key}': {problem}; fix: {fix}")


def _flag(source: str, key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        name = key.split(".")[-1]
        raise _fail(
            source, key, f"expected true or false, got {value!r}", f"write {name}: true or {name}: false"
        )
    return value


def _check_keys(source: str, where: str, values: Any, known: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(values, dict):
        raise _fail(
            source,
            where,
            f"expected a mapping, got {type(values).__name__}",
            f"give {where} as key: value lines",
        )
    unknown = sorted(str(k) for k in values if k not in known)
    if unknown:
        label = f"{where}." if where else ""
        raise _fail(source, label + unknown[0], "unknown key", f"use one of {', '.join(known)}")
    return values


def _text(source: str, key: str, value: Any) -> str:
    if value is None or value == "":
        # An empty value is what `simpersona mapping draft` leaves where it could not tell (its TODOs).
        raise _fail(source, key, "no value given", "fill it in (a TODO of a drafted mapping?)")
    if not isinstance(value, str):
        raise _fail(source, key, f"expected a string, got {value!r}", "quote the value in the YAML")
    return value


def _field_source(source: str, name: str, value: Any) -> FieldSource:
    key = f"fields.{name}"
    if isinstance(value, dict) and set(value) == {"column", "else"}:
        if name in ("ts", "price"):
            raise _fail(
                source, f"{key}.else", "only an id may fall back to another column", "name one column"
            )
        return FieldSource(
            column=_text(source, f"{key}.column", value["column"]),
            fallback=_text(source, f"{key}.else", value["else"]),
        )
    if isinstance(value, dict):
        if set(value) != {"constant"}:
            raise _fail(
                source,
                key,
                f"expected a column name, {{constant: VALUE}} or {{column: NAME, else: NAME}}, got {value!r}",
                "write e.g. {constant: shop1}",
            )
        constant = value["constant"]
        if isinstance(constant, bool) or not isinstance(constant, (str, int)) or constant == "":
            raise _fail(
                source,
                key,
                f"constant must be a non-empty string or integer, got {constant!r}",
                "quote the constant",
            )
        if name in ("ts", "price"):
            raise _fail(source, key, "a constant is not allowed here", "name the source column")
        return FieldSource(constant=str(constant))
    return FieldSource(column=_text(source, key, value))


def _datetime_bound(source: str, key: str, value: Any, is_max: bool) -> dt.datetime | None:
    """A naive datetime; a date-only max means the end of that day (inclusive)."""
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        return value.replace(tzinfo=None)
    if isinstance(value, dt.date):
        day = dt.datetime(value.year, value.month, value.day)
        return day + dt.timedelta(days=1, milliseconds=-1) if is_max else day
    if isinstance(value, str):
        try:
            parsed = dt.datetime.fromisoformat(value)
        except ValueError:
            raise _fail(
                source,
                key,
                f"cannot read {value!r} as an ISO date/datetime",
                'write e.g. "2017-11-25" or "2017-12-03T23:59:59"',
            ) from None
        if len(value.strip()) <= 10:
            return _datetime_bound(source, key, parsed.date(), is_max)
        return parsed.replace(tzinfo=None)
    raise _fail(source, key, f"expected an ISO date/datetime, got {value!r}", 'write e.g. "2017-11-25"')


def _timestamp(source: str, values: Any) -> TimestampSpec:
    values = _check_keys(source, "timestamp", values, TIMESTAMP_KEYS)
    fmt = _text(source, "timestamp.format", values.get("format", "iso"))
    if fmt not in TIMESTAMP_KEYWORDS and "%" not in fmt:
        raise _fail(
            source,
            "timestamp.format",
            f"{fmt!r} is neither a strptime pattern nor a keyword",
            f"use a pattern like %Y-%m-%d or one of {', '.join(TIMESTAMP_KEYWORDS)}",
        )
    year = values.get("year")
    if year is not None and (isinstance(year, bool) or not isinstance(year, int) or not 1 <= year <= 9999):
        raise _fail(
            source, "timestamp.year", f"expected a year like 2014, got {year!r}", "write the four-digit year"
        )
    has_year = "%Y" in fmt or "%y" in fmt
    if "%" in fmt and not has_year and year is None:
        raise _fail(source, "timestamp.year", f"pattern {fmt!r} has no year", "add timestamp.year")
    if year is not None and (has_year or fmt in TIMESTAMP_KEYWORDS):
        raise _fail(
            source, "timestamp.year", f"format {fmt!r} already carries the year", "remove timestamp.year"
        )
    timezone = _text(source, "timestamp.timezone", values.get("timezone", "UTC"))
    try:
        zoneinfo.ZoneInfo(timezone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise _fail(
            source,
            "timestamp.timezone",
            f"unknown time zone {timezone!r}",
            "use an IANA name such as UTC or Asia/Shanghai",
        ) from None
    resolution = values.get("resolution", "second")
    if resolution not in RESOLUTIONS:
        raise _fail(
            source,
            "timestamp.resolution",
            f"expected one of {RESOLUTIONS}, got {resolution!r}",
            "use second or day",
        )
    low = _datetime_bound(source, "timestamp.min", values.get("min"), is_max=False)
    high = _datetime_bound(source, "timestamp.max", values.get("max"), is_max=True)
    if low is not None and high is not None and low > high:
        raise _fail(source, "timestamp.min", f"min {low} is after max {high}", "swap or correct the bounds")
    return TimestampSpec(format=fmt, year=year, timezone=timezone, resolution=resolution, min=low, max=high)


def _event_type(source: str, values: Any) -> EventTypeSpec:
    values = _check_keys(source, "event_type", values, EVENT_TYPE_KEYS)
    if "constant" in values:
        constant = values["constant"]
        if constant not in EVENT_TYPES:
            raise _fail(
                source,
                "event_type.constant",
                f"{constant!r} is not a canonical event type",
                f"use one of {', '.join(EVENT_TYPES)}",
            )
        both = [k for k in ("column", "map", "drop") if k in values]
        if both:
            raise _fail(
                source,
                f"event_type.{both[0]}",
                "given with event_type.constant",
                "keep constant for a log of one event type, or column and map for a column of codes",
            )
        return EventTypeSpec(constant=constant)
    column = _text(source, "event_type.column", values.get("column"))
    codes = values.get("map")
    if not isinstance(codes, dict) or not codes:
        raise _fail(
            source,
            "event_type.map",
            f"expected a non-empty mapping of codes, got {codes!r}",
            'write lines like "0": product_view',
        )
    mapped: dict[str, str] = {}
    for code, event in codes.items():
        code = _empty_code(code)
        key = f"event_type.map.{code if code != '' else repr(code)}"
        if isinstance(code, bool) or not isinstance(code, (str, int)):
            raise _fail(
                source,
                key,
                f"code {code!r} is not text",
                "quote the code",
            )
        if event in (None, "TODO"):
            raise _fail(
                source,
                key,
                "no type given (a TODO of a drafted mapping)",
                f"write one of {', '.join(EVENT_TYPES)}, or move the code to event_type.drop",
            )
        if event not in EVENT_TYPES:
            raise _fail(
                source,
                key,
                f"{event!r} is not a canonical event type",
                f"use one of {', '.join(EVENT_TYPES)}",
            )
        mapped[str(code)] = event
    return EventTypeSpec(column=column, map=mapped, drop=_dropped_codes(source, values.get("drop"), mapped))


def _empty_code(code: Any) -> Any:
    """YAML's null (``~``) names the empty code, as ``""`` does: rows whose event column is empty (Coveo
    logs page views with an empty ``product_action``)."""
    return "" if code is None else code


def _dropped_codes(source: str, values: Any, mapped: dict[str, str]) -> tuple[str, ...]:
    """event_type.drop: codes whose rows are left out on purpose; none may also be mapped."""
    if values is None:
        return ()
    if not isinstance(values, list):
        raise _fail(
            source, "event_type.drop", f"expected a list of codes, got {values!r}", 'write drop: ["6", click]'
        )
    dropped: list[str] = []
    for code in values:
        code = _empty_code(code)
        if isinstance(code, bool) or not isinstance(code, (str, int)):
            raise _fail(
                source, "event_type.drop", f"code {code!r} is not text or an integer", "quote the code"
            )
        text = str(code)
        if text in mapped:
            raise _fail(
                source,
                f"event_type.drop.{text}",
                f"code {text!r} is both mapped (to {mapped[text]}) and dropped",
                "keep it in event_type.map to use its rows or in event_type.drop to leave them out, not both",
            )
        dropped.append(text)
    return tuple(dict.fromkeys(dropped))


def _csv_options(source: str, values: Any) -> CsvOptions:
    values = _check_keys(source, "csv", values, CSV_KEYS)
    delimiter = values.get("delimiter")
    if delimiter is not None and (
        not isinstance(delimiter, str) or len(delimiter) != 1 or delimiter in '\r\n"'
    ):
        raise _fail(
            source, "csv.delimiter", f"expected one character, got {delimiter!r}", 'write e.g. delimiter: ","'
        )
    header = _flag(source, "csv.header", values.get("header", True))
    columns = values.get("columns")
    if columns is not None:
        if not isinstance(columns, list) or not columns or not all(isinstance(c, str) and c for c in columns):
            raise _fail(
                source,
                "csv.columns",
                f"expected a list of column names, got {columns!r}",
                "write columns: [a, b, c]",
            )
        if len(set(columns)) != len(columns):
            raise _fail(source, "csv.columns", "column names repeat", "give each column a distinct name")
        columns = tuple(columns)
    if not header and columns is None:
        raise _fail(
            source, "csv.columns", "missing while csv.header is false", "list the column names in file order"
        )
    if header and columns is not None:
        raise _fail(
            source,
            "csv.columns",
            "given while csv.header is true (the header names the columns)",
            "remove csv.columns or set header: false",
        )
    return CsvOptions(delimiter=delimiter, header=header, columns=columns)


def _drop_rules(source: str, values: Any) -> tuple[DropRule, ...]:
    example = 'write e.g. drop_rows: [{column: InvoiceNo, starts_with: "C"}, {column: Quantity, below: 0}]'
    if not isinstance(values, list):
        raise _fail(source, "drop_rows", f"expected a list of rules, got {values!r}", example)
    rules = []
    for i, value in enumerate(values):
        where = f"drop_rows[{i}]"
        value = _check_keys(source, where, value, ("column", *DROP_TESTS))
        column = _text(source, f"{where}.column", value.get("column"))
        tests = [t for t in DROP_TESTS if t in value]
        if len(tests) != 1:
            raise _fail(
                source, where, f"expected one of {', '.join(DROP_TESTS)}, got {tests or 'none'}", example
            )
        test, given = tests[0], value[tests[0]]
        if test in ("below", "above"):
            if isinstance(given, bool) or not isinstance(given, (int, float)):
                raise _fail(
                    source, f"{where}.{test}", f"expected a number, got {given!r}", f"write {test}: 0"
                )
            rules.append(DropRule(column, **{test: float(given)}))
        elif test == "starts_with":
            rules.append(DropRule(column, starts_with=_text(source, f"{where}.starts_with", str(given))))
        else:
            if not isinstance(given, list) or not given or any(isinstance(v, (dict, list)) for v in given):
                raise _fail(
                    source, f"{where}.in", f"expected a list of values, got {given!r}", "write in: [POST, D]"
                )
            rules.append(DropRule(column, values=tuple(str(v) for v in given)))
    return tuple(rules)


def _jsonl_options(source: str, values: Any) -> JsonlOptions:
    values = _check_keys(source, "jsonl", values, JSONL_KEYS)
    explode = values.get("explode")
    if explode is not None:
        explode = _text(source, "jsonl.explode", explode)
    keep_empty = _flag(source, "jsonl.keep_empty", values.get("keep_empty", False))
    if keep_empty and explode is None:
        raise _fail(
            source,
            "jsonl.keep_empty",
            "given without explode",
            "name the list: jsonl: {explode: KEY, keep_empty: true}",
        )
    return JsonlOptions(explode=explode, keep_empty=keep_empty)


def mapping_from_dict(values: Any, source: str = "<mapping>") -> SourceMapping:
    """Validate a parsed mapping and build it; ``source`` names it in error messages."""
    values = _check_keys(source, "", values, TOP_KEYS)
    name = _text(source, "name", values.get("name", Path(source).stem or "mapping"))
    fmt = values.get("format")
    if fmt is not None and fmt not in FORMATS:
        raise _fail(
            source,
            "format",
            f"expected one of {', '.join(FORMATS)}, got {fmt!r}",
            "fix the value or remove it to detect from the extension",
        )
    if "csv" in values and fmt not in (None, "csv"):
        raise _fail(source, "csv", f"given for format {fmt!r}", "remove the csv section")
    csv = _csv_options(source, values["csv"]) if "csv" in values else CsvOptions()
    if "jsonl" in values and fmt not in (None, "jsonl"):
        raise _fail(source, "jsonl", f"given for format {fmt!r}", "remove the jsonl section")
    jsonl = _jsonl_options(source, values["jsonl"]) if "jsonl" in values else JsonlOptions()
    raw_fields = _check_keys(source, "fields", values.get("fields", {}), REQUIRED_FIELDS + OPTIONAL_FIELDS)
    for required in REQUIRED_FIELDS:
        if required not in raw_fields:
            raise _fail(
                source, f"fields.{required}", "missing (required)", f"name the source column of {required}"
            )
    fields = {name_: _field_source(source, name_, v) for name_, v in raw_fields.items()}
    if "timestamp" not in values:
        raise _fail(source, "timestamp", "missing (required)", "add a timestamp section with at least format")
    if "event_type" not in values:
        raise _fail(
            source,
            "event_type",
            "missing (required)",
            "add an event_type section with column and map (or constant: product_view for a log of views only)",
        )
    mapping = SourceMapping(
        name=name,
        fields=fields,
        timestamp=_timestamp(source, values["timestamp"]),
        event_type=_event_type(source, values["event_type"]),
        format=fmt,
        csv=csv,
        jsonl=jsonl,
        source=source,
        match=None if values.get("match") is None else _text(source, "match", values["match"]),
        drop_rows=_drop_rules(source, values["drop_rows"]) if "drop_rows" in values else (),
    )
    if csv.columns is not None:
        missing = [c for c in mapping.columns_used() if c not in csv.columns]
        if missing:
            raise _fail(
                source,
                "csv.columns",
                f"lacks column {missing[0]!r} named in fields/event_type",
                f"add it to csv.columns ({', '.join(csv.columns)})",
            )
    return mapping


def mappings_from_dict(values: Any, source: str = "<mapping>") -> list[SourceMapping]:
    """A parsed mapping of one layout, or of several under ``sources`` (a log shipped as files of
    different layouts, as YOOCHOOSE's clicks and buys): each with a ``match`` glob of the file names it
    reads, and the top ``name``."""
    if not isinstance(values, dict) or "sources" not in values:
        return [mapping_from_dict(values, source)]
    values = _check_keys(source, "", values, ("name", "sources"))
    entries = values["sources"]
    if not isinstance(entries, list) or not entries:
        raise _fail(
            source, "sources", f"expected a list of layouts, got {entries!r}", "write - match: ... entries"
        )
    name = values.get("name", Path(source).stem or "mapping")
    out = []
    for i, entry in enumerate(entries):
        where = f"{source} sources[{i}]"
        if not isinstance(entry, dict) or not entry.get("match"):
            raise _fail(
                where,
                "match",
                "missing (required in each source)",
                'name the files it reads, e.g. match: "*buys*"',
            )
        out.append(mapping_from_dict({"name": name, **entry}, where))
    if len({m.day_resolution for m in out}) > 1:
        raise _fail(
            source, "sources", "the layouts disagree on timestamp.resolution", "give every source the same"
        )
    return out


def load_mapping(path: str | Path) -> SourceMapping:
    """Read and validate a mapping YAML file of one layout."""
    mappings = load_mappings(path)
    if len(mappings) > 1:
        raise ValueError(
            f"mapping {path}: holds {len(mappings)} sources where one layout is expected;"
            " fix: pass a mapping of one layout (prepare reads a mapping of sources)"
        )
    return mappings[0]


def load_mappings(path: str | Path) -> list[SourceMapping]:
    """Read and validate a mapping YAML file: its one layout, or its ``sources`` (``mappings_from_dict``)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(
            f"mapping {path}: cannot read the file ({err}); fix: pass a readable UTF-8 YAML file"
        ) from None
    try:
        values = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ValueError(f"mapping {path}: not valid YAML ({err}); fix: correct the syntax") from None
    return mappings_from_dict(values, source=str(path))
