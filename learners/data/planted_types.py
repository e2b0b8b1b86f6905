"""The planted buyer types of the synthetic generator, and the raw action vocabulary they walk over.

Each type is a Markov chain over RAW_ACTIONS with its own timing and product taste; the generator in
learners/data/synth.py samples buyers from them. Types overlap on purpose (a good clustering recovers
them, naive k-means on counts does not).

Planted sensitivities to what storefront treatments change (envs/treatments.py), as built in
learners/data/synth_model.py; learners/data/synth_truth.py measures their true effects:

==============  ========  ======  =====  =====  =======  ========  ====  =======  ================================
type            position  appeal  cheap  price  reserve  markdown  seek  listing  responds to
==============  ========  ======  =====  =====  =======  ========  ====  =======  ================================
window_shopper  1.5       0       0      0      1        0         0     0        listing order (views), not price
researcher      0.3       0       0      0      1        0         0     1.0      page size (views more on longer)
decisive_buyer  0         1.0     0      0      1        0         0     0        nothing: buys the hits it wants
cart_abandoner  1.0       0       0      0      1        0         0     0        listing order (views), not price
deal_hunter     0.8       0       2.0    3.0    0.5      8.0       4.0   0        price, markdowns, listing order
==============  ========  ======  =====  =====  =======  ========  ====  =======  ================================

Columns: ``position_power``, ``appeal_power``, ``cheap_power``, ``price_sensitivity``,
``reservation``, ``markdown_sensitivity``, ``markdown_seek``, ``listing_depth``.

- Product choice weight over the merchant's products: ``position ** -position_power *
  appeal_rank ** -appeal_power * (reference / price) ** cheap_power * (regular / price) **
  markdown_seek``, ``price`` the storefront's (a treatment's) price; in the log, ``cheap_power``
  reads the regular price and a week's markdown draws through ``markdown_seek`` alone. ``position`` is the
  product's 1-based place in its category listing in the storefront's order (control: the
  merchant's popularity order, as a prepared catalog lists it), so a listing-order treatment changes
  what position-biased types view and buy. The decisive buyer ignores the listing and goes by
  ``appeal_rank``, a demand rank of its own, independent of the listing order (in the log it buys
  hits wherever they are listed), which no treatment changes. A deal hunter goes for what is cheap
  in its category and, more still, for what is marked down (a week's sale in the log).
- ``reference`` is the control median regular price of the product's category at its merchant (what
  its listing compares it with; a prepared catalog's product page shows much the same median as the
  category's typical price, envs/catalog.py). It never moves with a treatment, so a price cut makes products look
  cheaper. Add-to-cart (after a view) happens with chance ``1 / (1 + (price / (reservation *
  reference)) ** price_sensitivity * (price / regular) ** markdown_sensitivity)``, else the buyer
  views on: a deal hunter adds to cart half the time at half the category's median and regular
  price, more as the price falls below it, and far more when the price is marked down from the
  product's regular price (a week's sale in the log, shown as "was" beside the price; a price-cut
  treatment, likewise shown). A deal hunter waits for sales. On the truth benchmark's log
  (benchmarks/experiment_truth.py: 3,000 buyers, seed 7), 52% of its product views are of
  marked-down products (other types: 27-30%), and it adds 30% of those to cart against 16% of the
  regular-priced ones, so a replayed log shows the response often enough to learn it.
- After a product view, the weight of ending the visit is multiplied by ``(10 / shown) **
  listing_depth``, ``shown`` being the number of products on the listing page that holds the viewed
  product (10 on a full default page, fewer on a category's last page or a small category, more with
  a larger page size).
- Logs vary every factor: prices spread log-normally (sd 0.5) around each category's level and
  change over time (each product is marked down 10-40% in about 30% of the log's weeks, and a
  visit sees its week's prices), listing positions run the whole category and are independent of
  ``appeal_rank``, and categories differ in size (Zipf shares), so short last pages and small
  categories are common.
- Hiding the favourite button removes ``fav`` from every move (the other moves keep their
  proportions). Banner, one-page checkout and custom variants have no planted response: their true
  effect is exactly 0.
- Caveats: a fresh product pick ranges over the whole merchant (categories weigh in through their
  products' weights), and the listing order is the generator's latent popularity order; a prepared
  catalog lists by observed popularity, which follows it closely but not exactly. A prepared
  catalog's price is a product's regular price (learners/data/catalogs.py) unless the log saw it
  only on sale.
"""

from __future__ import annotations

from dataclasses import dataclass

RAW_ACTIONS: tuple[str, ...] = ("home", "search", "view", "fav", "cart", "uncart", "checkout", "buy")
"""Source action codes; their position is the Markov state. END (= len) closes a visit."""
ACTION_TO_EVENT: dict[str, str] = {
    "home": "page_view",
    "search": "search",
    "view": "product_view",
    "fav": "favorite",
    "cart": "add_to_cart",
    "uncart": "remove_from_cart",
    "checkout": "checkout",
    "buy": "purchase",
}
QUERY_FORMS = ("{}", "cheap {}", "{} sale", "best {} reviews")
"""How buyers phrase a search for a category word."""


@dataclass(frozen=True)
class BuyerType:
    """One planted buyer type: a Markov chain over RAW_ACTIONS and its timing and product taste."""

    name: str
    start: dict[str, float]
    moves: dict[str, dict[str, float]]
    """Transition weights from each action to the next action or "end"; missing actions go to "end"."""
    visits: float
    """Relative number of visits per buyer (scaled so the population meets events_per_buyer)."""
    event_gap_s: float
    """Median pause between events of a visit, seconds."""
    visit_gap_h: float
    """Mean pause between visits beyond the 30-minute minimum, hours."""
    new_product: float
    """Chance that a view shows another product rather than the current one."""
    position_power: float
    """Position bias: choice weight position ** -power, position in the category listing (high: the
    top of the listing; low: the long tail)."""
    appeal_power: float
    """... times appeal_rank ** -power: a demand rank independent of the listing order."""
    cheap_power: float
    """... times (category's control median price / price) ** cheap_power."""
    price_sensitivity: float
    """An add-to-cart happens with chance 1 / (1 + (price / (reservation * reference)) ** sensitivity
    * ...), reference the category's control median, else another view (0: always)."""
    reservation: float
    """The price the type is glad to pay, as a share of the category's control median: add-to-cart
    weighs price against reservation * reference (1: the median itself)."""
    markdown_sensitivity: float
    """... and times (price / regular price) ** sensitivity: a markdown (a price below the product's
    regular one, shown beside it) makes adding to cart likelier still (0: markdowns count only as price)."""
    markdown_seek: float
    """Product choice weight times (regular price / shown price) ** seek: a marked-down product draws the
    type to it (a week's sale in the log, a price-cut treatment's "was"; 0: markdowns do not draw)."""
    listing_depth: float
    """After a view, the END weight is times (10 / products on the viewed product's listing page) ** depth."""
    query_forms: tuple[int, ...]
    """Indices into QUERY_FORMS this type searches with."""


BUYER_TYPES: tuple[BuyerType, ...] = (
    BuyerType(
        "window_shopper",
        start={"home": 0.6, "view": 0.3, "search": 0.1},
        moves={
            "home": {"view": 0.75, "search": 0.05, "home": 0.1, "end": 0.1},
            "search": {"view": 0.8, "end": 0.2},
            "view": {"view": 0.82, "home": 0.06, "fav": 0.01, "cart": 0.01, "end": 0.1},
            "fav": {"view": 0.8, "end": 0.2},
            "cart": {"view": 0.6, "uncart": 0.2, "end": 0.2},
            "uncart": {"view": 0.6, "end": 0.4},
        },
        visits=1.3,
        event_gap_s=15,
        visit_gap_h=30,
        new_product=0.25,
        position_power=1.5,
        appeal_power=0.0,
        cheap_power=0.0,
        price_sensitivity=0.0,
        reservation=1.0,
        markdown_sensitivity=0.0,
        markdown_seek=0.0,
        listing_depth=0.0,
        query_forms=(0,),
    ),
    BuyerType(
        "researcher",
        start={"search": 0.5, "home": 0.3, "view": 0.2},
        moves={
            "home": {"search": 0.4, "view": 0.55, "end": 0.05},
            "search": {"view": 0.9, "search": 0.05, "end": 0.05},
            "view": {"view": 0.75, "search": 0.08, "fav": 0.1, "cart": 0.02, "end": 0.05},
            "fav": {"view": 0.85, "end": 0.15},
            "cart": {"checkout": 0.15, "view": 0.6, "uncart": 0.1, "end": 0.15},
            "uncart": {"view": 0.7, "end": 0.3},
            "checkout": {"buy": 0.6, "view": 0.2, "end": 0.2},
            "buy": {"view": 0.3, "end": 0.7},
        },
        visits=1.4,
        event_gap_s=90,
        visit_gap_h=10,
        new_product=0.9,
        position_power=0.3,
        appeal_power=0.0,
        cheap_power=0.0,
        price_sensitivity=0.0,
        reservation=1.0,
        markdown_sensitivity=0.0,
        markdown_seek=0.0,
        listing_depth=1.0,
        query_forms=(0, 3),
    ),
    BuyerType(
        "decisive_buyer",
        start={"view": 0.6, "search": 0.3, "home": 0.1},
        moves={
            "home": {"view": 0.8, "search": 0.1, "end": 0.1},
            "search": {"view": 0.9, "end": 0.1},
            "view": {"cart": 0.45, "view": 0.3, "end": 0.25},
            "fav": {"cart": 0.5, "end": 0.5},
            "cart": {"checkout": 0.8, "view": 0.1, "end": 0.1},
            "checkout": {"buy": 0.9, "end": 0.1},
            "buy": {"view": 0.1, "end": 0.9},
        },
        visits=1.2,
        event_gap_s=5,
        visit_gap_h=72,
        new_product=0.6,
        position_power=0.0,
        appeal_power=1.0,
        cheap_power=0.0,
        price_sensitivity=0.0,
        reservation=1.0,
        markdown_sensitivity=0.0,
        markdown_seek=0.0,
        listing_depth=0.0,
        query_forms=(0,),
    ),
    BuyerType(
        "cart_abandoner",
        start={"view": 0.6, "home": 0.3, "search": 0.1},
        moves={
            "home": {"view": 0.85, "end": 0.15},
            "search": {"view": 0.9, "end": 0.1},
            "view": {"cart": 0.4, "view": 0.4, "fav": 0.02, "end": 0.18},
            "fav": {"view": 0.6, "cart": 0.2, "end": 0.2},
            "cart": {"uncart": 0.4, "view": 0.3, "checkout": 0.08, "end": 0.22},
            "uncart": {"view": 0.45, "cart": 0.15, "end": 0.4},
            "checkout": {"buy": 0.2, "view": 0.2, "end": 0.6},
        },
        visits=1.2,
        event_gap_s=40,
        visit_gap_h=40,
        new_product=0.5,
        position_power=1.0,
        appeal_power=0.0,
        cheap_power=0.0,
        price_sensitivity=0.0,
        reservation=1.0,
        markdown_sensitivity=0.0,
        markdown_seek=0.0,
        listing_depth=0.0,
        query_forms=(0,),
    ),
    BuyerType(
        "deal_hunter",
        start={"search": 0.7, "home": 0.2, "view": 0.1},
        moves={
            "home": {"search": 0.6, "view": 0.3, "end": 0.1},
            "search": {"view": 0.7, "search": 0.2, "end": 0.1},
            "view": {"view": 0.3, "search": 0.2, "cart": 0.3, "fav": 0.03, "end": 0.17},
            "fav": {"view": 0.5, "end": 0.5},
            "cart": {"checkout": 0.5, "uncart": 0.15, "view": 0.15, "end": 0.2},
            "uncart": {"search": 0.4, "end": 0.6},
            "checkout": {"buy": 0.75, "end": 0.25},
            "buy": {"search": 0.4, "end": 0.6},
        },
        visits=1.0,
        event_gap_s=10,
        visit_gap_h=60,
        new_product=0.7,
        position_power=0.8,
        appeal_power=0.0,
        cheap_power=2.0,
        price_sensitivity=3.0,
        reservation=0.5,
        markdown_sensitivity=8.0,
        markdown_seek=4.0,
        listing_depth=0.0,
        query_forms=(1, 2),
    ),
)
TYPE_NAMES: tuple[str, ...] = tuple(t.name for t in BUYER_TYPES)
