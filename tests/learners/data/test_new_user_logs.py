"""Logs a new user brought: OTTO's nested JSON lines, GA4's microseconds, a unit read wrongly, NA ids."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pytest
import yaml

from engine.commands.prepare import check_lines
from engine.stage_results import day_month_lines, one_kind_checks, one_type_lines, session_span_lines
from learners.data.adapters import MappingAdapter, expand_inputs
from learners.data.json_lines import _arrow_chunk
from learners.data.mapping import mapping_from_dict
from learners.data.mapping_draft import DraftConfig, draft_mapping
from learners.data.prepare import PrepareConfig, prepare
from learners.data.row_check import check_rows
from tests.learners.data.test_adapters import collect

EXAMPLES = Path(__file__).resolve().parents[3] / "examples" / "mappings"
OTTO = yaml.safe_load((EXAMPLES / "otto.yaml").read_text())
"""The shipped OTTO mapping (examples/mappings/otto.yaml)."""


def otto_lines(path: Path) -> None:
    sessions = [
        {
            "session": 0,
            "events": [
                {"aid": 11, "ts": 1659304800025, "type": "clicks"},
                {"aid": 11, "ts": 1659304904511, "type": "carts"},
            ],
        },
        {"session": 1, "events": [{"aid": 7, "ts": 1659367439426, "type": "orders"}]},
        {"session": 2, "events": []},
        {"session": 3, "events": "none"},
    ]
    path.write_text("".join(json.dumps(s) + "\n" for s in sessions))


def test_exploded_events_become_rows_with_their_line(tmp_path: Path) -> None:
    path = tmp_path / "train.jsonl"
    otto_lines(path)
    events, quarantine, _ = collect(MappingAdapter(mapping_from_dict(OTTO, "otto.yaml")), [path])
    assert events["buyer_id"].to_pylist() == ["0", "0", "1"]
    assert events["product_id"].to_pylist() == ["11", "11", "7"]
    assert events["event_type"].to_pylist() == ["product_view", "add_to_cart", "purchase"]
    assert [str(t) for t in events["ts"].to_pylist()][0].startswith("2022-07-31 22:00:00.025")
    assert quarantine["line"].to_pylist() == [3, 4]
    assert "empty list" in quarantine["reason"][0].as_py()
    assert "not a list of objects" in quarantine["reason"][1].as_py()


def test_nested_events_without_explode_name_the_fix(tmp_path: Path) -> None:
    path = tmp_path / "train.jsonl"
    otto_lines(path)
    values = {k: v for k, v in OTTO.items() if k != "jsonl"}
    fix = r"fix: the events are nested in 'events': add jsonl: \{explode: events\}"
    with pytest.raises(ValueError, match=r"no column 'ts'.*" + fix):
        collect(MappingAdapter(mapping_from_dict(values, "otto.yaml")), [path])
    values["fields"] = {"merchant_id": {"constant": "otto"}, "buyer_id": "session", "ts": "events"}
    values["event_type"] = {"constant": "product_view"}
    _, quarantine, _ = collect(MappingAdapter(mapping_from_dict(values, "otto.yaml")), [path])
    assert "holds a nested list, expected a scalar; jsonl: {explode: KEY}" in quarantine["reason"][0].as_py()


def test_dotted_columns_read_nested_objects(tmp_path: Path) -> None:
    path = tmp_path / "ga4.jsonl"
    row = {"user_pseudo_id": "u1", "event_timestamp": 1609459200123456, "event_name": "view_item"}
    path.write_text(json.dumps(row | {"items": {"item_id": "sku9"}}) + "\n")
    values = {
        "fields": {"merchant_id": {"constant": "gms"}, "buyer_id": "user_pseudo_id", "ts": "event_timestamp"}
        | {"product_id": "items.item_id"},
        "timestamp": {"format": "unix_us"},
        "event_type": {"column": "event_name", "map": {"view_item": "product_view"}},
    }
    events, quarantine, _ = collect(MappingAdapter(mapping_from_dict(values, "ga4.yaml")), [path])
    assert quarantine.num_rows == 0
    assert events["product_id"].to_pylist() == ["sku9"]
    assert str(events["ts"][0].as_py()) == "2021-01-01 00:00:00.123000+00:00"


def test_a_column_no_object_has_stops_the_read_with_the_keys_it_has(tmp_path: Path) -> None:
    path = tmp_path / "train.jsonl"
    otto_lines(path)
    values = dict(OTTO, fields=dict(OTTO["fields"], ts="timestamp"))
    with pytest.raises(
        ValueError, match=r"train.jsonl: .* no column 'timestamp' .*available columns: .*\bts\b"
    ):
        collect(MappingAdapter(mapping_from_dict(values, "otto.yaml")), [path])


@pytest.mark.parametrize(
    ("fmt", "value"),
    [("unix_s", 1659304800), ("unix_us", 1659304800000000), ("unix_ns", 1659304800000000000)],
)
def test_every_unix_unit_reads_the_same_instant(tmp_path: Path, fmt: str, value: int) -> None:
    path = tmp_path / "log.csv"
    path.write_text(f"user,when,kind\nu1,{value},v\n")
    values = {
        "fields": {"merchant_id": {"constant": "m"}, "buyer_id": "user", "ts": "when"},
        "timestamp": {"format": fmt},
        "event_type": {"column": "kind", "map": {"v": "product_view"}},
    }
    events, _, _ = collect(MappingAdapter(mapping_from_dict(values, "m.yaml")), [path])
    assert str(events["ts"][0].as_py()) == "2022-07-31 22:00:00+00:00"


def test_milliseconds_read_as_seconds_are_quarantined_with_the_unit_fix_and_check_shows_the_range(
    tmp_path: Path,
) -> None:
    path = tmp_path / "log.csv"
    path.write_text("user,when,kind\nu1,1659304800025,v\nu2,1659304800,v\n")
    values = {
        "fields": {"merchant_id": {"constant": "m"}, "buyer_id": "user", "ts": "when"},
        "timestamp": {"format": "unix_s"},
        "event_type": {"column": "kind", "map": {"v": "product_view"}},
    }
    check = check_rows([path], MappingAdapter(mapping_from_dict(values, "m.yaml")))
    assert check.counts["rows_kept"] == 1 and check.counts["rows_quarantined"] == 1
    (reason,) = check.quarantine_by_reason
    assert "after 2100" in reason and "13 unix_ms" in reason
    text = "\n".join(check_lines(check))
    assert "events from 2022-07-31 22:00 to 2022-07-31 22:00 UTC" in text


def test_a_word_for_no_value_is_no_buyer(tmp_path: Path) -> None:
    """Diginetica writes userId NA for anonymous sessions: NA is no buyer, not one buyer of them all."""
    path = tmp_path / "train-purchases.csv"
    path.write_text(
        "sessionId;userId;timeframe;eventdate;ordernumber;itemId\n"
        "150;18278;849079;2016-05-06;25;24667\n"
        "151;NA;4049;2016-05-06;26;2337\n"
        "152;null;22123;2016-05-06;27;NA\n"
    )
    values = {
        "csv": {"delimiter": ";"},
        "fields": {"merchant_id": {"constant": "dg"}, "buyer_id": "userId", "ts": "eventdate"}
        | {"session_id": "sessionId", "product_id": "itemId"},
        "timestamp": {"format": "%Y-%m-%d", "resolution": "day"},
        "event_type": {"constant": "purchase"},
    }
    events, quarantine, _ = collect(MappingAdapter(mapping_from_dict(values, "dg.yaml")), [path])
    assert events["buyer_id"].to_pylist() == ["18278"]
    assert quarantine["line"].to_pylist() == [3, 4]
    assert set(quarantine["reason"].to_pylist()) == {
        "missing buyer_id (column 'userId' holds NA, null or a like word for no value)"
    }
    values["fields"] = values["fields"] | {"buyer_id": "sessionId"}
    events, quarantine, _ = collect(MappingAdapter(mapping_from_dict(values, "dg.yaml")), [path])
    assert events["buyer_id"].to_pylist() == ["150", "151"]
    assert quarantine["reason"].to_pylist() == [
        "missing product id (column 'itemId' is empty) on a product event; a column to read where it is empty: {column: ..., else: ...}"
    ]


def test_the_draft_explodes_nested_events_and_the_mapping_reads_them(tmp_path: Path) -> None:
    path = tmp_path / "train.jsonl"
    rng = np.random.default_rng(0)
    with path.open("w") as fh:
        for session in range(60):
            start = 1659304800000 + session * 3_600_000
            kinds = rng.choice(
                ["clicks", "clicks", "clicks", "carts", "orders"], size=int(rng.integers(2, 8))
            )
            events = [
                {"aid": int(rng.integers(1_000_000)), "ts": start + i * 20_000, "type": str(k)}
                for i, k in enumerate(kinds)
            ]
            fh.write(json.dumps({"session": session, "events": events}) + "\n")
    draft = draft_mapping([path], DraftConfig(rows=500), tmp_path / "otto.yaml")
    values = yaml.safe_load(draft.text)
    assert values["jsonl"] == {"explode": "events"}
    assert values["fields"]["buyer_id"] == "session" and values["fields"]["product_id"] == "aid"
    assert values["fields"]["ts"] == "ts" and values["timestamp"]["format"] == "unix_ms"
    assert values["event_type"]["map"] == OTTO["event_type"]["map"]
    check = check_rows([path], MappingAdapter(mapping_from_dict(values, "otto.yaml")))
    assert check.counts["rows_quarantined"] == 0
    assert check.counts["rows_kept"] == sum(len(json.loads(line)["events"]) for line in path.open())


def test_sessions_lasting_weeks_are_flagged_and_the_shipped_mapping_splits_them(tmp_path: Path) -> None:
    """OTTO's "session" is a user over four weeks: as session_id every visit would be one session."""
    path = tmp_path / "train.jsonl"
    with path.open("w") as fh:
        for session in range(20):
            start = 1659304800000 + session * 60_000
            events = [{"aid": 5 + i, "ts": start + i * 3 * 86_400_000, "type": "clicks"} for i in range(4)]
            fh.write(json.dumps({"session": session, "events": events}) + "\n")
    as_session = dict(OTTO, fields=dict(OTTO["fields"], session_id="session"))
    manifest = prepare([path], MappingAdapter(mapping_from_dict(as_session)), PrepareConfig(), tmp_path / "a")
    assert manifest["sessions_over_a_day"] == 20
    (warning,) = session_span_lines(manifest)
    assert "20 sessions (100%) last over a day" in warning and "leave session_id out" in warning
    manifest = prepare([path], MappingAdapter(mapping_from_dict(OTTO)), PrepareConfig(), tmp_path / "b")
    assert manifest["counts"]["sessions"] == 80 and manifest["sessions_over_a_day"] == 0
    assert session_span_lines(manifest) == []
    # The draft sees it too: the column is the buyer, and visits split at 30 minutes.
    draft = draft_mapping([path], DraftConfig(rows=500), tmp_path / "otto.yaml")
    values = yaml.safe_load(draft.text)
    assert values["fields"]["buyer_id"] == "session" and "session_id" not in values["fields"]
    assert "100% of the sampled 'session' last over a day" in draft.text


def test_searches_and_listings_carry_no_product(tmp_path: Path) -> None:
    """Trivago's reference holds a hotel id on item actions but the search text or a filter on others."""
    path = tmp_path / "train.csv"
    path.write_text(
        "user_id,timestamp,action_type,reference\n"
        "u1,1541037460,search for destination,Barcelona\n"
        "u1,1541037470,filter selection,Best Value\n"
        "u1,1541037480,interaction item image,4455\n"
    )
    values = {
        "fields": {"merchant_id": {"constant": "trivago"}, "buyer_id": "user_id", "ts": "timestamp"}
        | {"product_id": "reference"},
        "timestamp": {"format": "unix_s"},
        "event_type": {
            "column": "action_type",
            "map": {"search for destination": "search", "filter selection": "page_view"}
            | {"interaction item image": "product_view"},
        },
    }
    events, quarantine, _ = collect(MappingAdapter(mapping_from_dict(values, "trivago.yaml")), [path])
    assert quarantine.num_rows == 0
    assert events["product_id"].to_pylist() == [None, None, "4455"]


def test_a_folder_of_logs_skips_an_earlier_output_inside_it(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    (logs / "data").mkdir(parents=True)
    (logs / ".data-x.preparing").mkdir()
    for name in ("a.csv", "data/events.parquet", "data/manifest.json", ".data-x.preparing/events.parquet"):
        (logs / name).write_text("x")
    (logs / "more").mkdir()
    (logs / "more" / "b.csv").write_text("x")
    assert expand_inputs([logs]) == [logs / "a.csv", logs / "more" / "b.csv"]
    assert logs / "data" / "events.parquet" in expand_inputs([logs / "data"])  # named: read


def orders_mapping(timestamp_format: str) -> dict:
    """A log of purchases only: columns user, when, sku."""
    return {
        "fields": {"merchant_id": {"constant": "m"}, "buyer_id": "user", "ts": "when", "product_id": "sku"},
        "timestamp": {"format": timestamp_format},
        "event_type": {"constant": "purchase"},
    }


def test_a_purchases_only_log_is_flagged_by_prepare_and_evaluate(tmp_path: Path) -> None:
    path = tmp_path / "orders.csv"
    path.write_text("user,when,sku\nu1,1659304800,a\nu2,1659304900,b\nu1,1659305000,c\n")
    values = orders_mapping("unix_s")
    manifest = prepare([path], MappingAdapter(mapping_from_dict(values)), PrepareConfig(), tmp_path / "d")
    assert manifest["events_by_type"] == {"purchase": 3}
    (line,) = one_type_lines(manifest)
    assert "every event is a purchase" in line
    assert one_type_lines({"events_by_type": {"product_view": 5, "purchase": 1}}) == []
    (line,) = one_type_lines({"events_by_type": {"product_view": 5, "add_to_cart": 2}})
    assert "no event is a purchase" in line
    assert one_type_lines({"events_by_type": {"product_view": 5, "purchase": 1}}) == []
    (check,) = one_kind_checks({"purchase"})
    assert "one kind of action (purchase)" in check and "cannot tell systems apart" in check
    assert one_kind_checks({"purchase", "product_view"}) == []


@pytest.mark.parametrize("nested", [True, False])
def test_a_chunk_read_at_once_equals_the_same_lines_read_one_by_one(tmp_path: Path, nested: bool) -> None:
    """Arrow reads a chunk of good lines at once; one bad line sends the chunk line by line: the events
    of the good lines are the same either way."""
    rng = np.random.default_rng(5)
    lines, written = [], 0
    for session in range(50):
        events = [
            {
                "aid": int(rng.integers(1, 10**12)),
                "ts": 1659304800000 + i * 1000,
                "type": str(rng.choice(["clicks", "carts"])),
            }
            | ({"note": None} if i % 3 else {})
            for i in range(int(rng.integers(1, 6)))
        ]
        written += len(events)
        if nested:
            lines.append(json.dumps({"session": session, "events": events}))
        else:
            lines += [json.dumps({"session": str(session)} | e) for e in events]
    values = dict(OTTO) if nested else {k: v for k, v in OTTO.items() if k != "jsonl"}
    adapter = MappingAdapter(mapping_from_dict(values, "otto.yaml"))
    good, broken = tmp_path / "good.jsonl", tmp_path / "broken.jsonl"
    good.write_text("\n".join(lines) + "\n")
    broken.write_text("\n".join(lines) + '\n{"session": 9, "events": [\n')
    explode = "events" if nested else None
    columns = adapter.mapping.columns_used()
    assert _arrow_chunk(good, 0, columns, 1, good.read_bytes().splitlines(True), explode) is not None
    assert _arrow_chunk(broken, 0, columns, 1, broken.read_bytes().splitlines(True), explode) is None
    fast, none, _ = collect(adapter, [good])
    slow, quarantined, _ = collect(adapter, [broken])
    assert none.num_rows == 0 and quarantined["line"].to_pylist() == [len(lines) + 1]
    assert fast.num_rows == written > 50
    assert fast.drop_columns(["src_order"]).equals(slow.drop_columns(["src_order"]))
    assert (pc.bit_wise_and(fast["src_order"], (1 << 40) - 1)).equals(
        pc.bit_wise_and(slow["src_order"], (1 << 40) - 1)
    )


def test_dates_that_read_as_well_with_day_and_month_swapped_are_flagged(tmp_path: Path) -> None:
    """UCI Online Retail's 12/1/10 is 1 December (US order); read day first it is 12 January."""
    path = tmp_path / "retail.csv"
    path.write_text("user,when,sku\nu1,12/1/10 8:26,a\nu2,12/1/10 9:01,b\nu3,13/1/10 9:01,c\n")
    values = orders_mapping("%d/%m/%y %H:%M")
    adapter = MappingAdapter(mapping_from_dict(values))
    manifest = prepare([path], adapter, PrepareConfig(), tmp_path / "d")
    assert not manifest["day_month_open"] and day_month_lines(manifest) == []  # the 13th settles it
    path.write_text("user,when,sku\nu1,12/1/10 8:26,a\nu2,12/1/10 9:01,b\n")
    manifest = prepare([path], adapter, PrepareConfig(), tmp_path / "d")
    (line,) = day_month_lines(manifest)
    assert "day and month swapped" in line
    assert "day and month swapped" in "\n".join(check_lines(check_rows([path], adapter)))


def test_a_date_past_2100_in_text_is_a_stray_value_not_a_unit(tmp_path: Path) -> None:
    path = tmp_path / "log.csv"
    path.write_text("user,when,sku\nu1,2150-01-01T00:00:00Z,a\nu2,2022-08-01T00:00:00Z,b\n")
    check = check_rows([path], MappingAdapter(mapping_from_dict(orders_mapping("iso"))))
    assert check.counts["rows_kept"] == 1
    (reason,) = check.quarantine_by_reason
    assert reason.endswith("read as an ISO 8601 date/datetime; a stray value?")


def draft_csv(tmp_path: Path, name: str, rows: list[str]):
    """The draft of a CSV file of ``rows`` named ``name``."""
    path = tmp_path / name
    path.write_text("\n".join(rows) + "\n")
    return draft_mapping([path], DraftConfig(rows=1_000), tmp_path / "shop.yaml")


def test_a_transactions_file_reads_as_orders_and_a_sales_channel_is_no_category(tmp_path: Path) -> None:
    """H&M's transactions_train.csv: purchases only, daily, with a sales channel of 1 or 2."""
    rng = np.random.default_rng(0)
    rows = ["t_dat,customer_id,article_id,price,sales_channel_id"]
    for i in range(400):
        customer = f"{int(rng.integers(60)):064x}"
        rows.append(
            f"2018-09-{20 + i % 9:02d},{customer},0{663713001 + int(rng.integers(300)) * 1000},"
            f"{rng.choice([0.0508, 0.0305, 0.0169, 0.0338])},{int(rng.integers(1, 3))}"
        )
    draft = draft_csv(tmp_path, "transactions_train.csv", rows)
    assert draft.fields["category_id"] is None
    assert draft.fields["buyer_id"] == "customer_id" and draft.fields["product_id"] == "article_id"
    assert "# constant: purchase" in draft.text and "'transactions_train.csv' reads as orders" in draft.text


def test_segment_event_names_and_a_browser_id_for_signed_out_buyers(tmp_path: Path) -> None:
    """A Segment warehouse's tracks: "Order Completed" and the like, user_id only for signed-in buyers."""
    rng = np.random.default_rng(1)
    names = ["Product Viewed", "Product Viewed", "Product Added", "Checkout Started", "Order Completed"]
    names += ["Product Clicked", "Coupon Applied", "Products Searched"]
    rows = ["anonymous_id,user_id,event,timestamp,product_id,price"]
    for i in range(600):
        browser = int(rng.integers(80))
        signed_in = f"u{browser}" if browser < 20 else ""
        name = names[int(rng.integers(len(names)))]
        product = "" if name in ("Products Searched", "Coupon Applied") else f"sku-{int(rng.integers(50))}"
        stamp = f"2021-03-01T{10 + i // 60:02d}:{i % 60:02d}:00.000Z"
        rows.append(f"a3f{browser:05d}e9,{signed_in},{name},{stamp},{product},{19.99 if product else ''}")
    draft = draft_csv(tmp_path, "tracks.csv", rows)
    path = tmp_path / "tracks.csv"
    assert draft.fields["buyer_id"] == "anonymous_id" and "signed-out visits" in draft.notes["buyer_id"]
    values = yaml.safe_load(draft.text)
    assert values["event_type"]["map"] == {
        "Product Viewed": "product_view",
        "Product Added": "add_to_cart",
        "Checkout Started": "checkout",
        "Order Completed": "purchase",
        "Products Searched": "search",
    }
    assert set(values["event_type"]["drop"]) == {"Product Clicked", "Coupon Applied"}
    check = check_rows([path], MappingAdapter(mapping_from_dict(values, "shop.yaml")))
    assert check.counts["rows_quarantined"] == 0


def test_an_orders_export_drafts_as_purchases_by_email_at_its_creation_time(tmp_path: Path) -> None:
    """Shopify's orders export: a status is no event code, a zip is no category, the order Id no time."""
    rng = np.random.default_rng(2)
    header = "Name,Email,Financial Status,Created at,Lineitem quantity,Lineitem name,Lineitem price"
    rows = [header + ",Lineitem sku,Billing Zip,Source,Id"]
    for order in range(150):
        email = f"buyer{int(rng.integers(60))}@example.com"
        created = f"2022-01-{1 + order // 10:02d} {order % 24:02d}:32:30 -0500"
        for line in range(int(rng.integers(1, 4))):
            sku = f"KL-{int(rng.integers(200)):04d}"
            status = ("paid", "pending")[order % 7 == 0] if line == 0 else ""  # the 2nd+ line items leave it
            rows.append(
                f"#{1001 + order},{email},{status},{created},1,Kids Tee {sku},{rng.choice([12.5, 19.99])},"
                f"{sku},{int(rng.integers(10000, 99999))},web,{4_100_000_000_000 + order * 9_999_999}"
            )
    draft = draft_csv(tmp_path, "orders_export_1.csv", rows)
    assert draft.fields["buyer_id"] == "Email" and draft.fields["ts"] == "Created at"
    assert draft.timestamp is not None and draft.timestamp.format == "%Y-%m-%d %H:%M:%S %z"
    assert draft.fields["event"] is None and "# constant: purchase" in draft.text
    assert draft.fields["category_id"] is None
    assert draft.fields["product_id"] == "Lineitem sku" and draft.fields["price"] == "Lineitem price"


def test_an_analytics_export_takes_the_event_name_its_time_and_the_device_for_signed_out_users(
    tmp_path: Path,
) -> None:
    """Amplitude: event_id counts events, client_event_time is the phone's clock, $insert_id is one row's."""
    rng = np.random.default_rng(3)
    names = ["Product Viewed", "Product Added", "Order Completed", "Cart Viewed"]
    with (tmp_path / "export.json").open("w") as fh:
        for i in range(400):
            device = int(rng.integers(70))
            row = {
                "event_id": i % 30,
                "event_type": names[int(rng.integers(4))],
                "user_id": f"u{device}" if device % 5 else None,
                "device_id": f"{device:08x}-7c1e-4c3b",
                "client_event_time": f"2021-01-01 {i // 60:02d}:{i % 60:02d}:03.123000",
                "event_time": f"2021-01-01 {i // 60:02d}:{i % 60:02d}:05.456000",
                "$insert_id": f"{i:08x}-ffff-4c3b-9c2a",
                "event_properties": {"product_id": f"p{int(rng.integers(40))}"},
            }
            fh.write(json.dumps(row) + "\n")
    draft = draft_mapping([tmp_path / "export.json"], DraftConfig(rows=1_000), tmp_path / "app.yaml")
    assert draft.fields["event"] == "event_type" and draft.fields["ts"] == "event_time"
    assert draft.fields["buyer_id"] == "device_id" and "signed-out" in draft.notes["buyer_id"]
    assert draft.fields["product_id"] == "event_properties.product_id"


def test_a_counter_within_an_order_is_no_category(tmp_path: Path) -> None:
    """Olist's order items: order_item_id counts 1, 2, ... within an order, a category it is not."""
    rng = np.random.default_rng(4)
    rows = ["order_id,order_item_id,product_id,seller_id,shipping_limit_date,price,freight_value"]
    for order in range(300):
        seller = f"{int(rng.integers(12)):032x}"
        for item in range(1, int(rng.integers(1, 6)) + 1):
            rows.append(
                f"{order * 7919:032x},{item},{int(rng.integers(400)) * 104729:032x},{seller},"
                f"2017-09-{1 + order % 28:02d} 09:{order % 60:02d}:00,{rng.integers(500, 9000) / 100:.2f},13.29"
            )
    draft = draft_csv(tmp_path, "olist_order_items_dataset.csv", rows)
    assert draft.fields["product_id"] == "product_id" and draft.fields["merchant_id"] == "seller_id"
    assert draft.fields["category_id"] is None and draft.fields["buyer_id"] != "order_item_id"


def test_a_tracker_export_takes_its_derived_time_and_no_fingerprint_or_address_for_an_id(
    tmp_path: Path,
) -> None:
    """Snowplow's events: event_fingerprint is one event's, user_ipaddress many browsers', and
    derived_tstamp the event's own time beside the device's and the collector's."""
    rng = np.random.default_rng(5)
    header = "app_id,dvce_created_tstamp,collector_tstamp,derived_tstamp,event,event_fingerprint"
    rows = [header + ",user_ipaddress,domain_userid,domain_sessionid,event_vendor"]
    for i in range(500):
        browser = int(rng.integers(60))
        stamp = f"2022-02-{1 + i // 100:02d} 1{i % 10}:{i % 60:02d}:0"
        rows.append(
            f"shop,{stamp}1,{stamp}3,{stamp}2,{('page_view', 'unstruct')[i % 2]},{rng.integers(10**15):x},"
            f"10.0.0.{browser % 7},{browser:08x}-d1,{browser:08x}-{i // 50},com.snowplowanalytics.{i % 3}"
        )
    draft = draft_csv(tmp_path, "events.csv", rows)
    assert draft.fields["ts"] == "derived_tstamp" and draft.fields["buyer_id"] == "domain_userid"
    assert draft.fields["session_id"] == "domain_sessionid" and draft.fields["merchant_id"] == "=shop"
    assert "event_fingerprint" not in draft.fields.values() and "user_ipaddress" not in draft.fields.values()
