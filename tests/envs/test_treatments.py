"""Built-in storefront treatments: each kind changes what it should and nothing else."""

from __future__ import annotations

import dataclasses
import pickle
import random

import gymnasium as gym
import pytest
import yaml
from gymnasium.utils.env_checker import check_env

import envs
from envs.catalog import Catalog
from envs.render import MAX_OBSERVATION_CHARS, TYPICAL_PREFIX, price_cell
from envs.storefront import FEATURED, PAGE_SIZE, SEARCH_TEMPLATE, Page, SessionState, Storefront
from envs.text_env import shared_storefront
from envs.treatments import (
    KINDS,
    MAX_PAGE_SIZE,
    TREATED_STOREFRONT_ID,
    TreatedStorefront,
    Treatment,
    treated_catalog,
    treated_storefront,
    treatment_env,
)
from tests.envs.test_storefront import product_records, write_prepared

EXAMPLES = {
    "none": {"kind": "none"},
    "price": {"kind": "price", "percent": -10.0, "category": "10"},
    "order": {"kind": "order", "order": "random", "seed": 3},
    "banner": {"kind": "banner", "product": "5003"},
    "one-page-checkout": {"kind": "one-page-checkout"},
    "hide-favorite": {"kind": "hide-favorite"},
    "page-size": {"kind": "page-size", "page_size": 5},
    "variant": {"kind": "variant", "env_id": "me/Promo-v0"},
}


def catalog(n: int = 60) -> Catalog:
    return Catalog.from_records("m1", product_records(n))


def treated(**kwargs) -> TreatedStorefront:
    return TreatedStorefront(catalog(), Treatment(**kwargs))


def walk_pages(shop: Storefront, page: Page) -> list[SessionState]:
    """Every page of a paginated listing, first to last."""
    states = [SessionState(page)]
    while "next page" in shop.valid_actions(states[-1]):
        states.append(shop.step(states[-1], "next page")[0])
    return states


def listed(shop: Storefront, page: Page) -> list[str]:
    return [p.product_id for s in walk_pages(shop, page) for p in shop.listing(s.page)]


def random_action(actions: list[str], rng: random.Random) -> str:
    action = rng.choice(actions)
    return f'search "{rng.choice(["50", "1", "10", "5012", "zz"])}"' if action == SEARCH_TEMPLATE else action


# ---- the Treatment value ---------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_round_trips_through_yaml_pickle_and_dataclass_dump(kind):
    t = Treatment.from_dict(EXAMPLES[kind])
    plain = yaml.safe_load(yaml.safe_dump(t.to_dict()))
    assert plain == EXAMPLES[kind] and Treatment.from_dict(plain) == t
    assert pickle.loads(pickle.dumps(t)) == t
    assert Treatment.from_dict(dataclasses.asdict(t)) == t  # defaults of other kinds are accepted
    assert t.describe()


def test_equal_treatments_hash_alike_and_ids_may_be_yaml_ints():
    assert hash(Treatment("price", -10)) == hash(Treatment("price", -10.0))
    assert Treatment.from_dict({"kind": "banner", "category": 10}).category == "10"


@pytest.mark.parametrize(
    ("d", "message"),
    [
        ({"kind": "price", "pct": -10}, "unknown treatment key 'pct'; allowed keys: kind, percent"),
        ({"kind": "discount"}, "unknown treatment kind 'discount'; allowed kinds: none, price, order"),
        ({"kind": "order", "order": "cheapest"}, "unknown treatment order 'cheapest'; allowed orders"),
        ({"kind": "order", "percent": -10}, "kind 'order' takes order, seed; percent=-10"),
        ({"kind": "none", "page_size": 5}, "kind 'none' takes no parameters"),
        ({"kind": "banner"}, "exactly one of product or category"),
        ({"kind": "banner", "product": "1", "category": "2"}, "exactly one of product or category"),
        ({"kind": "variant"}, "needs env_id"),
        ({"kind": "price", "percent": -100}, "above -100"),
        ({"kind": "price", "percent": "ten"}, "must be a number"),
        ({"kind": "page-size", "page_size": 0}, f"integer in 1..{MAX_PAGE_SIZE}"),
        ({"kind": "page-size", "page_size": MAX_PAGE_SIZE + 1}, f"integer in 1..{MAX_PAGE_SIZE}"),
        ({"kind": "price", "percent": -5, "category": ""}, "non-empty string"),
        (["price"], "a treatment is a mapping"),
    ],
)
def test_from_dict_errors_name_the_problem(d, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        Treatment.from_dict(d)


def test_variant_arms_use_their_own_env():
    t = Treatment.from_dict(EXAMPLES["variant"])
    assert treatment_env(t) == ("me/Promo-v0", {})
    assert treatment_env({"kind": "price", "percent": 5}) == (
        TREATED_STOREFRONT_ID,
        {"treatment": {"kind": "price", "percent": 5.0}},
    )
    with pytest.raises(ValueError, match="variant arm"):
        TreatedStorefront(catalog(), t)
    with pytest.raises(ValueError, match="variant arm"):
        gym.make(TREATED_STOREFRONT_ID, catalog=catalog(), treatment=EXAMPLES["variant"])


# ---- none --------------------------------------------------------------------------------------------
def test_none_behaves_exactly_like_the_plain_storefront():
    cats = [catalog(), Catalog.from_records("m2", product_records(25, seed=2))]
    plain = gym.make(envs.STOREFRONT_ID, catalog=cats)
    arm = gym.make(TREATED_STOREFRONT_ID, catalog=cats, treatment={"kind": "none"})
    rng = random.Random(7)
    steps, episode = 0, 0
    while steps < 200:
        goal = rng.choice([None, "5000", "5007"])
        options = {"merchant": "m1", "goal": goal} if episode % 2 else {"goal": None}
        expected = plain.reset(seed=episode, options=options)
        assert arm.reset(seed=episode, options=options) == expected
        done = False
        while not done and steps < 200:
            info = expected[-1]
            # Mostly valid actions, sometimes one the page does not offer (counted, state unchanged).
            action = random_action(info["valid_actions"], rng) if rng.random() > 0.1 else "favorite"
            expected = plain.step(action)
            assert arm.step(action) == expected
            done = expected[2] or expected[3]
            steps += 1
        episode += 1
    assert episode > 2


# ---- price -------------------------------------------------------------------------------------------
def test_price_changes_one_category_everywhere_a_price_shows():
    base = catalog()
    shop = TreatedStorefront(base, Treatment("price", -10, category="10"))
    plain = Storefront(base)
    for p in base.products:
        want = round(p.price * 0.9, 2) if p.category_id == "10" else p.price
        assert shop.catalog.by_id[p.product_id].price == want
    rows = {r.product_id: r for c in base.categories for s in walk_pages(shop, Page("category", c))
            for r in shop.view(s).rows}  # fmt: skip
    assert len(rows) == len(base.products)
    for pid, row in rows.items():
        p = base.by_id[pid]
        assert row.price == (round(p.price * 0.9, 2) if p.category_id == "10" else p.price)
    a, b = base.listing("10")[0], base.listing("11")[0]
    s = shop.initial_state()
    for action in (f"open product {a.product_id}", "add to cart", "add to cart"):
        s, _ = shop.step(s, action)
    assert f"Price: {round(a.price * 0.9, 2):.2f} (was {a.price:.2f})" in shop.observe(
        s
    )  # shown as a markdown
    for action in (
        "home",
        f'search "{b.product_id}"',
        f"open product {b.product_id}",
        "add to cart",
        "go to cart",
        "checkout",
    ):
        s, _ = shop.step(s, action)
    revenue = sum(treated_catalog(base, shop.treatment).by_id[i].price * q for i, q in s.cart)
    assert revenue == pytest.approx(2 * round(a.price * 0.9, 2) + b.price)
    assert f"total {revenue:.2f}" in shop.observe(s)
    # An untouched category's pages are the plain ones.
    for page in (Page("product", b.product_id), Page("category", "11"), Page("category", "11", 1)):
        assert shop.observe(SessionState(page)) == plain.observe(SessionState(page))


def test_treated_catalog_is_the_same_object_when_prices_do_not_change():
    base = catalog()
    for kind in ("none", "order", "banner", "hide-favorite"):
        assert treated_catalog(base, Treatment.from_dict(EXAMPLES[kind])) is base
    assert treated_catalog(base, Treatment("price", -10, category="nope")) is base
    assert treated_catalog(base, Treatment("price", 0)) is base
    up = treated_catalog(base, Treatment("price", 25))
    assert [p.price for p in up.products] == [round(p.price * 1.25, 2) for p in base.products]
    p = base.products[0]
    page = SessionState(Page("product", p.product_id))
    assert f"Price: {round(p.price * 1.25, 2):.2f}\n" in Storefront(up).observe(page)  # a rise: no "was"
    assert [p.product_id for p in up.products] == [p.product_id for p in base.products]


def test_a_price_change_moves_prices_against_the_controls_typical_price():
    base = catalog()
    p = base.listing("10")[0]
    typical = base.typical_prices["10"]
    page = SessionState(Page("product", p.product_id))
    assert f"\n{TYPICAL_PREFIX}{typical:.2f}\n" in Storefront(base).observe(page)
    for percent in (-40, 60):
        treated = treated_catalog(base, Treatment("price", percent))
        assert treated.typical_prices == base.typical_prices  # what buyers knew, not the new prices
        shown = Storefront(treated).observe(page)
        assert f"\n{TYPICAL_PREFIX}{typical:.2f}\n" in shown
        ratio = treated.by_id[p.product_id].price / typical
        level = "far-below" if ratio < 0.7 else "below" if ratio < 1 else ""
        want = "+".join(x for x in (level, "marked" if percent < 0 else "") if x) or "regular"
        assert price_cell(shown) == want


# ---- order -------------------------------------------------------------------------------------------
def prices(shop: Storefront, page: Page) -> list[float]:
    return [shop.catalog.by_id[pid].price for pid in listed(shop, page)]


def test_price_ascending_and_descending_order_listings_and_featured():
    base = catalog()
    up, down = treated(kind="order", order="price-ascending"), treated(kind="order", order="price-descending")
    for c in base.categories:
        assert prices(up, Page("category", c)) == sorted(p.price for p in base.listing(c))
        assert prices(down, Page("category", c)) == sorted((p.price for p in base.listing(c)), reverse=True)
        assert sorted(listed(up, Page("category", c))) == sorted(p.product_id for p in base.listing(c))
    search = prices(up, Page("search", "50"))
    assert search == sorted(search) and len(search) == len(Storefront(base).search_results("50"))
    cheapest = sorted(base.products, key=lambda p: p.price)[:FEATURED]
    assert up.listing(Page("home")) == tuple(cheapest)
    exact = base.products[-1].product_id  # an exact id match stays first
    assert up.search_results(exact)[0].product_id == exact
    # Product pages are untouched.
    s = SessionState(Page("product", exact))
    assert up.observe(s) == Storefront(base).observe(s)


def test_a_reordered_listing_keeps_each_products_badge():
    records = [dict(r, n_purchases=i % 7) for i, r in enumerate(product_records())]
    base = Catalog.from_records("m1", records)
    cheapest_first = TreatedStorefront(base, Treatment(kind="order", order="price-ascending"))
    seen = 0
    for c in base.categories:
        rows = [
            line
            for line in cheapest_first.observe(SessionState(Page("category", c))).splitlines()
            if "- product" in line
        ]
        for line in rows:
            assert line.endswith(" | bestseller") == bool(base.by_id[line.split()[2]].badge), line
            seen += line.endswith(" | bestseller")
    assert seen > 0


def test_random_order_is_seeded_deterministic_and_a_permutation():
    page = Page("category", "10")
    first, again = (
        treated(kind="order", order="random", seed=1),
        treated(kind="order", order="random", seed=1),
    )
    other = treated(kind="order", order="random", seed=2)
    assert listed(first, page) == listed(again, page) != listed(other, page)
    assert sorted(listed(first, page)) == sorted(listed(Storefront(catalog()), page))
    assert first.observe(SessionState(Page("home"))) == again.observe(SessionState(Page("home")))
    assert treated(kind="order", order="popularity").observe(SessionState(page)) == Storefront(
        catalog()
    ).observe(SessionState(page))


# ---- page size -------------------------------------------------------------------------------------
def test_page_size_changes_rows_per_page_and_page_count():
    shop, plain = treated(kind="page-size", page_size=5), Storefront(catalog())
    page = Page("category", "10")  # 15 products
    pages = walk_pages(shop, page)
    assert [len(shop.view(s).rows) for s in pages] == [5, 5, 5]
    assert len(walk_pages(plain, page)) == 2 and plain.page_size == PAGE_SIZE
    assert listed(shop, page) == listed(plain, page)  # same order, finer pages
    assert "(page 1 of 3)" in shop.observe(pages[0])
    cart = tuple((p.product_id, 1) for p in catalog().products[:7])
    s = SessionState(Page("cart"), cart=cart)
    assert len(shop.cart_page(s)) == 5 and "next page" in shop.valid_actions(s)


def test_largest_page_size_keeps_observations_bounded():
    long = [
        {"product_id": f"{i:064d}", "category_id": "c" * 64, "price": 99999.99, "title": "t" * 200}
        for i in range(2 * MAX_PAGE_SIZE)
    ]
    shop = TreatedStorefront(Catalog.from_records("m", long), Treatment("page-size", page_size=MAX_PAGE_SIZE))
    cart = tuple((f"{i:064d}", 999) for i in range(2 * MAX_PAGE_SIZE))
    for page in (Page("cart"), Page("category", "c" * 64), Page("search", "0" * 63), Page("checkout")):
        s = SessionState(page, cart=cart, favourites=("x",) * 5, history=(Page("home"),), goal="0" * 64)
        text = shop.observe(s)
        assert len(text) <= MAX_OBSERVATION_CHARS
        assert len(shop.view(s).rows) == {"cart": MAX_PAGE_SIZE, "category": MAX_PAGE_SIZE}.get(page.kind, 10)


# ---- hide-favorite, one-page checkout, banner --------------------------------------------------------
def test_hide_favorite_removes_only_the_favorite_action():
    shop, plain = treated(kind="hide-favorite"), Storefront(catalog())
    s = SessionState(Page("product", "5003"))
    assert shop.valid_actions(s) == [a for a in plain.valid_actions(s) if a != "favorite"]
    assert shop.observe(s) == plain.observe(s).replace("\nfavorite\n", "\n")
    assert not shop.is_valid(s, "favorite")
    for page in (Page("home"), Page("category", "11"), Page("cart")):
        assert shop.observe(SessionState(page)) == plain.observe(SessionState(page))


def test_one_page_checkout_buys_from_the_product_page():
    base = catalog()
    shop, plain = TreatedStorefront(base, Treatment("one-page-checkout")), Storefront(base)
    a, b = (p.product_id for p in base.products[:2])  # both featured on the home page
    s = shop.initial_state(goal=b)
    for action in (f"open product {a}", "add to cart", "home", f"open product {b}", "add to cart"):
        s, _ = shop.step(s, action)
    actions = shop.valid_actions(s)
    assert actions[: actions.index("place order")] == ["add to cart", "buy now"]
    assert [x for x in actions if x != "place order"] == plain.valid_actions(s)
    assert "One-page checkout" in shop.observe(s)
    two_step = plain.step(plain.step(s, "buy now")[0], "place order")
    one_step = shop.step(s, "place order")
    assert one_step == two_step  # same state (confirmation, cart line settled) and purchase event
    state, event = one_step
    assert event.event_type == "purchase" and event.products == (b,) and state.cart == ((a, 1),)
    # The env: one step from the product page to a rewarded, terminated purchase.
    env = gym.make(TREATED_STOREFRONT_ID, catalog=base, treatment={"kind": "one-page-checkout"})
    env.reset(seed=0, options={"goal": b})
    env.step(f"open product {b}")
    _, reward, terminated, _, info = env.step("place order")
    assert (reward, terminated, info["event"], info["page"]) == (1.0, True, "purchase", "confirmation")
    # Elsewhere (cart, checkout) the storefront is the plain one.
    for page in (Page("cart"), Page("checkout", a), Page("home")):
        st = SessionState(page, cart=((a, 1),))
        assert shop.observe(st) == plain.observe(st)


def test_product_banner_promotes_on_listings_and_its_own_page():
    shop, plain = treated(kind="banner", product="5033"), Storefront(catalog())
    promo = "Promo: product 5033 | category 11 | price"
    for page in (Page("home"), Page("home", None, 0), Page("category", "12", 1), Page("search", "1")):
        assert shop.view(SessionState(page)).lines[0].startswith(promo)
    assert shop.listing(Page("home"))[0].product_id == "5033"
    assert shop.listing(Page("home"))[1:] == plain.listing(Page("home"))[: FEATURED - 1]
    assert promo in shop.observe(SessionState(Page("product", "5033")))
    for page in (Page("product", "5000"), Page("cart"), Page("checkout", "5000")):
        assert shop.observe(SessionState(page)) == plain.observe(SessionState(page))
    s = SessionState(Page("category", "12"))
    assert shop.valid_actions(s) == plain.valid_actions(s)
    title, status, *rest = plain.observe(s).split("\n")
    assert shop.observe(s) == "\n".join([title, status, shop.view(s).lines[0], *rest])


def test_category_banner_and_a_merchant_without_the_target():
    base = catalog()
    shop = TreatedStorefront(base, Treatment("banner", category="13"))
    home = SessionState(Page("home"))
    assert shop.view(home).lines[0] == "Promo: category 13 | 15 products"
    assert shop.home_categories(0)[0] == "13" and sorted(shop.home_categories(0)) == sorted(base.categories)
    assert shop.listing(Page("home"))[0] == base.listing("13")[0]
    assert "Promo: category 13" in shop.observe(
        SessionState(Page("product", base.listing("13")[1].product_id))
    )
    assert "Promo" not in shop.observe(SessionState(Page("product", base.listing("10")[0].product_id)))
    absent = Treatment("banner", product="not-here")
    assert not absent.applies_to(base)
    # Price treatments change nothing in a catalogue without prices.
    priceless = Catalog("m", tuple(dataclasses.replace(p, price=None) for p in base.products))
    for treatment in (Treatment("price", percent=-10), Treatment("order", order="price-ascending")):
        assert treatment.applies_to(base) and not treatment.applies_to(priceless)
    assert Treatment("order", order="random").applies_to(priceless)
    # Arms that are the plain storefront by construction: A/A arms, never "applied".
    identities = [Treatment(), Treatment("order", order="popularity"), Treatment("price", percent=0)]
    for treatment in [*identities, Treatment("page-size", page_size=PAGE_SIZE)]:
        assert treatment.is_identity and not treatment.applies_to(base)
    assert not Treatment("page-size", page_size=PAGE_SIZE - 1).is_identity
    assert TreatedStorefront(base, absent).observe(home) == Storefront(base).observe(home)


# ---- the env ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", [k for k in KINDS if k != "variant"])
def test_check_env_passes_for_every_kind(kind):
    env = gym.make(TREATED_STOREFRONT_ID, catalog=catalog(), treatment=EXAMPLES[kind], render_mode="ansi")
    check_env(env.unwrapped, skip_render_check=False)
    rng = random.Random(0)
    obs, info = env.reset(seed=0)
    for _ in range(60):  # a random walk stays within the spaces
        obs, _, terminated, truncated, info = env.step(random_action(info["valid_actions"], rng))
        assert env.observation_space.contains(obs)
        if terminated or truncated:
            obs, info = env.reset()


def test_prepared_directory_storefronts_are_shared_per_treatment(tmp_path):
    rows = [
        {"merchant_id": m, **r, "n_views": 1, "n_carts": 0, "n_purchases": 0}
        for m in ("a", "b")
        for r in product_records(12)
    ]
    root = write_prepared(tmp_path / "prep", rows, [])

    def storefront(treatment) -> Storefront:
        env = gym.make(TREATED_STOREFRONT_ID, data=root, treatment=treatment)
        env.reset(seed=0, options={"merchant": "a"})
        return env.unwrapped.storefront

    cheaper = storefront({"kind": "price", "percent": -10})
    assert storefront({"kind": "price", "percent": -10.0}) is cheaper
    assert storefront(Treatment("price", -10)) is cheaper
    dearer = storefront({"kind": "price", "percent": 10})
    assert dearer is not cheaper and dearer.catalog.products[0].price != cheaper.catalog.products[0].price
    none = storefront(None)
    assert none is not shared_storefront(str(root.resolve()), "a") and none.treatment == Treatment()
    assert treated_storefront(str(root.resolve()), "a", Treatment("price", 10)) is dearer
    with pytest.raises(ValueError, match="merchant 'zz'"):
        gym.make(TREATED_STOREFRONT_ID, data=root).reset(options={"merchant": "zz"})
