"""The draft's sample: the layout of the first input (format, CSV delimiter and header) and its first rows.

Rows are read with the pipeline's own readers, so what the draft sees is what ``prepare`` will read;
lines the readers reject are counted (they will be quarantined), not guessed around.
"""

from __future__ import annotations

import csv
import json
import re
from collections import Counter
from collections.abc import Sequence
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from learners.data.canonical import NUMBER_TEXT
from learners.data.json_lines import is_key_value_list
from learners.data.mapping import (
    CsvOptions,
    EventTypeSpec,
    FieldSource,
    JsonlOptions,
    SourceMapping,
    TimestampSpec,
)
from learners.data.readers import DELIMITERS, READ_ERRORS, file_format, open_binary, read_raw

SNIFF_BYTES = 1 << 16
SNIFF_LINES = 200


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
    """JSON keys holding values no column reaches (lists of plain values)."""
    jsonl: JsonlOptions = field(default_factory=JsonlOptions)
    """How the events nest (``jsonl.explode``: its elements' keys are columns of the sample beside the
    line's own)."""
    words: dict[str, str] = field(default_factory=dict)
    """Column -> the name whose words say what it holds, where that is not the column's own
    (a parameter of a ``{key, value}`` list)."""


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
        with open_binary(path) as fh:
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
    # pandas' to_csv writes its row index unnamed: a header may begin with one empty cell.
    named = first[1:] if len(first) > 1 and not first[0].strip() else first
    header = all(c.strip() and not _looks_like_value(c) for c in named) and not any(
        j < len(r) and r[j] == first[j] and first[j].strip() for r in rest for j in range(len(first))
    )
    if header:
        return CsvOptions(delimiter=delimiter, header=True)
    return CsvOptions(
        delimiter=delimiter, header=False, columns=tuple(f"column_{j + 1}" for j in range(len(first)))
    )


@dataclass
class JsonLayout:
    """What the first JSON objects hold: the columns a mapping can name, and the events' list."""

    names: list[str]
    """Columns in first-seen order: the event list's keys first, then the line's own keys, then dotted
    paths into nested objects and ``{key, value}`` lists."""
    nested: list[str]
    """Keys whose values no column reaches (lists of plain values, empty objects, and lists inside the
    events' elements: Universal Analytics' ``hits[].product``)."""
    explode: str | None
    """The key whose list of objects holds the events (``jsonl.explode``)."""
    keep_empty: bool
    """Some sampled lines have no element in ``explode``'s list: each is still an event."""
    words: dict[str, str]
    """A parameter column's key, whose words name it (``event_params.ga_session_id.value.int_value``
    reads as ``ga_session_id``)."""


def _scalar_paths(obj: dict, prefix: str, out: dict[str, None]) -> None:
    """Dotted paths to the plain values inside nested objects (``device.web_info.browser``)."""
    for key, value in obj.items():
        if isinstance(value, dict):
            _scalar_paths(value, f"{prefix}{key}.", out)
        elif not isinstance(value, list):
            out[prefix + key] = None


def _parameter_paths(key: str, elements: list[dict], kinds: dict[str, Counter[str]]) -> None:
    """Count, per parameter of a ``{key, value}`` list, the value kinds it is written in (GA4 writes
    ``{"string_value": null, "int_value": "1612069510", ...}``)."""
    for element in elements:
        value = element["value"]
        path = f"{key}.{element['key']}.value"
        counts = kinds.setdefault(path, Counter())
        if isinstance(value, dict):
            counts.update(k for k, v in value.items() if v is not None and not isinstance(v, (dict, list)))
        elif value is not None and not isinstance(value, list):
            counts[""] += 1


def _jsonl_keys(path: Path, rows: int) -> JsonLayout:
    """The columns of the first JSON objects and the key holding the events' list of objects (not a
    ``{key, value}`` list): one event per element, whose keys come first."""
    keys: dict[str, None] = {}
    nested: dict[str, None] = {}
    inner: dict[str, dict[str, None]] = {}
    inner_lists: dict[str, dict[str, None]] = {}
    paths: dict[str, None] = {}
    kinds: dict[str, Counter[str]] = {}
    reached: set[str] = set()
    empty: Counter[str] = Counter()
    with open_binary(path) as fh:
        for i, raw in enumerate(fh):
            if i >= rows:
                break
            try:
                obj = json.loads(raw)
            except ValueError:
                continue
            if not isinstance(obj, dict):
                continue
            for key, value in obj.items():
                if not isinstance(value, (dict, list)):
                    keys[key] = None
                    continue
                nested[key] = None
                if isinstance(value, dict):
                    before = len(paths)
                    _scalar_paths(value, f"{key}.", paths)
                    if len(paths) > before:
                        reached.add(key)
                elif is_key_value_list(value):
                    _parameter_paths(key, value, kinds)
                    reached.add(key)
                elif value and all(isinstance(e, dict) for e in value):
                    elements = inner.setdefault(key, {})
                    lists = inner_lists.setdefault(key, {})
                    for element in value:
                        elements.update(
                            dict.fromkeys(k for k, v in element.items() if not isinstance(v, (dict, list)))
                        )
                        lists.update(
                            dict.fromkeys(k for k, v in element.items() if isinstance(v, list) and v)
                        )
            for key in inner:
                empty[key] += not obj.get(key)
    # The events' list is the one whose objects carry the most plain values (UA's hits over its
    # customDimensions of {index, value}).
    explode = max(inner, key=lambda k: len(inner[k]), default=None)
    words: dict[str, str] = {}
    for stem, counts in kinds.items():
        if counts:
            kind = counts.most_common(1)[0][0]
            words[f"{stem}.{kind}" if kind else stem] = stem.split(".")[-2]
    reached |= {explode} if explode is not None else set()
    first = [*inner[explode]] if explode is not None else []
    # A key null on some lines and nested on others is nested (GA4's ecommerce).
    plain = [k for k in keys if k not in first and k not in nested]
    deeper = [f"{explode}[].{k}" for k in inner_lists.get(explode, {})] if explode is not None else []
    names = [*first, *plain, *(p for p in paths if p not in first), *words]
    return JsonLayout(
        names,
        [k for k in nested if k not in reached] + deeper,
        explode,
        explode is not None and empty[explode] > 0,
        words,
    )


def _probe(names: list[str], fmt: str, csv_options: CsvOptions | None, jsonl: JsonlOptions) -> SourceMapping:
    """A mapping that lets the readers read a file whose columns are not known yet."""
    first = FieldSource(column=names[0])
    return SourceMapping(
        name="draft",
        fields={"merchant_id": first, "buyer_id": first, "ts": first},
        timestamp=TimestampSpec(),
        event_type=EventTypeSpec(column=names[0], map={}),
        format=fmt,
        csv=csv_options or CsvOptions(),
        jsonl=jsonl,
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
    layout = JsonLayout([], [], None, False, {})
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
        layout = _jsonl_keys(first, rows)
        names = layout.names
    if not names:
        raise ValueError(f"{first}: no columns found in the first rows; fix: check the file's format")
    jsonl = JsonlOptions(explode=layout.explode, keep_empty=layout.keep_empty)
    probe = _probe(names, fmt, csv_options, jsonl)
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
                    got = ", ".join(table.column_names) or (
                        bad["reason"][0].as_py() if bad.num_rows else "none read"
                    )
                    raise ValueError(
                        f"{path}: its columns ({got}) differ from {first}'s ({', '.join(names)}); fix: draft a"
                        " mapping for each layout separately, then put them under sources: in one mapping"
                        " (README, Bring your own logs)"
                    )
                tables.append(table)
                taken += table.num_rows
                if taken >= rows:
                    break
    table = pa.concat_tables(tables) if tables else pa.table({n: pa.array([], pa.string()) for n in names})
    return Sample(table, fmt, csv_options, used, unreadable, example, layout.nested, jsonl, layout.words)
