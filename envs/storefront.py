"""The storefront model every env shares: pages, session state, actions and the events they emit.

API summary (stable; the web storefront and the browser env build on it):

- ``Storefront(catalog)``: one per merchant, immutable after construction, safe to share between envs.
- ``Storefront.initial_state(goal=None) -> SessionState``: the home page, empty cart.
- ``Storefront.valid_actions(state) -> list[str]``: the action strings the page accepts, in display
  order. ``SEARCH_TEMPLATE`` (``search "<query>"``) stands for any ``search "..."`` with a query of
  1..MAX_QUERY_CHARS characters and no double quote.
- ``Storefront.is_valid(state, action, actions=None) -> bool`` (action already normalized);
  ``normalize_action(action) -> str``. Optional ``actions`` args take ``valid_actions(state)`` when
  the caller already computed it.
- ``Storefront.step(state, action, actions=None) -> (SessionState, Event | None)``: pure; raises
  ``InvalidAction`` (a ValueError) for an action the page does not offer. ``Event`` is the canonical
  event the action emits (``None`` for ``exit``, which ends the session).
- ``Storefront.listing(page) -> tuple[Product, ...]`` (products shown on a home/category/search page),
  ``Storefront.home_categories(index)``, ``Storefront.cart_page(state)``, ``Storefront.n_pages(state)``,
  ``Storefront.checkout_items(state)``, ``Storefront.search_results(query)``; ``Storefront.page_size``
  (products per listing and cart page, ``PAGE_SIZE`` unless a treatment changes it).
- ``Storefront.view(state, actions=None) -> envs.render.PageView`` (structured page) and
  ``Storefront.observe(state, actions=None) -> str`` (the text observation, ``render_text(view)``;
  in a goal task it states the goal and marks every line showing the goal product, envs/render.py).
- ``Storefront.goal_reached(state) -> bool``: the goal product is among the purchased items.

Pages (``Page.kind``): home (category links, featured products; paginated over categories),
category (a category's listing), search (results), product, cart, checkout, confirmation.
Actions and their canonical events: ``open product P`` -> product_view; ``add to cart`` /
``buy now`` (product page) -> add_to_cart / checkout; ``remove from cart`` (product page) and
``remove product P`` (cart) -> remove_from_cart; ``favorite`` -> favorite; ``checkout`` (cart) ->
checkout; ``place order`` -> purchase; ``search "q"`` -> search; ``open category C``,
``next page``, ``previous page``, ``home``, ``go to cart``, ``back`` -> page_view; ``exit`` -> none.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from envs.catalog import Catalog, Product
from envs.render import PageView, ProductRow, build_view, render_text

PAGE_KINDS: tuple[str, ...] = ("home", "category", "search", "product", "cart", "checkout", "confirmation")
LISTING_KINDS = frozenset({"home", "category", "search"})
PAGE_SIZE = 10
"""Products per category/search listing and cart page (the default of ``Storefront.page_size``)."""
HOME_CATEGORIES = 8
"""Category links per home page."""
FEATURED = 5
"""Most popular products shown on the first home page."""
HISTORY_LIMIT = 32
"""Pages kept on the back stack."""
MAX_QUERY_CHARS = 64
SEARCH_RESULTS = 100
SEARCH_TEMPLATE = 'search "<query>"'
SEARCH_CACHE = 4096
"""Search result lists kept per storefront before the cache is cleared."""

ADD_TO_CART = "add to cart"
BUY_NOW = "buy now"
FAVORITE = "favorite"
REMOVE_FROM_CART = "remove from cart"
CHECKOUT = "checkout"
PLACE_ORDER = "place order"
NEXT_PAGE = "next page"
PREVIOUS_PAGE = "previous page"
HOME = "home"
GO_TO_CART = "go to cart"
BACK = "back"
EXIT = "exit"
OPEN_PRODUCT = "open product "
OPEN_CATEGORY = "open category "
REMOVE_PRODUCT = "remove product "


@dataclass(frozen=True, slots=True)
class Page:
    """Where the buyer is. ``arg``: category id, search query, product id, or the buy-now product on
    a checkout page (None = the cart); on confirmation, the ordered product ids joined by tabs."""

    kind: str
    arg: str | None = None
    index: int = 0
    """Listing page number, 0-based."""


@dataclass(frozen=True, slots=True)
class SessionState:
    """One buyer's session; immutable, so a step returns a new state and never changes the old one."""

    page: Page
    cart: tuple[tuple[str, int], ...] = ()
    """(product id, quantity), in the order first added."""
    favourites: tuple[str, ...] = ()
    history: tuple[Page, ...] = ()
    """Back stack, most recent last (at most HISTORY_LIMIT pages)."""
    purchased: tuple[str, ...] = ()
    """Products of placed orders, in order."""
    goal: str | None = None
    """Product the buyer is asked to buy (goal tasks), or None."""
    exited: bool = False
    prices: tuple[tuple[str, float], ...] = ()
    """(product id, price) for prices this session sees that differ from the catalogue's: a replayed
    session's logged prices (learners/data/traces.py). Simulated sessions have none."""

    def priced(self, product_id: str, price: float) -> SessionState:
        """This state with ``product_id`` shown at ``price`` from now on."""
        rest = tuple(item for item in self.prices if item[0] != product_id)
        return replace(self, prices=(*rest, (product_id, price)))

    def in_cart(self, product_id: str) -> int:
        """Quantity of a product in the cart."""
        for pid, qty in self.cart:
            if pid == product_id:
                return qty
        return 0

    @property
    def cart_items(self) -> int:
        return sum(q for _, q in self.cart)


@dataclass(frozen=True, slots=True)
class Event:
    """The canonical event an action emits (event types as in the prepared events table)."""

    event_type: str
    product_id: str | None = None
    category_id: str | None = None
    query: str | None = None
    products: tuple[str, ...] = ()
    """All products of a placed order (purchase) or of a checkout."""


class InvalidAction(ValueError):
    """The page does not offer this action."""


def normalize_action(action: str) -> str:
    """Collapse whitespace; the only leniency the action parser allows."""
    return " ".join(str(action).split())


def search_query(action: str) -> str | None:
    """The query of a well-formed ``search "q"`` action, else None."""
    if action.startswith('search "') and action.endswith('"') and len(action) > len('search ""'):
        q = action[8:-1]
        if '"' not in q and len(q) <= MAX_QUERY_CHARS:
            return q
    return None


def _moved(s: SessionState, page: Page, history: tuple[Page, ...]) -> SessionState:
    # Navigation is the hot path; the constructor is several times faster than dataclasses.replace.
    return SessionState(page, s.cart, s.favourites, history, s.purchased, s.goal, s.exited, s.prices)


def _pages(n: int, size: int) -> int:
    return max(1, -(-n // size))


class Storefront:
    """One merchant's storefront over a catalog. Subclass it to make a variant (see envs/variant.py)."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self.merchant_id = catalog.merchant_id
        # Products per listing and cart page; a treatment may change it (envs/treatments.py).
        self.page_size = PAGE_SIZE
        self._open = {p.product_id: OPEN_PRODUCT + p.product_id for p in catalog.products}
        self._open_cat = {c: OPEN_CATEGORY + c for c in catalog.categories}
        self._search_cache: dict[str, tuple[Product, ...]] = {}
        self._listing_cache: dict[Page, tuple[Product, ...]] = {}
        self._home_cache: dict[int, tuple[str, ...]] = {}
        self._actions_cache: dict[Page, tuple[str, ...]] = {}
        # Filled by envs.render: product rows and listing-page views, static for a catalog.
        self.row_cache: dict[str, ProductRow] = {}
        self.view_cache: dict[Page, tuple] = {}

    # ---- page contents -------------------------------------------------------------------------
    def initial_state(self, goal: str | None = None) -> SessionState:
        if goal is not None and goal not in self.catalog.by_id:
            raise ValueError(f"merchant {self.merchant_id!r}: goal product {goal!r} is not in the catalog")
        return SessionState(Page("home"), goal=goal)

    def search_results(self, query: str) -> tuple[Product, ...]:
        hits = self._search_cache.get(query)
        if hits is None:
            if len(self._search_cache) >= SEARCH_CACHE:
                self._search_cache.clear()
            hits = self._search_cache[query] = self.catalog.search(query, SEARCH_RESULTS)
        return hits

    def _all_listed(self, page: Page) -> tuple[Product, ...]:
        if page.kind == "category":
            return self.catalog.listing(page.arg or "")
        if page.kind == "search":
            return self.search_results(page.arg or "")
        if page.kind == "home":
            return self.catalog.products[:FEATURED]
        return ()

    def listing(self, page: Page) -> tuple[Product, ...]:
        """Products shown on a home (featured, first page only), category or search page."""
        hit = self._listing_cache.get(page)
        if hit is None:
            if page.kind == "home":
                hit = self.catalog.products[:FEATURED] if page.index == 0 else ()
            else:
                size = self.page_size
                hit = self._all_listed(page)[page.index * size : (page.index + 1) * size]
            if page.kind != "search":  # search pages are bounded by the search cache instead
                self._listing_cache[page] = hit
        return hit

    def home_categories(self, index: int) -> tuple[str, ...]:
        hit = self._home_cache.get(index)
        if hit is None:
            hit = self._home_cache[index] = self.catalog.categories[
                index * HOME_CATEGORIES : (index + 1) * HOME_CATEGORIES
            ]
        return hit

    def n_pages(self, state: SessionState) -> int:
        """Number of pages of the state's listing or cart (1 for other pages)."""
        page = state.page
        if page.kind == "home":
            return _pages(len(self.catalog.categories), HOME_CATEGORIES)
        if page.kind in ("category", "search"):
            return _pages(len(self._all_listed(page)), self.page_size)
        if page.kind == "cart":
            return _pages(len(state.cart), self.page_size)
        return 1

    def cart_page(self, state: SessionState) -> tuple[tuple[str, int], ...]:
        """The cart lines shown on the state's cart page."""
        i = state.page.index
        return state.cart[i * self.page_size : (i + 1) * self.page_size]

    def checkout_items(self, state: SessionState) -> tuple[tuple[str, int], ...]:
        """What placing the order on a checkout page buys: the buy-now product, else the cart."""
        arg = state.page.arg
        return ((arg, 1),) if arg is not None else state.cart

    # ---- actions -------------------------------------------------------------------------------
    def valid_actions(self, state: SessionState) -> list[str]:
        if state.exited:
            return []
        page = state.page
        kind = page.kind
        acts: list[str]
        if kind in LISTING_KINDS:
            head = self._actions_cache.get(page)
            if head is None:
                acts = [self._open_cat[c] for c in self.home_categories(page.index)] if kind == "home" else []
                acts.extend(self._open[p.product_id] for p in self.listing(page))
                self._paging(state, acts)
                if len(self._actions_cache) >= SEARCH_CACHE:
                    self._actions_cache.clear()
                head = self._actions_cache[page] = tuple(acts)
            acts = [*head]
        elif kind == "product":
            pid = page.arg or ""
            acts = [ADD_TO_CART, BUY_NOW, FAVORITE]
            if state.in_cart(pid):
                acts.append(REMOVE_FROM_CART)
            acts.append(self._open_cat[self.catalog.by_id[pid].category_id])
        elif kind == "cart":
            lines = self.cart_page(state)
            acts = [self._open[pid] for pid, _ in lines]
            acts.extend(REMOVE_PRODUCT + pid for pid, _ in lines)
            self._paging(state, acts)
            if state.cart:
                acts.append(CHECKOUT)
        elif kind == "checkout":
            tail = [BACK, GO_TO_CART, HOME, EXIT]
            return [PLACE_ORDER, *tail] if self.checkout_items(state) else tail
        else:  # confirmation
            return [SEARCH_TEMPLATE, GO_TO_CART, HOME, EXIT]
        acts.extend((SEARCH_TEMPLATE, GO_TO_CART, HOME))
        if state.history:
            acts.append(BACK)
        acts.append(EXIT)
        return acts

    def _paging(self, state: SessionState, acts: list[str]) -> None:
        if state.page.index + 1 < self.n_pages(state):
            acts.append(NEXT_PAGE)
        if state.page.index > 0:
            acts.append(PREVIOUS_PAGE)

    def is_valid(self, state: SessionState, action: str, actions: list[str] | None = None) -> bool:
        """Whether the page offers the (normalized) action; pass ``actions`` when already computed."""
        if actions is None:
            actions = self.valid_actions(state)
        if action == SEARCH_TEMPLATE:  # the placeholder itself is not a query
            return False
        return action in actions or (SEARCH_TEMPLATE in actions and search_query(action) is not None)

    def step(
        self, state: SessionState, action: str, actions: list[str] | None = None
    ) -> tuple[SessionState, Event | None]:
        """Apply one action; raises InvalidAction (state untouched) when the page does not offer it.
        ``actions``: ``valid_actions(state)`` when the caller already has it (saves recomputing)."""
        action = normalize_action(action)
        if not self.is_valid(state, action, actions):
            raise InvalidAction(f"{action!r} is not an action of this {state.page.kind} page")
        return self.apply(state, action)

    def goal_reached(self, state: SessionState) -> bool:
        return state.goal is not None and state.goal in state.purchased

    # ---- transitions (called with an action already known to be valid) ---------------------------
    def navigate(self, state: SessionState, page: Page) -> SessionState:
        """The state on a new page, the current one pushed on the (bounded) back stack."""
        history = (*state.history[-(HISTORY_LIMIT - 1) :], state.page)
        return _moved(state, page, history)

    def _page_event(self, page: Page) -> Event:
        return Event("page_view", category_id=page.arg if page.kind == "category" else None)

    def apply(self, state: SessionState, action: str) -> tuple[SessionState, Event | None]:
        """The transition of a valid, normalized action. Variants override it for their own actions."""
        page = state.page
        if action.startswith(OPEN_PRODUCT):
            p = self.catalog.by_id[action[len(OPEN_PRODUCT) :]]
            return self.navigate(state, Page("product", p.product_id)), Event(
                "product_view", p.product_id, p.category_id
            )
        if action.startswith(OPEN_CATEGORY):
            new = Page("category", action[len(OPEN_CATEGORY) :])
            return self.navigate(state, new), self._page_event(new)
        if action.startswith(REMOVE_PRODUCT):
            return self._remove(state, action[len(REMOVE_PRODUCT) :])
        q = search_query(action)
        if q is not None:
            return self.navigate(state, Page("search", q)), Event("search", query=q)
        if action in (NEXT_PAGE, PREVIOUS_PAGE):
            new = Page(page.kind, page.arg, page.index + (1 if action == NEXT_PAGE else -1))
            return self.navigate(state, new), self._page_event(new)
        if action == HOME:
            return self.navigate(state, Page("home")), Event("page_view")
        if action == GO_TO_CART:
            return self.navigate(state, Page("cart")), Event("page_view")
        if action == BACK:
            prev = state.history[-1]
            return _moved(state, prev, state.history[:-1]), self._page_event(prev)
        if action == EXIT:
            return replace(state, exited=True), None
        pid = page.arg or ""
        if action == ADD_TO_CART:
            p = self.catalog.by_id[pid]
            qty = state.in_cart(pid)
            cart = (
                tuple((i, q + 1) if i == pid else (i, q) for i, q in state.cart)
                if qty
                else (*state.cart, (pid, 1))
            )
            return replace(state, cart=cart), Event("add_to_cart", pid, p.category_id)
        if action == REMOVE_FROM_CART:
            return self._remove(state, pid)
        if action == FAVORITE:
            p = self.catalog.by_id[pid]
            favs = state.favourites if pid in state.favourites else (*state.favourites, pid)
            return replace(state, favourites=favs), Event("favorite", pid, p.category_id)
        if action == BUY_NOW:
            p = self.catalog.by_id[pid]
            return self.navigate(state, Page("checkout", pid)), Event(
                "checkout", pid, p.category_id, products=(pid,)
            )
        if action == CHECKOUT:
            items = tuple(i for i, _ in state.cart)
            return self.navigate(state, Page("checkout")), Event("checkout", products=items)
        if action == PLACE_ORDER:
            return self._place_order(state)
        raise InvalidAction(f"{action!r} has no transition in {type(self).__name__}")

    def _remove(self, state: SessionState, pid: str) -> tuple[SessionState, Event]:
        cart = tuple((i, q - 1) if i == pid else (i, q) for i, q in state.cart)
        cart = tuple(item for item in cart if item[1] > 0)
        page = state.page
        if page.kind == "cart" and page.index > 0 and page.index * self.page_size >= len(cart):
            page = Page("cart", None, page.index - 1)  # the emptied last page folds onto the one before
        return replace(state, cart=cart, page=page), Event(
            "remove_from_cart", pid, self.catalog.by_id[pid].category_id
        )

    def _place_order(self, state: SessionState) -> tuple[SessionState, Event]:
        items = self.checkout_items(state)
        bought = tuple(i for i, _ in items)
        if state.page.arg is None:
            cart: tuple[tuple[str, int], ...] = ()
        else:  # a buy-now order also settles that product's cart line
            cart = tuple(item for item in state.cart if item[0] != state.page.arg)
        first = self.catalog.by_id[bought[0]]
        new = replace(
            state,
            page=Page("confirmation", "\t".join(bought)),
            history=(),
            cart=cart,
            purchased=(*state.purchased, *bought),
        )
        return new, Event(
            "purchase", first.product_id if len(bought) == 1 else None, first.category_id, products=bought
        )

    # ---- observation ---------------------------------------------------------------------------
    def view(self, state: SessionState, actions: list[str] | None = None) -> PageView:
        """The structured page (title, rows, links, actions). Variants override it to add content."""
        return build_view(self, state, actions)

    def observe(self, state: SessionState, actions: list[str] | None = None) -> str:
        """The text observation of a state (``actions``: its valid actions, when already computed)."""
        return render_text(self.view(state, actions))
