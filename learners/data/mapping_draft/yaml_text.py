"""The drafted mapping as YAML text with comments (hand formatted, so every line can say why).

What the sample cannot tell is written as an empty key with a TODO comment, so the mapping fails to
load with a message naming the key until the user fills it in.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from learners.data.canonical import INT_TEXT, NUMBER_TEXT
from learners.data.mapping_draft.column_profile import ColumnProfile, name_tokens
from learners.data.mapping_draft.event_codes import EventCode
from learners.data.mapping_draft.sample import Sample
from learners.data.mapping_draft.timestamps import TimestampGuess
from learners.data.schema import SESSION_GAP_SECONDS, event_vocabulary_lines

COMMENT_COLUMN = 36
"""Column where the trailing comments of the drafted YAML start."""
YAML_WORDS = frozenset({"y", "n", "yes", "no", "on", "off", "true", "false", "null", "~"})
"""Plain scalars YAML would read as booleans or null: quoted when they are codes or names."""
PLAIN_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-.]*$")


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


ORDER_WORDS = frozenset(
    {"purchase", "purchases", "order", "orders", "invoice", "invoiceno", "transaction", "transactions"}
    | {"sale", "sales", "buys", "quantity", "qty"}
)
"""Words of a column or file name that say the rows are orders (UCI Online Retail's InvoiceNo and
Quantity, Diginetica's train-purchases.csv): a log without an event column is then purchases."""


def render_yaml(
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
    """The mapping's YAML text with a comment per line, and the keys left TODO."""
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
    explode = sample.jsonl.explode
    if explode is not None and sample.jsonl.keep_empty:
        out.append(
            _line(
                f"jsonl: {{explode: {_scalar(explode)}, keep_empty: true}}",
                "a row per element of this list; a line with none is one row",
            )
        )
    elif explode is not None:
        out.append(
            _line(
                f"jsonl: {{explode: {_scalar(explode)}}}", "each line's events are the elements of this list"
            )
        )
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
            out.append(f"  # {key}: {notes.get(key, missing)}")
    unused = [c for c in profiles if c not in used]
    if unused:
        out.append(f"  # not used: {', '.join(col(c) for c in unused)}")
    if sample.nested:
        out.append(f"  # not usable (nested JSON values): {', '.join(sample.nested)}")
    if any("[]." in key for key in sample.nested):
        out.append(
            "  # a list inside the events' list is not read: to use it, flatten the file to a row per its"
            " element first (README, Bring your own logs)"
        )

    out.append("timestamp:")
    if ts is None:
        out.append(
            _line(
                "  format: iso",
                "TODO: no column reads as times; give a strptime pattern, unix_s, unix_ms, unix_us or unix_ns",
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
        # A file's name says more than a column's (H&M's transactions_train.csv, sales_channel_id).
        ordered = [f.name for f in sample.files if name_tokens(f.stem) & ORDER_WORDS]
        ordered += [p.name for p in profiles.values() if p.tokens & ORDER_WORDS]
        if ordered:
            constant, why = "purchase", f"{ordered[0]!r} reads as orders: a log of purchases only?"
        else:
            constant, why = "product_view", "a log of one event type (views only)?"
        out.append(
            _line(
                f"  # constant: {constant}",
                f"{why} Then use this line instead of column and map",
            )
        )
        todo.append("event_type (column and map, or constant for a log of one event type)")
    else:
        out.append(_line(f"  column: {col(event)}", notes.get("event", "")))
        out.append("  map:")
        mapped = [c for c in codes if c.event is not None]
        for c in mapped:
            out.append(_line(f"    {_scalar(c.code)}: {c.event}", f"{c.rows:,} rows"))
        left = [c for c in codes if c.event is None and c.drop is None]
        for c in left:
            why = (
                "numeric code: look up its meaning in the source's documentation"
                if _numeric(c.code)
                else "TODO: a type above, or list it under drop"
            )
            out.append(
                _line(f"    {json.dumps(c.code, ensure_ascii=False)}: TODO", f"{c.rows:,} rows; {why}")
            )
        empty = len(profiles[event].texts) - profiles[event].non_null
        if empty:
            why = "TODO: rows whose code is empty (Coveo's page views): a type above, or list it under drop"
            out.append(_line('    "": TODO', f"{empty:,} rows; {why}"))
            left.append(EventCode("", empty, None))
        if left:
            todo.append("event_type.map (" + ", ".join(repr(c.code) for c in left) + ")")
        dropped = [c for c in codes if c.event is None and c.drop is not None]
        if dropped:
            out.append(_line("  drop:", "codes left out on purpose: counted per code in the manifest"))
            for c in dropped:
                out.append(_line(f"    - {_scalar(c.code)}", f"{c.rows:,} rows; {c.drop}"))
        else:
            out.append(
                _line(
                    "  # drop: []",
                    "codes to leave out on purpose: counted per code in the manifest, not quarantined",
                )
            )
    out += _returns_hint(profiles)
    return "\n".join(out) + "\n", todo


def _returns_hint(profiles: dict[str, ColumnProfile]) -> list[str]:
    """A commented drop_rows rule where an amount column has negative values: returns or
    cancellations, which a purchase log would otherwise count as purchases (UCI Online Retail)."""
    for p in profiles.values():
        if not p.tokens & {"quantity", "qty", "units"} or p.ints < 0.95:
            continue
        values = pc.cast(
            p.texts.drop_null().filter(pc.match_substring_regex(p.texts.drop_null(), INT_TEXT)), pa.int64()
        )
        negative = int(pc.sum(pc.less(values, 0).cast(pa.int64())).as_py() or 0)
        if negative:
            rule = f"# drop_rows: [{{column: {_scalar(p.name)}, below: 0}}]"
            why = f"{negative:,} sampled rows have a negative {p.name}: returns or cancellations? leave them out"
            return [_line(rule, why)]
    return []
