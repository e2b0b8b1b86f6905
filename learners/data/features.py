"""Buyer table (``schema.BUYERS``): fixed behaviour features, recent event sequences, outcomes.

Computed per buyer over the whole ordered history (sessions.py). Definitions of the feature vector
(``schema.FEATURE_NAMES``, float32), with ``log`` meaning ``log1p``:

* ``log_n_<type>`` / ``share_<type>``: count of each canonical event type, and count / n_events.
* ``log_n_events``, ``log_n_sessions``, ``log_events_per_session`` (n_events / n_sessions).
* ``log_n_products``, ``log_n_categories``: distinct non-null ids.
* ``log_active_days``: distinct UTC dates with an event. ``log_span_days``: (last ts - first ts) in
  days.
* ``log_mean_gap_s``: mean gap in seconds between consecutive events of the same session (0 when no
  session has two events; 0 for day-resolution sources, whose stamps within a day are equal).
* ``repeat_view_share``: product views of a product the buyer had already viewed / product views.
* ``cart_per_view``, ``purchase_per_view``, ``purchase_per_cart``: ``min(1, a / max(b, 1))`` with a,
  b the event counts (add_to_cart, product_view, purchase); clipped so every ratio is in [0, 1]
  (Tmall logs many purchases with no cart event).
* ``log_mean_price``: mean of the non-null prices of the buyer's events (0 without prices).
* ``price_index``: mean over the buyer's priced product events (a product and category id, price
  > 0) of ``log(price) - reference``, the reference being the mean log price of that (merchant,
  category)'s priced product events over the whole log (``reference_prices``): below 0 for buyers
  who pick what is cheap in its category (0 for a buyer without priced product events).
* ``markdown_share``: share of the buyer's product events with a price > 0 that logged at most
  ``envs.render.MARKDOWN_SHARE`` of the product's regular price (the catalogue's rule,
  ``catalogs.regular_prices``, over the whole log): the markdowns a product page shows as
  ``(was ...)``. High for buyers who seek sales (0 without priced product events).
* ``depth_frac``: funnel depth (max ``schema.FUNNEL_DEPTH`` over events) / 5.

``event_seq`` / ``gap_seq`` hold the most recent ``max_seq_len`` events, oldest first: the
``EVENT_CODE`` and ``log1p(seconds since the previous event in the history)`` (0 for the buyer's
first event and between events of one day-only stamp). Outcomes: ``n_purchases``, ``converted``
(at least one purchase) and ``depth``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl
import pyarrow as pa

from envs.render import MARKDOWN_SHARE
from learners.data import schema
from learners.data.catalogs import CATALOG_KEYS, regular_prices
from learners.data.sessions import BUYER_KEY, SESSION_RUN

_MS_PER_DAY = 86_400_000
REFERENCE_KEYS = ("merchant_id", "category_id")
_LOG_PRICE_SCALE = 1_000_000
"""Log prices are summed as integer micro-units, so the reference is exact whatever the chunking."""
_PRICED = pl.col("product_id").is_not_null() & pl.col("category_id").is_not_null() & (pl.col("price") > 0)
"""A priced product event: what ``price_index`` and its reference prices are made of."""
_NO_EVENTS = pl.DataFrame(
    schema={"merchant_id": pl.String, "product_id": pl.String, "category_id": pl.String, "price": pl.Float64}
)
_MAX_DEPTH = max(schema.FUNNEL_DEPTH.values())
_N_CODES = len(schema.EVENT_TYPES)


def _type_counts(frame: pl.DataFrame, n_buyers: int) -> pl.DataFrame:
    """``n_<type>`` per buyer, in ``_buyer`` order: one bincount of (buyer, code) instead of a
    group-by sum per type."""
    keys = frame[BUYER_KEY].to_numpy() * _N_CODES + frame["_code"].to_numpy()
    counts = np.bincount(keys, minlength=n_buyers * _N_CODES).reshape(n_buyers, _N_CODES)
    return pl.DataFrame({f"n_{t}": counts[:, schema.EVENT_CODE[t]] for t in schema.EVENT_TYPES})


def _ratio(a: str, b: str) -> pl.Expr:
    return pl.min_horizontal(pl.col(a) / pl.max_horizontal(pl.col(b), 1), 1.0)


def price_partial(events: pa.Table | pl.DataFrame) -> pl.DataFrame:
    """Event counts (``n_events``) per (merchant, product, category, price) of the events that name a
    product and a price: what both price references are made of (``reference_prices``). Partials of
    any chunking merge by summing (``merge_price_partials``)."""
    columns = list(CATALOG_KEYS)
    frame = (
        events.select(columns) if isinstance(events, pl.DataFrame) else pl.from_arrow(events.select(columns))
    )
    assert isinstance(frame, pl.DataFrame)
    return (
        frame.filter(pl.col("product_id").is_not_null() & pl.col("price").is_not_null())
        .group_by(columns)
        .agg(pl.len().cast(pl.Int64).alias("n_events"))
    )


def merge_price_partials(partials: list[pl.DataFrame]) -> pl.DataFrame:
    """One ``price_partial`` summing ``partials`` (at least one)."""
    return pl.concat(partials, how="vertical").group_by(list(CATALOG_KEYS)).agg(pl.col("n_events").sum())


@dataclass(frozen=True)
class PriceReferences:
    """The whole log's prices that a buyer's are compared with (``reference_prices``)."""

    category: pl.DataFrame
    """``merchant_id, category_id, reference``: the mean log price of the category's priced product
    events (category id, price > 0), for ``price_index``."""
    regular: pl.DataFrame
    """``merchant_id, product_id, regular``: each product's regular price, for ``markdown_share``."""


def reference_prices(partials: list[pl.DataFrame]) -> PriceReferences:
    """Both price references from ``price_partial``s: the same whatever the chunking (log prices are
    summed as integer micro-units)."""
    merged = merge_price_partials(partials) if partials else price_partial(_NO_EVENTS)
    log_price = (pl.col("price").log() * _LOG_PRICE_SCALE).round().cast(pl.Int64) * pl.col("n_events")
    category = (
        merged.filter(pl.col("category_id").is_not_null() & (pl.col("price") > 0))
        .group_by(list(REFERENCE_KEYS))
        .agg(
            (log_price.sum().cast(pl.Float64) / _LOG_PRICE_SCALE / pl.col("n_events").sum()).alias(
                "reference"
            )
        )
    )
    return PriceReferences(category, regular_prices(merged).rename({"price": "regular"}))


def _aggregate(frame: pl.DataFrame, tail: int) -> pl.DataFrame:
    ts = pl.col("ts")
    is_view = pl.col("_code") == schema.EVENT_CODE["product_view"]
    return frame.group_by(BUYER_KEY).agg(
        pl.col("merchant_id").first(),
        pl.col("buyer_id").first(),
        pl.len().alias("n_events"),
        pl.col("session_id").n_unique().alias("n_sessions"),
        # A buyer's rows are in time order, and runs are numbered in row order.
        (pl.col(SESSION_RUN).last() - pl.col(SESSION_RUN).first() + 1).alias("_session_runs"),
        ts.first().alias("first_ts"),
        ts.last().alias("last_ts"),
        pl.col("product_id").drop_nulls().n_unique().alias("_n_products"),
        pl.col("category_id").drop_nulls().n_unique().alias("_n_categories"),
        pl.col("_day").n_unique().alias("_active_days"),
        pl.col("_session_gap").mean().fill_null(0.0).alias("_mean_gap"),
        (is_view & pl.col("product_id").is_not_null()).sum().alias("_views_with_product"),
        pl.col("product_id").filter(is_view).drop_nulls().n_unique().alias("_viewed_products"),
        pl.col("price").mean().fill_null(0.0).alias("_mean_price"),
        pl.col("_relative_price").mean().fill_null(0.0).alias("_price_index"),
        pl.col("_markdown").mean().fill_null(0.0).alias("_markdown_share"),
        pl.col("_depth").max().alias("depth"),
        pl.col("_code").tail(tail).alias("event_seq"),
        pl.col("_gap").tail(tail).alias("gap_seq"),
    )


def buyer_frame(
    ordered: pl.DataFrame, *, max_seq_len: int, references: PriceReferences | None = None
) -> pl.DataFrame:
    """One row per buyer of an ordered frame (sessions.order_frame): BUYERS columns as plain columns.

    The feature columns are named as in ``schema.FEATURE_NAMES``; rows are in ``_buyer`` order.
    ``references`` (``reference_prices`` of the whole log) defaults to this frame's own.
    """
    if max_seq_len < 1:
        raise ValueError(f"max_seq_len must be >= 1, got {max_seq_len}")
    ts = pl.col("ts")
    gap_s = (ts - ts.shift(1)).dt.total_milliseconds().cast(pl.Float64) / 1000.0
    depth = pl.col("_code").replace_strict(
        {schema.EVENT_CODE[t]: d for t, d in schema.FUNNEL_DEPTH.items()}, return_dtype=pl.Int8
    )
    # Rows are in buyer order, so the previous row is the buyer's previous event except at seq 0.
    after_same_session = pl.col(SESSION_RUN) == pl.col(SESSION_RUN).shift(1)
    if references is None:
        references = reference_prices([price_partial(ordered)])
    product = ["merchant_id", "product_id"]
    sale = pl.col("price") <= MARKDOWN_SHARE * pl.col("regular")
    frame = (
        ordered.join(references.category, on=list(REFERENCE_KEYS), how="left", maintain_order="left")
        .join(references.regular, on=product, how="left", maintain_order="left")
        .with_columns(
            pl.col(BUYER_KEY).set_sorted(),
            pl.when(_PRICED).then(pl.col("price").log() - pl.col("reference")).alias("_relative_price"),
            pl.when(pl.col("price") > 0).then(sale.cast(pl.Float64)).alias("_markdown"),
            pl.when(pl.col("seq") == 0).then(0.0).otherwise(gap_s).log1p().cast(pl.Float32).alias("_gap"),
            pl.when(after_same_session).then(gap_s).alias("_session_gap"),
            (ts.dt.epoch("ms") // _MS_PER_DAY).alias("_day"),
            depth.alias("_depth"),
        )
    )
    agg = _aggregate(frame, max_seq_len)
    if (agg["_session_runs"] != agg["n_sessions"]).any():
        # Source sessions that interleave: gaps between a session's own consecutive events.
        frame = frame.with_columns(gap_s.over([BUYER_KEY, "session_id"]).alias("_session_gap"))
        agg = _aggregate(frame, max_seq_len)
    n = pl.col("n_events")
    span_days = (pl.col("last_ts") - pl.col("first_ts")).dt.total_milliseconds() / _MS_PER_DAY
    views = pl.col("n_product_view")
    features = {
        **{f"log_n_{t}": pl.col(f"n_{t}").log1p() for t in schema.EVENT_TYPES},
        **{f"share_{t}": pl.col(f"n_{t}") / n for t in schema.EVENT_TYPES},
        "log_n_events": n.log1p(),
        "log_n_sessions": pl.col("n_sessions").log1p(),
        "log_events_per_session": (n / pl.col("n_sessions")).log1p(),
        "log_n_products": pl.col("_n_products").log1p(),
        "log_n_categories": pl.col("_n_categories").log1p(),
        "log_active_days": pl.col("_active_days").log1p(),
        "log_mean_gap_s": pl.col("_mean_gap").log1p(),
        "log_span_days": span_days.log1p(),
        "repeat_view_share": pl.when(views > 0)
        .then((pl.col("_views_with_product") - pl.col("_viewed_products")) / views)
        .otherwise(0.0),
        "cart_per_view": _ratio("n_add_to_cart", "n_product_view"),
        "purchase_per_view": _ratio("n_purchase", "n_product_view"),
        "purchase_per_cart": _ratio("n_purchase", "n_add_to_cart"),
        "log_mean_price": pl.col("_mean_price").log1p(),
        "price_index": pl.col("_price_index"),
        "markdown_share": pl.col("_markdown_share"),
        "depth_frac": pl.col("depth").cast(pl.Float64) / _MAX_DEPTH,
    }
    assert tuple(features) == schema.FEATURE_NAMES
    return (
        agg.sort(BUYER_KEY)
        .hstack(_type_counts(frame, agg.height))
        .with_columns(
            **{name: expr.cast(pl.Float32) for name, expr in features.items()},
            n_purchases=pl.col("n_purchase"),
            converted=pl.col("n_purchase") > 0,
        )
        .drop(*(f"n_{t}" for t in schema.EVENT_TYPES), "_session_runs")
    )


def buyers_table(buyers: pl.DataFrame) -> pa.Table:
    """The ``schema.BUYERS`` table of a buyer_frame (feature columns packed into one vector)."""
    matrix = buyers.select(schema.FEATURE_NAMES).to_numpy().astype(np.float32, copy=False)
    flat = pa.array(np.ascontiguousarray(matrix).reshape(-1), type=pa.float32())
    vectors = pa.FixedSizeListArray.from_arrays(flat, schema.N_FEATURES)
    plain = [n for n in schema.BUYERS.names if n != "features"]
    table = buyers.select(plain).to_arrow()
    table = table.add_column(schema.BUYERS.names.index("features"), "features", vectors)
    return table.cast(schema.BUYERS)
