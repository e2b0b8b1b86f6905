"""Built-in storefront treatments: the parameterised changes a what-if experiment's arm makes.

A ``Treatment`` is one arm's change, a frozen dataclass that round-trips through a plain dict (a
YAML mapping, a Ray task argument): ``Treatment.from_dict({"kind": "price", "percent": -10,
"category": "c3"})``. ``TreatedStorefront(catalog, treatment)`` is the storefront its buyers see, and
``gymnasium.make(TREATED_STOREFRONT_ID, data=DIR, treatment={...})`` the env (``TreatedStorefrontEnv``,
the text env with a treatment; the browser env does not take treatments). Kinds:

- ``none``: no change; the same pages, actions and events as ``simpersona/Storefront-v0``.
- ``price`` (``percent``, ``category``): prices of one category (None: every product) change by
  ``percent`` (-10 = 10% cheaper), rounded to cents, wherever a price shows (listing rows, product
  page, cart, checkout total); a product page shows a cut as a markdown, the control price beside
  the new one (``Price: 69.99 (was 99.99)``, envs/render.py), and the category's typical price stays
  the control's (envs/catalog.py), so a changed price shows against what buyers knew. Revenue is the
  treated price times the quantity: ``treated_catalog`` gives the prices an arm's buyers paid.
- ``order`` (``order``, ``seed``): category and search listings, and the home page's featured
  products (the first FEATURED of the whole catalogue in that order), follow ``popularity`` (the
  plain order), ``price-ascending`` / ``price-descending`` (products without a price last, ties in
  popularity order) or ``random`` (one shuffle of the catalogue per merchant, seeded by ``seed``).
  Search still keeps an exact id match first and orders the same top SEARCH_RESULTS matches.
- ``banner`` (``product`` or ``category``): a ``Promo: ...`` line first on every home, category and
  search page and on the promoted product's page (a category: its products' pages). The promoted
  product (a category: its most popular product) comes first among the home page's featured
  products, and a promoted category's link first among the home page's categories. A merchant
  whose catalogue lacks the product or category shows no banner (``Treatment.applies_to``).
- ``one-page-checkout``: a product page also offers ``place order``, which buys one of that product
  in one step: the state is exactly that of ``buy now`` then ``place order`` (confirmation page, cart
  line settled, goal reward) and the step emits that path's purchase event. One step emits one
  event, so the checkout event of the skipped checkout page is not emitted; the action text is the
  canonical ``place order``, so rollouts count the step as a purchase like any other.
- ``hide-favorite``: product pages offer no ``favorite`` action (the page text is otherwise unchanged).
- ``page-size`` (``page_size``): products per category, search and cart page (1..MAX_PAGE_SIZE).
- ``variant`` (``env_id``): the arm runs a registered variant (envs/variant.py) instead;
  ``treatment_env`` gives the env id and kwargs of any arm.

Storefronts are shared per (prepared directory, merchant, treatment) in a process, like
``shared_storefront``; two treatments never share one.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from envs import TREATED_STOREFRONT_ID
from envs.catalog import Catalog, Product
from envs.render import PageView, ProductRow
from envs.storefront import (
    BUY_NOW,
    FAVORITE,
    FEATURED,
    HOME_CATEGORIES,
    PAGE_SIZE,
    PLACE_ORDER,
    Event,
    Page,
    SessionState,
    Storefront,
)
from envs.text_env import StorefrontEnv, prepared_catalogs

__all__ = [
    "KINDS",
    "MAX_PAGE_SIZE",
    "ORDERS",
    "TREATED_STOREFRONT_ID",
    "TreatedStorefront",
    "TreatedStorefrontEnv",
    "Treatment",
    "as_treatment",
    "treated_catalog",
    "treated_storefront",
    "treatment_env",
]

KINDS: tuple[str, ...] = (
    "none",
    "price",
    "order",
    "banner",
    "one-page-checkout",
    "hide-favorite",
    "page-size",
    "variant",
)
ORDERS: tuple[str, ...] = ("popularity", "price-ascending", "price-descending", "random")
MAX_PAGE_SIZE = 15
"""Largest page size: a cart page of MAX_PAGE_SIZE lines with the longest ids and titles still fits
in MAX_OBSERVATION_CHARS (tested)."""
_PARAMETERS: dict[str, tuple[str, ...]] = {
    "none": (),
    "price": ("percent", "category"),
    "order": ("order", "seed"),
    "banner": ("product", "category"),
    "one-page-checkout": (),
    "hide-favorite": (),
    "page-size": ("page_size",),
    "variant": ("env_id",),
}
PROMO_PREFIX = "Promo: "
ONE_PAGE_NOTE = "One-page checkout: place order buys one of this product now"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class Treatment:
    """One arm's storefront change (YAML mapping / dict round-trip); see the module docstring."""

    kind: str = "none"
    percent: float = 0.0
    """price: change in percent (-10 = 10% cheaper)."""
    category: str | None = None
    """price: the category changed (None = every product); banner: the category promoted."""
    product: str | None = None
    """banner: the product promoted."""
    order: str = "popularity"
    """order: popularity | price-ascending | price-descending | random."""
    page_size: int = PAGE_SIZE
    """page-size: products per listing page."""
    env_id: str | None = None
    """variant: a registered Gymnasium id (envs/variant.register_variant)."""
    seed: int = 0
    """order: the random order's seed."""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown treatment kind {self.kind!r}; allowed kinds: {', '.join(KINDS)}")
        takes = _PARAMETERS[self.kind]
        defaults = Treatment.__dataclass_fields__
        for name, f in defaults.items():
            # A parameter of another kind is a config mistake (e.g. a percent on an order arm), but
            # its default value is accepted so dataclasses.asdict output loads back.
            if name != "kind" and name not in takes and getattr(self, name) != f.default:
                raise ValueError(
                    f"treatment kind {self.kind!r} takes {', '.join(takes) or 'no parameters'}; "
                    f"{name}={getattr(self, name)!r} does not apply to it"
                )
        if isinstance(self.percent, bool) or not isinstance(self.percent, int | float):
            raise ValueError(f"treatment percent must be a number, got {self.percent!r}")
        if not math.isfinite(self.percent) or self.percent <= -100:
            raise ValueError(f"treatment percent must be finite and above -100, got {self.percent}")
        object.__setattr__(self, "percent", float(self.percent))  # -10 and -10.0: one arm, one hash
        for name in ("category", "product", "env_id"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value):
                raise ValueError(f"treatment {name} must be a non-empty string, got {value!r}")
        if self.order not in ORDERS:
            raise ValueError(f"unknown treatment order {self.order!r}; allowed orders: {', '.join(ORDERS)}")
        if not _is_int(self.page_size) or not 1 <= self.page_size <= MAX_PAGE_SIZE:
            raise ValueError(
                f"treatment page_size must be an integer in 1..{MAX_PAGE_SIZE}, got {self.page_size!r}"
            )
        if not _is_int(self.seed):
            raise ValueError(f"treatment seed must be an integer, got {self.seed!r}")
        if self.kind == "banner" and (self.product is None) == (self.category is None):
            raise ValueError("a banner treatment needs exactly one of product or category (what it promotes)")
        if self.kind == "variant" and self.env_id is None:
            raise ValueError("a variant treatment needs env_id, a registered Gymnasium id (envs/variant.py)")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Treatment:
        """A treatment from a plain mapping; unknown keys, kinds or values raise ValueError."""
        if not isinstance(d, Mapping):
            raise ValueError(f"a treatment is a mapping such as {{kind: price, percent: -10}}, got {d!r}")
        allowed = tuple(cls.__dataclass_fields__)
        kwargs: dict[str, Any] = {}
        for key, value in d.items():
            if key not in allowed:
                raise ValueError(f"unknown treatment key {key!r}; allowed keys: {', '.join(allowed)}")
            # YAML reads `category: 10` as an int; catalogue ids are strings.
            if key in ("category", "product") and _is_int(value):
                value = str(value)
            kwargs[str(key)] = value
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        """The kind and its parameters (None left out), plain types only: ``from_dict`` reads it back."""
        out: dict[str, Any] = {"kind": self.kind}
        for name in _PARAMETERS[self.kind]:
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        return out

    def describe(self) -> str:
        """A short human-readable label for reports."""
        if self.kind == "price":
            where = f"category {self.category}" if self.category is not None else "every product"
            return f"price {self.percent:+g}% on {where}"
        if self.kind == "order":
            return f"listing order {self.order}" + (f" (seed {self.seed})" if self.order == "random" else "")
        if self.kind == "banner":
            return (
                f"promo banner for product {self.product}"
                if self.product
                else f"promo banner for category {self.category}"
            )
        if self.kind == "page-size":
            return f"{self.page_size} products per page"
        if self.kind == "variant":
            return f"storefront variant {self.env_id}"
        return {
            "none": "no change",
            "one-page-checkout": "one-page checkout",
            "hide-favorite": "no favourite action",
        }[self.kind]

    @property
    def is_identity(self) -> bool:
        """The plain storefront by construction (no change, the control's listing order or page size, a
        0% price change): an A/A arm."""
        return (
            self.kind == "none"
            or (self.kind == "order" and self.order == "popularity")
            or (self.kind == "price" and self.percent == 0)
            or (self.kind == "page-size" and self.page_size == PAGE_SIZE)
        )

    def applies_to(self, catalog: Catalog) -> bool:
        """Whether the arm's storefront differs from the plain one for this merchant (a variant: True)."""
        if self.is_identity:
            return False
        if self.kind == "order" and self.order.startswith("price"):
            return any(p.price is not None for p in catalog.products)
        if self.kind == "price":
            return any(
                p.price is not None and (self.category is None or p.category_id == self.category)
                for p in catalog.products
            )
        if self.kind == "banner":
            return self.product in catalog.by_id if self.product else self.category in catalog.by_category
        return True


def as_treatment(value: Treatment | Mapping[str, Any] | None) -> Treatment:
    """A Treatment from a Treatment, a plain mapping or None (no change)."""
    if value is None:
        return Treatment()
    if isinstance(value, Treatment):
        return value
    if isinstance(value, Mapping):
        return Treatment.from_dict(value)
    raise TypeError(f"treatment must be a Treatment, a mapping or None, got {type(value).__name__}")


def treatment_env(treatment: Treatment | Mapping[str, Any] | None) -> tuple[str, dict[str, Any]]:
    """The Gymnasium id and extra kwargs an arm's envs are made with (kwargs are plain, Ray-safe)."""
    t = as_treatment(treatment)
    if t.kind == "variant":
        return str(t.env_id), {}
    return TREATED_STOREFRONT_ID, {"treatment": t.to_dict()}


def treated_catalog(catalog: Catalog, treatment: Treatment) -> Catalog:
    """The catalogue an arm's buyers see: a price treatment's prices (rounded to cents), else the
    same object. Pass the merchant's original catalogue; build it once per merchant."""
    if treatment.kind != "price" or treatment.percent == 0:
        return catalog
    factor = 1.0 + treatment.percent / 100.0
    products, changed = [], False
    for p in catalog.products:
        if p.price is not None and (treatment.category is None or p.category_id == treatment.category):
            # A cut is shown as a markdown from the control price; a rise is just the new price.
            regular = p.price if factor < 1.0 else None
            products.append(dataclasses.replace(p, price=round(p.price * factor, 2), list_price=regular))
            changed = True
        else:
            products.append(p)
    if not changed:
        return catalog
    return Catalog(catalog.merchant_id, tuple(products), catalog.is_placeholder, catalog.typical_prices)


def _ordered(catalog: Catalog, treatment: Treatment) -> tuple[Product, ...]:
    """The whole catalogue in the treatment's order (sorts are stable: ties keep popularity order)."""
    products = catalog.products
    if treatment.order == "price-ascending":
        return tuple(sorted(products, key=lambda p: (p.price is None, p.price or 0.0)))
    if treatment.order == "price-descending":
        return tuple(sorted(products, key=lambda p: (p.price is None, -(p.price or 0.0))))
    if treatment.order == "random":
        shuffled = list(products)
        # A string seed is hashed with SHA-512, so the order is the same in every process and run.
        random.Random(f"{treatment.seed}\t{catalog.merchant_id}").shuffle(shuffled)
        return tuple(shuffled)
    return products


class TreatedStorefront(Storefront):
    """A merchant's storefront under one treatment (not ``variant``: that arm runs its own env id).

    Built from ``treated_catalog``; the order, banner, checkout, favourite and page-size changes are
    overrides of ``Storefront``, so its listing, action, row and view caches stay per instance."""

    def __init__(self, catalog: Catalog, treatment: Treatment | Mapping[str, Any]) -> None:
        treatment = as_treatment(treatment)
        if treatment.kind == "variant":
            raise ValueError(
                f"a variant arm runs its own env ({treatment.env_id}), not a TreatedStorefront; "
                "use treatment_env(treatment)"
            )
        super().__init__(treated_catalog(catalog, treatment))
        self.treatment = treatment
        cat = self.catalog
        self._featured = cat.products[:FEATURED]
        self._categories = cat.categories
        self._ordered_categories: dict[str, tuple[Product, ...]] | None = None
        self._rank: dict[str, int] | None = None
        self._banner: str | None = None
        self._promoted_product: str | None = None
        self._promoted_category: str | None = None
        if treatment.kind == "page-size":
            self.page_size = treatment.page_size
        elif treatment.kind == "order" and treatment.order != "popularity":
            ordered = _ordered(cat, treatment)
            self._rank = {p.product_id: i for i, p in enumerate(ordered)}
            self._featured = ordered[:FEATURED]
            groups: dict[str, list[Product]] = {}
            for p in ordered:
                groups.setdefault(p.category_id, []).append(p)
            self._ordered_categories = {c: tuple(ps) for c, ps in groups.items()}
        elif treatment.kind == "banner" and treatment.applies_to(cat):
            if treatment.product is not None:
                promoted = cat.by_id[treatment.product]
                self._promoted_product = promoted.product_id
                row = ProductRow(
                    promoted.product_id,
                    promoted.title,
                    promoted.category_id,
                    promoted.price,
                    "",
                    badge=promoted.badge,
                )
                self._banner = PROMO_PREFIX + row.line.removeprefix("- ")
            else:
                c = str(treatment.category)
                promoted = cat.by_category[c][0]
                self._promoted_category = c
                self._categories = (c, *(x for x in cat.categories if x != c))
                self._banner = f"{PROMO_PREFIX}category {c} | {len(cat.by_category[c])} products"
            self._featured = (promoted, *(p for p in cat.products if p is not promoted))[:FEATURED]

    # ---- page contents -------------------------------------------------------------------------
    def search_results(self, query: str) -> tuple[Product, ...]:
        if self._rank is None:
            return super().search_results(query)
        hits = self._search_cache.get(query)
        if hits is None:
            # super() caches the catalogue-order hits under the query; the ordered ones replace them.
            hits = super().search_results(query)
            rank = self._rank
            ordered = sorted(hits, key=lambda p: rank[p.product_id])
            exact = self.catalog.by_id.get(query.strip())
            if exact is not None and hits and hits[0] is exact:  # an exact id match stays first
                ordered.remove(exact)
                ordered.insert(0, exact)
            hits = self._search_cache[query] = tuple(ordered)
        return hits

    def _all_listed(self, page: Page) -> tuple[Product, ...]:
        if page.kind == "category" and self._ordered_categories is not None:
            return self._ordered_categories.get(page.arg or "", ())
        if page.kind == "home":
            return self._featured
        return super()._all_listed(page)

    def listing(self, page: Page) -> tuple[Product, ...]:
        if page.kind == "home":
            return self._featured if page.index == 0 else ()
        return super().listing(page)

    def home_categories(self, index: int) -> tuple[str, ...]:
        if self._categories is self.catalog.categories:
            return super().home_categories(index)
        hit = self._home_cache.get(index)
        if hit is None:
            n = HOME_CATEGORIES
            hit = self._home_cache[index] = self._categories[index * n : (index + 1) * n]
        return hit

    # ---- actions -------------------------------------------------------------------------------
    def valid_actions(self, state: SessionState) -> list[str]:
        actions = super().valid_actions(state)
        if state.page.kind != "product" or state.exited:
            return actions
        # Product-page action lists are built fresh on every call, so editing this one is safe.
        if self.treatment.kind == "hide-favorite":
            actions.remove(FAVORITE)
        elif self.treatment.kind == "one-page-checkout":
            actions.insert(actions.index(BUY_NOW) + 1, PLACE_ORDER)
        return actions

    def apply(self, state: SessionState, action: str) -> tuple[SessionState, Event | None]:
        if (
            action == PLACE_ORDER
            and state.page.kind == "product"
            and self.treatment.kind == "one-page-checkout"
        ):
            # Exactly buy now then place order, so the state (and the purchase event) match that path.
            at_checkout, _ = super().apply(state, BUY_NOW)
            return super().apply(at_checkout, PLACE_ORDER)
        return super().apply(state, action)

    # ---- observation ---------------------------------------------------------------------------
    def view(self, state: SessionState, actions: list[str] | None = None) -> PageView:
        view = super().view(state, actions)
        page = state.page
        lines = view.lines
        if self._banner is not None and (
            page.kind in ("home", "category", "search")
            or (page.kind == "product" and self._promotes(page.arg or ""))
        ):
            lines = (self._banner, *lines)
        if page.kind == "product" and self.treatment.kind == "one-page-checkout":
            lines = (*lines, ONE_PAGE_NOTE)
        return view if lines is view.lines else dataclasses.replace(view, lines=lines)

    def _promotes(self, product_id: str) -> bool:
        if self._promoted_product is not None:
            return product_id == self._promoted_product
        return self.catalog.by_id[product_id].category_id == self._promoted_category


@functools.lru_cache(maxsize=1024)
def treated_storefront(data_dir: str, merchant: str, treatment: Treatment) -> TreatedStorefront:
    """One storefront per (directory, merchant, treatment) in a process: an arm's envs share its
    catalogue and caches, and two treatments never share one."""
    return TreatedStorefront(prepared_catalogs(data_dir).get(merchant), treatment)


class TreatedStorefrontEnv(StorefrontEnv):
    """``StorefrontEnv`` whose storefronts carry a treatment (``treatment=``: a Treatment, a plain
    dict, or None for no change). Same spaces, info, rewards and limits as the text env."""

    def __init__(
        self,
        data: str | Path | None = None,
        catalog: Catalog | Sequence[Catalog] | Mapping[str, Catalog] | None = None,
        merchant: str | None = None,
        treatment: Treatment | Mapping[str, Any] | None = None,
        max_steps: int = 50,
        goal_max_steps: int = 20,
        invalid_action: str = "count",
        end_on_purchase: bool = True,
        render_mode: str | None = None,
    ) -> None:
        self.treatment = as_treatment(treatment)
        if self.treatment.kind == "variant":
            raise ValueError(
                f"a variant arm is gymnasium.make({self.treatment.env_id!r}), not {TREATED_STOREFRONT_ID}"
            )
        super().__init__(
            data=data,
            catalog=catalog,
            merchant=merchant,
            max_steps=max_steps,
            goal_max_steps=goal_max_steps,
            invalid_action=invalid_action,
            end_on_purchase=end_on_purchase,
            render_mode=render_mode,
        )
        self.storefront_cls = TreatedStorefront
        self._local = {m: TreatedStorefront(sf.catalog, self.treatment) for m, sf in self._local.items()}

    def storefront_for(self, merchant: str) -> Storefront:
        if self.data is None:
            return super().storefront_for(merchant)
        if merchant not in self.merchants:
            raise ValueError(f"merchant {merchant!r} is not in {self.data}")
        return treated_storefront(self.data, merchant, self.treatment)
