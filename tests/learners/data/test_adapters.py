"""Adapters on the real samples: counts documented in ../shared/data/DATA.md, and the dedicated
adapters producing exactly the generic adapter's tables with the shipped mapping files."""

from __future__ import annotations

import csv
import datetime as dt
import zoneinfo
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest
import yaml

from learners.data.adapters import FORMATS, MappingAdapter, expand_inputs, get_adapter
from learners.data.mapping import mapping_from_dict, mappings_from_dict
from learners.data.schema import CANONICAL_EVENTS, QUARANTINE

EXAMPLES = Path(__file__).resolve().parents[3] / "examples" / "mappings"


def collect(adapter, paths):
    """All events and quarantined rows, and the rows read that were not dropped on purpose; asserts
    the count invariant on every chunk."""
    events, quarantine, rows_read = [], [], 0
    for chunk in adapter.read(paths):
        dropped = sum(chunk.dropped.values())
        assert chunk.rows_read == chunk.events.num_rows + chunk.quarantine.num_rows + dropped
        assert chunk.events.schema.equals(CANONICAL_EVENTS)
        assert chunk.quarantine.schema.equals(QUARANTINE)
        events.append(chunk.events)
        quarantine.append(chunk.quarantine)
        rows_read += chunk.rows_read - dropped
    events_table = pa.concat_tables(events) if events else CANONICAL_EVENTS.empty_table()
    quarantine_table = pa.concat_tables(quarantine) if quarantine else QUARANTINE.empty_table()
    assert rows_read == events_table.num_rows + quarantine_table.num_rows
    return events_table, quarantine_table, rows_read


def physical_lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def generic(name: str) -> MappingAdapter:
    return get_adapter(mapping=EXAMPLES / f"{name}.yaml")


def distinct_pairs(events: pa.Table) -> int:
    return events.group_by(["merchant_id", "buyer_id"]).aggregate([]).num_rows


def test_tmall_ijcai15_counts_from_data_md(real_file):
    events, quarantine, rows_read = collect(generic("tmall-ijcai15"), [real_file("tmall-ijcai15")])
    assert rows_read == 100_000
    assert quarantine.num_rows == 0  # exact duplicate rows are real repeat views: all kept
    assert distinct_pairs(events) == 23_469
    assert pc.count_distinct(events["merchant_id"]).as_py() == 4_115
    assert pc.count_distinct(events["buyer_id"]).as_py() == 710
    counts = Counter(events["event_type"].to_pylist())
    assert counts == {"product_view": 88_033, "add_to_cart": 70, "purchase": 6_928, "favorite": 4_969}


def test_tmall_ijcai15_values_follow_the_source_text(real_file):
    path = real_file("tmall-ijcai15")
    events, _, _ = collect(generic("tmall-ijcai15"), [path])
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))[:500]
    head = events.slice(0, 500).to_pylist()
    for line, (row, event) in enumerate(zip(rows, head, strict=True), start=2):
        assert event["buyer_id"] == row["user_id"] and event["merchant_id"] == row["seller_id"]
        assert event["product_id"] == row["item_id"] and event["category_id"] == row["cat_id"]
        day = dt.datetime.strptime("2014" + row["time_stamp"], "%Y%m%d").replace(tzinfo=dt.UTC)
        assert event["ts"] == day
        assert event["src_order"] == line


def test_tmall_brand_counts_from_data_md(real_file):
    events, quarantine, rows_read = collect(generic("tmall-brand"), [real_file("tmall-brand")])
    assert rows_read == 182_880 and quarantine.num_rows == 0
    assert distinct_pairs(events) == 57_655
    assert pc.count_distinct(events["merchant_id"]).as_py() == 9_531
    counts = Counter(events["event_type"].to_pylist())
    assert counts == {"product_view": 174_539, "purchase": 6_984, "favorite": 1_204, "add_to_cart": 153}
    assert events["product_id"].null_count == events.num_rows
    assert events["price"].null_count == events.num_rows
    days = pc.unique(events["ts"]).to_pylist()
    assert min(days) >= dt.datetime(2014, 4, 15, tzinfo=dt.UTC) and max(days) <= dt.datetime(
        2014, 8, 15, tzinfo=dt.UTC
    )


def test_rees46_truncated_last_line_is_quarantined(real_file):
    path = real_file("rees46")
    lines = physical_lines(path)
    events, quarantine, rows_read = collect(generic("rees46"), [path])
    assert rows_read == len(lines) - 1
    assert quarantine.num_rows == 1
    bad = quarantine.to_pylist()[0]
    assert bad["line"] == len(lines) and bad["file"] == str(path)
    assert "too few columns" in bad["reason"] and "truncated" in bad["reason"]
    assert bad["raw"] == lines[-1]
    assert set(events["merchant_id"].to_pylist()) == {"rees46"}
    assert events["session_id"].null_count == 0
    first = next(csv.DictReader(lines[:2]))
    row = events.slice(0, 1).to_pylist()[0]
    assert row["price"] == float(first["price"]) and row["session_id"] == first["user_session"]
    assert row["ts"] == dt.datetime(2019, 10, 1, tzinfo=dt.UTC)


def test_taobao_range_and_truncation(real_file):
    path = real_file("taobao")
    lines = physical_lines(path)
    events, quarantine, rows_read = collect(generic("taobao"), [path])
    assert rows_read == len(lines)  # no header
    zone = zoneinfo.ZoneInfo("Asia/Shanghai")
    low = dt.datetime(2017, 11, 25, tzinfo=zone).timestamp()
    high = dt.datetime(2017, 12, 4, tzinfo=zone).timestamp()
    expected_outside = {
        number
        for number, text in enumerate(lines, start=1)
        if len(text.split(",")) == 5 and not low <= int(text.split(",")[4]) < high
    }
    by_line = {row["line"]: row for row in quarantine.to_pylist()}
    assert set(by_line) == expected_outside | {len(lines)}
    assert "too few columns" in by_line[len(lines)]["reason"] and by_line[len(lines)]["raw"] == lines[-1]
    assert all(
        "timestamp.min/max" in by_line[n]["reason"] and by_line[n]["column"] == "timestamp"
        for n in expected_outside
    )
    assert set(events["merchant_id"].to_pylist()) == {"taobao"}


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_dedicated_adapter_equals_generic_mapping(real_file, name):
    path = real_file(name)
    dedicated = get_adapter(format=name)
    events, quarantine, rows = collect(dedicated, [path])
    events_g, quarantine_g, rows_g = collect(generic(name), [path])
    assert rows == rows_g
    assert events.equals(events_g)
    assert quarantine.equals(quarantine_g)
    assert dedicated.name == name and dedicated.day_resolution == generic(name).day_resolution


def test_output_is_deterministic(real_file):
    path = real_file("rees46")
    first = collect(generic("rees46"), [path])
    second = collect(generic("rees46"), [path])
    assert first[0].equals(second[0]) and first[1].equals(second[1])


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


SMALL = mapping_from_dict(
    {
        "name": "small",
        "fields": {"merchant_id": "shop", "buyer_id": "user", "ts": "when"},
        "timestamp": {"format": "unix_s"},
        "event_type": {"column": "kind", "map": {"v": "product_view", "b": "purchase"}},
    }
)


def test_src_order_carries_file_index_and_line(tmp_path):
    one = write(tmp_path / "a.csv", "shop,user,when,kind\ns,u,10,v\ns,u,20,b\n")
    two = write(tmp_path / "b.csv", "shop,user,when,kind\ns,u,30,v\n")
    events, _, _ = collect(MappingAdapter(SMALL), [one, two])
    assert events["src_order"].to_pylist() == [2, 3, (1 << 40) | 2]


def test_expand_inputs_directories_sorted_and_filtered(tmp_path):
    write(tmp_path / "d" / "b.csv", "x")
    write(tmp_path / "d" / "sub" / "a.parquet", "x")
    write(tmp_path / "d" / "notes.txt", "x")
    write(tmp_path / "d" / "c.jsonl.gz", "x")
    single = write(tmp_path / "single.dat", "x")
    found = expand_inputs([tmp_path / "d", single])
    assert found == [
        tmp_path / "d" / "b.csv",
        tmp_path / "d" / "c.jsonl.gz",
        tmp_path / "d" / "sub" / "a.parquet",
        single,
    ]


def test_expand_inputs_missing_path_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.csv"):
        expand_inputs([tmp_path / "nowhere.csv"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no"):
        expand_inputs([tmp_path / "empty"])


def test_get_adapter_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown format 'amazon'"):
        get_adapter(format="amazon")
    with pytest.raises(ValueError, match="exactly one"):
        get_adapter()
    with pytest.raises(ValueError, match="exactly one"):
        get_adapter(format="taobao", mapping=EXAMPLES / "taobao.yaml")
    assert get_adapter(mapping=EXAMPLES / "taobao.yaml").name == "taobao"


def test_a_log_in_files_of_two_layouts_is_read_by_one_mapping_of_sources(tmp_path: Path) -> None:
    """YOOCHOOSE: headerless clicks (session, time, item, category) and buys (+ price, quantity)."""
    logs = tmp_path / "logs"
    logs.mkdir()
    clicks = ["1,2014-04-07T10:51:09.277Z,214536502,0", "1,2014-04-07T10:54:09.868Z,214536500,0"]
    clicks += ["2,2014-04-07T13:56:37.614Z,214662742,S", "3,2014-04-02T16:54:11.934Z,214716935,0"]
    buys = ["1,2014-04-07T10:58:00.000Z,214536500,1046,1", "3,2014-04-02T17:10:00.000Z,214716935,2093,2"]
    (logs / "yoochoose-clicks.dat").write_text("\n".join(clicks) + "\n")
    (logs / "yoochoose-buys.dat").write_text("\n".join(buys) + "\n")
    path = EXAMPLES / "yoochoose.yaml"  # the shipped mapping of the two layouts
    adapter = get_adapter(mapping=path)
    files = [logs / "yoochoose-clicks.dat", logs / "yoochoose-buys.dat"]
    events, quarantine, rows_read = collect(adapter, files)
    assert rows_read == 6 and quarantine.num_rows == 0
    kinds = Counter(zip(events["buyer_id"].to_pylist(), events["event_type"].to_pylist(), strict=True))
    assert kinds == {("1", "product_view"): 2, ("1", "purchase"): 1, ("2", "product_view"): 1,
                     ("3", "product_view"): 1, ("3", "purchase"): 1}  # fmt: skip
    assert sorted(p for p in events["price"].to_pylist() if p is not None) == [1046.0, 2093.0]
    # Every file's layout is known before a row is read; one no source matches is named.
    (logs / "yoochoose-test.dat").write_text(clicks[0] + "\n")
    with pytest.raises(
        ValueError, match=r"yoochoose-test.dat: its name matches no source .*\('\*clicks\*', '\*buys\*'\)"
    ):
        collect(adapter, sorted(logs.iterdir()))
    sources = yaml.safe_load(path.read_text(encoding="utf-8"))
    sources["sources"][1].pop("match")
    with pytest.raises(ValueError, match=r"sources\[1\]: key 'match': missing"):
        mappings_from_dict(sources, "yoochoose.yaml")


def test_a_product_event_without_its_product_is_quarantined(tmp_path: Path) -> None:
    """RetailRocket's layout: a view whose itemid is empty cannot be replayed as a product page."""
    path = tmp_path / "events.csv"
    path.write_text(
        "timestamp,visitorid,event,itemid,transactionid\n"
        "1433221332117,257597,view,355908,\n"
        "1433224214164,992329,view,,\n"
        "1433221955914,257597,addtocart,355908,\n"
        "1433222276276,257597,search,,\n"
    )
    mapping = mapping_from_dict(
        {
            "fields": {"merchant_id": {"constant": "rr"}, "buyer_id": "visitorid", "ts": "timestamp"}
            | {"product_id": "itemid"},
            "timestamp": {"format": "unix_ms"},
            "event_type": {
                "column": "event",
                "map": {"view": "product_view", "addtocart": "add_to_cart", "search": "search"},
            },
        },
        "rr.yaml",
    )
    events, quarantine, _ = collect(MappingAdapter(mapping), [path])
    assert events["event_type"].to_pylist() == ["product_view", "add_to_cart", "search"]
    assert quarantine.to_pylist() == [
        {
            "file": str(path),
            "line": 3,
            "column": "itemid",
            "reason": "missing product id (column 'itemid' is empty) on a product event; a column to read where it is empty: {column: ..., else: ...}",
            "raw": "1433224214164,992329,view,,",
        }
    ]
