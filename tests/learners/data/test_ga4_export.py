"""Google Analytics exports as JSON lines: GA4's (parameters in key/value lists, items nested) and
Universal Analytics' older ga_sessions (a visit per line, hits nested, products nested in hits)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pytest
import yaml

from engine.commands.prepare import RAW_SHOWN, check_lines
from learners.data.adapters import MappingAdapter
from learners.data.canonical import ONE_EVENT_LABEL
from learners.data.mapping import mapping_from_dict
from learners.data.mapping_draft import DraftConfig, draft_mapping
from learners.data.row_check import check_rows
from tests.learners.data.test_adapters import collect

GA4 = yaml.safe_load((Path(__file__).resolve().parents[3] / "examples" / "mappings" / "ga4.yaml").read_text())
"""The shipped GA4 mapping (examples/mappings/ga4.yaml)."""
START_US = 1_609_459_200_000_000  # 2021-01-01 UTC


def _param(key: str, value: object) -> dict:
    """One event parameter as BigQuery writes it: every value kind present, the unused ones null."""
    kinds = {"string_value": None, "int_value": None, "float_value": None, "double_value": None}
    kind = "int_value" if isinstance(value, int) else "string_value"
    return {"key": key, "value": kinds | {kind: str(value)}}  # BigQuery writes INT64 as a string


def _item(product: str, price: float, quantity: int = 1) -> dict:
    return {
        "item_id": product,
        "item_name": f"Google Tee {product}",
        "item_brand": "Google",
        "item_category": "Apparel" if product != "(not set)" else "(not set)",
        "price_in_usd": price,
        "price": price,
        "quantity": str(quantity),
        "item_list_index": "(not set)",
    }


def ga4_export(path: Path, users: int = 40, seed: int = 0) -> dict[str, int]:
    """A GA4 export of ``users`` visitors, one JSON object per event; returns event counts by name."""
    rng = np.random.default_rng(seed)
    counts: dict[str, int] = {}
    lines: list[str] = []
    for u in range(users):
        t = START_US + u * 7_200_000_000
        session = t // 1_000_000  # GA4's ga_session_id is the visit's start in unix seconds
        products = [f"GGOE{int(p):05d}" for p in rng.choice(300, size=4, replace=False)]
        viewed = products[int(rng.integers(4))]
        events: list[tuple[str, list[dict], list[dict]]] = [
            ("session_start", [], []),
            ("first_visit", [], []),
            ("page_view", [_param("page_location", "https://shop.googlemerchandisestore.com/")], []),
            ("view_item_list", [], [_item(p, 16.0 + i) for i, p in enumerate(products)]),
            ("select_item", [], [_item(viewed, 18.0)]),
            # The obfuscated sample's view_item lists related products beside the one viewed.
            ("view_item", [_param("term", "(none)")], [_item(viewed, 18.0), _item(products[1], 17.0)]),
            ("view_promotion", [], [_item("(not set)", 0.0)]),
            ("scroll", [_param("percent_scrolled", 90)], []),
            ("view_search_results", [_param("search_term", "water bottle")], []),
        ]
        if u % 3 == 0:
            events += [
                ("add_to_cart", [], [_item(viewed, 18.0)]),
                ("begin_checkout", [], [_item(viewed, 18.0), _item(products[0], 16.0)]),
                (
                    "purchase",
                    [_param("transaction_id", f"T{u}")],
                    [_item(viewed, 18.0), _item(products[0], 16.0, 2)],
                ),
            ]
        for k, (name, params, items) in enumerate(events):
            counts[name] = counts.get(name, 0) + 1
            row = {
                "event_date": "20210101",
                "event_timestamp": str(t + k * 15_000_000),
                "event_name": name,
                "event_params": [
                    _param("ga_session_id", int(session)),
                    _param("ga_session_number", 1),
                    *params,
                ],
                "event_previous_timestamp": None,
                "event_value_in_usd": None,
                "event_bundle_sequence_id": str(int(rng.integers(10**9))),
                "user_id": None,
                "user_pseudo_id": f"{1_005_694 + u * 7919}.{5_834_348_403 + u}",
                "privacy_info": {
                    "analytics_storage": None,
                    "ads_storage": None,
                    "uses_transient_token": "No",
                },
                "user_properties": [],
                "user_first_touch_timestamp": str(t),
                "device": {
                    "category": "desktop",
                    "operating_system": "Web",
                    "web_info": {"browser": "Chrome"},
                },
                "geo": {"country": "United States", "city": "(not set)"},
                "traffic_source": {"name": "(direct)", "medium": "(none)", "source": "(direct)"},
                "stream_id": "2100450278",
                "platform": "WEB",
                "user_ltv": {"revenue": None, "currency": "USD"},
                # Null on most events, an object on a purchase: a nested key all the same.
                "ecommerce": {"transaction_id": f"T{u}"} if name == "purchase" else None,
                "items": items,
            }
            lines.append(json.dumps(row))
    path.write_text("\n".join(lines) + "\n")
    return counts


def test_the_shipped_mapping_reads_a_ga4_export(tmp_path: Path) -> None:
    path = tmp_path / "ga4-000.json"
    counts = ga4_export(path)
    adapter = MappingAdapter(mapping_from_dict(GA4, "ga4.yaml"))
    events, quarantine, _ = collect(adapter, [path])
    assert quarantine.num_rows == 0
    kinds = dict(
        zip(*np.unique(events["event_type"].to_numpy(zero_copy_only=False), return_counts=True), strict=True)
    )
    # A listing of four items is one page view, a product page listing another product one product
    # view, a checkout of two items one checkout; a purchase of two products two purchases.
    assert kinds == {
        "page_view": counts["page_view"] + counts["view_item_list"],
        "search": counts["view_search_results"],
        "product_view": counts["view_item"],
        "add_to_cart": counts["add_to_cart"],
        "checkout": counts["begin_checkout"],
        "purchase": 2 * counts["purchase"],
    }
    searches = events.filter(pc.equal(events["event_type"], "search"))
    assert set(searches["query"].to_pylist()) == {"water bottle"}
    first = events.filter(pc.equal(events["buyer_id"], "1005694.5834348403"))
    assert set(first["session_id"].to_pylist()) == {"1609459200"}
    bought = events.filter(pc.equal(events["event_type"], "purchase"))
    assert bought["price"].to_pylist()[:2] == [18.0, 16.0]
    assert set(bought["category_id"].to_pylist()) == {"Apparel"}
    pages = events.filter(pc.equal(events["event_type"], "page_view"))
    assert pages["product_id"].null_count == pages.num_rows
    check = check_rows([path], adapter)
    by_code = check.rows_dropped_by_code
    repeats = 3 * counts["view_item_list"] + counts["view_item"] + counts["begin_checkout"]
    assert by_code.pop(ONE_EVENT_LABEL) == repeats
    assert by_code == {
        c: counts[c] for c in ("first_visit", "scroll", "select_item", "session_start", "view_promotion")
    }
    assert check.counts["rows_kept"] == events.num_rows


def test_an_item_ga4_did_not_set_is_no_product(tmp_path: Path) -> None:
    path = tmp_path / "ga4.json"
    ga4_export(path, users=2)
    lines = path.read_text().splitlines()
    row = json.loads(lines[5])
    assert row["event_name"] == "view_item"
    row["items"][0]["item_id"] = "(not set)"
    lines[5] = json.dumps(row)
    path.write_text("\n".join(lines) + "\n")
    _, quarantine, _ = collect(MappingAdapter(mapping_from_dict(GA4, "ga4.yaml")), [path])
    assert quarantine["line"].to_pylist() == [6]
    assert "missing product id (column 'item_id' is empty)" in quarantine["reason"][0].as_py()


def test_a_parameter_path_reads_its_value_where_no_list_is_exploded(tmp_path: Path) -> None:
    """Without ``explode`` the lines would suit Arrow's reader at once, which knows no parameter path."""
    path = tmp_path / "ga4.json"
    ga4_export(path, users=3)
    values = {
        "format": "jsonl",
        "fields": {"merchant_id": {"constant": "gms"}, "buyer_id": "user_pseudo_id", "ts": "event_timestamp"}
        | {"session_id": "event_params.ga_session_id.value.int_value"},
        "timestamp": {"format": "unix_us"},
        "event_type": {"constant": "page_view"},
    }
    events, quarantine, _ = collect(MappingAdapter(mapping_from_dict(values, "ga4.yaml")), [path])
    assert quarantine.num_rows == 0 and events["session_id"].null_count == 0
    assert events["session_id"][0].as_py() == "1609459200"
    # A parameter a line does not have is empty, not an error.
    values["fields"]["query"] = "event_params.search_term.value.string_value"
    events, _, _ = collect(MappingAdapter(mapping_from_dict(values, "ga4.yaml")), [path])
    assert events["query"].drop_null().to_pylist() == ["water bottle"] * 3


def test_the_draft_reads_a_ga4_export(tmp_path: Path) -> None:
    path = tmp_path / "ga4.json"
    ga4_export(path)
    draft = draft_mapping([path], DraftConfig(rows=2_000), tmp_path / "shop.yaml")
    assert draft.todo == []
    values = yaml.safe_load(draft.text)
    assert values["jsonl"] == {"explode": "items", "keep_empty": True}
    assert {k: values["fields"][k] for k in GA4["fields"] if k != "merchant_id"} == {
        k: v for k, v in GA4["fields"].items() if k != "merchant_id"
    }
    assert values["timestamp"]["format"] == "unix_us"
    assert {k: v for k, v in GA4["event_type"]["map"].items() if k in values["event_type"]["map"]} == values[
        "event_type"
    ]["map"]
    assert set(values["event_type"]["drop"]) == {
        "first_visit",
        "scroll",
        "select_item",
        "session_start",
        "view_promotion",
    }
    drafted = check_rows([path], MappingAdapter(mapping_from_dict(values, "shop.yaml")))
    shipped = check_rows([path], MappingAdapter(mapping_from_dict(GA4, "ga4.yaml")))
    assert drafted.counts == shipped.counts


@pytest.mark.parametrize(
    ("jsonl", "message"),
    [
        ({"keep_empty": True}, "given without explode"),
        ({"explode": "items", "keep_empty": "yes"}, "expected true or false"),
    ],
)
def test_keep_empty_is_checked(jsonl: dict, message: str) -> None:
    with pytest.raises(ValueError, match=f"jsonl.keep_empty': {message}"):
        mapping_from_dict(dict(GA4, jsonl=jsonl), "ga4.yaml")


def ua_sessions(path: Path, visits: int = 30) -> None:
    """Universal Analytics' ga_sessions export: a visit per line, its hits listed, each hit's products
    listed, a hit's time in milliseconds after the visit's start."""
    lines = []
    for v in range(visits):
        hits = [
            {"hitNumber": str(h + 1), "time": str(h * 9_000), "type": "PAGE", "page": {"pagePath": f"/p{h}"}}
            | {"eCommerceAction": {"action_type": "2" if h else "0"}}
            | {"product": [{"productSKU": f"GGOE{h}{v}", "productPrice": "16990000"}] if h else []}
            for h in range(4)
        ]
        visit = {"visitorId": None, "visitNumber": "1", "visitId": str(1_501_000_000 + v)}
        visit |= {"visitStartTime": str(1_501_000_000 + v * 600), "fullVisitorId": str(7_000_000_000 + v)}
        lines.append(
            json.dumps(visit | {"customDimensions": [{"index": "4", "value": "EMEA"}], "hits": hits})
        )
    path.write_text("\n".join(lines) + "\n")


def test_a_visit_per_line_explodes_its_hits_and_names_the_list_inside_them(tmp_path: Path) -> None:
    path = tmp_path / "ga_sessions_20170801.json"
    ua_sessions(path)
    draft = draft_mapping([path], DraftConfig(rows=500), tmp_path / "ua.yaml")
    values = yaml.safe_load(draft.text)
    assert values["jsonl"] == {"explode": "hits"}  # not customDimensions, whose objects hold less
    assert "hits[].product" in draft.text and "flatten the file" in draft.text
    # Read as they are, a hit's products are a list inside the exploded list: quarantined with the fix.
    mapping = {
        "format": "jsonl",
        "jsonl": {"explode": "hits"},
        "fields": {"merchant_id": {"constant": "gms"}, "buyer_id": "fullVisitorId", "ts": "time"}
        | {"session_id": "visitId", "product_id": "product.productSKU"},
        "timestamp": {"format": "unix_ms"},
        "event_type": {
            "column": "eCommerceAction.action_type",
            "map": {"0": "page_view", "2": "product_view"},
        },
    }
    adapter = MappingAdapter(mapping_from_dict(mapping, "ua.yaml"))
    events, quarantine, _ = collect(adapter, [path])
    reason = quarantine["reason"][0].as_py()
    assert "a list inside 'hits' (jsonl.explode) is not read: flatten the file" in reason
    shown = check_lines(check_rows([path], adapter))  # a whole visit's line is cut short
    examples = [line for line in shown if "e.g. " in line]
    raws = [line.split("': ", 1)[1] for line in examples]
    assert raws and all(len(raw) == RAW_SHOWN + 4 and raw.endswith(" ...") for raw in raws)
    # A visit's hits are its own events, each at its time: none is taken for a repeat of another.
    del mapping["fields"]["product_id"]
    mapping["event_type"] = {"constant": "page_view"}
    events, quarantine, _ = collect(MappingAdapter(mapping_from_dict(mapping, "ua.yaml")), [path])
    assert quarantine.num_rows == 0 and events.num_rows == 4 * 30
