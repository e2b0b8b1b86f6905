"""JSON lines: one object per line, or one per element of a nested event list (``jsonl.explode``,
OTTO's layout), read to text columns with exact line numbers.

A column is a key, or a dotted path through nested objects (``ecommerce.transaction_id``). A path
step into a list of ``{key, value}`` objects picks the element with that key, as GA4's BigQuery
export keeps its event parameters: ``event_params.ga_session_id.value.int_value``.

A chunk of good lines of plain columns is read by Arrow's JSON reader at once; a chunk with a bad line
(bad JSON, blank, not UTF-8, an empty event list) or with floats, booleans or nesting, and a file
mapped by dotted paths or with ``keep_empty``, is read line by line, so that every line keeps its own
quarantine reason. Both give the same rows.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pajson

from learners.data.mapping import REQUIRED_FIELDS, JsonlOptions, SourceMapping
from learners.data.readers import (
    READ_ERRORS,
    RawChunk,
    cannot_read,
    check_columns,
    is_utf8,
    open_binary,
    quarantine_table,
    text_of,
)

JSONL_BATCH_LINES = 1 << 16


def _json_text(value: object) -> str | None:
    """A JSON scalar as source text: strings as they are, numbers as JSON writes them."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value)


def read_jsonl(
    path: Path, file_index: int, mapping: SourceMapping, columns: list[str] | None = None
) -> Iterator[RawChunk]:
    """Stream a JSON-lines file (plain or gzip): one object per line (or, with ``jsonl.explode``, one
    per element of its event list); bad lines are quarantined. The table holds the mapped columns (or
    ``columns``), as text. A mapped column that no object of the first chunk has stops the read."""
    mapped = columns is None
    columns = mapping.columns_used() if columns is None else columns
    stream = open_binary(path)
    try:
        line_no = 0
        batch: list[bytes] = []
        while True:
            try:
                raw = stream.readline()
            except READ_ERRORS as err:
                raise cannot_read(path, err) from None
            if raw:
                batch.append(raw)
            if batch and (not raw or len(batch) >= JSONL_BATCH_LINES):
                chunk, seen = _jsonl_chunk(
                    path, file_index, columns, line_no + 1, batch, mapping.jsonl, note=line_no == 0
                )
                if line_no == 0 and seen and mapped:
                    _check_jsonl_columns(path, seen, mapping)
                yield chunk
                line_no += len(batch)
                batch = []
            if not raw:
                break
    finally:
        stream.close()


def _check_jsonl_columns(path: Path, seen: dict[str, bool], mapping: SourceMapping) -> None:
    """Stop at a mapped column that no object has; where the events sit in a list, say to explode it."""
    lists = [key for key, is_list in seen.items() if is_list]
    fix = "correct the mapping or the file"
    if lists and mapping.jsonl.explode is None:
        fix = f"the events are nested in '{lists[0]}': add jsonl: {{explode: {lists[0]}}} to the mapping"
    # An optional field may be left out of every object where it is null; a required one may not.
    required = [mapping.fields[f].column for f in REQUIRED_FIELDS] + [mapping.event_type.column]
    required += [rule.column for rule in mapping.drop_rows]
    present = [c for c in required if c is not None]
    check_columns(path, "every object of its first lines", sorted(seen), mapping, fix=fix, columns=present)


def _jsonl_chunk(
    path: Path,
    file_index: int,
    columns: list[str],
    first: int,
    raws: list[bytes],
    options: JsonlOptions,
    note: bool = True,
) -> tuple[RawChunk, dict[str, bool]]:
    """The chunk, and (where ``note``: only the first chunk's are checked) every column name (dotted
    paths included) its good objects hold, each with whether it holds a list of objects."""
    # Arrow reads no dotted path nor a line without events: such a file goes line by line (GA4's).
    arrow = not options.keep_empty and not any("." in c for c in columns)
    fast = _arrow_chunk(path, file_index, columns, first, raws, options.explode) if arrow else None
    if fast is not None:
        return fast
    values: dict[str, list[str | None]] = {c: [] for c in columns}
    lines: list[int] = []
    seen: dict[str, bool] = {}
    bad: tuple[list[int], list[str | None], list[str], list[str]] = ([], [], [], [])
    for i, raw in enumerate(raws):
        text = text_of(raw.rstrip(b"\r\n"))
        problem, column, rows = _parse_json_line(raw, text, columns, options, seen if note else None)
        # Every mapped column found: the rest of the chunk cannot change the column check.
        note = note and not all(c in seen for c in columns)
        if problem is not None:
            for store, item in zip(bad, (first + i, column, problem, text), strict=True):
                store.append(item)
            continue
        for row in rows:
            lines.append(first + i)
            for c in columns:
                values[c].append(row[c])
    table = pa.table({c: pa.array(v, pa.string()) for c, v in values.items()})
    quarantine = quarantine_table(str(path), *bad)
    return RawChunk(table, np.asarray(lines, np.int64), quarantine, str(path), file_index), seen


def _arrow_paths(fields: pa.StructType | pa.Schema, prefix: str = "") -> Iterator[tuple[str, bool]]:
    """``_paths`` of an Arrow schema: every field and dotted path into structs, and whether it is a
    list of structs."""
    for f in fields:
        listed = pa.types.is_list(f.type) and pa.types.is_struct(f.type.value_type)
        yield prefix + f.name, listed
        if pa.types.is_struct(f.type):
            yield from _arrow_paths(f.type, f"{prefix}{f.name}.")


def _arrow_text(values: pa.Array) -> pa.Array | None:
    """A column as ``_json_text`` writes it, for the types whose text Arrow writes alike (strings and
    integers); None for others (floats, booleans, nesting), which the line-by-line path reads."""
    kind = values.type
    if pa.types.is_string(kind) or pa.types.is_null(kind) or pa.types.is_integer(kind):
        return values.cast(pa.string())
    return None


def _arrow_chunk(
    path: Path, file_index: int, columns: list[str], first: int, raws: list[bytes], explode: str | None
) -> tuple[RawChunk, dict[str, bool]] | None:
    """The chunk read by Arrow's JSON reader at once, when every line is a good object of plain
    columns (the usual case, several times faster than line by line); None sends it line by line,
    which quarantines what is wrong with each line."""
    data = b"".join(raws)
    if not data.endswith(b"\n"):
        data += b"\n"
    try:
        table = pajson.read_json(io.BytesIO(data), read_options=pajson.ReadOptions(block_size=len(data) + 1))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError):
        return None
    if table.num_rows != len(raws):  # a blank line: its own quarantine reason
        return None
    seen = dict(_arrow_paths(table.schema))
    parent = pa.array(np.arange(len(raws)), pa.int64())
    inner: pa.StructArray | None = None
    if explode is not None:
        events = table.column(explode).combine_chunks() if explode in table.column_names else None
        if (
            events is None
            or not seen[explode]
            or events.null_count
            or pc.min(pc.list_value_length(events)).as_py() == 0
        ):
            return None
        inner = pc.list_flatten(events)
        parent = pc.list_parent_indices(events)
        seen.update(_arrow_paths(inner.type))
    out = {}
    for c in columns:
        if inner is not None and inner.type.get_field_index(c) >= 0:
            values = inner.field(c)
        elif c in table.column_names:
            values = table.column(c).combine_chunks().take(parent)
        else:  # no object has it (dotted paths never come here)
            values = pa.nulls(len(parent), pa.string())
        text = _arrow_text(values)
        if text is None:
            return None
        out[c] = text
    lines = first + parent.to_numpy(zero_copy_only=False).astype(np.int64)
    chunk = RawChunk(pa.table(out), lines, quarantine_table(str(path), [], [], [], []), str(path), file_index)
    return chunk, seen


def is_key_value_list(value: object) -> bool:
    """A list of ``{key, value}`` objects (GA4's ``event_params``, ``user_properties``): a table of
    named values that a path reads by key, not a list of events."""
    return (
        isinstance(value, list)
        and bool(value)
        and all(isinstance(e, dict) and "key" in e and "value" in e for e in value)
    )


def _paths(obj: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, bool]]:
    """Every key of ``obj`` and dotted path into its nested objects and ``{key, value}`` lists, with
    whether it holds a list of objects (one to explode)."""
    for key, value in obj.items():
        if is_key_value_list(value):
            yield prefix + key, False
            for element in value:
                yield from _paths({str(element["key"]): element}, f"{prefix}{key}.")
            continue
        yield prefix + key, isinstance(value, list) and bool(value) and isinstance(value[0], dict)
        if isinstance(value, dict):
            yield from _paths(value, f"{prefix}{key}.")


def _note_paths(seen: dict[str, bool], obj: dict[str, Any]) -> None:
    for path, is_list in _paths(obj):
        seen[path] = seen.get(path, False) or is_list


def _lookup(objects: tuple[dict[str, Any], ...], column: str) -> object:
    """``column`` in the first of ``objects`` that has it: a key, else a dotted path through objects."""
    for obj in objects:
        if column in obj:
            return obj[column]
        if "." not in column:
            continue
        value: object = obj
        for part in column.split("."):
            if isinstance(value, dict):
                value = value.get(part)
            elif is_key_value_list(value):  # the element of that key
                value = next((e for e in value if e["key"] == part), None)  # type: ignore[union-attr]
            elif isinstance(value, list) and value:
                return value  # a list of events inside the path: the caller names it
            else:
                value = None
        if value is not None:
            return value
    return None


def _parse_json_line(
    raw: bytes, text: str, columns: list[str], options: JsonlOptions, seen: dict[str, bool] | None
) -> tuple[str | None, str | None, list[dict[str, str | None]]]:
    if not text.strip():
        return "empty line", None, []
    if not is_utf8(raw):
        return "line is not valid UTF-8 text", None, []
    try:
        obj = json.loads(text)
    except ValueError as err:
        return f"bad JSON: {err}", None, []
    if not isinstance(obj, dict):
        return f"bad JSON: expected an object, found {type(obj).__name__}", None, []
    elements: list[Any] = [None]
    explode = options.explode
    if explode is not None:
        elements = obj.get(explode)  # type: ignore[assignment]
        if options.keep_empty and not elements:  # absent, null or []: the line's own row
            elements = [None]
        elif not isinstance(elements, list) or not all(isinstance(e, dict) for e in elements):
            return f"bad JSON: '{explode}' (jsonl.explode) is not a list of objects", explode, []
        elif not elements:
            return (
                f"no events: '{explode}' (jsonl.explode) is an empty list; fix: where such a line is"
                " an event of its own (one without items), add keep_empty: true under jsonl",
                explode,
                [],
            )
    if seen is not None:
        _note_paths(seen, obj)
    rows: list[dict[str, str | None]] = []
    for element in elements:
        objects = (obj,) if element is None else (element, obj)
        if element is not None and seen is not None:
            _note_paths(seen, element)
        row: dict[str, str | None] = {}
        for c in columns:
            value = _lookup(objects, c)
            if isinstance(value, (dict, list)):
                if isinstance(value, dict):
                    fix = f"; name a key inside it ({c}.KEY)"
                elif explode is not None:
                    fix = (
                        f"; a list inside '{explode}' (jsonl.explode) is not read: flatten the file to a row"
                        " per element first (README, Bring your own logs)"
                    )
                else:
                    fix = "; jsonl: {explode: KEY}"
                return (
                    f"bad JSON: column '{c}' holds a nested {type(value).__name__}, expected a scalar{fix}",
                    c,
                    [],
                )
            row[c] = _json_text(value)
        rows.append(row)
    return None, None, rows
