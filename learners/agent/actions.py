"""Action texts and pages as the agent reads them: action kinds, product ids, page kinds, and the
valid actions a rendered page lists.

Kinds follow the canonical events the storefront emits for each action (envs/storefront.py):
``open product P`` -> product_view, ``add to cart`` -> add_to_cart, ``buy now`` and ``checkout`` ->
checkout, ``place order`` -> purchase, navigation -> page_view, ``exit`` -> exit. Offline metrics,
the Markov baseline and the simulation's rollouts therefore count the same things.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from envs.storefront import SEARCH_TEMPLATE, normalize_action, search_query
from learners.data.schema import EVENT_TYPES

EXIT = "exit"
OTHER = "other"
ACTION_KINDS: tuple[str, ...] = (*EVENT_TYPES, EXIT, OTHER)
"""Every kind ``action_kind`` can return, in a fixed order (metrics index by position)."""

SEARCH_PREFIX = SEARCH_TEMPLATE.split('"')[0] + '"'
"""What every search action starts with; the page lists SEARCH_TEMPLATE and the policy fills the query."""

_EXACT = {
    "add to cart": "add_to_cart",
    "buy now": "checkout",
    "favorite": "favorite",
    "remove from cart": "remove_from_cart",
    "checkout": "checkout",
    "place order": "purchase",
    "next page": "page_view",
    "previous page": "page_view",
    "home": "page_view",
    "go to cart": "page_view",
    "back": "page_view",
    "exit": EXIT,
}
_PREFIX = (
    ("open product ", "product_view"),
    ("remove product ", "remove_from_cart"),
    ("open category ", "page_view"),
    (SEARCH_PREFIX, "search"),
)
_PRODUCT = re.compile(r"^(?:open|remove) product (\S+)$")


def action_kind(action: str) -> str:
    """The kind of an action text; unknown texts are ``other`` (never an error)."""
    text = " ".join(action.split())
    if text in _EXACT:
        return _EXACT[text]
    for prefix, kind in _PREFIX:
        if text.startswith(prefix):
            return kind
    return OTHER


def action_template(action: str) -> str:
    """An action without its argument: the text of a fixed action (``go to cart``), the verb of one
    that names a product, category or query (``open product``, ``search``); unknown texts are
    ``other``. Finer than the kind: navigation is one kind but many templates."""
    text = " ".join(action.split())
    if text in _EXACT:
        return text
    for prefix, _ in _PREFIX:
        if text.startswith(prefix):
            return prefix.rstrip(' "')
    return OTHER


def action_product(action: str) -> str | None:
    """The product id an action names (``open product 12`` -> ``"12"``), else None."""
    match = _PRODUCT.match(" ".join(action.split()))
    return match.group(1) if match else None


def page_kind(observation: str) -> str:
    """The page kind of a rendered observation (envs/render.py): home, category, search, product,
    cart, checkout, confirmation, or ``other`` for text in another format."""
    lines = observation.split("\n", 8)
    if any(line.startswith("Product id: ") for line in lines[1:8]):
        return "product"
    title = lines[0].strip().removeprefix("== ").removesuffix(" ==")
    for prefix, kind in (
        ("Home", "home"),
        ("Category ", "category"),
        ("Search results for ", "search"),
        ("Cart", "cart"),
        ("Checkout", "checkout"),
        ("Order placed", "confirmation"),
    ):
        if title.startswith(prefix):
            return kind
    return OTHER


def listed_actions(observation: str) -> tuple[str, ...]:
    """The actions a rendered page lists after its ``Actions:`` line (empty when it has none)."""
    head, sep, tail = observation.rpartition("\nActions:\n")
    if not sep:
        return ()
    return tuple(line for line in tail.split("\n") if line.strip())


def is_offered(action: str, valid_actions: Sequence[str]) -> bool:
    """Whether an action text is one the page offers (exact after whitespace normalisation; a
    ``search "q"`` with a non-empty, quote-free query matches the page's search template)."""
    action = normalize_action(action)
    if action == SEARCH_TEMPLATE:
        return False
    return action in valid_actions or (SEARCH_TEMPLATE in valid_actions and search_query(action) is not None)
