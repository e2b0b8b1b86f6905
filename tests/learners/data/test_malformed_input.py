"""Property tests: malformed rows and files never crash the readers (beyond the documented fail-fast
ValueError) and never lose a row: every physical line is either kept or quarantined, exactly once."""

from __future__ import annotations

import datetime as dt
import gzip
import json
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from learners.data.adapters import FORMATS, MappingAdapter, get_adapter
from learners.data.mapping import mapping_from_dict

MAPPING = mapping_from_dict(
    {
        "name": "prop",
        "fields": {"merchant_id": "shop", "buyer_id": "user", "ts": "when", "price": "price"},
        "timestamp": {"format": "%Y-%m-%d %H:%M:%S"},
        "event_type": {"column": "kind", "map": {"v": "product_view", "c": "add_to_cart", "b": "purchase"}},
    }
)
HEADER = "shop,user,when,kind,price"
LINE_MASK = (1 << 40) - 1
PROPERTY = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

word = st.text(alphabet="abcxyz0123456789", min_size=1, max_size=6)
# Valid times lie in canonical.PLAUSIBLE_YEARS; others are quarantined (tests/learners/data/test_timestamps.py).
stamp = st.datetimes(min_value=dt.datetime(1970, 1, 2), max_value=dt.datetime(2099, 12, 31)).map(
    lambda d: d.strftime("%Y-%m-%d %H:%M:%S")
)
garbage = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n"), max_size=40
)


@st.composite
def csv_line(draw):
    """(kind, text): kind says what the line must become; 'any' means either, but accounted for."""
    shop, user, code = draw(word), draw(word), draw(st.sampled_from("vcb"))
    price = draw(st.sampled_from(["", "0", "12.5", "3"]))
    when = draw(stamp)
    kind = draw(
        st.sampled_from(
            ["valid", "valid", "garbage", "columns", "timestamp", "code", "empty_id", "empty", "bad_price"]
        )
    )
    if kind == "valid":
        return kind, f"{shop},{user},{when},{code},{price}"
    if kind == "garbage":
        return "any", draw(garbage)
    if kind == "columns":
        fields = [shop, user, when, code, price]
        n = draw(st.sampled_from([1, 2, 3, 4, 6, 7]))
        return kind, ",".join((fields + fields)[:n])
    if kind == "timestamp":
        bad = draw(st.sampled_from(["2019-02-30 00:00:00", "yesterday", "2019-13-01 00:00:00", "1569888000"]))
        return kind, f"{shop},{user},{bad},{code},{price}"
    if kind == "code":
        return kind, f"{shop},{user},{when},{draw(st.sampled_from(['view', 'V', '0', 'purchase']))},{price}"
    if kind == "empty_id":
        return kind, f"{shop},,{when},{code},{price}"
    if kind == "bad_price":
        return kind, f"{shop},{user},{when},{code},{draw(st.sampled_from(['-1', 'abc', 'nan', '1e400']))}"
    return kind, ""


REASON_START = {
    "columns": "too ",
    "timestamp": "unparseable timestamp",
    "code": "unknown event code",
    "empty_id": "missing buyer_id",
    "empty": "empty line",
    "bad_price": "bad price",
}


def read_all(adapter, path):
    kept, quarantined, rows = [], [], 0
    for chunk in adapter.read([path]):
        assert chunk.rows_read == chunk.events.num_rows + chunk.quarantine.num_rows
        kept += [order & LINE_MASK for order in chunk.events["src_order"].to_pylist()]
        quarantined += chunk.quarantine.to_pylist()
        rows += chunk.rows_read
    return kept, quarantined, rows


@PROPERTY
@given(
    lines=st.lists(csv_line(), max_size=40),
    newline=st.sampled_from(["\n", "\r\n"]),
    final_newline=st.booleans(),
    compress=st.booleans(),
)
def test_csv_rows_are_kept_or_quarantined_exactly_once(lines, newline, final_newline, compress):
    text = newline.join([HEADER] + [t for _, t in lines]) + (newline if final_newline else "")
    if lines and lines[-1][1] == "" and not final_newline:
        text += newline  # a file cannot end in an empty line without its newline
    data = text.encode("utf-8")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / ("p.csv.gz" if compress else "p.csv")
        path.write_bytes(gzip.compress(data, mtime=0) if compress else data)
        kept, quarantined, rows = read_all(MappingAdapter(MAPPING), path)
    by_line = {q["line"]: q for q in quarantined}
    assert len(by_line) == len(quarantined)
    assert rows == len(lines)
    assert sorted(kept + list(by_line)) == list(range(2, len(lines) + 2))
    for number, (kind, raw) in enumerate(lines, start=2):
        if kind == "valid":
            assert number in kept
        elif kind != "any":
            problem = by_line[number]
            assert problem["reason"].startswith(REASON_START[kind]), (raw, problem)
            assert problem["file"] == str(path)
            if kind not in ("columns", "empty"):
                assert problem["column"] in ("user", "when", "kind", "price")


@PROPERTY
@given(
    lines=st.lists(st.binary(max_size=30).filter(lambda b: b"\n" not in b and b"\r" not in b), max_size=30)
)
def test_csv_random_bytes_lines_never_lose_rows(lines):
    """Every line starts a kept or quarantined row, or continues the quoted value of the row before it
    (a CSV value may span lines)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "b.csv"
        path.write_bytes(b"\n".join([HEADER.encode()] + lines) + b"\n")
        kept, quarantined, rows = read_all(MappingAdapter(MAPPING), path)
    starts = sorted(kept + [q["line"] for q in quarantined])
    assert rows == len(starts) == len(set(starts))
    assert all(2 <= line <= len(lines) + 1 for line in starts)
    for number in range(2, len(lines) + 2):
        if number not in starts:
            opened = max(line for line in starts if line < number)
            assert b'"' in lines[opened - 2], (number, lines)


json_value = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), word)


@st.composite
def json_line(draw):
    kind = draw(st.sampled_from(["object", "object", "garbage", "array", "nested", "empty", "number"]))
    if kind == "object":
        row = {
            "shop": draw(word),
            "user": draw(st.one_of(word, st.integers())),
            "when": draw(stamp),
            "kind": draw(st.sampled_from("vcbx")),
        }
        row.update(draw(st.dictionaries(st.sampled_from(["price", "extra"]), json_value, max_size=2)))
        return json.dumps(row)
    if kind == "nested":
        return json.dumps({"shop": draw(word), "user": [1], "when": draw(stamp), "kind": "v"})
    if kind == "array":
        return json.dumps(draw(st.lists(json_value, max_size=3)))
    if kind == "number":
        return json.dumps(draw(st.integers()))
    if kind == "empty":
        return ""
    return draw(garbage)


@PROPERTY
@given(lines=st.lists(json_line(), max_size=40), compress=st.booleans())
def test_jsonl_lines_are_kept_or_quarantined_exactly_once(lines, compress):
    data = ("\n".join(lines) + "\n").encode() if lines else b""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / ("p.jsonl.gz" if compress else "p.jsonl")
        path.write_bytes(gzip.compress(data, mtime=0) if compress else data)
        kept, quarantined, rows = read_all(MappingAdapter(MAPPING), path)
    assert rows == len(lines)
    assert sorted(kept + [q["line"] for q in quarantined]) == list(range(1, len(lines) + 1))
    for q in quarantined:
        assert q["file"] == str(path) and q["reason"]


@PROPERTY
@given(data=st.binary(max_size=200), name=st.sampled_from(["f.csv", "f.csv.gz", "f.jsonl", "f.parquet"]))
def test_random_files_fail_fast_or_read_without_loss(data, name):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        path.write_bytes(data)
        try:
            kept, quarantined, rows = read_all(MappingAdapter(MAPPING), path)
        except ValueError as err:
            assert str(path) in str(err) and "fix:" in str(err)
            return
    assert rows == len(kept) + len(quarantined)
    assert len(set(kept) | {q["line"] for q in quarantined}) == rows


@PROPERTY
@given(name=st.sampled_from(sorted(FORMATS)), lines=st.lists(csv_line(), max_size=25))
def test_dedicated_adapters_never_lose_rows(name, lines):
    adapter = get_adapter(format=name)
    header = (
        [] if name == "taobao" else [",".join(adapter.mapping.csv.columns or adapter.mapping.columns_used())]
    )
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "d.csv"
        path.write_text("".join(text + "\n" for text in header + [t for _, t in lines]))
        kept, quarantined, rows = read_all(adapter, path)
    first = 1 if name == "taobao" else 2
    assert rows == len(lines)
    assert sorted(kept + [q["line"] for q in quarantined]) == list(range(first, len(lines) + first))
