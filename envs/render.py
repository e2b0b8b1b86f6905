"""Pages as structured views and as the compact text a small language model reads.

``build_view(storefront, state) -> PageView`` gives the page's parts (title, status line, goal, body
lines, category links, product rows, actions); ``render_text(view) -> str`` turns them into the text
observation. The web storefront renders the same ``PageView`` as HTML, and the browser env reports
``render_text`` of it, so text and browser envs observe identical text.

Goal tasks: the page states the goal (``Goal: buy product P``, after the status line), and every
line that shows the goal product ends with ``GOAL_MARK`` (`` | your goal``): its rows on listings,
search results, the cart and the checkout, and the ``Product id: P`` line of its own page. The
buyer recognises what they came for the way a shopper does, without comparing ids. The marks are
drawn by ``render_text`` from the view's goal line, so the browser env (which reads that line back)
observes the same marks; ``mark_goal`` gives the goal-task text of a goal-free observation (the
training examples' hindsight goals, learners/agent/examples.py). Without a goal nothing changes.

Prices: a product page shows the price the session sees and, when it is marked down from the
product's regular price (a price-cut arm's catalogue, or a replayed session's logged price below the
catalogue's), the regular price beside it: ``Price: 69.99 (was 99.99)``. When its category has a
typical price (envs/catalog.py), the next line shows it: ``Typical price in its category: 89.99``.
``price_cell`` reads a product page's place among prices from those two lines: regular or marked
down, and at or above its category's typical price, below it, or far below it (under
``FAR_BELOW_SHARE`` of it). Listing rows show the catalogue's current price; cart and checkout rows
and the checkout total, the session's.

Badges: a product's badge (envs/catalog.py: ``bestseller`` on a merchant's most-bought products) ends
its rows (``- product P | ... | bestseller``) and is a line of its page (``Bestseller``).

Length is bounded by construction: at most ``Storefront.page_size`` product rows (PAGE_SIZE, or a
treatment's page size up to envs.treatments.MAX_PAGE_SIZE; FEATURED + HOME_CATEGORIES links
on home), ids of at most 64 characters, titles of at most 80, queries of at most 64; every observation
stays under MAX_OBSERVATION_CHARS.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from envs.catalog import BESTSELLER

if TYPE_CHECKING:
    from envs.catalog import Product
    from envs.storefront import SessionState, Storefront

MAX_OBSERVATION_CHARS = 8192
GOAL_PREFIX = "Goal: buy product "
"""A goal task's goal line: this prefix, then the goal product's id."""
GOAL_MARK = " | your goal"
"""Appended to every line of a goal task's page that shows the goal product."""
VIEW_CACHE = 8192
"""Listing-page views kept per storefront before its cache is cleared."""
MARKDOWN_SHARE = 0.99
"""A price at most this share of the regular price is a markdown: the product page shows the regular
price beside it (``Price: 69.99 (was 99.99)``)."""
PRICE_PREFIX = "Price: "
"""Begins a product page's price line (and no other line of any page)."""
TYPICAL_PREFIX = "Typical price in its category: "
"""Begins a product page's line with its category's typical price."""
FAR_BELOW_SHARE = 0.7
"""A price under this share of its category's typical price is far below it."""
REGULAR_CELL = "regular"
"""``price_cell`` of a product page that shows no markdown at or above its category's typical price."""
PRICE_CELLS: tuple[str, ...] = (
    REGULAR_CELL,
    "below",
    "far-below",
    "marked",
    "below+marked",
    "far-below+marked",
)
"""The product pages' price cells: the typical price's level, then whether a markdown shows."""
PRICE_LINE = re.compile(rf"^{PRICE_PREFIX}([0-9.]+)(?: \(was ([0-9.]+)\))?$", re.M)
"""A product page's price line: the shown price, and the regular one when it is marked down."""
_TYPICAL_LINE = re.compile(rf"^{TYPICAL_PREFIX}([0-9.]+)$", re.M)
_PRODUCT_ROW = re.compile(r"^- product (.+?) \| category .*? \| price (n/a|[0-9.]+)((?: \| .*)?)$", re.M)
BADGES = (BESTSELLER,)
"""The badges a row can end with."""


@dataclass(frozen=True, slots=True)
class ProductRow:
    """One product line of a listing or the cart."""

    product_id: str
    title: str
    category_id: str
    price: float | None
    action: str
    """The action that opens this product."""
    quantity: int = 0
    """Quantity in the cart (cart rows only)."""
    badge: str = ""
    """The product's badge (``bestseller``), or empty."""
    line: str = field(init=False, compare=False)
    """The row as one line of observation text."""

    def __post_init__(self) -> None:
        text = f"- product {self.product_id} | category {self.category_id} | price {_price(self.price)}"
        if self.title != f"Product {self.product_id}":
            text += f" | {self.title}"
        if self.badge:
            text += f" | {self.badge}"
        object.__setattr__(self, "line", text + (f" | quantity {self.quantity}" if self.quantity else ""))


@dataclass(frozen=True, slots=True)
class PageView:
    """Everything a page shows, independent of how it is drawn (text or HTML)."""

    kind: str
    title: str
    status: str
    goal: str | None
    lines: tuple[str, ...]
    """Body text (product details, pagination, notices, banners), in order."""
    links: tuple[tuple[str, str], ...]
    """Category links as (label, action)."""
    rows: tuple[ProductRow, ...]
    actions: tuple[str, ...]


def _price(price: float | None) -> str:
    return "n/a" if price is None else f"{price:.2f}"


def price_cell(observation: str) -> str | None:
    """A rendered product page's price cell (``PRICE_CELLS``), None for other pages and a page without
    a price."""
    price = PRICE_LINE.search(observation)
    if price is None:
        return None
    level = ""
    typical = _TYPICAL_LINE.search(observation)
    if typical is not None and float(typical.group(1)) > 0:
        ratio = float(price.group(1)) / float(typical.group(1))
        level = "far-below" if ratio < FAR_BELOW_SHARE else "below" if ratio < 1.0 else ""
    marked = "marked" if price.group(2) else ""
    return "+".join(part for part in (level, marked) if part) or REGULAR_CELL


def at_regular_price(observation: str) -> str:
    """A product page as it would read at a regular price: no markdown, and at its regular price or
    its category's typical price, whichever is higher (``price_cell`` reads it as ``REGULAR_CELL``).
    Other pages come back unchanged. The price response compares a page with it to measure how the
    model itself reads a price (learners/agent/price_response.py)."""
    price = PRICE_LINE.search(observation)
    if price is None:
        return observation
    regular = float(price.group(2) or price.group(1))
    typical = _TYPICAL_LINE.search(observation)
    if typical is not None:
        regular = max(regular, float(typical.group(1)))
    return f"{observation[: price.start()]}{PRICE_PREFIX}{regular:.2f}{observation[price.end() :]}"


def listed_products(observation: str) -> list[tuple[str, float | None, str]]:
    """A rendered page's product rows in order: (product id, shown price or None, badge or "")."""
    rows = []
    for m in _PRODUCT_ROW.finditer(observation):
        fields = m.group(3).removesuffix(GOAL_MARK).split(" | ")
        if fields[-1].startswith("quantity "):
            fields.pop()
        badge = fields[-1] if fields and fields[-1] in BADGES else ""
        rows.append((m.group(1), None if m.group(2) == "n/a" else float(m.group(2)), badge))
    return rows


def shown_price(p: Product, state: SessionState) -> tuple[float | None, float | None]:
    """The price a session sees for ``p``, and the regular price it is marked down from (None when
    it is not): the session's own price (``state.prices``, a replayed session's logged one) or the
    catalogue's, against the catalogue's ``list_price`` or else its ``price``."""
    now = p.price
    for pid, price in state.prices:
        if pid == p.product_id:
            now = price
    regular = p.list_price if p.list_price is not None else p.price
    if now is None or regular is None or now > regular * MARKDOWN_SHARE:
        return now, None
    return now, regular


def _row(
    storefront: Storefront, product_id: str, quantity: int = 0, state: SessionState | None = None
) -> ProductRow:
    if not quantity:
        hit = storefront.row_cache.get(product_id)
        if hit is not None:
            return hit
    p = storefront.catalog.by_id[product_id]
    price = p.price if state is None else shown_price(p, state)[0]
    row = ProductRow(
        p.product_id, p.title, p.category_id, price, "open product " + p.product_id, quantity, p.badge
    )
    if not quantity:
        storefront.row_cache[product_id] = row
    return row


def _title(storefront: Storefront, state: SessionState) -> tuple[str, tuple[str, ...]]:
    page = state.page
    kind = page.kind
    pages = storefront.n_pages(state)
    where = f" (page {page.index + 1} of {pages})" if pages > 1 else ""
    if kind == "home":
        return "Home" + where, ()
    if kind == "category":
        return f"Category {page.arg}{where}", (f"{len(storefront.catalog.listing(page.arg or ''))} products",)
    if kind == "search":
        n = len(storefront.search_results(page.arg or ""))
        return f'Search results for "{page.arg}"{where}', (
            f"{n} products found" if n else "No products found",
        )
    if kind == "product":
        p = storefront.catalog.by_id[page.arg or ""]
        qty = state.in_cart(p.product_id)
        now, regular = shown_price(p, state)
        typical = (storefront.catalog.typical_prices or {}).get(p.category_id)
        return p.title, (
            f"Product id: {p.product_id}",
            f"Category: {p.category_id}",
            f"{PRICE_PREFIX}{_price(now)}" + ("" if regular is None else f" (was {regular:.2f})"),
            *((f"{TYPICAL_PREFIX}{typical:.2f}",) if typical else ()),
            *((p.badge.capitalize(),) if p.badge else ()),
            f"In cart: {qty}" if qty else "Not in cart",
            "In favourites" if p.product_id in state.favourites else "Not in favourites",
        )
    if kind == "cart":
        return "Cart" + where, (f"{state.cart_items} items" if state.cart else "Your cart is empty",)
    if kind == "checkout":
        items = storefront.checkout_items(state)
        total = sum((shown_price(storefront.catalog.by_id[i], state)[0] or 0.0) * q for i, q in items)
        return "Checkout", (f"{sum(q for _, q in items)} items, total {total:.2f}",)
    bought = (page.arg or "").split("\t")
    return "Order placed", (f"Thank you! Order of {len(bought)} items placed.",)


def _parts(storefront: Storefront, state: SessionState) -> tuple:
    """Title, lines, links and rows of a page (cached for listing pages, which depend on the page only)."""
    page = state.page
    if page.kind in ("home", "category", "search"):
        hit = storefront.view_cache.get(page)
        if hit is not None:
            return hit
    title, lines = _title(storefront, state)
    links: tuple[tuple[str, str], ...] = ()
    if page.kind in ("home", "category", "search"):
        if page.kind == "home":
            cats = storefront.catalog.by_category
            links = tuple(
                (f"Category {c} ({len(cats[c])} products)", "open category " + c)
                for c in storefront.home_categories(page.index)
            )
        rows = tuple(_row(storefront, p.product_id) for p in storefront.listing(page))
        if len(storefront.view_cache) >= VIEW_CACHE:
            storefront.view_cache.clear()
        storefront.view_cache[page] = (title, lines, links, rows)
    elif page.kind == "cart":
        rows = tuple(_row(storefront, pid, qty, state) for pid, qty in storefront.cart_page(state))
    elif page.kind == "checkout":
        rows = tuple(_row(storefront, pid, qty, state) for pid, qty in storefront.checkout_items(state)[:10])
    else:
        rows = ()
    return title, lines, links, rows


def build_view(storefront: Storefront, state: SessionState, actions: list[str] | None = None) -> PageView:
    """The structured view of the state's page (``actions``: its valid actions, if already known)."""
    title, lines, links, rows = _parts(storefront, state)
    status = f"Shop {storefront.merchant_id} | Cart: {state.cart_items} items | Favourites: {len(state.favourites)}"
    goal = GOAL_PREFIX + state.goal if state.goal is not None else None
    if actions is None:
        actions = storefront.valid_actions(state)
    return PageView(state.page.kind, title, status, goal, lines, links, rows, tuple(actions))


def _marked(line: str, goal: str) -> str:
    """``line`` with ``GOAL_MARK`` when it shows the goal product (a product row, or a product
    page's id line), else unchanged."""
    if line.startswith(f"- product {goal} |") or line == f"Product id: {goal}":
        return line + GOAL_MARK
    return line


def render_text(view: PageView) -> str:
    """The compact text observation of a page view (goal tasks: the goal line, the goal product's
    lines marked)."""
    parts = [f"== {view.title} ==", view.status]
    goal = view.goal[len(GOAL_PREFIX) :] if view.goal and view.goal.startswith(GOAL_PREFIX) else None
    if view.goal:
        parts.append(view.goal)
    parts.extend(view.lines if goal is None else (_marked(line, goal) for line in view.lines))
    if view.links:
        parts.append("Categories:")
        parts.extend("- " + label for label, _ in view.links)
    if view.rows:
        parts.append("Products:")
        parts.extend(r.line if goal is None else _marked(r.line, goal) for r in view.rows)
    parts.append("Actions:")
    parts.extend(view.actions)
    return "\n".join(parts)


def mark_goal(observation: str, goal: str) -> str:
    """The observation a goal task with goal ``goal`` shows for the page of ``observation`` (a
    ``render_text`` without a goal): the goal line after the status line, the goal product's lines
    marked. Raises ValueError for an observation that already states a goal."""
    lines = observation.split("\n")
    if len(lines) < 2 or any(line.startswith(GOAL_PREFIX) for line in lines[2:3]):
        raise ValueError("mark_goal needs a goal-free rendered observation (title and status lines first)")
    head, body = lines[:2], lines[2:]
    # The Actions block is never marked (its lines are action texts, never product rows).
    return "\n".join([*head, GOAL_PREFIX + goal, *(_marked(line, goal) for line in body)])
