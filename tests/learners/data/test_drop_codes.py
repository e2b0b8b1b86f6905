"""Rows a mapping drops on purpose (event_type.drop, drop_rows): counted per code or rule, never quarantined, and
rows_read = rows_kept + rows_quarantined + rows_dropped."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

from engine.commands.prepare import check_lines
from learners.data import schema
from learners.data.adapter import CanonicalChunk
from learners.data.adapters import MappingAdapter, get_adapter
from learners.data.mapping import mapping_from_dict
from learners.data.prepare import PrepareConfig, prepare
from learners.data.row_check import check_rows

MAPPED = {"view": "product_view", "cart": "add_to_cart", "buy": "purchase"}
DROPPED = ("impression", "6")
CODES = ("view", "view", "view", "cart", "buy", "impression", "6", "weird", "")
EMPTY_CODE = (
    "missing event code (column 'kind' is empty); map the empty code ('': TYPE) or drop it (drop: [''])"
)
MAPPING = {
    "name": "shop",
    "format": "csv",
    "fields": {"merchant_id": "shop", "buyer_id": "user", "ts": "when", "product_id": "sku"},
    "timestamp": {"format": "iso"},
    "event_type": {"column": "kind", "map": MAPPED, "drop": ["impression", 6]},
}


def write_log(tmp: Path, n: int = 2000, seed: int = 0) -> tuple[Path, dict[str, object]]:
    """A CSV log of random codes, some buyers missing, one truncated line; and what prepare should do."""
    rng = np.random.default_rng(seed)
    lines = ["shop,user,when,sku,kind"]
    kept = 0
    dropped: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    for i in range(n):
        code = str(rng.choice(CODES))
        user = "" if rng.random() < 0.05 else f"u{rng.integers(40)}"
        when = f"2024-03-{1 + i // 100:02d}T{(i // 10) % 24:02d}:{i % 60:02d}:00"
        lines.append(f"s{rng.integers(3)},{user},{when},p{rng.integers(50)},{code}")
        if code in DROPPED:  # dropped on purpose whatever else is wrong with the row
            dropped[code] += 1
        elif not user:
            reasons["missing buyer_id (column 'user' is empty)"] += 1
        elif not code:
            reasons[EMPTY_CODE] += 1
        elif code not in MAPPED:
            reasons["unknown event code in column 'kind'; known codes: 'view', 'cart', 'buy'"] += 1
        else:
            kept += 1
    lines.append("s1,u1,2024-03-30T00:00:00")  # truncated: the reader quarantines it
    reasons["too few columns: expected 5, found 3 (line truncated?)"] += 1
    path = tmp / "log.csv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    expected = {"kept": kept, "dropped": dict(dropped), "reasons": dict(reasons), "read": n + 1}
    return path, expected


def write_mapping(tmp: Path, values: dict | None = None) -> Path:
    path = tmp / "shop.yaml"
    path.write_text(yaml.safe_dump(values or MAPPING, sort_keys=False), encoding="utf-8")
    return path


def test_adapter_counts_dropped_rows_per_code_and_quarantines_only_the_unusable(tmp_path: Path) -> None:
    log, expected = write_log(tmp_path)
    adapter = get_adapter(mapping=write_mapping(tmp_path))
    dropped: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    kept = read = 0
    for chunk in adapter.read([log]):
        assert isinstance(chunk, CanonicalChunk)
        assert chunk.rows_read == chunk.events.num_rows + chunk.quarantine.num_rows + sum(
            chunk.dropped.values()
        )
        dropped.update(chunk.dropped)
        reasons.update(chunk.quarantine["reason"].to_pylist())
        kept += chunk.events.num_rows
        read += chunk.rows_read
        assert set(chunk.events["event_type"].to_pylist()) <= set(MAPPED.values())
    assert dict(dropped) == expected["dropped"] and all(n > 0 for n in dropped.values())
    assert dict(reasons) == expected["reasons"]
    assert kept == expected["kept"] and read == expected["read"]


def test_prepare_manifest_counts_dropped_rows_and_the_invariant_holds(tmp_path: Path) -> None:
    log, expected = write_log(tmp_path)
    manifest = prepare(
        [log], get_adapter(mapping=write_mapping(tmp_path)), PrepareConfig(n_buckets=8), tmp_path / "out"
    )
    counts = manifest["counts"]
    assert counts["rows_read"] == expected["read"]
    assert counts["rows_dropped"] == sum(expected["dropped"].values())
    assert manifest["rows_dropped_by_code"] == dict(
        sorted(expected["dropped"].items(), key=lambda kv: (-kv[1], kv[0]))
    )
    assert counts["rows_read"] == counts["rows_kept"] + counts["rows_quarantined"] + counts["rows_dropped"]
    assert counts["rows_kept"] == counts["events"] == expected["kept"]
    assert manifest["quarantine_by_reason"] == dict(
        sorted(expected["reasons"].items(), key=lambda kv: (-kv[1], kv[0]))
    )
    quarantine = pq.read_table(tmp_path / "out" / schema.TABLE_FILES["quarantine"])
    assert quarantine.num_rows == counts["rows_quarantined"]
    assert not any(raw.endswith((",impression", ",6")) for raw in quarantine["raw"].to_pylist())
    assert manifest == json.loads((tmp_path / "out" / schema.MANIFEST_FILE).read_text())


def test_check_rows_counts_what_prepare_writes(tmp_path: Path) -> None:
    log, _ = write_log(tmp_path, seed=3)
    adapter = get_adapter(mapping=write_mapping(tmp_path))
    check = check_rows([log], adapter)
    assert not (tmp_path / "out").exists()
    manifest = prepare([log], adapter, PrepareConfig(n_buckets=8), tmp_path / "out")
    assert check.counts == {k: manifest["counts"][k] for k in check.counts}
    assert check.quarantine_by_reason == manifest["quarantine_by_reason"]
    assert check.rows_dropped_by_code == manifest["rows_dropped_by_code"]
    events = pq.read_table(tmp_path / "out" / schema.TABLE_FILES["events"])
    assert check.kept_by_event_type == dict(Counter(events["event_type"].to_pylist()))
    assert all(1 <= len(rows) <= 2 for rows in check.examples.values())
    assert {row["line"] for rows in check.examples.values() for row in rows} <= set(range(2, 2003))


def test_a_log_without_dropped_codes_reports_zero(tmp_path: Path) -> None:
    log, _ = write_log(tmp_path)
    values = yaml.safe_load(yaml.safe_dump(MAPPING))
    del values["event_type"]["drop"]
    manifest = prepare(
        [log], get_adapter(mapping=write_mapping(tmp_path, values)), PrepareConfig(), tmp_path / "o"
    )
    assert manifest["counts"]["rows_dropped"] == 0 and manifest["rows_dropped_by_code"] == {}
    # Undeclared codes are quarantined as unknown, as before.
    unknown = [r for r in manifest["quarantine_by_reason"] if r.startswith("unknown event code")]
    assert len(unknown) == 1 and manifest["quarantine_by_reason"][unknown[0]] > 0


def test_a_chunk_whose_dropped_rows_do_not_add_up_is_a_bug(tmp_path: Path) -> None:
    log, _ = write_log(tmp_path)
    inner = get_adapter(mapping=write_mapping(tmp_path))

    class Overcounting(MappingAdapter):
        def read(self, inputs):
            for chunk in inner.read(inputs):
                yield CanonicalChunk(chunk.events, chunk.quarantine, chunk.rows_read, {"6": 10**6})

    with pytest.raises(RuntimeError, match="lost rows"):
        prepare([log], Overcounting(mapping_from_dict(MAPPING)), PrepareConfig(), tmp_path / "out")


@pytest.mark.parametrize("empty", ["", None])
def test_the_empty_code_can_be_mapped_or_dropped(tmp_path: Path, empty: str | None) -> None:
    """Coveo logs page views with an empty product_action: '' (or YAML's ~) names that code."""
    log, expected = write_log(tmp_path)
    mapped = dict(MAPPING, event_type={"column": "kind", "map": {**MAPPED, empty: "page_view"}})
    check = check_rows([log], get_adapter(mapping=write_mapping(tmp_path, mapped)))
    assert EMPTY_CODE not in check.quarantine_by_reason
    assert check.kept_by_event_type["page_view"] > 0
    dropping = dict(MAPPING, event_type={"column": "kind", "map": MAPPED, "drop": [empty]})
    check = check_rows([log], get_adapter(mapping=write_mapping(tmp_path, dropping)))
    assert EMPTY_CODE not in check.quarantine_by_reason
    assert check.rows_dropped_by_code[""] > 0
    assert sum(check.counts[k] for k in ("rows_kept", "rows_quarantined", "rows_dropped")) == expected["read"]


def test_drop_rows_leave_out_cancellations_and_non_products_counted_per_rule(tmp_path: Path) -> None:
    """UCI Online Retail: purchases only; a cancellation is an invoice C... with a negative quantity,
    and POST (postage) is no product."""
    log = tmp_path / "online_retail.csv"
    log.write_text(
        "InvoiceNo,StockCode,Quantity,InvoiceDate,UnitPrice,CustomerID\n"
        "536365,85123A,6,2010-12-01 08:26,2.55,17850\n"
        "536365,POST,1,2010-12-01 08:26,18.0,17850\n"
        "C536379,D,-1,2010-12-01 09:41,27.5,14527\n"
        "536380,22961,-2,2010-12-01 09:41,1.45,14527\n"
        "536381,22139,3,2010-12-01 09:45,4.95,15311\n"
    )
    values = {
        "fields": {"merchant_id": {"constant": "uci"}, "buyer_id": "CustomerID", "ts": "InvoiceDate"}
        | {"session_id": "InvoiceNo", "product_id": "StockCode", "price": "UnitPrice"},
        "timestamp": {"format": "%Y-%m-%d %H:%M"},
        "event_type": {"constant": "purchase"},
        "drop_rows": [
            {"column": "InvoiceNo", "starts_with": "C"},
            {"column": "Quantity", "below": 0},
            {"column": "StockCode", "in": ["POST", "D"]},
        ],
    }
    check = check_rows([log], get_adapter(mapping=write_mapping(tmp_path, values)))
    assert check.counts == {"rows_read": 5, "rows_kept": 2, "rows_quarantined": 0, "rows_dropped": 3}
    # Each row counts under the first rule it meets: the C invoice is not counted again as < 0.
    assert check.rows_dropped_by_code == {
        "where InvoiceNo starts with 'C'": 1,
        "where Quantity < 0": 1,
        "where StockCode in ['POST', 'D']": 1,
    }
    lines = "\n".join(check_lines(check))
    assert "where Quantity < 0" in lines and "code 'where" not in lines
    # Adobe Analytics' excluded hits: exclude_hit above 0 (here the large orders, above 5).
    values["drop_rows"] = [{"column": "Quantity", "above": 5}]
    check = check_rows([log], get_adapter(mapping=write_mapping(tmp_path, values)))
    assert check.rows_dropped_by_code == {"where Quantity > 5": 1}


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        ({"column": "Quantity"}, "expected one of starts_with, below, above, in, got none"),
        ({"column": "Quantity", "above": "1"}, "expected a number"),
        ({"column": "Quantity", "below": "zero"}, "expected a number"),
        ({"column": "Quantity", "below": 0, "in": ["1"]}, "expected one of"),
        ({"column": "StockCode", "in": "POST"}, "expected a list of values"),
    ],
)
def test_a_bad_drop_rule_names_its_key_and_the_fix(rule: dict, message: str) -> None:
    with pytest.raises(ValueError, match=rf"key 'drop_rows\[0\].*{message}.*fix: "):
        mapping_from_dict(dict(MAPPING, drop_rows=[rule]), "bad.yaml")
