"""The data contracts every stage reads and writes (Arrow schemas, canonical event vocabulary).

A *buyer* is one user at one merchant: the pair ``(merchant_id, buyer_id)`` where ``buyer_id`` is the
source's user id. All ids are strings, so any source's ids (ints, UUIDs, emails) fit one schema.
"""

from __future__ import annotations

import pyarrow as pa

# The canonical event vocabulary, in funnel order, with what each type means: the one source of the
# vocabulary text shown in `simpersona prepare --help`, the README and examples/mappings/*.yaml.
EVENT_MEANINGS: dict[str, str] = {
    "page_view": "a page that shows no single product (home, category listing, landing or content page)",
    "search": "a search submitted in the store (the text, if logged, goes to the query field)",
    "product_view": "a product's page seen, or a click on a product (the usual 'view', 'pv', 'click')",
    "favorite": "a product saved for later: wish list, favourites, like, bookmark",
    "add_to_cart": "a product put into the cart or basket",
    "remove_from_cart": "a product taken out of the cart or basket",
    "checkout": "checkout started: the step between the cart and a placed order",
    "purchase": "an order placed or paid (one row per product bought: buy, order, sale)",
}
# Sequence codes are the positions in this tuple.
EVENT_TYPES: tuple[str, ...] = tuple(EVENT_MEANINGS)
PRODUCT_EVENT_TYPES: tuple[str, ...] = (
    "product_view",
    "favorite",
    "add_to_cart",
    "remove_from_cart",
    "purchase",
)
"""The event types about one product: a log that names products must say which."""
EVENT_CODE: dict[str, int] = {name: i for i, name in enumerate(EVENT_TYPES)}


def event_vocabulary_lines(prefix: str = "") -> list[str]:
    """The canonical event types, one per line as ``NAME  meaning`` (aligned), each after ``prefix``."""
    width = max(len(name) for name in EVENT_MEANINGS)
    return [f"{prefix}{name:<{width}}  {meaning}" for name, meaning in EVENT_MEANINGS.items()]


# Funnel depth reached by an event; a buyer's or session's depth is the maximum over its events.
FUNNEL_DEPTH: dict[str, int] = {
    "page_view": 0,
    "search": 0,
    "product_view": 1,
    "favorite": 2,
    "add_to_cart": 3,
    "remove_from_cart": 3,
    "checkout": 4,
    "purchase": 5,
}
FUNNEL_STAGES: tuple[str, ...] = ("visit", "product_view", "favorite", "cart", "checkout", "purchase")

# A new session starts after this much inactivity when the source has no session ids.
SESSION_GAP_SECONDS = 30 * 60

TS_TYPE = pa.timestamp("ms", tz="UTC")

EVENTS = pa.schema(
    [
        pa.field("merchant_id", pa.string(), nullable=False),
        pa.field("buyer_id", pa.string(), nullable=False),
        pa.field("session_id", pa.string(), nullable=False),
        pa.field("ts", TS_TYPE, nullable=False),
        # Position of the event in its buyer's ordered history (0..n-1); the order within equal
        # timestamps (day-resolution sources) is documented in learners/data/sessions.py.
        pa.field("seq", pa.int32(), nullable=False),
        pa.field("event_type", pa.string(), nullable=False),
        pa.field("product_id", pa.string()),
        pa.field("category_id", pa.string()),
        pa.field("price", pa.float64()),
        pa.field("query", pa.string()),
    ]
)

# What adapters emit, before ordering and sessionization (learners/data/sessions.py adds `seq`
# and fills `session_id`). `src_order` = (file index << 40) | line: a stable tie-break.
CANONICAL_EVENTS = pa.schema(
    [
        pa.field("merchant_id", pa.string(), nullable=False),
        pa.field("buyer_id", pa.string(), nullable=False),
        pa.field("session_id", pa.string()),  # the source's own session id, or null
        pa.field("ts", TS_TYPE, nullable=False),
        pa.field("event_type", pa.string(), nullable=False),
        pa.field("product_id", pa.string()),
        pa.field("category_id", pa.string()),
        pa.field("price", pa.float64()),
        pa.field("query", pa.string()),
        pa.field("src_order", pa.int64(), nullable=False),
    ]
)

QUARANTINE = pa.schema(
    [
        pa.field("file", pa.string(), nullable=False),
        pa.field("line", pa.int64(), nullable=False),  # 1-based physical line (CSV/JSONL) or row (Parquet)
        pa.field("column", pa.string()),  # the offending column, when one is to blame
        pa.field("reason", pa.string(), nullable=False),
        pa.field("raw", pa.string()),  # the row as read, for the user to fix and re-run
    ]
)

SESSIONS = pa.schema(
    [
        pa.field("merchant_id", pa.string(), nullable=False),
        pa.field("buyer_id", pa.string(), nullable=False),
        pa.field("session_id", pa.string(), nullable=False),
        pa.field("start", TS_TYPE, nullable=False),
        pa.field("end", TS_TYPE, nullable=False),
        pa.field("n_events", pa.int32(), nullable=False),
        pa.field("n_product_views", pa.int32(), nullable=False),
        pa.field("n_carts", pa.int32(), nullable=False),
        pa.field("n_purchases", pa.int32(), nullable=False),
        pa.field("converted", pa.bool_(), nullable=False),
        pa.field("depth", pa.int8(), nullable=False),
    ]
)

# Fixed-length behaviour features of a buyer, in this order (the VQ-VAE and the k-means baseline
# read them as one float32 vector). Counts are log1p-scaled; shares are in [0, 1].
FEATURE_NAMES: tuple[str, ...] = (
    *(f"log_n_{t}" for t in EVENT_TYPES),
    *(f"share_{t}" for t in EVENT_TYPES),
    "log_n_events",
    "log_n_sessions",
    "log_events_per_session",
    "log_n_products",
    "log_n_categories",
    "log_active_days",
    "log_mean_gap_s",  # mean inter-event gap within sessions (0 for day-resolution sources)
    "log_span_days",  # first to last event
    "repeat_view_share",  # product views of an already-viewed product / product views
    "cart_per_view",
    "purchase_per_view",
    "purchase_per_cart",
    "log_mean_price",  # 0 where the source has no prices
    "price_index",  # mean log(price / its category's reference price) over priced product events, else 0
    "markdown_share",  # share of priced product events at a markdown of the product's regular price
    "depth_frac",  # funnel depth / 5
)
N_FEATURES = len(FEATURE_NAMES)

FEATURE_ASPECTS: dict[str, tuple[str, ...]] = {
    "event counts": tuple(f"log_n_{t}" for t in EVENT_TYPES),
    "event shares": tuple(f"share_{t}" for t in EVENT_TYPES),
    "volume": (
        *("log_n_events", "log_n_sessions", "log_events_per_session", "log_n_products"),
        *("log_n_categories", "log_active_days", "log_span_days"),
    ),
    "pace": ("log_mean_gap_s",),
    "funnel": ("repeat_view_share", "cart_per_view", "purchase_per_view", "purchase_per_cart", "depth_frac"),
    "prices": ("log_mean_price", "price_index", "markdown_share"),
}
"""The aspects of behaviour the features describe, each by one or more columns. With
``--balance-aspects`` the VQ-VAE weighs every aspect alike (``FeatureStats``), so the sixteen columns of
event counts and shares do not outvote the single column of pace or the three of prices."""

BUYERS = pa.schema(
    [
        pa.field("merchant_id", pa.string(), nullable=False),
        pa.field("buyer_id", pa.string(), nullable=False),
        pa.field("n_events", pa.int32(), nullable=False),
        pa.field("n_sessions", pa.int32(), nullable=False),
        pa.field("first_ts", TS_TYPE, nullable=False),
        pa.field("last_ts", TS_TYPE, nullable=False),
        pa.field("features", pa.list_(pa.float32(), N_FEATURES), nullable=False),
        # The most recent events (at most PrepareConfig.max_seq_len), oldest first: EVENT_CODE values
        # and log1p(seconds since the previous event; 0 for the first and within a day-only stamp).
        pa.field("event_seq", pa.list_(pa.int8()), nullable=False),
        pa.field("gap_seq", pa.list_(pa.float32()), nullable=False),
        pa.field("n_purchases", pa.int32(), nullable=False),
        pa.field("converted", pa.bool_(), nullable=False),
        pa.field("depth", pa.int8(), nullable=False),
    ]
)

CATALOGS = pa.schema(
    [
        pa.field("merchant_id", pa.string(), nullable=False),
        pa.field("product_id", pa.string(), nullable=False),
        pa.field("category_id", pa.string()),
        pa.field("price", pa.float64()),  # regular price (catalogs.py); null when the source has none
        pa.field("n_views", pa.int32(), nullable=False),
        pa.field("n_carts", pa.int32(), nullable=False),
        pa.field("n_purchases", pa.int32(), nullable=False),
        pa.field("popularity", pa.float64(), nullable=False),  # share of the merchant's product events
    ]
)

MERCHANTS = pa.schema(
    [
        pa.field("merchant_id", pa.string(), nullable=False),
        pa.field("buyers", pa.int64(), nullable=False),
        pa.field("sessions", pa.int64(), nullable=False),
        pa.field("events", pa.int64(), nullable=False),
        pa.field("products", pa.int64(), nullable=False),
        pa.field("conversion_rate", pa.float64(), nullable=False),  # share of buyers with a purchase
        # Share of buyers who reached each funnel stage (FUNNEL_STAGES[1:]).
        *(pa.field(f"rate_{s}", pa.float64(), nullable=False) for s in FUNNEL_STAGES[1:]),
    ]
)

# File names inside a prepared directory (`simpersona prepare --out DIR`).
TABLE_FILES: dict[str, str] = {
    "events": "events.parquet",
    "quarantine": "quarantine.parquet",
    "sessions": "sessions.parquet",
    "buyers": "buyers.parquet",
    "catalogs": "catalogs.parquet",
    "merchants": "merchants.parquet",
}
MANIFEST_FILE = "manifest.json"
