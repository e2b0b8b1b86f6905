"""Buyer features checked against a naive per-buyer Python computation of the documented definitions."""

from __future__ import annotations

import datetime as dt
import math
import random
from collections import defaultdict

import numpy as np
import pyarrow as pa
import pytest

from learners.data import schema
from learners.data.features import REFERENCE_KEYS, merge_price_partials, price_partial, reference_prices
from tests.learners.data.one_table import build_buyers, sessionize

T0 = dt.datetime(2021, 3, 1, tzinfo=dt.UTC)


def random_events(seed: int, day_resolution: bool, n: int = 400) -> pa.Table:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        if day_resolution:
            ts = T0 + dt.timedelta(days=rng.randrange(5))
        else:
            ts = T0 + dt.timedelta(
                seconds=rng.choice([0, 5, 1799, 1800, 1801, 3 * 3600, 86400]) * rng.randrange(4)
            )
        rows.append(
            {
                "merchant_id": rng.choice(["m1", "m2"]),
                "buyer_id": f"u{rng.randrange(12)}",
                "session_id": rng.choice([None, None, "S1", "S2"]) if not day_resolution else None,
                "ts": ts,
                "event_type": rng.choice(schema.EVENT_TYPES + ("product_view",) * 4),
                "product_id": rng.choice([None, "p1", "p2", "p3", "p4"]),
                "category_id": rng.choice([None, "c1", "c2"]),
                "price": rng.choice([None, 3.5, 10.0, 99.99]),
                "query": None,
                "src_order": (rng.randrange(2) << 40) | i,
            }
        )
    return pa.Table.from_pylist(rows, schema=schema.CANONICAL_EVENTS)


def ratio(a: float, b: float) -> float:
    return min(1.0, a / max(b, 1))


def naive_references(events: list[dict]) -> dict[tuple[str, str], float]:
    """Mean log price of each (merchant, category)'s priced product events."""
    logs: dict[tuple[str, str], list[float]] = defaultdict(list)
    for e in events:
        if e["product_id"] is not None and e["category_id"] is not None and (e["price"] or 0) > 0:
            logs[(e["merchant_id"], e["category_id"])].append(math.log(e["price"]))
    return {key: sum(v) / len(v) for key, v in logs.items()}


def naive_regular(events: list[dict]) -> dict[tuple[str, str], float]:
    """Each product's highest price that at least a tenth of its priced events logged."""
    counts: dict[tuple[str, str], dict[float, int]] = defaultdict(lambda: defaultdict(int))
    for e in events:
        if e["product_id"] is not None and e["price"] is not None:
            counts[(e["merchant_id"], e["product_id"])][e["price"]] += 1
    return {
        key: max(p for p, n in prices.items() if n >= 0.1 * sum(prices.values()))
        for key, prices in counts.items()
    }


def naive_buyer(
    events: list[dict],
    max_seq_len: int,
    references: dict[tuple[str, str], float],
    regular: dict[tuple[str, str], float],
) -> dict:
    """Features of one buyer from its events already in `seq` order (the order is tested elsewhere)."""
    n = len(events)
    counts = {t: sum(e["event_type"] == t for e in events) for t in schema.EVENT_TYPES}
    sessions = {e["session_id"] for e in events}
    by_session: dict[str, list[dt.datetime]] = defaultdict(list)
    for e in events:
        by_session[e["session_id"]].append(e["ts"])
    gaps = [(b - a).total_seconds() for ts in by_session.values() for a, b in zip(ts, ts[1:], strict=False)]
    views = [e for e in events if e["event_type"] == "product_view"]
    seen: set[str] = set()
    repeats = 0
    for e in views:
        if e["product_id"] is not None:
            repeats += e["product_id"] in seen
            seen.add(e["product_id"])
    prices = [e["price"] for e in events if e["price"] is not None]
    relative = [
        math.log(e["price"]) - references[(e["merchant_id"], e["category_id"])]
        for e in events
        if e["product_id"] is not None and e["category_id"] is not None and (e["price"] or 0) > 0
    ]
    sales = [
        e["price"] <= 0.99 * regular[(e["merchant_id"], e["product_id"])]
        for e in events
        if e["product_id"] is not None and (e["price"] or 0) > 0
    ]
    depth = max(schema.FUNNEL_DEPTH[e["event_type"]] for e in events)
    first, last = events[0]["ts"], events[-1]["ts"]
    feats = {
        **{f"log_n_{t}": math.log1p(counts[t]) for t in schema.EVENT_TYPES},
        **{f"share_{t}": counts[t] / n for t in schema.EVENT_TYPES},
        "log_n_events": math.log1p(n),
        "log_n_sessions": math.log1p(len(sessions)),
        "log_events_per_session": math.log1p(n / len(sessions)),
        "log_n_products": math.log1p(len({e["product_id"] for e in events} - {None})),
        "log_n_categories": math.log1p(len({e["category_id"] for e in events} - {None})),
        "log_active_days": math.log1p(len({e["ts"].date() for e in events})),
        "log_mean_gap_s": math.log1p(sum(gaps) / len(gaps)) if gaps else 0.0,
        "log_span_days": math.log1p((last - first).total_seconds() / 86400),
        "repeat_view_share": repeats / len(views) if views else 0.0,
        "cart_per_view": ratio(counts["add_to_cart"], counts["product_view"]),
        "purchase_per_view": ratio(counts["purchase"], counts["product_view"]),
        "purchase_per_cart": ratio(counts["purchase"], counts["add_to_cart"]),
        "log_mean_price": math.log1p(sum(prices) / len(prices)) if prices else 0.0,
        "price_index": sum(relative) / len(relative) if relative else 0.0,
        "markdown_share": sum(sales) / len(sales) if sales else 0.0,
        "depth_frac": depth / 5,
    }
    gap_all = [0.0] + [
        math.log1p((b["ts"] - a["ts"]).total_seconds()) for a, b in zip(events, events[1:], strict=False)
    ]
    return {
        "features": [feats[name] for name in schema.FEATURE_NAMES],
        "event_seq": [schema.EVENT_CODE[e["event_type"]] for e in events][-max_seq_len:],
        "gap_seq": gap_all[-max_seq_len:],
        "n_events": n,
        "n_sessions": len(sessions),
        "first_ts": first,
        "last_ts": last,
        "n_purchases": counts["purchase"],
        "converted": counts["purchase"] > 0,
        "depth": depth,
    }


@pytest.mark.parametrize("day_resolution", [False, True])
def test_features_match_naive_computation(day_resolution: bool) -> None:
    max_seq_len = 7
    canonical = random_events(seed=3, day_resolution=day_resolution)
    buyers = build_buyers(canonical, day_resolution=day_resolution, max_seq_len=max_seq_len)
    assert buyers.schema == schema.BUYERS

    ordered = sessionize(canonical, day_resolution=day_resolution).to_pylist()
    history: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for e in ordered:
        history[(e["merchant_id"], e["buyer_id"])].append(e)
    assert buyers.num_rows == len(history)
    references, regular = naive_references(ordered), naive_regular(ordered)
    assert sorted(
        zip(buyers["merchant_id"].to_pylist(), buyers["buyer_id"].to_pylist(), strict=True)
    ) == sorted(history)
    for row in buyers.to_pylist():
        want = naive_buyer(history[(row["merchant_id"], row["buyer_id"])], max_seq_len, references, regular)
        np.testing.assert_allclose(row["features"], want["features"], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(row["gap_seq"], want["gap_seq"], rtol=1e-5, atol=1e-6)
        for key in (
            "event_seq",
            "n_events",
            "n_sessions",
            "first_ts",
            "last_ts",
            "n_purchases",
            "converted",
            "depth",
        ):
            assert row[key] == want[key], key
        features = np.asarray(row["features"])
        assert np.all(np.isfinite(features))
    if day_resolution:
        assert np.all(
            np.asarray(buyers["features"].to_pylist())[:, schema.FEATURE_NAMES.index("log_mean_gap_s")] == 0
        )


def test_sequences_keep_the_most_recent_events_oldest_first() -> None:
    rows = [
        {
            "merchant_id": "m",
            "buyer_id": "b",
            "session_id": None,
            "ts": T0 + dt.timedelta(seconds=10 * i),
            "event_type": "purchase" if i == 9 else "product_view",
            "product_id": "p",
            "category_id": None,
            "price": None,
            "query": None,
            "src_order": i,
        }
        for i in range(10)
    ]
    buyers = build_buyers(
        pa.Table.from_pylist(rows, schema=schema.CANONICAL_EVENTS), day_resolution=False, max_seq_len=3
    )
    (row,) = buyers.to_pylist()
    assert row["event_seq"] == [schema.EVENT_CODE["product_view"]] * 2 + [schema.EVENT_CODE["purchase"]]
    np.testing.assert_allclose(row["gap_seq"], [math.log1p(10)] * 3, rtol=1e-6)
    assert row["converted"] and row["n_purchases"] == 1 and row["depth"] == 5 and row["n_events"] == 10


def test_max_seq_len_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_seq_len"):
        build_buyers(random_events(seed=1, day_resolution=False, n=5), day_resolution=False, max_seq_len=0)


def test_price_index_compares_a_buyer_with_its_categorys_prices() -> None:
    rows = [
        {"buyer_id": buyer, "product_id": product, "category_id": "c1", "price": price}
        for buyer, product, price in [("cheap", "p1", 5.0), ("cheap", "p1", 5.0), ("dear", "p2", 20.0)]
    ] + [
        {"buyer_id": "none", "product_id": None, "category_id": None, "price": None},
        {"buyer_id": "none", "product_id": "p3", "category_id": None, "price": 1.0},  # no category
        {"buyer_id": "none", "product_id": "p4", "category_id": "c1", "price": 0.0},  # no price
        {"buyer_id": "dear", "product_id": "p5", "category_id": "c1", "price": 0.0},
    ]
    events = pa.Table.from_pylist(
        [
            {
                "merchant_id": "m1",
                "session_id": None,
                "ts": T0 + dt.timedelta(seconds=i),
                "event_type": "product_view",
                "query": None,
                "src_order": i,
                **row,
            }
            for i, row in enumerate(rows)
        ],
        schema=schema.CANONICAL_EVENTS,
    )
    buyers = build_buyers(events, day_resolution=False, max_seq_len=4)
    index = {
        row["buyer_id"]: row["features"][schema.FEATURE_NAMES.index("price_index")]
        for row in buyers.to_pylist()
    }
    reference = (2 * math.log(5.0) + math.log(20.0)) / 3
    assert index["cheap"] == pytest.approx(math.log(5.0) - reference, abs=1e-6)
    assert index["dear"] == pytest.approx(math.log(20.0) - reference, abs=1e-6)
    assert index["cheap"] < 0 < index["dear"]
    assert index["none"] == 0.0


def test_markdown_share_counts_the_sales_a_product_page_shows() -> None:
    # p1 sells at 10.0; 7.0 is its sale. p2 is only ever 4.0, and 0.0 or no price is no price.
    rows = [("other", "p1", 10.0)] * 7 + [
        ("hunter", "p1", 7.0),
        ("hunter", "p1", 7.0),
        ("hunter", "p1", 10.0),
        ("hunter", "p2", 0.0),
        ("steady", "p2", 4.0),
        ("steady", "p1", 9.95),  # within MARKDOWN_SHARE of the regular price: no sale shown
        ("none", "p3", None),
    ]
    events = pa.Table.from_pylist(
        [
            {
                "merchant_id": "m1",
                "buyer_id": buyer,
                "session_id": None,
                "ts": T0 + dt.timedelta(seconds=i),
                "event_type": "product_view",
                "product_id": product,
                "category_id": "c1",
                "price": price,
                "query": None,
                "src_order": i,
            }
            for i, (buyer, product, price) in enumerate(rows)
        ],
        schema=schema.CANONICAL_EVENTS,
    )
    buyers = build_buyers(events, day_resolution=False, max_seq_len=4)
    share = {
        row["buyer_id"]: row["features"][schema.FEATURE_NAMES.index("markdown_share")]
        for row in buyers.to_pylist()
    }
    assert share == pytest.approx({"hunter": 2 / 3, "other": 0.0, "steady": 0.0, "none": 0.0})


def test_reference_prices_merge_exactly_whatever_the_chunking() -> None:
    events = random_events(seed=5, day_resolution=False, n=600)
    whole = reference_prices([price_partial(events)])
    chunks = [price_partial(events.slice(start, 97)) for start in range(0, events.num_rows, 97)]
    product = ["merchant_id", "product_id"]
    for merged in (
        reference_prices(chunks),
        reference_prices([merge_price_partials(chunks[:3]), *chunks[3:]]),
    ):
        assert merged.category.sort(REFERENCE_KEYS).equals(whole.category.sort(REFERENCE_KEYS))
        assert merged.regular.sort(product).equals(whole.regular.sort(product))
    assert whole.category.height == 4  # two merchants x two categories
    assert whole.regular.height == 8  # two merchants x four products
