"""Which column feeds each canonical field: by name first, then by content for what names do not tell.

By name: ``seller_id`` -> merchant_id, ``user_id`` -> buyer_id, ... By content: the event column by
its few distinct values, the buyer by how often consecutive rows repeat it (logs grouped by buyer),
the product by the most distinct values, the category by fewer, the price by decimal numbers. A log
with no user column makes each session a buyer. Each field guessed from content, or from no column
at all, gets a note, so the YAML says which lines to check.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from learners.data.mapping_draft.column_profile import FIT_SHARE, TIME_WORDS, ColumnProfile
from learners.data.mapping_draft.event_codes import code_counts, event_word
from learners.data.mapping_draft.timestamps import UNIX_S_RANGE

# Canonical field (or "event") -> words of a source column name that name it. Checked in this order;
# a column goes to the first role it fits.
ROLE_WORDS: dict[str, frozenset[str]] = {
    "session_id": frozenset(
        {"session", "sessionid", "sid", "invoice", "invoiceno", "invoiceid", "basket", "basketid", "orderid"}
    ),
    "merchant_id": frozenset(
        {"seller", "sellerid", "merchant", "merchantid", "shop", "shopid", "store", "storeid", "vendor"}
        | {"vendorid", "retailer", "storefront"}
    ),
    "buyer_id": frozenset(
        {"user", "userid", "uid", "customer", "customerid", "buyer", "buyerid", "client", "clientid"}
        | {"visitor", "visitorid", "member", "memberid", "shopper", "account", "accountid", "email"}
        | {"mail", "distinct", "distinctid", "household", "householdkey", "visid"}
    ),
    "product_id": frozenset(
        {"item", "itemid", "product", "productid", "sku", "skuid", "goods", "article", "asin", "offer", "aid"}
        | {"stockcode"}
    ),
    "category_id": frozenset({"category", "categoryid", "cat", "catid", "categ"}),
    "event": frozenset(
        {"event", "eventtype", "action", "actiontype", "type", "behavior", "behaviour", "behaviortype"}
        | {"kind", "activity", "interaction", "act"}
    ),
    "price": frozenset({"price", "amount", "cost", "revenue"}),
    "query": frozenset({"query", "keyword", "keywords", "term", "searchterm", "q"}),
}
BRAND_WORDS = frozenset({"brand", "brandid"})
PRODUCT_ID_WORDS = frozenset({"sku", "skuid", "item", "itemid", "article", "articleid", "aid", "asin"})
"""Words naming a product's own id: such a name outranks one that only says product (Coveo's
product_sku_hash over product_action)."""
ADDRESS_WORDS = frozenset({"url", "uri", "link", "href", "referrer", "referer"})
"""Words naming a page address: such a column is no id of a buyer, product or category, however
often consecutive rows repeat it (Coveo's hashed_url)."""
AMOUNT_WORDS = frozenset({"quantity", "qty", "amount", "count", "total", "sum", "units"})
"""Words naming an amount: such a column of few integers is no category (UCI's Quantity)."""
CONTENT_NOTE = "guessed from the values (the column name does not say): check"
QUERY_TEXT_SHARE = 0.5
"""A query column has text (a letter outside numbers) in at least this share of its values: not
numbers, nor lists of them (Coveo's query_vector)."""
CATEGORY_SHARE = 0.5
"""A category guessed from content has at most this share of the product column's distinct values: a
category groups several products, while Diginetica's timeframe (a time offset) and ordernumber take
one value per order."""


PLACE_WORDS = frozenset(
    {"zip", "zipcode", "postal", "postcode", "province", "city", "country", "state", "region", "address"}
    | {"street", "phone", "billing", "shipping", "geo", "location", "latitude", "longitude"}
)
"""Words naming a place or an address: never a product or category guessed from the values."""
STATUS_WORDS = frozenset({"status", "state", "source", "channel", "method", "medium", "gateway"})
"""Words naming an order's or a visit's status or channel: never a product or category guessed from
the values."""
MIN_BUYERS_GUESSED = 20
"""A buyer column guessed from content has at least this many values (or a tenth of the rows)."""
MIN_CATEGORIES = 3
"""A category guessed from content has at least this many values: H&M's sales_channel_id (1 or 2) is
no category of 3,499 products."""


ID_WORDS = frozenset({"id", "no", "key"})
EVENT_ID_WORDS = frozenset(
    {"insert", "insertid", "uuid", "guid", "messageid", "eventid", "requestid", "fingerprint"}
    | {"ip", "ipaddress", "useragent", "agent"}
)
"""Words naming one event's own id (unique per row) or a network address: never a buyer, product or
category (Snowplow's event_fingerprint and user_ipaddress, which many browsers share)."""
COUNTER_WORDS = frozenset(
    {"step", "position", "pos", "rank", "index", "idx", "seq", "sequence", "line", "num"}
)
"""Words naming a counter (1, 2, 3 ... within a visit or an order): never an id, however many distinct
values it has (Trivago's step)."""


def _id_like(p: ColumnProfile, spaces: bool = False) -> bool:
    """Values that may be ids: no decimals, spaces (unless ``spaces``), lists or times, not a page
    address, an amount, a column named as a time (GA4's user_first_touch_timestamp) nor one event's
    own id (Amplitude's $insert_id)."""
    return (
        p.non_null > 0
        and not p.tokens & EVENT_ID_WORDS
        and not p.decimals
        and (spaces or not p.spaces)
        and not p.lists
        and not pa.types.is_timestamp(p.native)
        and not p.tokens & ADDRESS_WORDS
        and not p.tokens & AMOUNT_WORDS
        and not p.tokens & COUNTER_WORDS
        and not p.tokens & TIME_WORDS
    )


def _reads_as_times(p: ColumnProfile) -> bool:
    """Integers in the range of unix seconds or milliseconds of 2000-2100: times, no product or
    category (Adobe's post_cust_hit_time_gmt)."""
    if p.ints < FIT_SHARE:
        return False
    texts = p.texts.drop_null()
    numbers = pc.cast(texts.filter(pc.match_substring_regex(texts, r"^[0-9]{10}$|^[0-9]{13}$")), pa.int64())
    seconds = pc.if_else(pc.greater(numbers, 10**11), pc.divide(numbers, 1000), numbers)
    inside = pc.and_(pc.greater_equal(seconds, UNIX_S_RANGE[0]), pc.less(seconds, UNIX_S_RANGE[1]))
    return (pc.sum(inside.cast(pa.int64())).as_py() or 0) >= FIT_SHARE * p.non_null


def _counts_up(p: ColumnProfile) -> bool:
    """Values that are the integers 0 or 1 up to some n, each of them: a counter within an order
    (Olist's order_item_id) or of a buyer's orders (Instacart's order_number), no product or category."""
    if p.ints < 1.0 or not 2 <= p.distinct <= 10_000:
        return False
    values = sorted(int(v) for v in pc.unique(p.texts.drop_null()).to_pylist())
    return values[0] in (0, 1) and values[-1] - values[0] == len(values) - 1


def _says_other(p: ColumnProfile) -> bool:
    """A name that says the column is something a product or category guessed from values is not: a
    place (Shopify's Billing Zip), a status or channel (WooCommerce's Status, H&M's sales channel), a
    device or browser, a buyer or a visit, or an analytics tool's own property (Mixpanel's $device_id,
    $brand)."""
    other = PLACE_WORDS | STATUS_WORDS | DEVICE_ID_WORDS | {"device", "browser", "os"}
    other |= (
        ROLE_WORDS["buyer_id"] | ROLE_WORDS["session_id"]
    )  # Adobe's post_visid_low, Snowplow's domain_userid
    return bool(p.tokens & other) or "$" in p.name


def _event_ok(p: ColumnProfile, max_codes: int) -> bool:
    return 0 < p.distinct <= max_codes and p.distinct < max(2, 0.5 * p.non_null)


def _name_score(p: ColumnProfile, role: str) -> int:
    """3: the name says this role and nothing else (``product_id``, ``userId``); 2: it says the role
    with an id word among others (``order_item_id``); 1: it says the role; 0: it does not."""
    if not p.tokens & ROLE_WORDS[role]:
        return 0
    squashed = max(p.tokens, key=len)
    words = p.tokens - {squashed} if len(p.tokens) > 1 else p.tokens
    if words <= ROLE_WORDS[role] | ID_WORDS or squashed in ROLE_WORDS[role]:
        return 3
    return 2 if p.tokens & ID_WORDS else 1


def _event_words(p: ColumnProfile, max_codes: int) -> int:
    """How many distinct values of a column of at most ``max_codes`` the event vocabulary knows."""
    if not 0 < p.distinct <= max_codes:
        return 0
    return sum(event_word(c) is not None for c, _ in code_counts(p))


DEVICE_ID_WORDS = frozenset(
    {"anonymous", "anonymousid", "pseudo", "cookie", "cookieid", "deviceid", "clientid"}
)
"""Words naming the id of a browser or device, the buyer of a log whose user id is mostly empty."""
EMPTY_NOTED = 0.05
"""A buyer column empty in this share of sampled rows gets a note."""
ANONYMOUS_SHARE = 0.5
"""A buyer column empty in this share of sampled rows gives way to the session column."""


def assign_roles(
    profiles: dict[str, ColumnProfile], taken: set[str], max_codes: int
) -> tuple[dict[str, str | None], dict[str, str]]:
    """Canonical field (and "event") -> column, and a note per field guessed from content."""
    roles: dict[str, str | None] = dict.fromkeys(ROLE_WORDS)
    notes: dict[str, str] = {}
    order = {name: i for i, name in enumerate(profiles)}
    worded = {name: _event_words(p, max_codes) for name, p in profiles.items()}
    # A handful of values the event vocabulary mostly knows are event codes, never ids (Coveo's
    # product_action: detail, add, remove, purchase, click).
    codes = {name for name, p in profiles.items() if worded[name] and 2 * worded[name] >= p.distinct}

    def free() -> list[ColumnProfile]:
        return [p for n, p in profiles.items() if n not in taken]

    def fits(p: ColumnProfile, role: str) -> bool:
        if role == "event":  # named so: few distinct values suffice, unless it is an id (event_id)
            return 0 < p.distinct <= max_codes and not p.tokens & ID_WORDS
        if role == "price":
            return p.numbers >= FIT_SHARE
        if role == "query":
            return p.letters >= QUERY_TEXT_SHARE
        if role == "category_id":  # names of categories have spaces ("Home/Apparel/Men's / Unisex/")
            return _id_like(p, spaces=True) and p.name not in codes
        if role == "merchant_id" and "event" in p.tokens:  # Snowplow's event_vendor: a schema's
            return False
        # One value in every sampled row is no buyer, product or visit (GA4's user_ltv.currency).
        return _id_like(p) and p.name not in codes and (p.distinct > 1 or role == "merchant_id")

    for role in ROLE_WORDS:
        candidates = [p for p in free() if _name_score(p, role) and fits(p, role)]
        if role == "buyer_id":  # "user_session" is a session; the buyer is the user column
            candidates = [p for p in candidates if not p.tokens & ROLE_WORDS["session_id"]]
        if candidates:
            chosen = max(
                candidates,
                key=lambda p: (
                    # Of two event-named columns, the one whose codes read best as events (Coveo's
                    # product_action: detail, add, purchase) over one of page kinds (event_type).
                    worded[p.name] / p.distinct if role == "event" else 0,
                    _name_score(p, role),
                    role == "product_id" and bool(p.tokens & PRODUCT_ID_WORDS),
                    # A product's category over a device's (GA4's item_category, device.category),
                    # a search's term over a campaign's (search_term, term).
                    role == "category_id" and bool(p.tokens & ROLE_WORDS["product_id"]),
                    len(p.tokens & ROLE_WORDS["query"]) if role == "query" else 0,
                    # A session named so over an order or basket (Diginetica's sessionId, ordernumber).
                    role == "session_id" and bool(p.tokens & {"session", "sessionid"}),
                    # An event named so over a type (Adobe's post_event_list over connection_type).
                    role == "event" and "event" in p.tokens,
                    p.non_null,
                    # Of two buyer ids the finer (Adobe's post_visid_low over post_visid_high).
                    p.distinct if role == "buyer_id" else 0,
                    -order[p.name],
                ),
            )
            roles[role] = chosen.name
            taken.add(chosen.name)
    if roles["merchant_id"] is None and roles["product_id"] is None:
        # Mixpanel's $brand is the phone's: no storefront.
        brands = [p for p in free() if p.tokens & BRAND_WORDS and _id_like(p) and "$" not in p.name]
        if brands:
            roles["merchant_id"] = brands[0].name
            taken.add(brands[0].name)
            notes["merchant_id"] = (
                "no product column: the brand plays the storefront (a buyer is a user at a brand)"
            )

    # What the names did not tell, from the values.
    if roles["event"] is None:
        # Few distinct values alone do not make event codes (YOOCHOOSE's category, Diginetica's
        # timeframe): some of them must read as an event (view, cart, buy, ...).
        options = [
            p
            for p in free()
            if _event_ok(p, max_codes) and p.distinct <= 0.05 * p.non_null and worded[p.name] > 0
        ]
        if options:
            chosen = max(
                options, key=lambda p: (worded[p.name], p.ints < FIT_SHARE, -p.distinct, -order[p.name])
            )
            roles["event"] = chosen.name
            taken.add(chosen.name)
            notes["event"] = CONTENT_NOTE + "; the column with few distinct values"
    ids = [
        p
        for p in free()
        if _id_like(p)
        and p.name not in codes
        and p.distinct > 1
        and not _says_other(p)
        and not _counts_up(p)
        and not _reads_as_times(p)
    ]
    session = profiles[roles["session_id"]] if roles["session_id"] is not None else None
    # A buyer has one session or more: a column with more distinct values than the sessions is no
    # buyer, however often rows repeat it (OTTO's aid, clicked then carted).
    buyers = [p for p in ids if session is None or p.distinct <= session.distinct]
    if roles["buyer_id"] is None and buyers:
        # A handful of values is a status, not buyers (Shopify's Lineitem fulfillment status).
        buyers = [p for p in buyers if p.distinct >= min(MIN_BUYERS_GUESSED, 0.1 * p.non_null)]
        chosen = max(buyers, key=lambda p: (p.run_share, -order[p.name]), default=None)
        if chosen is not None and chosen.run_share >= 0.2:
            roles["buyer_id"] = chosen.name
            taken.add(chosen.name)
            ids.remove(chosen)
            notes["buyer_id"] = (
                CONTENT_NOTE + f"; {chosen.run_share:.0%} of rows repeat the previous row's value"
                " (logs grouped by buyer)"
            )
    if roles["buyer_id"] is None and session is not None:
        roles["buyer_id"] = session.name
        notes["buyer_id"] = (
            "no user column found: each session is a buyer (as for anonymous visits); name the user"
            " column instead if the log has one"
        )
    if roles["product_id"] is None and ids:
        chosen = max(ids, key=lambda p: (p.distinct, -order[p.name]))
        roles["product_id"] = chosen.name
        taken.add(chosen.name)
        ids.remove(chosen)
        notes["product_id"] = CONTENT_NOTE + f"; the most distinct values ({chosen.distinct:,})"
    if roles["category_id"] is None and roles["product_id"] is not None and ids:
        product = profiles[roles["product_id"]]
        fewer = [p for p in ids if MIN_CATEGORIES <= p.distinct <= CATEGORY_SHARE * product.distinct]
        if fewer:
            chosen = max(fewer, key=lambda p: (p.distinct, -order[p.name]))
            roles["category_id"] = chosen.name
            taken.add(chosen.name)
            notes["category_id"] = (
                CONTENT_NOTE + f"; fewer distinct values ({chosen.distinct:,}) than the products"
                f" ({product.distinct:,})"
            )
    if roles["price"] is None:
        prices = [p for p in free() if p.decimals and p.numbers >= FIT_SHARE and not _says_other(p)]
        if prices:
            roles["price"] = prices[0].name
            taken.add(prices[0].name)
            notes["price"] = CONTENT_NOTE + "; decimal numbers"
    _anonymous_buyers(profiles, roles, notes, taken)
    return roles, notes


def _anonymous_buyers(
    profiles: dict[str, ColumnProfile], roles: dict[str, str | None], notes: dict[str, str], taken: set[str]
) -> None:
    """A buyer column empty in many rows (anonymous visits, as in Diginetica's userId) would get those
    rows quarantined: a full column of the browser's id (Segment's anonymousId, Amplitude's device_id)
    plays the buyer instead; else, past ``ANONYMOUS_SHARE``, the session column; below it a note says
    so. Missing-value tokens (``NA``, ``null``, ...) count as empty."""
    buyer, session = roles["buyer_id"], roles["session_id"]
    if buyer is None or buyer == session:
        return
    p = profiles[buyer]
    empty = 1.0 - p.non_null / max(len(p.texts), 1)
    if empty < EMPTY_NOTED:
        return
    blank = "empty" + "".join(f" or {token}" for token in p.missing_seen)
    browsers = [
        q
        for q in profiles.values()
        if q.name not in taken
        and q.tokens & DEVICE_ID_WORDS
        and _id_like(q)
        and q.distinct > 1
        and q.non_null >= (1.0 - EMPTY_NOTED) * len(q.texts)
    ]
    if browsers:  # every visit kept, signed in or not
        roles["buyer_id"] = browsers[0].name
        taken.add(browsers[0].name)
        taken.discard(buyer)
        notes["buyer_id"] = (
            f"{buyer!r} is {blank} in {empty:.0%} of sampled rows (signed-out visits): the browser's id"
            f" plays the buyer; write buyer_id: {buyer} to keep only signed-in users"
        )
        return
    if session is not None and empty >= ANONYMOUS_SHARE:
        roles["buyer_id"] = session
        notes["buyer_id"] = (
            f"{buyer!r} is {blank} in {empty:.0%} of sampled rows (anonymous visits): each session is a"
            f" buyer; write buyer_id: {buyer} to keep only the known users"
        )
        return
    fix = f"; for anonymous visits write buyer_id: {session}" if session is not None else ""
    notes["buyer_id"] = f"{blank} in {empty:.0%} of sampled rows: those rows would be quarantined{fix}"
