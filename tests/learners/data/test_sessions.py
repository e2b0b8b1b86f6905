"""Ordering and sessionization rules on hand-made canonical events."""

from __future__ import annotations

import datetime as dt

import polars as pl
import pyarrow as pa
import pytest

from learners.data import schema, sessions
from tests.learners.data.one_table import sessionize

T0 = dt.datetime(2020, 1, 1, 12, 0, tzinfo=dt.UTC)
DAY = dt.datetime(2014, 5, 1, tzinfo=dt.UTC)


def canonical(rows: list[dict]) -> pa.Table:
    """CANONICAL_EVENTS from partial dicts; src_order defaults to the row position."""
    full = []
    for i, row in enumerate(rows):
        base = dict.fromkeys(schema.CANONICAL_EVENTS.names)
        base.update(merchant_id="m", buyer_id="b", src_order=i)
        base.update(row)
        full.append(base)
    return pa.Table.from_pylist(full, schema=schema.CANONICAL_EVENTS)


def at(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


def test_gap_of_exactly_30_minutes_stays_in_session() -> None:
    events = canonical(
        [
            {"ts": at(0), "event_type": "page_view"},
            {"ts": at(1800), "event_type": "product_view"},  # exactly 30 min later: same session
            {"ts": at(3601), "event_type": "purchase"},  # 30 min + 1 s later: new session
        ]
    )
    out = sessionize(events, day_resolution=False)
    assert out.schema == schema.EVENTS
    assert out["session_id"].to_pylist() == ["s0", "s0", "s1"]
    assert out["seq"].to_pylist() == [0, 1, 2]


def test_session_gap_is_configurable() -> None:
    events = canonical([{"ts": at(0), "event_type": "page_view"}, {"ts": at(61), "event_type": "search"}])
    assert sessionize(events, day_resolution=False, session_gap_s=60)["session_id"].to_pylist() == [
        "s0",
        "s1",
    ]
    assert sessionize(events, day_resolution=False, session_gap_s=61)["session_id"].to_pylist() == [
        "s0",
        "s0",
    ]


def test_second_resolution_orders_by_ts_then_source_order() -> None:
    events = canonical(
        [
            {"ts": at(10), "event_type": "purchase", "src_order": 5},
            {"ts": at(0), "event_type": "page_view", "src_order": 9},
            {"ts": at(10), "event_type": "add_to_cart", "src_order": 2},
        ]
    )
    out = sessionize(events, day_resolution=False)
    assert out["event_type"].to_pylist() == ["page_view", "add_to_cart", "purchase"]
    assert out["seq"].to_pylist() == [0, 1, 2]


def test_source_session_ids_win_over_the_gap_rule() -> None:
    events = canonical(
        [
            {"ts": at(0), "event_type": "page_view", "session_id": "A"},
            {"ts": at(7200), "event_type": "product_view", "session_id": "A"},
            {"ts": at(7201), "event_type": "search", "session_id": "B"},
        ]
    )
    assert sessionize(events, day_resolution=False)["session_id"].to_pylist() == ["A", "A", "B"]


def test_buyers_are_user_times_merchant_with_own_seq_and_sessions() -> None:
    events = canonical(
        [
            {"merchant_id": "m2", "ts": at(5), "event_type": "page_view"},
            {"merchant_id": "m1", "ts": at(0), "event_type": "page_view"},
            {"merchant_id": "m1", "buyer_id": "c", "ts": at(1), "event_type": "search"},
            {"merchant_id": "m1", "ts": at(9000), "event_type": "purchase"},
        ]
    )
    out = sessionize(events, day_resolution=False).to_pylist()
    got = sorted((r["merchant_id"], r["buyer_id"], r["seq"], r["session_id"]) for r in out)
    assert got == [("m1", "b", 0, "s0"), ("m1", "b", 1, "s1"), ("m1", "c", 0, "s0"), ("m2", "b", 0, "s0")]


def test_day_resolution_groups_products_by_first_appearance_then_funnel_rank() -> None:
    day2 = DAY + dt.timedelta(days=1)
    events = canonical(
        [
            {"ts": DAY, "event_type": "purchase", "product_id": "A"},  # 0
            {"ts": DAY, "event_type": "product_view", "product_id": "B"},  # 1
            {"ts": DAY, "event_type": "search"},  # 2: no product, keeps its position
            {"ts": DAY, "event_type": "product_view", "product_id": "A"},  # 3
            {"ts": DAY, "event_type": "add_to_cart", "product_id": "A"},  # 4
            {"ts": day2, "event_type": "product_view", "product_id": "B"},  # 5
            {"ts": DAY, "event_type": "product_view", "product_id": "A"},  # 6: repeat view, same group
            {"ts": day2, "event_type": "favorite", "product_id": "A"},  # 7
        ]
    )
    out = sessionize(events, day_resolution=True)
    order = [(r["event_type"], r["product_id"]) for r in out.to_pylist()]
    assert order == [
        ("product_view", "A"),
        ("product_view", "A"),
        ("add_to_cart", "A"),
        ("purchase", "A"),
        ("product_view", "B"),
        ("search", None),
        ("product_view", "B"),
        ("favorite", "A"),
    ]
    assert out["session_id"].to_pylist() == ["s0"] * 6 + ["s1"] * 2
    assert out["seq"].to_pylist() == list(range(8))


def test_day_resolution_ties_within_product_and_rank_keep_source_order() -> None:
    events = canonical(
        [
            {"ts": DAY, "event_type": "product_view", "product_id": "A", "price": 2.0},
            {"ts": DAY, "event_type": "product_view", "product_id": "A", "price": 1.0},
        ]
    )
    assert sessionize(events, day_resolution=True)["price"].to_pylist() == [2.0, 1.0]


def test_ordering_does_not_depend_on_input_row_order() -> None:
    rows = [
        {"ts": at(i * 700), "event_type": schema.EVENT_TYPES[i % 8], "buyer_id": f"b{i % 3}", "src_order": i}
        for i in range(30)
    ]
    forward = sessionize(canonical(rows), day_resolution=False)
    backward = sessionize(canonical(rows[::-1]), day_resolution=False)
    assert forward.equals(backward)


@pytest.mark.parametrize("day_resolution", [False, True])
def test_buyers_whose_hashes_collide_are_still_kept_apart(
    monkeypatch: pytest.MonkeyPatch, day_resolution: bool
) -> None:
    rows = [
        {
            "ts": DAY if day_resolution else at(i * 700),
            "event_type": schema.EVENT_TYPES[i % 8],
            "buyer_id": f"b{i % 3}",
            "product_id": f"p{i % 2}",
            "src_order": i,
        }
        for i in range(30)
    ]
    want = sessionize(canonical(rows), day_resolution=day_resolution)
    want = want.sort_by([("buyer_id", "ascending"), ("seq", "ascending")])
    monkeypatch.setattr(sessions, "buyer_hash", lambda: pl.lit(7, pl.UInt64))
    got = sessionize(canonical(rows), day_resolution=day_resolution)
    assert got["buyer_id"].to_pylist() == sorted(got["buyer_id"].to_pylist())
    assert got.equals(want)


def test_sessions_table_summarizes_each_session_even_when_source_sessions_interleave() -> None:
    events = canonical(
        [
            {"ts": at(0), "event_type": "product_view", "session_id": "A"},
            {"ts": at(10), "event_type": "add_to_cart", "session_id": "B"},
            {"ts": at(20), "event_type": "purchase", "session_id": "A"},
            {"ts": at(30), "event_type": "product_view", "session_id": "B"},
            {"buyer_id": "c", "ts": at(5), "event_type": "page_view"},
            {"buyer_id": "c", "ts": at(5 + 3600), "event_type": "product_view"},
        ]
    )
    frame = pl.from_arrow(events)
    table = sessions.sessions_table(sessions.order_frame(frame, day_resolution=False))
    assert table.schema == schema.SESSIONS
    got = {(r["buyer_id"], r["session_id"]): r for r in table.to_pylist()}
    assert set(got) == {("b", "A"), ("b", "B"), ("c", "s0"), ("c", "s1")}
    a, b = got[("b", "A")], got[("b", "B")]
    assert (a["start"], a["end"], a["n_events"], a["n_purchases"], a["converted"], a["depth"]) == (
        at(0),
        at(20),
        2,
        1,
        True,
        5,
    )
    assert (b["n_events"], b["n_carts"], b["n_product_views"], b["converted"], b["depth"]) == (
        2,
        1,
        1,
        False,
        3,
    )
    assert got[("c", "s0")]["depth"] == 0 and got[("c", "s1")]["n_product_views"] == 1
    order = [(r["buyer_id"], r["session_id"]) for r in table.to_pylist()]
    assert order.index(("b", "A")) < order.index(("b", "B")) and order.index(("c", "s0")) < order.index(
        ("c", "s1")
    )
