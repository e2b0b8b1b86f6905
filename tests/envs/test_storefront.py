"""The storefront model: catalog order, pages, actions, events, purity, bounded observations."""

from __future__ import annotations

import random
import re
from dataclasses import FrozenInstanceError
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from envs.catalog import BESTSELLER, Catalog, load_catalogs, placeholder_id
from envs.render import MAX_OBSERVATION_CHARS, REGULAR_CELL, TYPICAL_PREFIX, at_regular_price, price_cell
from envs.storefront import (
    PAGE_SIZE,
    SEARCH_TEMPLATE,
    InvalidAction,
    Page,
    SessionState,
    Storefront,
)
from learners.data import schema


def product_records(n: int = 60, n_categories: int = 4, seed: int = 0) -> list[dict]:
    """Products with distinct ids, some popularity ties (to exercise the id tie-break)."""
    rng = random.Random(seed)
    return [
        {
            "product_id": str(5000 + i),
            "category_id": str(10 + i % n_categories),
            "price": round(rng.uniform(1, 100), 2),
            "popularity": rng.choice([0.1, 0.2, 0.3, 0.4]),
        }
        for i in range(n)
    ]


def write_prepared(root: Path, catalog_rows: list[dict], event_rows: list[dict]) -> Path:
    """A hand-built prepared directory: catalogs, events and merchants Parquet in the schema contracts."""
    root.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(catalog_rows, schema=schema.CATALOGS), root / "catalogs.parquet")
    pq.write_table(pa.Table.from_pylist(event_rows, schema=schema.EVENTS), root / "events.parquet")
    merchants = sorted({r["merchant_id"] for r in event_rows} | {r["merchant_id"] for r in catalog_rows})
    zeros = {f.name: 0 for f in schema.MERCHANTS if f.name != "merchant_id"}
    pq.write_table(
        pa.Table.from_pylist([{"merchant_id": m, **zeros} for m in merchants], schema=schema.MERCHANTS),
        root / "merchants.parquet",
    )
    return root


@pytest.fixture
def shop() -> Storefront:
    return Storefront(Catalog.from_records("m1", product_records()))


def test_catalog_order_is_popularity_then_id():
    records = product_records()
    catalog = Catalog.from_records("m1", reversed(records))
    expected = sorted(records, key=lambda r: (-r["popularity"], r["product_id"]))
    assert [p.product_id for p in catalog.products] == [r["product_id"] for r in expected]
    sizes = {}
    for r in records:
        sizes[r["category_id"]] = sizes.get(r["category_id"], 0) + 1
    assert list(catalog.categories) == sorted(sizes, key=lambda c: (-sizes[c], c))


def test_catalog_record_errors_name_the_problem():
    with pytest.raises(ValueError, match="row 2, column product_id"):
        Catalog.from_records("m", [{"product_id": "1"}, {"product_id": ""}])
    with pytest.raises(ValueError, match="longer than 64"):
        Catalog.from_records("m", [{"product_id": "x" * 65}])


def test_placeholder_catalog_has_one_item_per_category():
    catalog = Catalog.placeholder("brand", {"7": 30, None: 10, "9": 60})
    assert catalog.is_placeholder
    assert [p.product_id for p in catalog.products] == [
        placeholder_id("9"),
        placeholder_id("7"),
        placeholder_id("all"),
    ]
    assert catalog.product_for(None, "7").product_id == placeholder_id("7")
    assert catalog.product_for(None, None).product_id == placeholder_id("all")


def test_load_catalogs_builds_placeholders_for_merchants_without_products(tmp_path):
    catalog_rows = [
        {
            "merchant_id": "a",
            "product_id": r["product_id"],
            "category_id": r["category_id"],
            "price": r["price"],
            "n_views": 1,
            "n_carts": 0,
            "n_purchases": 0,
            "popularity": r["popularity"],
        }
        for r in product_records(5)
    ]
    ts = pa.scalar(0, pa.timestamp("ms", tz="UTC")).as_py()
    events = [
        {
            "merchant_id": "b",
            "buyer_id": "u",
            "session_id": "s",
            "ts": ts,
            "seq": i,
            "event_type": "product_view",
            "product_id": None,
            "category_id": None,
            "price": None,
            "query": None,
        }
        for i in range(3)
    ]
    root = write_prepared(tmp_path / "prep", catalog_rows, events)
    catalogs = load_catalogs(root)
    assert set(catalogs) == {"a", "b"}
    assert not catalogs["a"].is_placeholder and len(catalogs["a"].products) == 5
    assert catalogs["b"].is_placeholder and [p.product_id for p in catalogs["b"].products] == [
        placeholder_id("all")
    ]
    with pytest.raises(ValueError, match="no catalog and no events"):
        load_catalogs(root, ["zz"])


def test_listing_pages_cover_the_category_in_order(shop):
    cat = shop.catalog.categories[0]
    state = shop.step(shop.initial_state(), f"open category {cat}")[0]
    seen = []
    while True:
        seen.extend(
            a.removeprefix("open product ")
            for a in shop.valid_actions(state)
            if a.startswith("open product ")
        )
        if "next page" not in shop.valid_actions(state):
            break
        state = shop.step(state, "next page")[0]
    assert seen == [p.product_id for p in shop.catalog.listing(cat)]
    assert shop.n_pages(state) == -(-len(seen) // PAGE_SIZE)


def test_every_action_emits_its_canonical_event(shop):
    s = shop.initial_state()
    pid = shop.catalog.products[0].product_id
    s, e = shop.step(s, f"open product {pid}")
    assert (e.event_type, e.product_id) == ("product_view", pid)
    s, e = shop.step(s, "  add   to cart ")  # whitespace is normalised
    assert e.event_type == "add_to_cart" and s.cart == ((pid, 1),)
    s, e = shop.step(s, "add to cart")
    assert s.cart == ((pid, 2),)
    s, e = shop.step(s, "favorite")
    assert e.event_type == "favorite" and s.favourites == (pid,)
    s, e = shop.step(s, "remove from cart")
    assert e.event_type == "remove_from_cart" and s.cart == ((pid, 1),)
    s, e = shop.step(s, "go to cart")
    assert e.event_type == "page_view" and s.page.kind == "cart"
    s, e = shop.step(s, "checkout")
    assert e.event_type == "checkout" and e.products == (pid,)
    s, e = shop.step(s, "place order")
    assert e.event_type == "purchase" and e.products == (pid,)
    assert s.page.kind == "confirmation" and s.cart == () and s.purchased == (pid,)
    s, e = shop.step(s, 'search "50"')
    assert (e.event_type, e.query) == ("search", "50")
    s, e = shop.step(s, "exit")
    assert e is None and s.exited and shop.valid_actions(s) == []


def test_buy_now_buys_only_that_product_and_settles_its_cart_line(shop):
    a, b = (p.product_id for p in shop.catalog.products[:2])
    s = shop.initial_state(goal=b)
    for action in (f"open product {a}", "add to cart", "home", f"open product {b}", "add to cart", "buy now"):
        s, e = shop.step(s, action)
    assert e.event_type == "checkout" and s.page == Page("checkout", b)
    assert not shop.goal_reached(s)
    s, e = shop.step(s, "place order")
    assert e.products == (b,) and s.cart == ((a, 1),) and shop.goal_reached(s)


def test_search_finds_exact_id_first_and_template_is_not_an_action(shop):
    pid = shop.catalog.products[-1].product_id
    s, _ = shop.step(shop.initial_state(), f'search "{pid}"')
    assert shop.valid_actions(s)[0] == f"open product {pid}"
    for bad in (SEARCH_TEMPLATE, 'search ""', 'search "a"b"', "search " + '"' + "x" * 65 + '"'):
        assert not shop.is_valid(s, bad)


def test_invalid_actions_raise_and_leave_state_unchanged(shop):
    s = shop.initial_state()
    for bad in ("add to cart", "place order", "open product nope", "back", "import os", ""):
        with pytest.raises(InvalidAction):
            shop.step(s, bad)
    assert s == shop.initial_state()
    with pytest.raises(FrozenInstanceError):
        s.page = Page("cart")  # type: ignore[misc]


def test_back_returns_to_the_previous_page(shop):
    s0 = shop.initial_state()
    s1, _ = shop.step(s0, f"open category {shop.catalog.categories[0]}")
    s2, _ = shop.step(s1, "next page")
    s3, _ = shop.step(s2, "back")
    assert s3.page == s1.page and s3.history == s1.history


def test_cart_pages_bound_the_cart_listing(shop):
    s = shop.initial_state()
    for p in shop.catalog.products[: PAGE_SIZE + 3]:
        s, _ = shop.step(s, f'search "{p.product_id}"')
        s, _ = shop.step(s, f"open product {p.product_id}")
        s, _ = shop.step(s, "add to cart")
    s, _ = shop.step(s, "go to cart")
    assert sum(a.startswith("remove product ") for a in shop.valid_actions(s)) == PAGE_SIZE
    s, _ = shop.step(s, "next page")
    removes = [a for a in shop.valid_actions(s) if a.startswith("remove product ")]
    assert len(removes) == 3
    for a in removes:
        s, _ = shop.step(s, a)
    assert s.page.index == 0 and len(s.cart) == PAGE_SIZE  # the emptied page folded back


def test_random_walks_are_deterministic_and_observations_bounded():
    long = [
        {
            "product_id": f"{i:064d}",
            "category_id": f"{i % 3:064d}",
            "price": 1.0,
            "title": "t" * 200,
            "popularity": i,
        }
        for i in range(40)
    ]
    shop = Storefront(Catalog.from_records("m", long))

    def walk(seed: int) -> list[str]:
        rng = random.Random(seed)
        s, texts = shop.initial_state(goal=long[0]["product_id"]), []
        for _ in range(400):
            actions = shop.valid_actions(s)
            if not actions:
                s = shop.initial_state()
                continue
            action = rng.choice(actions)
            if action == SEARCH_TEMPLATE:
                action = 'search "' + "0" * 64 + '"'
            texts.append(shop.observe(s))
            for a in actions:  # every listed action is accepted (checked without committing)
                if a != SEARCH_TEMPLATE:
                    shop.step(s, a)
            s, _ = shop.step(s, action)
        return texts

    texts = walk(1)
    assert texts == walk(1)
    assert max(len(t) for t in texts) < MAX_OBSERVATION_CHARS


def test_state_is_a_value(shop):
    assert isinstance(shop.initial_state(), SessionState)
    a = shop.step(shop.initial_state(), "go to cart")
    b = shop.step(shop.initial_state(), "go to cart")
    assert a == b


def test_search_matches_a_naive_scan():
    rng = random.Random(3)
    records = [
        {
            "product_id": str(rng.randrange(10**5)),
            "category_id": str(rng.randrange(9)),
            "title": rng.choice(["Red phone", "blue Phone case", "lamp", None]),
            "popularity": rng.random(),
        }
        for _ in range(500)
    ]
    catalog = Catalog.from_records("m", list({r["product_id"]: r for r in records}.values()))

    def naive(query: str, limit: int) -> tuple:
        q = " ".join(query.lower().split())
        exact = catalog.by_id.get(query.strip())
        hits = [exact] if exact else []
        hits += [
            p
            for p in catalog.products
            if p is not exact and (q in p.product_id or q == p.category_id or q in p.title.lower())
        ]
        return tuple(hits[:limit])

    for query in [
        "1",
        "12",
        "phone",
        " PHONE ",
        "3",
        "lamp",
        "oduct 1",
        "zzz",
        catalog.products[7].product_id,
    ]:
        for limit in (5, 100, 1000):
            assert catalog.search(query, limit) == naive(query, limit), (query, limit)


def _shows_markdown(observation: str) -> bool:
    """A product page whose price is marked down."""
    return "marked" in (price_cell(observation) or "")


def test_a_session_price_shows_as_a_markdown_only_where_lower(shop):
    p = shop.catalog.products[0]
    on_page = shop.step(shop.initial_state(), f"open product {p.product_id}")[0]
    assert f"Price: {p.price:.2f}\n" in shop.observe(on_page)
    assert not _shows_markdown(shop.observe(on_page))

    cut = round(p.price * 0.7, 2)
    s = on_page.priced(p.product_id, cut)
    assert f"Price: {cut:.2f} (was {p.price:.2f})" in shop.observe(s)
    assert _shows_markdown(shop.observe(s))
    s = shop.step(s, "add to cart")[0]
    s = shop.step(s, "go to cart")[0]
    assert f"- product {p.product_id} | category {p.category_id} | price {cut:.2f}" in shop.observe(s)
    assert not _shows_markdown(shop.observe(s))  # a cart row is not a product page
    s = shop.step(s, "checkout")[0]
    assert f"1 items, total {cut:.2f}" in shop.observe(s)
    listing = shop.observe(SessionState(Page("category", p.category_id), prices=s.prices))
    row = f"- product {p.product_id} | category {p.category_id} | price "
    assert row + f"{p.price:.2f}" in listing and row + f"{cut:.2f}" not in listing  # rows: the catalogue's

    dearer = on_page.priced(p.product_id, cut).priced(p.product_id, round(p.price * 1.2, 2))
    assert dearer.prices == ((p.product_id, round(p.price * 1.2, 2)),)  # the latest price replaces
    assert f"Price: {round(p.price * 1.2, 2):.2f}\n" in shop.observe(dearer)
    rounding = on_page.priced(p.product_id, round(p.price * 0.995, 2))
    assert "(was" not in shop.observe(rounding)  # under 1% off is not a markdown


def test_a_product_page_shows_its_categorys_typical_price_and_its_price_cell():
    rows = [
        {"product_id": f"a{i}", "category_id": "big", "price": p} for i, p in enumerate((10, 25, 30, 40, 100))
    ]
    rows += [{"product_id": "a9", "category_id": "big"}]  # no price: not counted
    rows += [{"product_id": f"b{i}", "category_id": "small", "price": 5.0} for i in range(4)]
    shop = Storefront(Catalog.from_records("m", rows))
    assert shop.catalog.typical_prices == {"big": 30.0}  # the median of five; four are too few

    def page(pid: str, price: float | None = None) -> str:
        state = SessionState(Page("product", pid))
        return shop.observe(state if price is None else state.priced(pid, price))

    assert f"Price: 10.00\n{TYPICAL_PREFIX}30.00\n" in page("a0")
    cells = {pid: price_cell(page(pid)) for pid in ("a0", "a1", "a2", "a4", "b0")}
    assert cells == {
        "a0": "far-below",
        "a1": "below",
        "a2": REGULAR_CELL,
        "a4": REGULAR_CELL,
        "b0": REGULAR_CELL,
    }
    assert TYPICAL_PREFIX not in page("b0") and price_cell(page("a9")) is None  # "Price: n/a"
    assert price_cell(page("a4", 50.0)) == "marked" and price_cell(page("a4", 25.0)) == "below+marked"
    assert price_cell(page("a3", 20.0)) == "far-below+marked"
    assert price_cell(shop.observe(shop.initial_state())) is None  # not a product page

    # At a regular price: the markdown's regular price or the typical one, whichever is higher.
    for shown, regular in ((page("a0"), 30.0), (page("a4", 50.0), 100.0), (page("a3", 20.0), 40.0)):
        at_regular = at_regular_price(shown)
        assert price_cell(at_regular) == REGULAR_CELL and f"Price: {regular:.2f}\n" in at_regular
        assert at_regular.replace(f"Price: {regular:.2f}", "") == re.sub(r"Price: [^\n]*", "", shown)
    assert at_regular_price(page("a2")) == page("a2") and at_regular_price(page("a9")) == page("a9")


def test_the_most_bought_products_carry_a_bestseller_badge_on_rows_and_page():
    records = product_records(30)
    for i, r in enumerate(records):
        r["n_purchases"] = i % 7  # four products are bought 6 times; 3 badges (10% rounded up)
    catalog = Catalog.from_records("m1", records)
    badged = {p.product_id for p in catalog.products if p.badge == BESTSELLER}
    tied = sorted(
        (r for r in records if r["n_purchases"] == 6), key=lambda r: (-r["popularity"], r["product_id"])
    )
    assert len(tied) == 4 and badged == {r["product_id"] for r in tied[:3]}  # ties: popularity, then id
    top = tied[:3]

    unsold = [dict(r, n_purchases=0) for r in records]
    unsold[5]["n_purchases"] = 1
    assert [p.product_id for p in Catalog.from_records("m1", unsold).products if p.badge] == ["5005"]

    shop = Storefront(catalog)
    hit = catalog.by_id[top[0]["product_id"]]
    listing = shop.observe(SessionState(Page("category", hit.category_id)))
    for line in listing.splitlines():
        if line.startswith("- product "):
            assert line.endswith(" | bestseller") == (line.split()[2] in badged), line
    page = shop.observe(SessionState(Page("product", hit.product_id)))
    assert "\nBestseller\n" in page
    plain = next(p for p in catalog.products if not p.badge)
    assert "Bestseller" not in shop.observe(SessionState(Page("product", plain.product_id)))
