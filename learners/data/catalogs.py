"""Per-merchant product catalogs (``schema.CATALOGS``) and the merchant summary (``schema.MERCHANTS``).

Both are built from partial aggregates that each partition of buyers emits and that merge exactly,
so a partitioned (or distributed) run gives the same tables as a single pass:

* catalog partials count events per ``(merchant, product, category, price)``; merged by summing.
  A product's ``category_id`` is its most frequent non-null category (ties: the smallest id), its
  ``price`` its *regular* price: the highest of its non-null observed prices that at least
  ``REGULAR_PRICE_SHARE`` of its priced events logged (each event one observation), so the sales
  below it show as markdowns however many events a sale drew, and a one-off odd price does not
  count once a product has more than ten; ``popularity`` its share of the merchant's events that
  name a product. Catalog rows are ordered by merchant, then popularity (descending), then product.
* merchant partials sum buyers, sessions, events, converted buyers and buyers who reached each
  funnel stage (buyer depth >= the stage's ``FUNNEL_DEPTH``); rates are those sums / buyers.
  ``products`` is the merchant's catalog size.
"""

from __future__ import annotations

from collections.abc import Sequence

import polars as pl
import pyarrow as pa

from learners.data import schema

CATALOG_KEYS = ("merchant_id", "product_id", "category_id", "price")
CATALOG_COUNTS = ("n_events", "n_views", "n_carts", "n_purchases")
REGULAR_PRICE_SHARE = 0.1
"""A product's regular price is the highest price logged by at least this share of its priced events.
A median or mode would follow the sales: sales draw more events than the weeks they last. On the truth
benchmark's synthetic log (seed 7, 3,000 buyers; its deal hunters seek sales) the median is a
product's regular price for 72% of the products and this rule for 91%, the rest only seen on sale."""
_STAGES = schema.FUNNEL_STAGES[1:]
MERCHANT_COUNTS = ("buyers", "sessions", "events", "converted", *(f"reach_{s}" for s in _STAGES))


def catalog_partial(ordered: pl.DataFrame) -> pl.DataFrame:
    """Event counts per (merchant, product, category, price) of a frame with a ``_code`` column."""
    code = pl.col("_code")
    return (
        ordered.filter(pl.col("product_id").is_not_null())
        .group_by(list(CATALOG_KEYS))
        .agg(
            pl.len().cast(pl.Int64).alias("n_events"),
            (code == schema.EVENT_CODE["product_view"]).sum().cast(pl.Int64).alias("n_views"),
            (code == schema.EVENT_CODE["add_to_cart"]).sum().cast(pl.Int64).alias("n_carts"),
            (code == schema.EVENT_CODE["purchase"]).sum().cast(pl.Int64).alias("n_purchases"),
        )
    )


def merge_catalog_partials(partials: Sequence[pl.DataFrame]) -> pl.DataFrame:
    """Sum partials into one partial (used to compact them while partitions stream by)."""
    merged = pl.concat(list(partials), how="vertical")
    return merged.group_by(list(CATALOG_KEYS)).agg(pl.col(c).sum() for c in CATALOG_COUNTS)


def build_catalogs(partials: Sequence[pl.DataFrame]) -> pl.DataFrame:
    """Final catalogs (CATALOGS columns) from catalog partials."""
    merged = merge_catalog_partials(partials) if partials else _empty_catalog_partial()
    product = ["merchant_id", "product_id"]
    counts = merged.group_by(product).agg(pl.col(c).sum() for c in CATALOG_COUNTS)
    category = (
        merged.filter(pl.col("category_id").is_not_null())
        .group_by([*product, "category_id"])
        .agg(pl.col("n_events").sum())
        .sort([*product, "n_events", "category_id"], descending=[False, False, True, False])
        .group_by(product)
        .agg(pl.col("category_id").first())
    )
    price = regular_prices(merged)
    total = pl.col("n_events").sum().over("merchant_id")
    return (
        counts.join(category, on=product, how="left")
        .join(price, on=product, how="left")
        .with_columns((pl.col("n_events") / total).alias("popularity"))
        .sort(["merchant_id", "popularity", "product_id"], descending=[False, True, False])
        .select(schema.CATALOGS.names)
    )


def regular_prices(merged: pl.DataFrame) -> pl.DataFrame:
    """``merchant_id, product_id, price``: per product of ``merged`` (event counts ``n_events`` per
    ``CATALOG_KEYS``), the highest non-null price that at least REGULAR_PRICE_SHARE of its priced
    events logged."""
    product = ["merchant_id", "product_id"]
    weighted = (
        merged.filter(pl.col("price").is_not_null())
        .group_by([*product, "price"])
        .agg(pl.col("n_events").sum().alias("w"))
    )
    common = pl.col("w") >= REGULAR_PRICE_SHARE * pl.col("w").sum().over(product)
    return weighted.filter(common).group_by(product).agg(pl.col("price").max())


def _empty_catalog_partial() -> pl.DataFrame:
    return pl.DataFrame(
        schema={
            "merchant_id": pl.String,
            "product_id": pl.String,
            "category_id": pl.String,
            "price": pl.Float64,
            **{c: pl.Int64 for c in CATALOG_COUNTS},
        }
    )


def catalogs_table(catalogs: pl.DataFrame) -> pa.Table:
    """The ``schema.CATALOGS`` Arrow table."""
    return catalogs.to_arrow().cast(schema.CATALOGS)


def merchant_partial(buyers: pl.DataFrame) -> pl.DataFrame:
    """Per-merchant sums over a buyer frame (features.buyer_frame) of complete buyers."""
    return buyers.group_by("merchant_id").agg(
        pl.len().cast(pl.Int64).alias("buyers"),
        pl.col("n_sessions").sum().cast(pl.Int64).alias("sessions"),
        pl.col("n_events").sum().cast(pl.Int64).alias("events"),
        pl.col("converted").sum().cast(pl.Int64).alias("converted"),
        *(
            (pl.col("depth") >= schema.FUNNEL_STAGES.index(s)).sum().cast(pl.Int64).alias(f"reach_{s}")
            for s in _STAGES
        ),
    )


def build_merchants(partials: Sequence[pl.DataFrame], catalogs: pl.DataFrame) -> pl.DataFrame:
    """Merchant summary (MERCHANTS columns) from merchant partials and the final catalogs."""
    if partials:
        sums = pl.concat(list(partials)).group_by("merchant_id").agg(pl.col(c).sum() for c in MERCHANT_COUNTS)
    else:
        sums = pl.DataFrame(schema={"merchant_id": pl.String, **{c: pl.Int64 for c in MERCHANT_COUNTS}})
    products = catalogs.group_by("merchant_id").agg(pl.len().cast(pl.Int64).alias("products"))
    buyers = pl.col("buyers")
    return (
        sums.join(products, on="merchant_id", how="left")
        .with_columns(
            pl.col("products").fill_null(0),
            (pl.col("converted") / buyers).alias("conversion_rate"),
            *((pl.col(f"reach_{s}") / buyers).alias(f"rate_{s}") for s in _STAGES),
        )
        .sort("merchant_id")
        .select(schema.MERCHANTS.names)
    )


def merchants_table(merchants: pl.DataFrame) -> pa.Table:
    """The ``schema.MERCHANTS`` Arrow table."""
    return merchants.to_arrow().cast(schema.MERCHANTS)
