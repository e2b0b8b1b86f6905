"""A small real web storefront (aiohttp) over the storefront model, for the browser env and demos.

Every page is ``Storefront.view(state)`` drawn as HTML by a template (``templates/<name>/page.html``):
links for navigation, POST forms for state changes, a GET search form. Each request that acts maps
onto exactly one action string of the model and goes through ``Storefront.step``, so the web shop and
the text env share one semantics. Sessions live on the server, keyed by a ``sid`` cookie (one per
browser context); ``GET /m/<merchant>/start?goal=P`` opens a fresh session.

Links and forms carry the session's turn ``t``: a request with the current turn is an action (so
clicking "Home" on the home page is a real step, as in the text env); a reload with an old turn just
redraws the current page. Paging links carry ``page=N``; links without it are the page's opener
(``open category``, ``home``, ``go to cart``, ``search``).

Run standalone: ``python -m envs.web.server --data PREPARED_DIR --merchant M`` prints the shop URL.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import secrets
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, urlencode

import jinja2
from aiohttp import web

from envs import storefront as sf
from envs.catalog import Catalog, load_catalogs
from envs.storefront import InvalidAction, Page, SessionState, Storefront

TEMPLATES_DIR = Path(__file__).parent / "templates"
TEMPLATES: tuple[str, ...] = ("default", "alt")
SESSION_COOKIE = "sid"
MAX_SESSIONS = 10_000
"""Sessions kept (least recently used dropped first): a server runs for hours under many contexts."""

# POST endpoints and the action each performs; product-page actions name their product in the form.
POST_ACTIONS: dict[str, str] = {
    "add-to-cart": sf.ADD_TO_CART,
    "buy-now": sf.BUY_NOW,
    "favorite": sf.FAVORITE,
    "remove": sf.REMOVE_FROM_CART,
    "checkout": sf.CHECKOUT,
    "place-order": sf.PLACE_ORDER,
    "back": sf.BACK,
    "exit": sf.EXIT,
}
LABELS: dict[str, str] = {
    sf.ADD_TO_CART: "Add to cart",
    sf.BUY_NOW: "Buy now",
    sf.FAVORITE: "Add to favourites",
    sf.REMOVE_FROM_CART: "Remove from cart",
    sf.CHECKOUT: "Checkout",
    sf.PLACE_ORDER: "Place order",
    sf.BACK: "Back",
    sf.EXIT: "Leave the shop",
    sf.NEXT_PAGE: "Next page",
    sf.PREVIOUS_PAGE: "Previous page",
    sf.HOME: "Home",
    sf.GO_TO_CART: "Cart",
}


@dataclass(frozen=True)
class Control:
    """How a page performs one action: a GET link (``href``) or a POST form (``post`` + ``fields``)."""

    action: str
    label: str
    href: str | None = None
    post: str | None = None
    fields: tuple[tuple[str, str], ...] = ()


@dataclass
class ShopSession:
    """One visitor's state at one merchant."""

    state: SessionState
    turn: int = 0
    event: str | None = None
    """Event type of the last action, shown once on the next page drawn (the shop's flash notice)."""


@dataclass
class SessionStore:
    """Sessions by (cookie, merchant), least recently used dropped beyond ``limit``."""

    limit: int = MAX_SESSIONS
    sessions: OrderedDict[tuple[str, str], ShopSession] = field(default_factory=OrderedDict)

    def get(self, sid: str, merchant: str) -> ShopSession | None:
        session = self.sessions.get((sid, merchant))
        if session is not None:
            self.sessions.move_to_end((sid, merchant))
        return session

    def put(self, sid: str, merchant: str, session: ShopSession) -> None:
        self.sessions[(sid, merchant)] = session
        self.sessions.move_to_end((sid, merchant))
        while len(self.sessions) > self.limit:
            self.sessions.popitem(last=False)


def page_path(merchant: str, page: Page) -> str:
    """The URL path (and query) that shows a page."""
    base = f"/m/{quote(merchant, safe='')}"
    paged = {"page": str(page.index + 1)} if page.index else {}
    if page.kind == "home":
        return f"{base}/" + (f"?{urlencode(paged)}" if paged else "")
    if page.kind == "category":
        return f"{base}/category/{quote(page.arg or '', safe='')}" + (f"?{urlencode(paged)}" if paged else "")
    if page.kind == "search":
        return f"{base}/search?{urlencode({'q': page.arg or '', **paged})}"
    if page.kind == "product":
        return f"{base}/product/{quote(page.arg or '', safe='')}"
    if page.kind == "cart":
        return f"{base}/cart" + (f"?{urlencode(paged)}" if paged else "")
    if page.kind == "checkout":
        return f"{base}/checkout" + (f"?{urlencode({'product': page.arg})}" if page.arg else "")
    return f"{base}/confirmation"


def _with_turn(path: str, turn: int, paging_index: int | None = None) -> str:
    params = {"t": str(turn)}
    if paging_index is not None:
        params["page"] = str(paging_index + 1)
    return path + ("&" if "?" in path else "?") + urlencode(params)


def controls_for(merchant: str, session: ShopSession, actions: tuple[str, ...]) -> dict[str, Control]:
    """The link or form that performs each valid action of the session's page."""
    state, turn = session.state, session.turn
    page = state.page
    base = f"/m/{quote(merchant, safe='')}"
    post_fields = (
        (("t", str(turn)), ("product_id", page.arg or "")) if page.kind == "product" else (("t", str(turn)),)
    )
    by_action = {a: name for name, a in POST_ACTIONS.items()}
    out: dict[str, Control] = {}
    for action in actions:
        if action.startswith(sf.OPEN_PRODUCT):
            pid = action[len(sf.OPEN_PRODUCT) :]
            out[action] = Control(
                action, pid, href=_with_turn(page_path(merchant, Page("product", pid)), turn)
            )
        elif action.startswith(sf.OPEN_CATEGORY):
            cid = action[len(sf.OPEN_CATEGORY) :]
            out[action] = Control(
                action, f"Category {cid}", href=_with_turn(page_path(merchant, Page("category", cid)), turn)
            )
        elif action.startswith(sf.REMOVE_PRODUCT):
            pid = action[len(sf.REMOVE_PRODUCT) :]
            fields = (("t", str(turn)), ("product_id", pid))
            out[action] = Control(action, "Remove", post=f"{base}/action/remove", fields=fields)
        elif action in (sf.NEXT_PAGE, sf.PREVIOUS_PAGE):
            index = page.index + (1 if action == sf.NEXT_PAGE else -1)
            target = page_path(merchant, Page(page.kind, page.arg, 0))
            out[action] = Control(action, LABELS[action], href=_with_turn(target, turn, index))
        elif action == sf.HOME:
            out[action] = Control(action, LABELS[action], href=_with_turn(f"{base}/", turn))
        elif action == sf.GO_TO_CART:
            out[action] = Control(action, LABELS[action], href=_with_turn(f"{base}/cart", turn))
        elif action == sf.SEARCH_TEMPLATE:
            out[action] = Control(action, "Search", href=f"{base}/search", fields=(("t", str(turn)),))
        elif action in by_action:
            out[action] = Control(
                action, LABELS[action], post=f"{base}/action/{by_action[action]}", fields=post_fields
            )
    return out


def _target_page(request: web.Request, kind: str) -> tuple[Page, bool]:
    """The page a GET asks for and whether it is a paging link (``page=N``)."""
    arg = {
        "category": request.match_info.get("category"),
        "product": request.match_info.get("product"),
        "search": request.query.get("q", ""),
        "checkout": request.query.get("product"),
    }.get(kind)
    raw = request.query.get("page")
    try:
        index = max(0, int(raw) - 1) if raw is not None else 0
    except ValueError:
        raise web.HTTPBadRequest(text=f"page={raw!r} is not a page number") from None
    return Page(kind, arg, index), raw is not None


def _nav_action(state: SessionState, target: Page, paging: bool) -> str | None:
    """The action that moves from the state's page to ``target`` through a link, if any."""
    page = state.page
    if paging:
        if (page.kind, page.arg) == (target.kind, target.arg) and abs(page.index - target.index) == 1:
            return sf.NEXT_PAGE if target.index > page.index else sf.PREVIOUS_PAGE
        return None
    return {
        "home": sf.HOME,
        "cart": sf.GO_TO_CART,
        "category": sf.OPEN_CATEGORY + (target.arg or ""),
        "product": sf.OPEN_PRODUCT + (target.arg or ""),
        "search": f'search "{target.arg}"',
    }.get(target.kind)


def _product_category(
    store: Storefront, state: SessionState, controls: dict[str, Control]
) -> tuple[str, Control] | None:
    """The product page's link to its category, when the page offers it."""
    if state.page.kind != "product":
        return None
    cid = store.catalog.by_id[state.page.arg or ""].category_id
    control = controls.get(sf.OPEN_CATEGORY + cid)
    return (cid, control) if control else None


class StorefrontApp:
    """The aiohttp application: routes, sessions and page drawing for one or more storefronts."""

    def __init__(self, storefronts: Mapping[str, Storefront], template: str = "default") -> None:
        if template not in TEMPLATES:
            raise ValueError(f"template {template!r} is not one of {TEMPLATES}")
        if not storefronts:
            raise ValueError("StorefrontApp needs at least one storefront")
        self.storefronts = dict(storefronts)
        self.template = template
        self.sessions = SessionStore()
        env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(TEMPLATES_DIR / template),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
        )
        self._page = env.get_template("page.html")
        self._index = env.get_template("index.html")
        self.app = web.Application()
        m = "/m/{merchant}"
        self.app.add_routes(
            [
                web.get("/", self.index),
                web.get(f"{m}/start", self.start),
                web.get(f"{m}/", self.navigate("home")),
                web.get(f"{m}/category/{{category}}", self.navigate("category")),
                web.get(f"{m}/search", self.navigate("search")),
                web.get(f"{m}/product/{{product}}", self.navigate("product")),
                web.get(f"{m}/cart", self.navigate("cart")),
                web.get(f"{m}/checkout", self.navigate("checkout")),
                web.get(f"{m}/confirmation", self.navigate("confirmation")),
                web.post(f"{m}/action/{{name}}", self.act),
            ]
        )

    # ---- sessions ------------------------------------------------------------------------------
    def _storefront(self, request: web.Request) -> tuple[str, Storefront]:
        merchant = request.match_info["merchant"]
        if merchant not in self.storefronts:
            raise web.HTTPNotFound(text=f"no shop {merchant!r} on this server")
        return merchant, self.storefronts[merchant]

    def _session(
        self, request: web.Request, merchant: str, store: Storefront
    ) -> tuple[str, ShopSession, bool]:
        sid = request.cookies.get(SESSION_COOKIE)
        session = self.sessions.get(sid, merchant) if sid else None
        if sid is None or session is None:
            sid = sid or secrets.token_urlsafe(16)
            session = ShopSession(store.initial_state())
            self.sessions.put(sid, merchant, session)
            return sid, session, True
        return sid, session, False

    @staticmethod
    def _set_cookie(response: web.StreamResponse, sid: str) -> None:
        response.set_cookie(SESSION_COOKIE, sid, httponly=True, samesite="Lax", path="/")

    # ---- handlers ------------------------------------------------------------------------------
    async def index(self, request: web.Request) -> web.Response:
        shops = [(m, f"/m/{quote(m, safe='')}/") for m in sorted(self.storefronts)]
        return web.Response(text=self._index.render(shops=shops), content_type="text/html")

    async def start(self, request: web.Request) -> web.StreamResponse:
        merchant, store = self._storefront(request)
        goal = request.query.get("goal") or None
        try:
            state = store.initial_state(goal=goal)
        except ValueError as err:
            raise web.HTTPBadRequest(text=str(err)) from None
        sid = secrets.token_urlsafe(16)
        self.sessions.put(sid, merchant, ShopSession(state))
        response = web.HTTPSeeOther(page_path(merchant, state.page))
        self._set_cookie(response, sid)
        return response

    def navigate(self, kind: str):
        async def handler(request: web.Request) -> web.StreamResponse:
            merchant, store = self._storefront(request)
            sid, session, fresh = self._session(request, merchant, store)
            target, paging = _target_page(request, kind)
            turn = request.query.get("t")
            current = session.state.page
            if kind in ("checkout", "confirmation"):  # reached by a form only; GET just shows them
                shown = current.kind == kind and (kind == "confirmation" or current.arg == target.arg)
                return self._draw(merchant, store, sid, session, fresh, status=200 if shown else 409)
            if turn == str(session.turn) or (turn is None and target != current):
                action = _nav_action(session.state, target, paging)
                if action is None or not self._apply(store, session, action):
                    return self._draw(merchant, store, sid, session, fresh, status=409)
                if session.state.page != target:  # e.g. a search query normalized by the model
                    return self._redirect(merchant, sid, session, fresh)
            elif target != current:
                return self._draw(merchant, store, sid, session, fresh, status=409)
            return self._draw(merchant, store, sid, session, fresh)

        return handler

    async def act(self, request: web.Request) -> web.StreamResponse:
        merchant, store = self._storefront(request)
        sid, session, fresh = self._session(request, merchant, store)
        form = await request.post()
        name = request.match_info["name"]
        if name not in POST_ACTIONS:
            raise web.HTTPNotFound(text=f"no action {name!r}; actions: {sorted(POST_ACTIONS)}")
        page = session.state.page
        product = str(form.get("product_id", ""))
        action = POST_ACTIONS[name]
        if name == "remove" and page.kind == "cart":
            action = sf.REMOVE_PRODUCT + product
        stale = str(form.get("t", "")) != str(session.turn)
        wrong_product = page.kind == "product" and product != page.arg
        if stale or wrong_product or not self._apply(store, session, action):
            return self._draw(merchant, store, sid, session, fresh, status=409)
        return self._redirect(merchant, sid, session, fresh)

    def _apply(self, store: Storefront, session: ShopSession, action: str) -> bool:
        try:
            state, event = store.step(session.state, action)
        except InvalidAction:
            return False
        session.state = state
        session.turn += 1
        session.event = event.event_type if event is not None else None
        return True

    def _redirect(self, merchant: str, sid: str, session: ShopSession, fresh: bool) -> web.StreamResponse:
        response = web.HTTPSeeOther(page_path(merchant, session.state.page))
        if fresh:
            self._set_cookie(response, sid)
        return response

    def _draw(
        self, merchant: str, store: Storefront, sid: str, session: ShopSession, fresh: bool, status: int = 200
    ) -> web.Response:
        state = session.state
        view = store.view(state)
        page = state.page
        controls = controls_for(merchant, session, view.actions)
        html = self._page.render(
            view=view,
            merchant=merchant,
            controls=controls,
            links=[(label, a[len(sf.OPEN_CATEGORY) :], controls.get(a)) for label, a in view.links],
            rows=[
                (r, controls.get(r.action), controls.get(sf.REMOVE_PRODUCT + r.product_id)) for r in view.rows
            ],
            category=_product_category(store, state, controls),
            cart=[(pid, qty, store.catalog.by_id[pid].title) for pid, qty in state.cart],
            ordered=(page.arg or "").split("\t") if page.kind == "confirmation" else [],
            event=session.event or "",
            notice="That link is out of date; this is where you are now." if status == 409 else "",
            price=lambda p: "n/a" if p is None else f"{p:.2f}",
        )
        session.event = None
        response = web.Response(text=html, content_type="text/html", status=status)
        if fresh:
            self._set_cookie(response, sid)
        return response


class StorefrontServer:
    """Serve storefronts on 127.0.0.1 (port chosen by the OS) from a background thread.

    Use as a context manager (``with StorefrontServer.from_catalogs([cat]) as server: server.url``),
    or ``start()`` / ``stop()``.
    """

    def __init__(
        self, storefronts: Mapping[str, Storefront], template: str = "default", host: str = "127.0.0.1"
    ):
        self.shop = StorefrontApp(storefronts, template)
        self.template = template
        self.merchants = tuple(sorted(storefronts))
        self._host = host
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="storefront-http", daemon=True)
        self._runner: web.AppRunner | None = None
        self.url = ""

    @classmethod
    def from_catalogs(
        cls, catalogs: Catalog | list[Catalog] | Mapping[str, Catalog], template: str = "default"
    ) -> StorefrontServer:
        """A server over in-memory catalogs (one storefront per merchant)."""
        cats = (
            [catalogs]
            if isinstance(catalogs, Catalog)
            else list(getattr(catalogs, "values", lambda: catalogs)())
        )
        return cls({c.merchant_id: Storefront(c) for c in cats}, template)

    @classmethod
    def from_data(
        cls, data_dir: str | Path, merchants: list[str] | None = None, template: str = "default"
    ) -> StorefrontServer:
        """A server over a prepared directory's catalogues (all merchants, or the ones named)."""
        return cls.from_catalogs(load_catalogs(data_dir, merchants), template)

    def shop_url(self, merchant: str) -> str:
        """The home page of a merchant's shop."""
        return f"{self.url}/m/{quote(merchant, safe='')}/"

    def start_url(self, merchant: str, goal: str | None = None) -> str:
        """The URL that opens a fresh session (optionally with a goal product)."""
        query = f"?{urlencode({'goal': goal})}" if goal is not None else ""
        return f"{self.url}/m/{quote(merchant, safe='')}/start{query}"

    async def _start(self) -> str:
        self._runner = web.AppRunner(self.shop.app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, self._host, 0).start()
        host, port = self._runner.addresses[0][:2]
        return f"http://{host}:{port}"

    def start(self) -> str:
        """Start serving; returns the base URL ``http://127.0.0.1:PORT``."""
        if not self._thread.is_alive():
            self._thread.start()
            self.url = asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(30)
        return self.url

    def stop(self) -> None:
        """Stop serving and end the thread."""
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(30)
            self._runner = None
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop.close()

    def __deepcopy__(self, memo: dict) -> StorefrontServer:
        # A handle on a running resource: gymnasium.make deep-copies env kwargs, and every env
        # made with this one must share it, not get a copy.
        return self

    def __enter__(self) -> StorefrontServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m envs.web.server", description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="prepared directory (simpersona prepare --out DIR)")
    parser.add_argument("--merchant", action="append", help="merchant to serve (repeatable; default: all)")
    parser.add_argument("--template", default="default", choices=TEMPLATES, help="page template")
    args = parser.parse_args(argv)
    server = StorefrontServer.from_data(args.data, args.merchant, args.template)
    with server:
        for merchant in server.merchants[:20]:
            print(server.shop_url(merchant), flush=True)
        with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is the way to stop a demo server
            threading.Event().wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
