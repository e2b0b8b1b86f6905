"""Readers: exact physical line numbers, structurally broken rows quarantined, all formats and layouts."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from learners.data import csv_lines, readers
from learners.data.adapters import MappingAdapter
from learners.data.mapping import mapping_from_dict

BASE = {
    "name": "small",
    "fields": {"merchant_id": "shop", "buyer_id": "user", "ts": "when", "price": "price"},
    "timestamp": {"format": "unix_s"},
    "event_type": {"column": "kind", "map": {"v": "product_view", "b": "purchase"}},
}
MAPPING = mapping_from_dict(BASE)
HEADER = "shop,user,when,kind,price"


def run(path: Path, mapping=MAPPING):
    events, quarantine, rows = [], [], 0
    for chunk in MappingAdapter(mapping).read([path]):
        assert chunk.rows_read == chunk.events.num_rows + chunk.quarantine.num_rows
        events += chunk.events.to_pylist()
        quarantine += chunk.quarantine.to_pylist()
        rows += chunk.rows_read
    return events, quarantine, rows


def lines_of(events):
    return [e["src_order"] & ((1 << 40) - 1) for e in events]


def test_blank_lines_and_wrong_counts_keep_exact_line_numbers(tmp_path):
    body = [HEADER, "s,u1,10,v,1.5", "", "s,u2,20,v", "s,u3,30,b,2,extra", "s,u4,40,b,3", "", "s,u5,50,v,0"]
    path = tmp_path / "x.csv"
    path.write_text("\n".join(body) + "\n")
    events, quarantine, rows = run(path)
    assert rows == len(body) - 1
    assert lines_of(events) == [2, 6, 8]
    assert [e["buyer_id"] for e in events] == ["u1", "u4", "u5"]
    got = {q["line"]: q for q in quarantine}
    assert sorted(got) == [3, 4, 5, 7]
    assert got[3]["reason"] == "empty line" and got[7]["reason"] == "empty line"
    assert got[4]["reason"].startswith("too few columns: expected 5, found 4")
    assert got[5]["reason"].startswith("too many columns: expected 5, found 6")
    assert got[4]["raw"] == "s,u2,20,v" and got[4]["file"] == str(path)


def test_final_newline_is_not_a_row_and_crlf_and_gzip_read_alike(tmp_path):
    rows = [HEADER, "s,u1,10,v,1", "s,u2,20,b,2"]
    plain = tmp_path / "a.csv"
    plain.write_text("\n".join(rows) + "\n")
    crlf = tmp_path / "b.csv"
    crlf.write_bytes(("\r\n".join(rows)).encode())
    zipped = tmp_path / "c.csv.gz"
    zipped.write_bytes(gzip.compress(("\n".join(rows) + "\n").encode()))
    results = [run(p) for p in (plain, crlf, zipped)]
    for events, quarantine, count in results:
        assert count == 2 and quarantine == [] and lines_of(events) == [2, 3]
    assert results[0][0] == [dict(e, src_order=e["src_order"]) for e in results[2][0]]


def test_headerless_tsv_by_extension(tmp_path):
    mapping = mapping_from_dict(
        dict(BASE, csv={"header": False, "columns": ["shop", "user", "when", "kind", "price"]})
    )
    path = tmp_path / "x.tsv"
    path.write_text("s\tu1\t10\tv\t1\ns\tu2\t20\tb\t\n")
    events, quarantine, rows = run(path, mapping)
    assert rows == 2 and lines_of(events) == [1, 2] and events[1]["price"] is None


def test_quoted_values_and_unbalanced_quotes(tmp_path):
    path = tmp_path / "q.csv"
    path.write_text(f'{HEADER}\n"s,1",u1,10,v,1\ns,"u2,20,v,1\ns,u3,30,v,1\n')
    events, quarantine, _ = run(path)
    assert [e["merchant_id"] for e in events] == ["s,1", "s"]
    assert lines_of(events) == [2, 4]
    assert quarantine[0]["line"] == 3 and "quoted value does not close" in quarantine[0]["reason"]


def test_a_quoted_value_spanning_lines_is_one_row_on_the_line_it_starts(tmp_path):
    """Shopify's order notes: a line break inside quotes is the value's, not a new row."""
    path = tmp_path / "orders.csv"
    path.write_text(
        f'{HEADER}\ns,u1,10,v,1\n"s\nnote: gift\n\nwrap",u2,20,v,2\ns,u3,30,b,3\n"s,u4,40,v,4\ns,u5,50,v,5\n'
    )
    events, quarantine, rows = run(path)
    assert [e["merchant_id"] for e in events] == ["s", "s\nnote: gift\n\nwrap", "s", "s"]
    assert lines_of(events) == [2, 3, 7, 9]  # the record of lines 3-6 is line 3's
    assert rows == 5  # records, not lines: 4 kept and the stray quote's line quarantined
    (bad,) = quarantine
    assert bad["line"] == 8 and "does not close" in bad["reason"] and bad["raw"] == '"s,u4,40,v,4'


def test_stray_quotes_do_not_swallow_the_good_lines_between_them(tmp_path):
    """Joined, these three lines would make one record of 2 values, not the header's 5: they stay lines."""
    path = tmp_path / "stray.csv"
    path.write_text(f'{HEADER}\ns,"u2,20,v,1\ns,u3,30,v,1\nx",u4,40\n')
    events, quarantine, rows = run(path)
    assert lines_of(events) == [3] and rows == 3
    assert [q["line"] for q in quarantine] == [2, 4]


def test_records_spanning_lines_read_as_the_csv_module_reads_them_across_blocks(tmp_path):
    """A third of the records span lines, in a file of several of the reader's 64 kB reads (one
    record crosses from one to the next); every value and line number matches Python's csv module."""
    import csv

    rows = [HEADER.split(",")]
    for i in range(12000):
        shop = f"s{i}" if i % 3 else f's{i}\nline two\n"quoted", and a comma'
        rows.append([shop, f"u{i}", str(1000 + i), "v", "1.5"])
    path = tmp_path / "big.csv"
    with path.open("w", newline="") as fh:
        csv.writer(fh, lineterminator="\n").writerows(rows)
    expected, starts = [], []
    with path.open(newline="") as fh:
        reader = csv.reader(fh)
        next(reader)
        line = reader.line_num + 1
        for row in reader:
            expected.append(row[0])
            starts.append(line)
            line = reader.line_num + 1
    events, quarantine, total = run(path)
    assert quarantine == [] and total == 12000
    assert [e["merchant_id"] for e in events] == expected
    assert lines_of(events) == starts


def test_an_id_falls_back_to_another_column_where_it_is_empty(tmp_path):
    """Shopify's custom items have a name but no SKU: ``{column: Lineitem sku, else: Lineitem name}``."""
    values = dict(BASE, fields=dict(BASE["fields"], product_id={"column": "sku", "else": "name"}))
    path = tmp_path / "orders.csv"
    path.write_text(f"{HEADER},sku,name\ns,u1,10,b,1,KL-1,Tee\ns,u2,20,b,2,,Gift wrap\ns,u3,30,b,3,,\n")
    events, quarantine, _ = run(path, mapping_from_dict(values))
    assert [e["product_id"] for e in events] == ["KL-1", "Gift wrap"]
    (bad,) = quarantine
    assert bad["line"] == 4 and "columns 'sku' and 'name' are empty" in bad["reason"]
    with pytest.raises(ValueError, match="only an id may fall back"):
        mapping_from_dict(dict(BASE, fields=dict(BASE["fields"], ts={"column": "when", "else": "sku"})))


def test_a_zip_archive_of_one_log_reads_as_the_log_and_others_say_what_to_do(tmp_path):
    """Kaggle ships logs zipped; a workbook is a zip too."""
    import zipfile

    plain = tmp_path / "events.csv"
    plain.write_text(f"{HEADER}\ns,u1,10,v,1\ns,u2,20,b,2\n")
    one = tmp_path / "events.zip"  # no inner extension in the name: the member's says CSV
    with zipfile.ZipFile(one, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.write(plain, "2019-Oct.csv")
    assert readers.file_format(one) == "csv"
    assert run(one) == run(plain)
    two = tmp_path / "two.zip"
    with zipfile.ZipFile(two, "w") as archive:
        archive.write(plain, "a.csv")
        archive.write(plain, "b.csv")
    with pytest.raises(ValueError, match=r"a zip archive of 2 files \(a.csv, b.csv\); fix: unzip it"):
        run(two)
    book = tmp_path / "orders.xlsx"
    with zipfile.ZipFile(book, "w") as archive:
        archive.writestr("[Content_Types].xml", "<Types/>")
        archive.writestr("xl/workbook.xml", "<workbook/>")
    with pytest.raises(ValueError, match="an Excel workbook, not a log file; fix: save each sheet as CSV"):
        run(book)


def test_a_missing_column_names_the_first_columns_and_says_a_dotted_path_is_for_json(tmp_path):
    """Adobe's feed has 294 columns; a dotted path names a key of nested JSON lines, not a CSV column."""
    names = [f"c{i}" for i in range(40)]
    path = tmp_path / "wide.csv"
    path.write_text(",".join(names) + "\n" + ",".join("1" * 40) + "\n")
    values = dict(BASE, fields={"merchant_id": "c0", "buyer_id": "c1", "ts": "contexts.product.id"})
    with pytest.raises(ValueError, match=r"c29, \.\.\. \(40 in all\); fix: a dotted path reads nested JSON"):
        run(path, mapping_from_dict(values))


def test_invalid_utf8_line_is_quarantined(tmp_path):
    path = tmp_path / "u.csv"
    path.write_bytes(f"{HEADER}\ns,u1,10,v,1\ns,\xff\xfe,20,v,1\ns,u3,30,v,1\n".encode("latin-1"))
    events, quarantine, _ = run(path)
    assert lines_of(events) == [2, 4]
    assert quarantine[0]["line"] == 3 and "UTF-8" in quarantine[0]["reason"]


def test_many_chunks_keep_line_numbers(tmp_path, monkeypatch):
    monkeypatch.setattr(csv_lines, "CSV_BLOCK_BYTES", 64)
    body = [HEADER]
    for i in range(300):
        body.append("" if i % 17 == 0 else (f"s,u{i},{i},v" if i % 23 == 0 else f"s,u{i},{i},v,1"))
    path = tmp_path / "many.csv"
    path.write_text("\n".join(body))
    events, quarantine, rows = run(path)
    assert rows == 300
    for event in events:
        assert body[(event["src_order"]) - 1].split(",")[1] == event["buyer_id"]
    assert sorted(lines_of(events) + [q["line"] for q in quarantine]) == list(range(2, 302))


def test_empty_and_header_only_files_read_zero_rows(tmp_path):
    empty = tmp_path / "e.csv"
    empty.write_text("")
    header_only = tmp_path / "h.csv"
    header_only.write_text(HEADER + "\n")
    for path in (empty, header_only):
        assert run(path) == ([], [], 0)


def test_missing_header_column_fails_fast_listing_columns(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text("shop,user,kind,price\ns,u,v,1\n")
    with pytest.raises(ValueError) as err:
        run(path)
    message = str(err.value)
    assert str(path) in message and "line 1 (header)" in message and "'when'" in message
    assert "available columns: shop, user, kind, price" in message and "fix:" in message


def test_unreadable_files_fail_fast(tmp_path):
    broken = tmp_path / "b.csv.gz"
    body = HEADER + "\n" + "".join(f"s,u{i * 7919 % 10007},{i * 104729},v,{i % 97}\n" for i in range(20000))
    compressed = gzip.compress(body.encode())
    broken.write_bytes(compressed[: len(compressed) // 2])
    with pytest.raises(ValueError, match=r"b.csv.gz: cannot read the file"):
        run(broken)
    not_parquet = tmp_path / "n.parquet"
    not_parquet.write_text("hello")
    with pytest.raises(ValueError, match=r"n.parquet: cannot read the file"):
        run(not_parquet)
    with pytest.raises(ValueError, match=r"gone.csv: cannot read the file"):
        run(tmp_path / "gone.csv")


def test_parquet_typed_columns(tmp_path):
    table = pa.table(
        {
            "shop": pa.array([1, 1, 2], pa.int64()),
            "user": pa.array(["a", "", "c"]),
            "when": pa.array([10, 20, 30], pa.int64()),
            "kind": pa.array(["v", "b", "x"]),
            "price": pa.array([1.5, None, 2.0]),
        }
    )
    path = tmp_path / "t.parquet"
    pq.write_table(table, path)
    events, quarantine, rows = run(path)
    assert rows == 3 and lines_of(events) == [1]
    assert events[0]["merchant_id"] == "1" and events[0]["ts"].timestamp() == 10
    reasons = {q["line"]: q for q in quarantine}
    assert reasons[2]["reason"].startswith("missing buyer_id") and reasons[2]["column"] == "user"
    assert (
        reasons[3]["reason"].startswith("unknown event code in column 'kind'")
        and json.loads(reasons[3]["raw"])["kind"] == "x"
    )


def test_parquet_missing_column_fails_fast(tmp_path):
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"shop": ["s"], "user": ["u"]}), path)
    with pytest.raises(
        ValueError, match=r"t.parquet: the Parquet schema has no column 'when'.*available columns: shop, user"
    ):
        run(path)


def test_jsonl_good_and_bad_lines(tmp_path):
    lines = [
        json.dumps({"shop": "s", "user": "u1", "when": 10, "kind": "v", "price": 1.25}),
        "{not json",
        "",
        "[1, 2]",
        json.dumps({"shop": "s", "user": {"id": 1}, "when": 10, "kind": "v"}),
        json.dumps({"shop": "s", "user": 7, "when": "20", "kind": "b"}),
    ]
    path = tmp_path / "x.jsonl.gz"
    path.write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))
    events, quarantine, rows = run(path)
    assert rows == 6 and lines_of(events) == [1, 6]
    assert events[0]["price"] == 1.25 and events[1]["buyer_id"] == "7"
    got = {q["line"]: q["reason"] for q in quarantine}
    assert got[2].startswith("bad JSON") and got[3] == "empty line"
    assert "expected an object" in got[4] and "nested" in got[5]


def test_bad_values_are_quarantined_with_reason_and_column(tmp_path):
    path = tmp_path / "v.csv"
    path.write_text(
        f"{HEADER}\n,u,10,v,1\ns,u,tomorrow,v,1\ns,u,10,zz,1\ns,u,10,v,-2\ns,u,10,v,abc\ns,u,10,v,\n"
    )
    events, quarantine, rows = run(path)
    assert rows == 6 and lines_of(events) == [7]
    got = [(q["line"], q["column"], q["reason"].split(" ")[0]) for q in quarantine]
    assert got == [
        (2, "shop", "missing"),
        (3, "when", "unparseable"),
        (4, "kind", "unknown"),
        (5, "price", "bad"),
        (6, "price", "bad"),
    ]
    assert "known codes: 'v', 'b'" in quarantine[2]["reason"]
