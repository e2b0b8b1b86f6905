"""Trace replay: real events become valid storefront actions, navigation is inserted and marked."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pyarrow.parquet as pq
import pytest

from envs.catalog import Catalog, load_catalogs, placeholder_id
from envs.storefront import PAGE_SIZE, Storefront
from learners.data import schema
from learners.data.adapters import get_adapter
from learners.data.prepare import PrepareConfig, prepare
from learners.data.traces import REPORT_FILE, TRACES_FILE, RealEvent, TracesConfig, build_traces, plan_event
from tests.envs.test_storefront import product_records, write_prepared

TS = datetime(2024, 1, 1, tzinfo=UTC)


def catalog_rows(merchant: str, n: int = 45) -> list[dict]:
    return [
        {"merchant_id": merchant, **r, "n_views": 1, "n_carts": 0, "n_purchases": 0}
        for r in product_records(n)
    ]


def events_of(merchant: str, buyer: str, session: str, rows: list[tuple]) -> list[dict]:
    """rows: (event_type, product_id, category_id, query)."""
    return [
        {
            "merchant_id": merchant,
            "buyer_id": buyer,
            "session_id": session,
            "ts": TS,
            "seq": i,
            "event_type": t,
            "product_id": p,
            "category_id": c,
            "price": None,
            "query": q,
        }
        for i, (t, p, c, q) in enumerate(rows)
    ]


@pytest.fixture
def prepared(tmp_path):
    catalog = Catalog.from_records("shop", product_records(45))
    deep = catalog.listing(catalog.categories[-1])[-1]  # last page of the last category: never on screen
    first = catalog.products[0].product_id
    a, b = catalog.products[1].product_id, catalog.products[2].product_id
    events = [
        *events_of(
            "shop",
            "u1",
            "s1",
            [
                ("product_view", deep.product_id, None, None),
                ("product_view", deep.product_id, None, None),  # a repeat view of the page one is on
                ("add_to_cart", a, None, None),  # a cart event without a view first
                ("add_to_cart", b, None, None),
                ("purchase", deep.product_id, None, None),  # bought without a cart event ("buy now")
                ("checkout", None, None, None),
                ("purchase", None, None, None),
                ("remove_from_cart", first, None, None),  # never carted in this session
                ("favorite", first, None, None),
                ("search", None, None, 'red "phone"'),
                ("page_view", None, deep.category_id, None),
                ("refund", first, None, None),
            ],
        ),
        *events_of(
            "shop",
            "u2",
            "s2",
            [("product_view", "not-in-catalog", None, None), ("purchase", first, None, None)],
        ),
        *events_of(
            "brand",
            "u1",
            "s3",
            [
                ("product_view", None, "7", None),
                ("favorite", None, None, None),
                ("purchase", None, "7", None),
            ],
        ),
    ]
    return write_prepared(tmp_path / "prep", catalog_rows("shop"), events), events


def read_traces(out):
    return pq.read_table(out / TRACES_FILE).to_pylist()


def test_real_events_replay_as_valid_actions_with_marked_navigation(prepared, tmp_path):
    root, events = prepared
    report = build_traces(root, tmp_path / "out", TracesConfig())
    rows = read_traces(tmp_path / "out")
    unmapped = sum(report.unmapped_by_reason.values())
    assert report.real_events == len(events) == report.mapped_events + unmapped
    assert report.unmapped_by_reason == {
        "unknown event type 'refund'": 1,
        "product_view of a product that is not in the merchant's catalog (or has no id)": 1,
    }
    assert report.steps == len(rows) and report.sessions == 3
    assert report.inserted_steps == sum(not r["real_event"] for r in rows)
    real = {(e["session_id"], e["seq"]): e for e in events}
    for r in rows:
        if r["real_event"]:
            e = real[(r["session_id"], r["seq"])]
            assert r["event_type"] == e["event_type"]
            if e["product_id"] and e["event_type"] == "product_view":
                assert r["action"] == f"open product {e['product_id']}"
    mapped_seqs = [(r["session_id"], r["seq"]) for r in rows if r["real_event"]]
    assert len(mapped_seqs) == report.mapped_events == len(set(mapped_seqs))
    assert [json.loads((tmp_path / "out" / REPORT_FILE).read_text())["mapped_share"]] == [report.mapped_share]


def test_a_removal_of_an_item_added_before_the_window_replays_after_an_inserted_add(tmp_path):
    """The log starts after the buyer carted A: the removal of A is kept, behind an inserted add."""
    catalog = Catalog.from_records("shop", product_records(45))
    a, b = catalog.products[1].product_id, catalog.products[2].product_id
    session = [
        ("product_view", b, None, None),
        ("remove_from_cart", a, None, None),  # A was added before the window
        ("add_to_cart", b, None, None),
        ("remove_from_cart", b, None, None),  # B was added in the window: no insertion
        ("remove_from_cart", a, None, None),  # A is gone again: a second inserted add
    ]
    root = write_prepared(tmp_path / "prep", catalog_rows("shop"), events_of("shop", "u1", "s1", session))
    report = build_traces(root, tmp_path / "out", TracesConfig())
    rows = read_traces(tmp_path / "out")

    assert report.unmapped_by_reason == {} and report.mapped_events == report.real_events == 5
    assert report.inserted_adds == 2
    cart_steps = [
        (r["action"], r["real_event"], r["seq"])
        for r in rows
        if r["event_type"] in ("add_to_cart", "remove_from_cart")
    ]
    assert cart_steps == [
        ("add to cart", False, None),  # inserted on A's product page
        ("remove from cart", True, 1),
        ("add to cart", True, 2),
        ("remove from cart", True, 3),
        ("add to cart", False, None),
        ("remove from cart", True, 4),
    ]
    first_add = next(i for i, r in enumerate(rows) if r["action"] == "add to cart")
    assert rows[first_add - 1]["action"] == f"open product {a}" and not rows[first_add - 1]["real_event"]
    assert report.inserted_steps == sum(not r["real_event"] for r in rows)
    saved = json.loads((tmp_path / "out" / REPORT_FILE).read_text())
    assert saved["inserted_adds"] == 2
    assert any("2 remove_from_cart of products added before the window" in line for line in report.lines())


def test_traces_replay_to_the_same_observations(prepared, tmp_path):
    """Stepping the recorded actions through a fresh storefront reproduces every observation."""
    root, _ = prepared
    build_traces(root, tmp_path / "out", TracesConfig())
    catalogs = load_catalogs(root)
    sessions: dict[str, list[dict]] = {}
    for r in read_traces(tmp_path / "out"):
        sessions.setdefault(r["session_id"], []).append(r)
    for steps in sessions.values():
        sf = Storefront(catalogs[steps[0]["merchant_id"]])
        state = sf.initial_state()
        assert [s["step"] for s in steps] == list(range(len(steps)))
        assert steps[-1]["action"] == "exit" and not steps[-1]["real_event"]
        for s in steps:
            assert s["valid"] and sf.observe(state) == s["observation"] and state.page.kind == s["page"]
            state, _ = sf.step(state, s["action"])


def test_purchases_without_cart_go_through_buy_now(prepared, tmp_path):
    root, _ = prepared
    build_traces(root, tmp_path / "out", TracesConfig(merchants=["shop"]))
    s1 = [r for r in read_traces(tmp_path / "out") if r["session_id"] == "s1"]
    purchases = [i for i, r in enumerate(s1) if r["event_type"] == "purchase" and r["real_event"]]
    assert len(purchases) == 2
    assert s1[purchases[0] - 1]["action"] == "buy now" and not s1[purchases[0] - 1]["real_event"]
    # the later product-less purchase pays the cart (two items added earlier) through the checkout
    assert [r["action"] for r in s1[purchases[1] - 1 : purchases[1] + 1]] == ["checkout", "place order"]
    assert s1[purchases[1] - 1]["real_event"]  # that checkout was a real event


def test_navigation_takes_the_shortest_route():
    sf = Storefront(Catalog.from_records("shop", product_records(45)))
    home = sf.initial_state()
    featured = {p.product_id for p in sf.listing(home.page)}
    cat = sf.catalog.categories[0]
    browsable = next(p for p in sf.catalog.listing(cat)[:PAGE_SIZE] if p.product_id not in featured)
    deep = sf.catalog.listing(cat)[-1]  # on the category's second page
    assert sf.catalog.listing(cat).index(deep) >= PAGE_SIZE

    def plan(state, etype, product):
        actions, reason = plan_event(sf, state, RealEvent(0, etype, product.product_id, None, None))
        assert reason is None
        return actions

    # a tie between the category link and search goes to browsing; the deep item is searched
    assert plan(home, "product_view", browsable) == [
        f"open category {cat}",
        f"open product {browsable.product_id}",
    ]
    assert plan(home, "product_view", deep) == [
        f'search "{deep.product_id}"',
        f"open product {deep.product_id}",
    ]
    on_page = sf.step(sf.step(home, f"open category {cat}")[0], f"open product {browsable.product_id}")[0]
    assert plan(on_page, "product_view", browsable) == ["back", f"open product {browsable.product_id}"]
    assert plan(on_page, "favorite", browsable) == ["favorite"]
    assert plan(home, "purchase", browsable) == [
        f"open category {cat}",
        f"open product {browsable.product_id}",
        "buy now",
        "place order",
    ]


def test_placeholder_catalog_maps_productless_events(prepared, tmp_path):
    root, _ = prepared
    report = build_traces(root, tmp_path / "out", TracesConfig(merchants=["brand"]))
    rows = read_traces(tmp_path / "out")
    assert report.mapped_share == 1.0 and report.real_events == 3
    views = [r["action"] for r in rows if r["real_event"] and r["event_type"] == "product_view"]
    assert views == [f"open product {placeholder_id('7')}"]


def test_max_sessions_per_merchant(prepared, tmp_path):
    root, _ = prepared
    report = build_traces(root, tmp_path / "out", TracesConfig(max_sessions=1))
    assert report.sessions == 2  # one of shop's two sessions, brand's one


def test_tmall_ijcai15_maps_at_least_95_percent(real_file, tmp_path):
    out = tmp_path / "prep"
    prepare([real_file("tmall-ijcai15")], get_adapter("tmall-ijcai15"), PrepareConfig(), out)
    merchants = pq.read_table(out / schema.TABLE_FILES["merchants"]).sort_by([("events", "descending")])
    top = merchants.column("merchant_id").to_pylist()[:15]
    report = build_traces(out, tmp_path / "traces", TracesConfig(merchants=top))
    events = pq.read_table(out / schema.TABLE_FILES["events"], filters=[("merchant_id", "in", top)])
    assert report.real_events == events.num_rows
    assert report.mapped_share >= 0.95


def test_a_session_sees_the_prices_its_events_logged(tmp_path):
    catalog = Catalog.from_records("shop", product_records(45))
    p = catalog.products[0]
    sale = round(p.price * 0.8, 2)

    def priced(session: str, price: float | None) -> list[dict]:
        rows = events_of("shop", "u1", session, [("product_view", p.product_id, None, None)] * 2)
        rows[0]["price"], rows[1]["event_type"], rows[1]["price"] = price, "add_to_cart", price
        return rows

    events = [*priced("s1", sale), *priced("s2", p.price), *priced("s3", None)]
    build_traces(
        write_prepared(tmp_path / "prep", catalog_rows("shop"), events), tmp_path / "out", TracesConfig()
    )
    rows = read_traces(tmp_path / "out")
    carts = {r["session_id"]: r["observation"] for r in rows if r["action"] == "add to cart"}
    assert f"Price: {sale:.2f} (was {p.price:.2f})" in carts["s1"]  # the logged markdown
    assert f"Price: {p.price:.2f}\n" in carts["s2"] and f"Price: {p.price:.2f}\n" in carts["s3"]
