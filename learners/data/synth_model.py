"""The visit model of the synthetic generator: merchants' worlds, their storefront under a treatment,
and the lock-step walk of visits through the planted types' chains.

``synth.py`` writes a log with it (the control storefront) and ``synth_truth.py`` runs the same walk
under a treatment to measure true effects. The planted sensitivities are documented in
learners/data/planted_types.py; how they are built:

- A merchant sells a few categories (Zipf shares, so sizes differ: small categories and short last
  pages are common) with log-normal prices around each category's level. Two independent latent
  ranks per product: ``listing_rank``, the merchant's popularity order (what the storefront lists
  first; position-biased buyers make it popular), and ``appeal_rank``, what buyers who come for a
  specific product want (the decisive buyer), wherever it is listed, so logs show those buyers
  ignoring positions.
- Prices change over time: each product has a regular price and is marked down 10-40% in about 30%
  of the log's weeks (``week_price``). A visit of the log sees its week's prices: a markdown is what
  the logged events record, what a deal hunter's add-to-cart weighs and what draws its product
  choice (``World.week_choice_cdf``). Storefronts without markdowns (control and treatments, as an
  experiment shows them) use regular prices.
- ``Shop`` is a merchant set's storefront under a treatment (envs/treatments.py): shown prices, each
  product's position in its category listing (control order: ``listing_rank``), the size of the
  listing page that holds it, and the product-choice CDFs. The reference price of a product is its
  category's *control* median at its merchant, whatever the treatment.
- Random numbers are counter based: the uniform of visit v, step s and purpose k is a hash of
  (key, v, s, k). A visit meets the same draws in every treatment however other visits go (common
  random numbers), and a treatment without planted response reproduces the control visit exactly.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from envs.storefront import PAGE_SIZE
from envs.treatments import Treatment
from learners.data.planted_types import BUYER_TYPES, QUERY_FORMS, RAW_ACTIONS

if TYPE_CHECKING:  # synth.py imports this module
    from learners.data.synth import SynthConfig

S = {name: i for i, name in enumerate(RAW_ACTIONS)}
"""Markov state of each raw action."""
END = len(RAW_ACTIONS)
ITEM_STATES = np.array([a in ("view", "fav", "cart", "uncart", "buy") for a in RAW_ACTIONS])
MAX_VISIT_EVENTS = 200
_CATEGORY_WORDS = (
    *("shoes", "lamps", "phones", "mugs", "jackets", "tents", "watches", "pillows", "kettles", "books"),
    *("toys", "rugs", "bags", "chairs", "gloves", "scarves", "pans", "cables", "plants", "candles"),
)
_OWN_CATEGORIES = (3, 11)
"""A merchant sells between 3 and 10 categories."""
_CATEGORY_ZIPF = 1.2
"""Category shares of a merchant's products fall as rank ** -1.2: a few big categories, several small."""
_PRICE_SPREAD = 0.5
"""Sd of log price around the category level: what lets a buyer see a product as cheap or dear."""
WEEK_S = 7 * 86_400
"""Prices change weekly: a product's price holds from the log's start day + 7 k to + 7 (k + 1)."""
_SALE_SHARE = 0.3
"""Chance that a product is marked down in a given week."""
_SALE_DEPTHS = (0.1, 0.2, 0.3, 0.4)
"""How deep a markdown goes (share off the regular price), drawn uniformly."""
# Purposes of a visit-step's uniforms (the counter's low bits).
_START, _NEW, _PICK, _MOVE, _ACCEPT = range(5)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


@dataclass
class Chains:
    """The types' Markov chains as probabilities (T types, A actions, END = A)."""

    start_cdf: np.ndarray  # [T, A]
    first: np.ndarray  # [T, A, A + 1] after a visit's first event: END excluded (visits have >= 2 events)
    next: np.ndarray  # [T, A, A + 1] afterwards
    lengths: np.ndarray  # [T] expected events per visit (control, full listing pages)


def build_chains(noise: float) -> Chains:
    """Every type's chain mixed with the population average by ``noise`` (types overlap)."""
    n_types, n_actions = len(BUYER_TYPES), len(RAW_ACTIONS)
    start = np.zeros((n_types, n_actions))
    trans = np.zeros((n_types, n_actions, n_actions + 1))
    for t, bt in enumerate(BUYER_TYPES):
        for name, w in bt.start.items():
            start[t, S[name]] = w
        for a, name in enumerate(RAW_ACTIONS):
            for nxt, w in bt.moves.get(name, {"end": 1.0}).items():
                trans[t, a, END if nxt == "end" else S[nxt]] = w
    start /= start.sum(1, keepdims=True)
    trans /= trans.sum(2, keepdims=True)
    trans = (1 - noise) * trans + noise * trans.mean(0, keepdims=True)
    start = (1 - noise) * start + noise * start.mean(0, keepdims=True)
    first = trans.copy()
    first[:, :, END] = 0.0
    first /= first.sum(2, keepdims=True)
    lengths = np.empty(n_types)
    for t in range(n_types):
        # Expected events from each action onwards: (I - Q)^-1 @ 1, Q the chain without END.
        onwards = np.linalg.solve(np.eye(n_actions) - trans[t, :, :n_actions], np.ones(n_actions))
        lengths[t] = 1.0 + start[t] @ first[t, :, :n_actions] @ onwards
    start_cdf = np.cumsum(start, axis=1)
    start_cdf[:, -1] = 1.0
    return Chains(start_cdf, first, trans, lengths)


@dataclass
class World:
    """Merchants, catalogs and buyers: everything drawn before events (small next to the events).
    Products are numbered globally, each merchant's contiguous (``merchant_start``)."""

    merchant_names: pa.Array
    mixtures: np.ndarray  # [M, T]
    merchant_start: np.ndarray  # [M + 1] first product of each merchant, then the product count
    product_ids: pa.Array  # [P] global product index -> id text
    product_merchant: np.ndarray  # [P]
    product_category: np.ndarray  # [P] category index
    product_price: np.ndarray  # [P] the regular (control) price
    week_price: np.ndarray  # [P, W] the price in each week of the log: regular, or a markdown below it
    listing_rank: np.ndarray  # [P] 1-based rank in the merchant's control (popularity) order
    appeal_rank: np.ndarray  # [P] 1-based demand rank of buyers who come for a product (independent)
    reference: np.ndarray  # [P] control median price of its category at its merchant
    queries: pa.Array  # [C * len(QUERY_FORMS)] search text per category and wording
    buyer_merchant: np.ndarray  # [B]
    buyer_user: np.ndarray  # [B]
    buyer_type: np.ndarray  # [B]
    control: Shop = field(init=False)
    """The storefront of the log (treatment none), built once by build_world."""
    week_choice_cdf: np.ndarray = field(init=False)
    """The log's product-choice CDFs, one block of ``Shop.choice_cdf`` per week (its markdowns draw
    markdown-seeking types), offset by week * T * M; built once by build_world."""


def build_world(cfg: SynthConfig, rng: np.random.Generator) -> World:
    """Merchants, catalogs and buyers of a SynthConfig (learners/data/synth.py), drawn from ``rng``."""
    n_m, n_t = cfg.merchants, len(BUYER_TYPES)
    mixtures = rng.dirichlet(np.full(n_t, cfg.mixture_concentration), size=n_m)
    sizes = 1.0 / np.arange(1, n_m + 1) ** 0.8
    sizes = rng.permutation(sizes / sizes.sum())

    cat_log_price = rng.uniform(math.log(5), math.log(300), size=cfg.categories)
    n_products = np.maximum(5, np.round(cfg.products_per_merchant * rng.lognormal(0, 0.4, n_m))).astype(int)
    categories, prices, listing, appeal, references = [], [], [], [], []
    for m in range(n_m):
        n = n_products[m]
        own = rng.choice(
            cfg.categories, size=min(cfg.categories, int(rng.integers(*_OWN_CATEGORIES))), replace=False
        )
        share = 1.0 / np.arange(1, len(own) + 1) ** _CATEGORY_ZIPF
        cat = own[rng.choice(len(own), size=n, p=share / share.sum())]
        price = np.round(np.floor(np.exp(cat_log_price[cat] + rng.normal(0, _PRICE_SPREAD, n))) + 0.99, 2)
        reference = np.empty(n)
        for c in np.unique(cat):
            reference[cat == c] = np.median(price[cat == c])
        categories.append(cat)
        prices.append(price)
        listing.append(rng.permutation(np.arange(1, n + 1)))
        appeal.append(rng.permutation(np.arange(1, n + 1)))
        references.append(reference)
    total = int(n_products.sum())

    merchant = rng.choice(n_m, size=cfg.buyers, p=sizes)
    per_merchant = np.bincount(merchant, minlength=n_m)
    pool = max(int(per_merchant.max()), int(round(cfg.buyers * (1 - cfg.user_overlap))))
    user = np.empty(cfg.buyers, dtype=np.int64)
    for m in range(n_m):
        user[merchant == m] = rng.choice(pool, size=per_merchant[m], replace=False)
    u = rng.random(cfg.buyers)
    kind = (u[:, None] >= np.cumsum(mixtures, 1)[merchant]).sum(1).clip(0, n_t - 1).astype(np.int8)
    order = np.lexsort((merchant, user))  # a user's buyers are adjacent, as in user-sorted logs
    # Markdowns are drawn last, so catalogs and buyers are those of the same seed without them.
    regular = np.concatenate(prices)
    weeks = cfg.days // 7 + 1
    on_sale = rng.random((total, weeks)) < _SALE_SHARE
    marked = np.round(np.floor(regular[:, None] * (1.0 - rng.choice(_SALE_DEPTHS, (total, weeks)))) + 0.99, 2)

    world = World(
        merchant_names=pa.array([f"shop-{m:03d}" for m in range(n_m)]),
        mixtures=mixtures,
        merchant_start=np.concatenate([[0], np.cumsum(n_products)]),
        product_ids=pa.array([str(100_000 + i) for i in range(total)]),
        product_merchant=np.repeat(np.arange(n_m), n_products),
        product_category=np.concatenate(categories),
        product_price=regular,
        week_price=np.where(on_sale & (marked < regular[:, None]), marked, regular[:, None]),
        listing_rank=np.concatenate(listing).astype(float),
        appeal_rank=np.concatenate(appeal).astype(float),
        reference=np.concatenate(references),
        queries=pa.array(
            [form.format(category_word(c)) for c in range(cfg.categories) for form in QUERY_FORMS]
        ),
        buyer_merchant=merchant[order],
        buyer_user=user[order],
        buyer_type=kind[order],
    )
    world.control = build_shop(world, Treatment())
    n_blocks = len(BUYER_TYPES) * n_m
    world.week_choice_cdf = np.concatenate(
        [
            week * n_blocks
            + _choice_cdf(
                world, world.control.position, world.control.cheap, regular / world.week_price[:, week]
            )
            for week in range(weeks)
        ]
    )
    return world


def category_word(c: int) -> str:
    """The search word of category c."""
    word = _CATEGORY_WORDS[c % len(_CATEGORY_WORDS)]
    return word if c < len(_CATEGORY_WORDS) else f"{word} {c // len(_CATEGORY_WORDS) + 1}"


@dataclass
class Shop:
    """Every merchant's storefront under one treatment, as the visit model sees it."""

    treatment: Treatment
    price: np.ndarray  # [P] shown (and paid) price
    cheap: np.ndarray  # [P] category reference / price: what add-to-cart weighs
    markdown: np.ndarray  # [P] regular / shown price, at least 1 (> 1: marked down), add-to-cart weighs it
    position: np.ndarray  # [P] 1-based position in its category listing
    shown: np.ndarray  # [P] products on the listing page that holds it
    choice_cdf: np.ndarray  # per-(type, merchant) product CDFs, concatenated, offset by t * M + m
    hide_favorite: bool


def build_shop(world: World, treatment: Treatment) -> Shop:
    """The storefront of ``treatment`` (envs/treatments.py semantics) over the world's merchants.

    Kinds without a planted response (banner, one-page-checkout, variant) give the control shop."""
    price = world.product_price
    if treatment.kind == "price" and treatment.percent != 0:
        hit = np.ones(len(price), dtype=bool)
        if treatment.category is not None:
            hit = world.product_category == _category_index(treatment.category)
        price = np.where(hit, np.round(price * (1.0 + treatment.percent / 100.0), 2), price)
    order = treatment.order if treatment.kind == "order" else "popularity"
    if order == "price-ascending":
        key = price
    elif order == "price-descending":
        key = -price
    elif order == "random":
        key = _shuffled_rank(world, treatment.seed)
    else:
        key = np.zeros(len(price))
    # Listing of a (merchant, category): by the order's key, ties in control (popularity) order.
    group = world.product_merchant * (int(world.product_category.max()) + 1) + world.product_category
    ranked = np.lexsort((world.listing_rank, key, group))
    g = group[ranked]
    first = np.flatnonzero(np.concatenate([[True], g[1:] != g[:-1]]))
    counts = np.diff(np.concatenate([first, [len(g)]]))
    position = np.empty(len(price))
    position[ranked] = np.arange(len(g)) - np.repeat(first, counts) + 1
    size = np.empty(len(price))
    size[ranked] = np.repeat(counts, counts)
    page = treatment.page_size if treatment.kind == "page-size" else PAGE_SIZE
    shown = np.minimum(page, size - (position - 1) // page * page)
    cheap = world.reference / price
    markdown = np.maximum(world.product_price / price, 1.0)  # a rise shows no "was" (envs/treatments.py)
    return Shop(
        treatment=treatment,
        price=price,
        cheap=cheap,
        markdown=markdown,
        position=position,
        shown=shown,
        choice_cdf=_choice_cdf(world, position, cheap, markdown),
        hide_favorite=treatment.kind == "hide-favorite",
    )


def _category_index(category: str) -> int:
    if not category.isdigit():
        raise ValueError(f"treatment category {category!r}: synthetic category ids are integers 0, 1, ...")
    return int(category)


def _shuffled_rank(world: World, seed: int) -> np.ndarray:
    """Rank of each product in one seeded shuffle of its merchant's catalogue (as envs/treatments.py
    shuffles: random.Random('<seed>\\t<merchant>') over the popularity order)."""
    rank = np.empty(len(world.product_price))
    names = world.merchant_names.to_pylist()
    for m, name in enumerate(names):
        lo, hi = world.merchant_start[m], world.merchant_start[m + 1]
        products = list(lo + np.argsort(world.listing_rank[lo:hi], kind="stable"))
        random.Random(f"{seed}\t{name}").shuffle(products)
        rank[products] = np.arange(hi - lo)
    return rank


def _choice_cdf(world: World, position: np.ndarray, cheap: np.ndarray, markdown: np.ndarray) -> np.ndarray:
    """Per (type, merchant) CDF over the merchant's products, shifted by t * M + m so one
    searchsorted over the concatenation finds a product of the right type and merchant. ``cheap`` is
    the category reference over the price choice reads (a shop's shown price; the regular one in the
    log's weekly CDFs, where a week's markdown draws through ``markdown``, regular / shown, alone)."""
    n_m = len(world.merchant_names)
    m = world.product_merchant
    last = world.merchant_start[1:] - 1
    cdfs = []
    for t, bt in enumerate(BUYER_TYPES):
        w = position**-bt.position_power * world.appeal_rank**-bt.appeal_power * cheap**bt.cheap_power
        w = w * markdown**bt.markdown_seek
        c = np.cumsum(w)
        before = np.concatenate([[0.0], c])[world.merchant_start[:-1]]
        cdf = (c - before[m]) / (c[last] - before)[m]
        cdf[last] = 1.0
        cdfs.append(t * n_m + m + cdf)
    return np.concatenate(cdfs)


def uniforms(key: int, visit: np.ndarray, step: int, purpose: int) -> np.ndarray:
    """Uniform [0, 1) numbers, one per visit, a pure function of (key, visit, step, purpose):
    splitmix64 of the counter (visit, step, purpose), so draws do not depend on other visits."""
    counter = visit.astype(np.uint64) * np.uint64(2048) + np.uint64(step * 8 + purpose + 1)
    z = np.uint64(key) + counter * _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    z ^= z >> np.uint64(31)
    return (z >> np.uint64(11)).astype(np.float64) * 2.0**-53


def walk_visits(
    world: World,
    shop: Shop,
    chains: Chains,
    visit_type: np.ndarray,
    visit_merchant: np.ndarray,
    key: int,
    visit_week: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Run all visits' chains in lock step: (visit index, action, product or -1) per event, visit-major.
    Visit i draws its uniforms from (key, i); the same key gives the same draws in every shop.

    ``visit_week`` (the log's walk, ``shop`` the control): each visit's week, whose markdowns
    (``world.week_price``) its product choice and add-to-cart weigh; None (storefronts without
    markdowns, as an experiment's): regular prices."""
    n_m = len(world.merchant_names)
    n_p = len(shop.price)
    new_product = np.array([bt.new_product for bt in BUYER_TYPES])
    sensitivity = np.array([bt.price_sensitivity for bt in BUYER_TYPES])
    deal_power = np.array([bt.markdown_sensitivity for bt in BUYER_TYPES])
    reservation = np.array([bt.reservation for bt in BUYER_TYPES])
    depth = np.array([bt.listing_depth for bt in BUYER_TYPES])
    first_p, next_p = chains.first, chains.next
    if visit_week is not None and shop is not world.control:
        raise ValueError("a walk with the log's weekly markdowns (visit_week) runs on the control shop")
    cdf = shop.choice_cdf if visit_week is None else world.week_choice_cdf
    if shop.hide_favorite:  # no favourite button: the other moves keep their proportions
        first_p, next_p = (_without(p, S["fav"]) for p in (first_p, next_p))
    current = np.full(len(visit_type), -1, dtype=np.int64)
    idx = np.arange(len(visit_type))
    state = (uniforms(key, idx, 0, _START)[:, None] >= chains.start_cdf[visit_type]).sum(1)
    rows, actions, products = [], [], []
    for step in range(MAX_VISIT_EVENTS):
        if len(idx) == 0:
            break
        kind = visit_type[idx]
        cur = current[idx]
        fresh = (state == S["search"]) | (ITEM_STATES[state] & (cur < 0))
        fresh |= (state == S["view"]) & (uniforms(key, idx, step, _NEW) < new_product[kind])
        pick = np.flatnonzero(fresh)
        target = kind[pick] * n_m + visit_merchant[idx[pick]] + uniforms(key, idx[pick], step, _PICK)
        if visit_week is not None:
            target += visit_week[idx[pick]] * (len(BUYER_TYPES) * n_m)
        # The CDF array holds one copy of all products per type (and week): fold the index back to a product.
        cur[pick] = np.searchsorted(cdf, target, side="right") % n_p
        current[idx] = cur
        rows.append(idx)
        actions.append(state.astype(np.int8))
        products.append(np.where(ITEM_STATES[state] | (state == S["search"]), cur, -1))
        if step == MAX_VISIT_EVENTS - 1:
            break

        p = (first_p if step == 0 else next_p)[kind, state]
        deep = np.flatnonzero((state == S["view"]) & (depth[kind] > 0))
        # Listing depth: ending after a view is likelier on a short listing page, rarer on a long one.
        p[deep, END] *= (PAGE_SIZE / shop.shown[cur[deep]]) ** depth[kind[deep]]
        cum = np.cumsum(p, axis=1)
        u = uniforms(key, idx, step, _MOVE) * cum[:, -1]
        nxt = np.minimum((u[:, None] >= cum).sum(1), END)
        picky = np.flatnonzero((nxt == S["cart"]) & (sensitivity[kind] > 0) & (cur >= 0))
        # 1 / (1 + (price / (reservation * reference)) ** s * (price / regular) ** m): one half at the
        # reservation price without a markdown, rising all the way down (no saturation, so a cut moves
        # buyers of already cheap products too) and again with a markdown (planted_types.py).
        product, t = cur[picky], kind[picky]
        cheap, markdown = shop.cheap[product], shop.markdown[product]
        if visit_week is not None:
            shown = world.week_price[product, visit_week[idx[picky]]]
            cheap, markdown = world.reference[product] / shown, world.product_price[product] / shown
        accept = 1.0 / (1.0 + (cheap * reservation[t]) ** -sensitivity[t] * markdown ** -deal_power[t])
        nxt[picky[uniforms(key, idx[picky], step, _ACCEPT) >= accept]] = S["view"]  # too dear: view on
        keep = nxt != END
        idx, state = idx[keep], nxt[keep]
    rows_a = np.concatenate(rows)
    order = np.argsort(rows_a, kind="stable")
    return rows_a[order], np.concatenate(actions)[order], np.concatenate(products)[order]


def _without(p: np.ndarray, state: int) -> np.ndarray:
    """Transition probabilities with moves into ``state`` removed, rows renormalised."""
    q = p.copy()
    q[:, :, state] = 0.0
    total = q.sum(2, keepdims=True)
    return np.divide(q, total, out=p.copy(), where=total > 0)
