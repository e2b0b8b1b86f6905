"""Event codes: each distinct value of the event column with its count, named where the word is obvious.

Only names are matched (view/pv/click -> product_view, cart -> add_to_cart, buy/order -> purchase,
fav -> favorite, ...), in plural or past forms too (OTTO's clicks/carts/orders); a numeric code or an
unknown word is left for the user, since a wrong guess would silently mislabel every row of that code.
Google Analytics 4's event names and Segment's e-commerce spec ("Order Completed") are known too, and
their events that are no shopping act of their own (``session_start``, "Coupon Applied", ...) are
proposed for ``drop``, where they are counted.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass

import pyarrow.compute as pc

from learners.data.mapping_draft.column_profile import ColumnProfile
from learners.data.schema import EVENT_TYPES

# Source event names (lower case, runs of non-alphanumerics as "_") -> canonical event type. Besides
# the usual words: GA4's event names, and the e-commerce spec of Segment (and RudderStack, Mixpanel's
# and Amplitude's tracking plans), whose "Order Completed" reads as order_complete.
EVENT_WORDS: dict[str, str] = {
    word: event
    for event, words in {
        "page_view": "page_view pageview page screen_view home landing visit browse view_item_list view_cart"
        " product_list_view cart_view product_list_filter",
        "search": "search searches query find search_query keyword view_search_results product_search",
        "product_view": "view views viewed pv click clicks clicked product_view productview view_item"
        " item_view detail detail_view product_detail view_product",
        "favorite": "fav favs favorite favourite favorited add_to_favorites wish wishlist add_to_wishlist"
        " like liked bookmark save saved collect product_add_to_wishlist",
        "add_to_cart": "cart add add_to_cart addtocart add_cart cart_add addtobasket add_to_basket basket atc"
        " product_add",
        "remove_from_cart": "remove_from_cart removefromcart remove_cart cart_remove remove remove_from_basket"
        " delete_from_cart product_remove",
        "checkout": "checkout check_out begin_checkout start_checkout checkout_start",
        "purchase": "buy bought purchase purchased order ordered order_placed transaction sale pay paid payment"
        " order_complete",
    }.items()
    for word in words.split()
}
assert set(EVENT_WORDS.values()) <= set(EVENT_TYPES)
DROP_WORDS: dict[str, str] = {
    **dict.fromkeys(
        [
            *("session_start", "first_visit", "first_open", "user_engagement", "scroll", "file_download"),
            *("form_start", "form_submit", "video_start", "video_progress", "video_complete", "app_remove"),
            "os_update",
        ],
        "GA4 logs it by itself: no shopping act",
    ),
    **dict.fromkeys(
        ["view_promotion", "select_promotion", "promotion_viewed", "promotion_clicked"],
        "a promotion shown or clicked: no product's page of its own",
    ),
    "select_item": "the click on a listed product: GA4 logs view_item for the page it opens",
    "product_clicked": "the click on a listed product: Product Viewed logs the page it opens",
    **dict.fromkeys(
        [
            *("add_shipping_info", "add_payment_info", "checkout_step_viewed", "checkout_step_completed"),
            "payment_info_entered",
        ],
        "a later step of the checkout that its start logs",
    ),
    **dict.fromkeys(
        ["refund", "order_refunded", "order_cancelled", "order_canceled"],
        "an order refunded or cancelled, after the visit: no purchase",
    ),
    **dict.fromkeys(
        [
            *("coupon_entered", "coupon_applied", "coupon_denied", "coupon_removed", "product_shared"),
            *("cart_shared", "product_reviewed", "product_removed_from_wishlist"),
        ],
        "no shopping act among the canonical types",
    ),
}
"""Event names (GA4's, Segment's e-commerce spec) proposed for ``event_type.drop``, each with why,
by the code's lower-case words joined by "_"."""
INFLECTIONS = ("s", "es", "ed", "d")
"""Endings cut from a word of a code not in ``EVENT_WORDS`` (carts -> cart, added_to_cart -> add_to_cart)."""


@dataclass
class EventCode:
    """One distinct value of the event column and the rows that carry it."""

    code: str
    rows: int
    event: str | None
    """The canonical type the code obviously means, or None (left for the user)."""
    drop: str | None = None
    """Why the code is proposed for ``drop`` (``DROP_WORDS``), where it names no type."""


def code_counts(p: ColumnProfile) -> list[tuple[str, int]]:
    """(code, rows) of each distinct value of a column, most rows first."""
    counts = pc.value_counts(p.texts.drop_null()).to_pylist()
    return sorted(((c["values"], c["counts"]) for c in counts), key=lambda kv: (-kv[1], kv[0]))


def _forms(word: str) -> list[str]:
    """A word as written first (exact names win), then with each ending of ``INFLECTIONS`` cut (stems of
    two letters or more)."""
    cut = [word[: -len(end)] for end in INFLECTIONS if word.endswith(end) and len(word) - len(end) >= 2]
    return [word, *cut]


def _key(code: str) -> str:
    """A code's lower-case words joined by "_" ("Order Completed" -> order_completed)."""
    return re.sub(r"[^a-z0-9]+", "_", code.strip().lower()).strip("_")


def drop_word(code: str) -> str | None:
    """Why an event code is no shopping act of its own (``DROP_WORDS``), or None."""
    return DROP_WORDS.get(_key(code))


def event_word(code: str) -> str | None:
    """The canonical type an event code obviously means (by its name, plural or past forms too), or None."""
    key = _key(code)
    for words in itertools.product(*map(_forms, key.split("_"))):
        event = EVENT_WORDS.get("_".join(words))
        if event is not None:
            return event
    return None
