"""Read a storefront page in the browser back into the model's ``PageView``, through a selector mapping.

A selector mapping (``selectors/<name>.yaml``, loaded with ``yaml.safe_load`` and validated here)
says where a site shows each part of a page: title, status line, goal, body lines, category links,
product rows, action buttons, search box, mini-cart and order lines. One ``page.evaluate`` call runs
``EXTRACT_JS`` with the mapping and returns every part plus a locator path for each control, so a
page costs one round trip to the browser. ``read_page`` turns that into a ``PageRead``: the
``PageView`` (whose ``render_text`` is the observation, identical to the text env's) and the
controls that perform each action.

Action order: a page lists its actions in the model's order (``Storefront.valid_actions``), which
does not depend on where a site draws its buttons. ``action_order`` derives that order per page kind
from the model; links of one group (categories, products, cart lines) keep the order the page shows.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from envs import storefront as sf
from envs.catalog import Catalog
from envs.render import PageView, ProductRow
from envs.storefront import Page, SessionState, Storefront

SELECTORS_DIR = Path(__file__).parent / "selectors"

_PREFIX_GROUPS = (sf.OPEN_CATEGORY, sf.OPEN_PRODUCT, sf.REMOVE_PRODUCT)


def action_group(action: str) -> str:
    """The group an action belongs to: its prefix for per-item actions (``open product ``), else itself."""
    for prefix in _PREFIX_GROUPS:
        if action.startswith(prefix):
            return prefix
    return action


def _probe_states() -> tuple[Storefront, list[SessionState]]:
    """A small storefront and one state per page situation (paging both ways, full cart, history)."""
    n = 3 * sf.PAGE_SIZE
    records = [{"product_id": f"p{i}", "category_id": "c0", "popularity": n - i} for i in range(n)]
    records += [{"product_id": f"q{i}", "category_id": f"c{i + 1}"} for i in range(3 * sf.HOME_CATEGORIES)]
    store = Storefront(Catalog.from_records("probe", records))
    cart = tuple((f"p{i}", 1) for i in range(n))
    pages = [
        Page("home", None, 0), Page("home", None, 1), Page("category", "c0", 0), Page("category", "c0", 1),
        Page("search", "p", 0), Page("search", "p", 1), Page("product", "p0"), Page("cart", None, 1),
        Page("checkout"), Page("confirmation", "p0"),
    ]  # fmt: skip
    history = (Page("home"),)
    states = [SessionState(page, cart=cart, history=history) for page in pages]
    states += [SessionState(Page("checkout"), history=history), SessionState(Page("cart"), history=history)]
    return store, states


@functools.lru_cache(maxsize=1)
def action_order() -> dict[str, tuple[str, ...]]:
    """Action groups per page kind, in the order ``Storefront.valid_actions`` lists them.

    Derived from the model itself (valid actions of probe states, merged into one order per kind),
    so a change of order in the model needs no change here.
    """
    store, states = _probe_states()
    sequences: dict[str, list[list[str]]] = {}
    for state in states:
        groups = list(dict.fromkeys(action_group(a) for a in store.valid_actions(state)))
        sequences.setdefault(state.page.kind, []).append(groups)
    order: dict[str, tuple[str, ...]] = {}
    for kind, seqs in sequences.items():
        first = list(dict.fromkeys(g for seq in seqs for g in seq))
        after = {
            g: {seq[j] for seq in seqs if g in seq for j in range(seq.index(g) + 1, len(seq))} for g in first
        }
        merged: list[str] = []
        while len(merged) < len(first):
            ready = [
                g
                for g in first
                if g not in merged and not any(g in after[h] for h in first if h not in merged)
            ]
            if not ready:
                raise RuntimeError(
                    f"the storefront model lists {kind} actions in inconsistent orders: {seqs}"
                )
            merged.append(ready[0])
        order[kind] = tuple(merged)
    return order


BUTTON_ACTIONS: tuple[str, ...] = (
    sf.ADD_TO_CART, sf.BUY_NOW, sf.FAVORITE, sf.REMOVE_FROM_CART, sf.CHECKOUT, sf.PLACE_ORDER,
    sf.NEXT_PAGE, sf.PREVIOUS_PAGE, sf.HOME, sf.GO_TO_CART, sf.BACK, sf.EXIT,
)  # fmt: skip
"""Actions without an argument, each performed by one control (``buttons`` in a mapping)."""

# Mapping layout: top-level key -> kind; groups list their own fields and controls.
_FIELDS = ("page_kind", "title", "status", "goal", "lines", "event")
_GROUPS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "category_links": (("category_id", "label"), ("open",)),
    "product_rows": (
        ("product_id", "title", "category_id", "price", "quantity", "badge"),
        ("open", "remove"),
    ),
    "product_category": (("category_id",), ()),
    "cart_lines": (("product_id", "quantity"), ()),
    "order_items": (("product_id",), ()),
}
_FIELD_KEYS = frozenset({"selector", "attribute", "pattern"})


class PageReadError(ValueError):
    """The mapping found no required part on a page (a foreign or error page, or a wrong mapping)."""


class SelectorMappingError(ValueError):
    """A selector mapping file is malformed; the message names file, line, column and the fix."""


def _mark(root: yaml.Node | None, path: tuple[str, ...]) -> str:
    """``line L, column C`` of the node at ``path`` (or of its deepest existing parent)."""
    node, mark = root, getattr(root, "start_mark", None)
    for key in path:
        if not isinstance(node, yaml.MappingNode):
            break
        for k, v in node.value:
            if k.value == key:
                node, mark = v, k.start_mark
                break
        else:
            break
    return f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "line 1, column 1"


def _field(value: Any, where: str) -> dict[str, str | None]:
    if isinstance(value, str):
        value = {"selector": value}
    if not isinstance(value, dict) or not value or set(value) - _FIELD_KEYS:
        raise SelectorMappingError(
            f"{where}: a field is a CSS selector string or a mapping with keys {sorted(_FIELD_KEYS)}, got {value!r}"
        )
    for key, v in value.items():
        if not isinstance(v, str) or not v:
            raise SelectorMappingError(f"{where}: {key} must be a non-empty string, got {v!r}")
    if "pattern" in value:
        try:
            re.compile(value["pattern"])
        except re.error as err:
            raise SelectorMappingError(
                f"{where}: pattern {value['pattern']!r} is not a valid regex ({err})"
            ) from None
    return {k: value.get(k) for k in sorted(_FIELD_KEYS)}


def _selector(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise SelectorMappingError(f"{where}: expected a CSS selector string, got {value!r}")
    return value


@dataclass(frozen=True)
class SelectorMap:
    """A validated selector mapping; ``spec`` is the JSON handed to ``EXTRACT_JS``."""

    name: str
    source: str
    spec: dict[str, Any]


def load_selectors(name_or_path: str | Path) -> SelectorMap:
    """Load and validate a mapping: a bundled name (``default``, ``alt``) or a YAML file path."""
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        path = SELECTORS_DIR / f"{name_or_path}.yaml"
    if not path.exists():
        bundled = sorted(p.stem for p in SELECTORS_DIR.glob("*.yaml"))
        raise FileNotFoundError(f"{path}: no selector mapping here; give a YAML path or one of {bundled}")
    text = path.read_text(encoding="utf-8")
    try:
        data = yaml.safe_load(text)
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as err:
        raise SelectorMappingError(f"{path}: not valid YAML ({err})") from None
    if not isinstance(data, dict):
        raise SelectorMappingError(f"{path}: line 1, column 1: expected a mapping of page parts to selectors")

    def where(*keys: str) -> str:
        return f"{path}: {_mark(root, keys)}: {'.'.join(keys)}"

    known = {"name", *_FIELDS, *_GROUPS, "buttons", "search"}
    for key in data:
        if key not in known:
            raise SelectorMappingError(f"{where(str(key))}: unknown key; known keys: {sorted(known)}")
    missing = sorted(known - set(data) - {"name", "goal", "event"})
    if missing:
        raise SelectorMappingError(
            f"{path}: line 1, column 1: missing key(s) {missing}; every page part needs a selector"
        )
    spec: dict[str, Any] = {k: _field(data[k], where(k)) for k in _FIELDS if k in data}
    for group, (fields, controls) in _GROUPS.items():
        body = data[group]
        if not isinstance(body, dict) or "selector" not in body:
            raise SelectorMappingError(f"{where(group)}: expected a mapping with a `selector` and its fields")
        allowed = {"selector", *fields, *controls}
        for key in body:
            if key not in allowed:
                raise SelectorMappingError(f"{where(group, key)}: unknown key; allowed: {sorted(allowed)}")
        entry: dict[str, Any] = {"selector": _selector(body["selector"], where(group, "selector"))}
        for key in fields:
            entry[key] = _field(body[key], where(group, key)) if key in body else None
        for key in controls:
            entry[key] = _selector(body[key], where(group, key)) if key in body else None
        spec[group] = entry
    buttons = data["buttons"]
    if not isinstance(buttons, dict):
        raise SelectorMappingError(f"{where('buttons')}: expected a mapping action -> CSS selector")
    for action in buttons:
        if action not in BUTTON_ACTIONS:
            raise SelectorMappingError(
                f"{where('buttons', str(action))}: unknown action; known: {list(BUTTON_ACTIONS)}"
            )
    spec["buttons"] = {a: _selector(s, where("buttons", a)) for a, s in buttons.items()}
    search = data["search"]
    if not isinstance(search, dict) or set(search) != {"input", "submit"}:
        raise SelectorMappingError(
            f"{where('search')}: expected a mapping with exactly `input` and `submit` selectors"
        )
    spec["search"] = {k: _selector(v, where("search", k)) for k, v in search.items()}
    return SelectorMap(str(data.get("name", path.stem)), str(path), spec)


EXTRACT_JS = """
(m) => {
  const read = (root, f) => {
    if (!root || !f) return null;
    const el = f.selector ? root.querySelector(f.selector) : root;
    if (!el) return null;
    let v = f.attribute ? el.getAttribute(f.attribute) : el.textContent;
    if (v === null) return null;
    v = v.trim();
    if (f.pattern) {
      const r = new RegExp(f.pattern).exec(v);
      if (!r) return null;
      v = r.length > 1 ? r[1] : r[0];
    }
    return v;
  };
  const target = (el) => {
    if (el.tagName === 'A') return el.href;
    if (!el.form) return null;
    return el.hasAttribute('formaction') ? el.formAction : el.form.action;
  };
  const control = (root, path, sel) => {
    if (!root || !sel) return null;
    const el = root.querySelector(sel);
    return el ? {path: [...path, [sel, 0]], target: target(el)} : null;
  };
  const group = (g, fields, controls) => Array.from(document.querySelectorAll(g.selector)).map((el, i) => {
    const o = {};
    for (const k of fields) o[k] = read(el, g[k]);
    for (const k of controls) o[k] = control(el, [[g.selector, i]], g[k]);
    return o;
  });
  const lines = Array.from(document.querySelectorAll(m.lines.selector))
    .map((el) => read(el, {...m.lines, selector: null}));
  const pc = document.querySelector(m.product_category.selector);
  const buttons = {};
  for (const [action, sel] of Object.entries(m.buttons)) buttons[action] = control(document, [], sel);
  const input = document.querySelector(m.search.input);
  const submit = control(document, [], m.search.submit);
  return {
    url: location.href,
    kind: read(document, m.page_kind),
    title: read(document, m.title),
    status: read(document, m.status),
    goal: read(document, m.goal),
    event: read(document, m.event),
    lines,
    links: group(m.category_links, ['category_id', 'label'], ['open']),
    rows: group(m.product_rows, ['product_id', 'title', 'category_id', 'price', 'quantity', 'badge'],
                ['open', 'remove']),
    product_category: pc ? {category_id: read(pc, m.product_category.category_id),
                            open: {path: [[m.product_category.selector, 0]], target: target(pc)}} : null,
    buttons,
    search: input && submit ? {input: [[m.search.input, 0]], submit: submit.path, target: submit.target} : null,
    cart: group(m.cart_lines, ['product_id', 'quantity'], []),
    order: group(m.order_items, ['product_id'], []),
  };
}
"""


@dataclass(frozen=True)
class ControlRef:
    """Where a control is (a chain of (CSS selector, nth) steps from the page) and where it leads."""

    path: tuple[tuple[str, int], ...]
    target: str | None


@dataclass(frozen=True)
class PageRead:
    """A page as the browser env sees it."""

    url: str
    view: PageView
    controls: dict[str, ControlRef]
    """Action -> control; the search action maps to the submit button (``search_input`` is the box)."""
    search_input: ControlRef | None
    cart: tuple[tuple[str, int], ...]
    ordered: tuple[str, ...]
    event: str | None


def _ref(raw: dict[str, Any] | None) -> ControlRef | None:
    if raw is None:
        return None
    return ControlRef(tuple((str(s), int(n)) for s, n in raw["path"]), raw.get("target"))


def _required(value: str | None, what: str, url: str) -> str:
    if value is None:
        raise PageReadError(f"{url}: the selector mapping found no {what} on this page; check the mapping")
    return value


def _price(text: str | None, url: str) -> float | None:
    if text is None or text == "n/a":
        return None
    try:
        return float(text)
    except ValueError:
        raise PageReadError(
            f"{url}: price {text!r} is neither a number nor 'n/a'; adjust the price pattern"
        ) from None


def _int(text: str | None) -> int:
    return int(text) if text else 0


def _ordered(kind: str, found: list[str]) -> tuple[str, ...]:
    groups = action_order().get(kind, ())
    rank = {g: i for i, g in enumerate(groups)}
    return tuple(sorted(found, key=lambda a: rank.get(action_group(a), len(groups))))  # stable within a group


def read_page(raw: dict[str, Any]) -> PageRead:
    """Build the page's view and controls from ``EXTRACT_JS``'s result."""
    url = str(raw["url"])
    kind = _required(raw["kind"], "page kind", url)
    controls: dict[str, ControlRef] = {}
    links = []
    for link in raw["links"]:
        cid = _required(link["category_id"], "category id of a category link", url)
        action = sf.OPEN_CATEGORY + cid
        links.append((_required(link["label"], "category link label", url), action))
        if link["open"] is not None:
            controls.setdefault(action, _ref(link["open"]))  # type: ignore[arg-type]
    rows = []
    for row in raw["rows"]:
        pid = _required(row["product_id"], "product id of a product row", url)
        rows.append(
            ProductRow(
                product_id=pid,
                title=_required(row["title"], f"title of product {pid}", url),
                category_id=_required(row["category_id"], f"category of product {pid}", url),
                price=_price(row["price"], url),
                action=sf.OPEN_PRODUCT + pid,
                quantity=_int(row["quantity"]),
                badge=row["badge"] or "",
            )
        )
        for key, prefix in (("open", sf.OPEN_PRODUCT), ("remove", sf.REMOVE_PRODUCT)):
            if row[key] is not None:
                controls.setdefault(prefix + pid, _ref(row[key]))  # type: ignore[arg-type]
    pc = raw["product_category"]
    if pc is not None:
        cid = _required(pc["category_id"], "category id of the product's category link", url)
        controls.setdefault(sf.OPEN_CATEGORY + cid, _ref(pc["open"]))  # type: ignore[arg-type]
    for action, ref in raw["buttons"].items():
        if ref is not None:
            controls[action] = _ref(ref)  # type: ignore[assignment]
    search = raw["search"]
    search_input = None
    if search is not None:
        controls[sf.SEARCH_TEMPLATE] = ControlRef(
            tuple((s, n) for s, n in search["submit"]), search["target"]
        )
        search_input = ControlRef(tuple((s, n) for s, n in search["input"]), search["target"])
    view = PageView(
        kind=kind,
        title=_required(raw["title"], "page title", url),
        status=_required(raw["status"], "status line", url),
        goal=raw["goal"] or None,
        lines=tuple(line for line in raw["lines"] if line is not None),
        links=tuple(links),
        rows=tuple(rows),
        actions=_ordered(kind, list(controls)),
    )
    cart = tuple(
        (_required(c["product_id"], "product id of a cart line", url), _int(c["quantity"]))
        for c in raw["cart"]
    )
    ordered = tuple(_required(o["product_id"], "product id of an ordered item", url) for o in raw["order"])
    return PageRead(url, view, controls, search_input, cart, ordered, raw["event"] or None)
