"""A merchant's product catalogue: what its storefront lists, in one stable order.

Sources: a prepared directory (``catalogs.parquet``, one merchant's rows), or records built in
memory (``product_id`` and optional ``category_id``, ``price``, ``title``, ``popularity``,
``n_purchases``: tests, examples).

Bestsellers: the merchant's most-bought products (``BESTSELLER_SHARE`` of its catalogue, ranked by
``n_purchases``, each bought at least once) carry the badge ``bestseller``, shown on their listing
rows and product page as stores do. It stays with the product whatever the listing order, so a
buyer who goes for what others buy can still find it when a treatment reorders the listings.

Typical prices: each category's median regular price (``list_price`` where a product is marked
down, else ``price``) over its products with a price, when it has at least ``TYPICAL_MIN_PRODUCTS``
of them. A product page shows it beside the price (envs/render.py): what a buyer who knows the
category compares a price with. A treated catalogue keeps the control's (envs/treatments.py), so a
price change moves a price against it, as a sale does against what buyers have seen before.

Order: products by popularity (descending), then product id; categories by number of products
(descending), then category id. Every listing in the storefront follows these orders, so pages are
the same on every machine and every run.

Placeholder catalogue: some sources carry no product ids (tmall-brand: the merchant is a brand, each
event names only the brand). Their storefront still needs something to show, so
``Catalog.placeholder`` derives one product per category seen in the merchant's events (one
``"all"`` category when none is known): id ``item-<category>``, popularity = that category's share
of the merchant's events. Replay maps a product-less event onto the placeholder of its category.
"""

from __future__ import annotations

import bisect
import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq

CATALOGS_FILE = "catalogs.parquet"
EVENTS_FILE = "events.parquet"
UNCATEGORIZED = "uncategorized"
"""Category of products whose source gives none."""
PLACEHOLDER_CATEGORY = "all"
"""The single category of a placeholder catalogue built from events without categories."""
BESTSELLER_SHARE = 0.1
"""Share of a catalogue's products (rounded up) that can carry the ``bestseller`` badge."""
BESTSELLER = "bestseller"
TYPICAL_MIN_PRODUCTS = 5
"""A category needs this many products with a price to have a typical price."""
MAX_ID_CHARS = 64
"""Product and category ids longer than this are refused: observations must stay bounded."""


@dataclass(frozen=True, slots=True)
class Product:
    """One product as the storefront shows it."""

    product_id: str
    category_id: str
    price: float | None
    title: str
    popularity: float
    list_price: float | None = None
    """The regular price ``price`` is marked down from (a price-cut arm's catalogue), shown beside it
    on the product page; None: ``price`` is the regular price."""
    badge: str = ""
    """A word the storefront shows with the product (``BESTSELLER``), or empty."""


def _typical_prices(groups: Mapping[str, Sequence[Product]]) -> dict[str, float]:
    typical = {}
    for category, products in groups.items():
        prices = [p.price if p.list_price is None else p.list_price for p in products if p.price is not None]
        if len(prices) >= TYPICAL_MIN_PRODUCTS:
            typical[category] = statistics.median(prices)
    return typical


def placeholder_id(category_id: str) -> str:
    """The id of the placeholder product standing for a category (see module docstring)."""
    return f"item-{category_id}"


def _check_id(value: str, what: str, where: str) -> str:
    if not value or len(value) > MAX_ID_CHARS or any(c in value for c in '"\n\r\t'):
        raise ValueError(
            f"{where}: {what} {value!r} is empty, longer than {MAX_ID_CHARS} characters, or contains a quote, "
            "tab or newline; give short plain ids (the storefront writes them into action strings)"
        )
    return value


@dataclass(frozen=True)
class Catalog:
    """A merchant's products in stable order, with per-category listings and an id index."""

    merchant_id: str
    products: tuple[Product, ...]
    is_placeholder: bool = False
    """True when the products are placeholders derived from event counts (no product ids in the source)."""
    typical_prices: Mapping[str, float] | None = field(default=None, repr=False, compare=False)
    """Each category's typical price (module docstring); None: computed from ``products``."""
    by_id: Mapping[str, Product] = field(init=False, repr=False, compare=False)
    categories: tuple[str, ...] = field(init=False, repr=False, compare=False)
    by_category: Mapping[str, tuple[Product, ...]] = field(init=False, repr=False, compare=False)
    _blob: str = field(init=False, repr=False, compare=False)
    _starts: tuple[int, ...] = field(init=False, repr=False, compare=False)
    _rank: Mapping[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.products:
            raise ValueError(f"merchant {self.merchant_id!r}: a catalog needs at least one product")
        ordered = tuple(sorted(self.products, key=lambda p: (-p.popularity, p.product_id)))
        by_id = {p.product_id: p for p in ordered}
        if len(by_id) != len(ordered):
            raise ValueError(f"merchant {self.merchant_id!r}: duplicate product ids in the catalog")
        groups: dict[str, list[Product]] = {}
        for p in ordered:
            groups.setdefault(p.category_id, []).append(p)
        categories = tuple(sorted(groups, key=lambda c: (-len(groups[c]), c)))
        object.__setattr__(self, "products", ordered)
        object.__setattr__(self, "by_id", by_id)
        object.__setattr__(self, "categories", categories)
        object.__setattr__(self, "by_category", {c: tuple(groups[c]) for c in categories})
        if self.typical_prices is None:
            object.__setattr__(self, "typical_prices", _typical_prices(groups))
        # Search scans one lowercase text of "id<TAB>title" lines with str.find (C speed) instead of
        # a Python loop over products: replay searches every product it cannot see on the page.
        lines = [f"{p.product_id}\t{p.title}".lower() for p in ordered]
        starts, pos = [], 0
        for line in lines:
            starts.append(pos)
            pos += len(line) + 1
        object.__setattr__(self, "_blob", "\n".join(lines))
        object.__setattr__(self, "_starts", tuple(starts))
        object.__setattr__(self, "_rank", {p.product_id: i for i, p in enumerate(ordered)})

    @classmethod
    def from_records(
        cls, merchant_id: str, records: Iterable[Mapping[str, object]], source: str = "records"
    ) -> Catalog:
        """Build from dicts with ``product_id`` and optional ``category_id, price, title, popularity,
        n_purchases`` (the most-bought products get the bestseller badge)."""
        products = []
        purchases = []
        for i, row in enumerate(records, start=1):
            where = f"{source}: row {i}"
            if row.get("product_id") in (None, ""):
                raise ValueError(f"{where}, column product_id: missing product id; every product needs one")
            pid = _check_id(str(row["product_id"]), "product_id", where)
            cat = row.get("category_id")
            cat = UNCATEGORIZED if cat in (None, "") else _check_id(str(cat), "category_id", where)
            price = row.get("price")
            try:
                price = None if price in (None, "") else float(price)  # type: ignore[arg-type]
                popularity = float(row.get("popularity") or 0.0)  # type: ignore[arg-type]
                purchases.append(int(row.get("n_purchases") or 0))  # type: ignore[call-overload]
            except (TypeError, ValueError, OverflowError) as err:
                raise ValueError(f"{where}: price/popularity/n_purchases must be numbers ({err})") from err
            title = str(row.get("title") or f"Product {pid}")
            products.append(Product(pid, cat, price, " ".join(title.split())[:80], popularity))
        top = sorted(
            range(len(products)),
            key=lambda i: (-purchases[i], -products[i].popularity, products[i].product_id),
        )
        for i in top[: math.ceil(BESTSELLER_SHARE * len(products))]:
            if purchases[i] > 0:
                products[i] = replace(products[i], badge=BESTSELLER)
        return cls(merchant_id, tuple(products))

    @classmethod
    def placeholder(cls, merchant_id: str, category_counts: Mapping[str | None, int]) -> Catalog:
        """One placeholder product per category, popularity = the category's share of events."""
        counts: dict[str, int] = {}
        for cat, n in category_counts.items():
            key = (
                PLACEHOLDER_CATEGORY if cat in (None, "") else _check_id(str(cat), "category_id", merchant_id)
            )
            counts[key] = counts.get(key, 0) + int(n)
        if not counts:
            counts = {PLACEHOLDER_CATEGORY: 1}
        total = sum(counts.values()) or 1
        products = tuple(
            Product(placeholder_id(c), c, None, f"Item of category {c}", n / total) for c, n in counts.items()
        )
        return cls(merchant_id, products, is_placeholder=True)

    def listing(self, category_id: str) -> tuple[Product, ...]:
        """Products of one category, in catalog order (empty for an unknown category)."""
        return self.by_category.get(category_id, ())

    def search(self, query: str, limit: int = 100) -> tuple[Product, ...]:
        """Products whose id or title contains the query (case-insensitive) or whose category id is
        the query, in catalog order with an exact id match first; at most ``limit``."""
        q = " ".join(query.lower().split())
        if not q or "\n" in q:
            return ()
        found: list[int] = []
        pos = self._blob.find(q)
        while pos >= 0 and len(found) < limit:
            line = bisect.bisect_right(self._starts, pos) - 1
            if not found or found[-1] != line:
                found.append(line)
            pos = self._blob.find(
                q, (self._starts[line + 1] if line + 1 < len(self._starts) else len(self._blob))
            )
        in_category = [self._rank[p.product_id] for p in self.by_category.get(query.strip(), ())[:limit]]
        order = sorted(set(found) | set(in_category))
        exact = self.by_id.get(query.strip())
        hits = [exact] if exact else []
        hits.extend(self.products[i] for i in order if self.products[i] is not exact)
        return tuple(hits[:limit])

    def product_for(self, product_id: str | None, category_id: str | None) -> Product | None:
        """The product an event names; for placeholder catalogues, the placeholder of its category."""
        if product_id is not None and product_id in self.by_id:
            return self.by_id[product_id]
        if self.is_placeholder:
            cat = PLACEHOLDER_CATEGORY if category_id in (None, "") else category_id
            return self.by_id.get(placeholder_id(cat)) or self.products[0]  # type: ignore[arg-type]
        return None


class PreparedCatalogs:
    """The catalogues of a prepared directory, read once and built per merchant on first use.

    ``catalogs.parquet`` is read whole (sorted by merchant, one offset per merchant); a merchant with
    no catalogued product gets its placeholder catalogue from per-category event counts, computed
    from ``events.parquet`` once, the first time one is needed.
    """

    def __init__(self, data_dir: str | Path, merchants: Sequence[str] | None = None) -> None:
        self.data_dir = Path(data_dir)
        path = self.data_dir / CATALOGS_FILE
        if not path.exists():
            raise FileNotFoundError(
                f"{path}: no catalogs.parquet; run `simpersona prepare ... --out {self.data_dir}` first"
            )
        self._filters = [("merchant_id", "in", list(merchants))] if merchants else None
        table = pq.read_table(path, filters=self._filters)
        table = table.filter(pc.is_valid(table.column("product_id"))).sort_by("merchant_id")
        self._table = table
        ids = table.column("merchant_id").to_pylist()
        self._spans: dict[str, tuple[int, int]] = {}
        for i, m in enumerate(ids):
            start, _ = self._spans.get(m, (i, i))
            self._spans[m] = (start, i + 1)
        self._built: dict[str, Catalog] = {}
        self._event_counts: dict[str, dict[str | None, int]] | None = None

    def _placeholder_counts(self) -> dict[str, dict[str | None, int]]:
        if self._event_counts is None:
            self._event_counts = {}
            path = self.data_dir / EVENTS_FILE
            if path.exists():
                events = pq.read_table(path, columns=["merchant_id", "category_id"], filters=self._filters)
                counts = events.group_by(["merchant_id", "category_id"]).aggregate([([], "count_all")])
                columns = (counts.column(k).to_pylist() for k in ("merchant_id", "category_id", "count_all"))
                for m, c, n in zip(*columns, strict=True):
                    if m not in self._spans:
                        self._event_counts.setdefault(m, {})[c] = n
        return self._event_counts

    def merchants(self) -> list[str]:
        """Every merchant with a catalogue (real or placeholder), sorted."""
        return sorted(set(self._spans) | set(self._placeholder_counts()))

    def get(self, merchant: str) -> Catalog:
        """The merchant's catalogue; a clear error when the directory has neither products nor events for it."""
        hit = self._built.get(merchant)
        if hit is None:
            if merchant in self._spans:
                start, stop = self._spans[merchant]
                rows = self._table.slice(start, stop - start).to_pylist()
                hit = Catalog.from_records(merchant, rows, source=f"{CATALOGS_FILE} merchant {merchant}")
            elif merchant in self._placeholder_counts():
                hit = Catalog.placeholder(merchant, self._placeholder_counts()[merchant])
            else:
                raise ValueError(
                    f"{self.data_dir}: no catalog and no events for merchant {merchant!r}; check the id"
                )
            self._built[merchant] = hit
        return hit


def load_catalogs(data_dir: str | Path, merchants: Sequence[str] | None = None) -> dict[str, Catalog]:
    """Catalogues of a prepared directory by merchant (all, or ``merchants``); placeholders for
    merchants whose events carry no product ids."""
    source = PreparedCatalogs(data_dir, merchants)
    return {m: source.get(m) for m in (merchants or source.merchants())}
