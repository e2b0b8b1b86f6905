"""Catalogs and merchant summary: naive recomputation, and partial aggregates that merge exactly."""

from __future__ import annotations

from collections import Counter, defaultdict

import polars as pl
import pytest

from learners.data import schema
from learners.data.catalogs import (
    REGULAR_PRICE_SHARE,
    build_catalogs,
    build_merchants,
    catalog_partial,
    catalogs_table,
    merchant_partial,
    merchants_table,
)
from learners.data.features import buyer_frame
from learners.data.sessions import order_frame
from tests.learners.data.test_features import random_events


def partials(canonical: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    ordered = order_frame(canonical, day_resolution=False)
    return catalog_partial(ordered), merchant_partial(buyer_frame(ordered, max_seq_len=4))


@pytest.fixture(scope="module")
def canonical() -> pl.DataFrame:
    frame = pl.from_arrow(random_events(seed=11, day_resolution=False, n=600))
    assert isinstance(frame, pl.DataFrame)
    return frame


def test_catalog_matches_naive_computation(canonical: pl.DataFrame) -> None:
    cat_partial, _ = partials(canonical)
    table = catalogs_table(build_catalogs([cat_partial]))
    assert table.schema == schema.CATALOGS

    rows = [r for r in canonical.to_dicts() if r["product_id"] is not None]
    merchant_total = Counter(r["merchant_id"] for r in rows)
    by_product: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r in rows:
        by_product[(r["merchant_id"], r["product_id"])].append(r)
    got = {(r["merchant_id"], r["product_id"]): r for r in table.to_pylist()}
    assert set(got) == set(by_product)
    for key, events in by_product.items():
        row = got[key]
        cats = Counter(e["category_id"] for e in events if e["category_id"] is not None)
        want_cat = min(cats, key=lambda c: (-cats[c], c)) if cats else None
        prices = [e["price"] for e in events if e["price"] is not None]
        assert row["category_id"] == want_cat
        common = [p for p in prices if prices.count(p) >= REGULAR_PRICE_SHARE * len(prices)]
        assert row["price"] == (max(common) if prices else None)
        assert row["n_views"] == sum(e["event_type"] == "product_view" for e in events)
        assert row["n_carts"] == sum(e["event_type"] == "add_to_cart" for e in events)
        assert row["n_purchases"] == sum(e["event_type"] == "purchase" for e in events)
        assert row["popularity"] == pytest.approx(len(events) / merchant_total[key[0]])
    merchants = [r["merchant_id"] for r in table.to_pylist()]
    assert merchants == sorted(merchants)


def test_catalog_price_is_the_regular_price_below_which_sales_show() -> None:
    """A sale that drew most of a product's events does not become its price; an odd price that
    one event in twenty logged does not either, but one in five does."""

    def partial(product: str, counts: dict[float | None, int]) -> pl.DataFrame:
        return pl.DataFrame(
            {
                "merchant_id": "m",
                "product_id": product,
                "category_id": "c",
                "price": list(counts),
                "n_events": list(counts.values()),
                "n_views": list(counts.values()),
                "n_carts": 0,
                "n_purchases": 0,
            },
            schema_overrides={"price": pl.Float64},
        )

    parts = [
        partial("sale", {10.0: 6, 7.0: 10, 8.0: 4}),
        partial("odd", {10.0: 19, 50.0: 1}),
        partial("few", {10.0: 4, 50.0: 1}),
        partial("unpriced", {None: 3}),
    ]
    prices = dict(build_catalogs(parts).select("product_id", "price").iter_rows())
    assert prices == {"sale": 10.0, "odd": 10.0, "few": 50.0, "unpriced": None}


def test_merchants_match_naive_computation(canonical: pl.DataFrame) -> None:
    cat_partial, merch_partial = partials(canonical)
    catalogs = build_catalogs([cat_partial])
    table = merchants_table(build_merchants([merch_partial], catalogs))
    assert table.schema == schema.MERCHANTS

    depth: dict[tuple[str, str], int] = defaultdict(int)
    events: Counter[str] = Counter()
    for r in canonical.to_dicts():
        key = (r["merchant_id"], r["buyer_id"])
        depth[key] = max(depth[key], schema.FUNNEL_DEPTH[r["event_type"]])
        events[r["merchant_id"]] += 1
    for row in table.to_pylist():
        m = row["merchant_id"]
        depths = [d for (mm, _), d in depth.items() if mm == m]
        assert row["buyers"] == len(depths)
        assert row["events"] == events[m]
        assert row["products"] == catalogs.filter(pl.col("merchant_id") == m).height
        assert row["conversion_rate"] == pytest.approx(sum(d == 5 for d in depths) / len(depths))
        for level, stage in enumerate(schema.FUNNEL_STAGES):
            if level:
                assert row[f"rate_{stage}"] == pytest.approx(sum(d >= level for d in depths) / len(depths))


def test_partials_of_buyer_partitions_merge_to_the_single_pass_result(canonical: pl.DataFrame) -> None:
    whole_cat, whole_merch = partials(canonical)
    parts = [canonical.filter(pl.col("buyer_id").is_in(ids)) for ids in (["u0", "u1", "u2"], ["u3", "u4"])]
    rest = canonical.filter(~pl.col("buyer_id").is_in(["u0", "u1", "u2", "u3", "u4"]))
    split = [partials(p) for p in (*parts, rest)]
    catalogs = build_catalogs([c for c, _ in split])
    assert catalogs.equals(build_catalogs([whole_cat]))
    merged = build_merchants([m for _, m in split], catalogs)
    assert merged.equals(build_merchants([whole_merch], catalogs))


def test_no_partials_give_empty_tables() -> None:
    catalogs = build_catalogs([])
    assert catalogs_table(catalogs).num_rows == 0
    assert merchants_table(build_merchants([], catalogs)).num_rows == 0
