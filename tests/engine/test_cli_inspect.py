"""`simpersona inspect` on a hand-made log: conversion and action shares a reader can check by hand."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from learners.data import schema
from learners.data.summary import conversion

MAPPING = """\
name: hand-made
fields:
  merchant_id: shop
  buyer_id: user
  session_id: visit
  ts: time
  product_id: item
  category_id: category
  query: q
timestamp: {format: iso}
event_type:
  column: action
  map: {view: product_view, fav: favorite, cart: add_to_cart, uncart: remove_from_cart, buy: purchase,
        find: search}
"""

# shop-a: u1 buys in visit 1 and only views in visit 2; u2 carts and leaves; u3 searches and buys
# without a cart event. shop-b: u1 (another buyer there) views; u4 carts and removes it.
# Sessions: a 2 of 4 with a purchase, b 0 of 2; buyers: a 2 of 3, b 0 of 2; all: 2 of 6, 2 of 5.
ROWS = [
    ("shop-a", "u1", "v1", "view", "p1", ""),
    ("shop-a", "u1", "v1", "fav", "p1", ""),
    ("shop-a", "u1", "v1", "cart", "p1", ""),
    ("shop-a", "u1", "v1", "buy", "p1", ""),
    ("shop-a", "u1", "v2", "view", "p2", ""),
    ("shop-a", "u2", "v3", "view", "p1", ""),
    ("shop-a", "u2", "v3", "cart", "p1", ""),
    ("shop-a", "u3", "v4", "find", "", "red shoes"),
    ("shop-a", "u3", "v4", "view", "p2", ""),
    ("shop-a", "u3", "v4", "buy", "p2", ""),
    ("shop-b", "u1", "v5", "view", "p9", ""),
    ("shop-b", "u4", "v6", "view", "p9", ""),
    ("shop-b", "u4", "v6", "cart", "p9", ""),
    ("shop-b", "u4", "v6", "uncart", "p9", ""),
]


def simpersona(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "engine.cli", *argv], capture_output=True, text=True, check=False
    )


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("inspect")
    lines = ["shop,user,visit,time,action,item,category,q"]
    for i, (shop, user, visit, action, item, q) in enumerate(ROWS):
        category = "c1" if item else ""
        lines.append(f"{shop},{user},{visit},2024-03-01T10:{i:02d}:00Z,{action},{item},{category},{q}")
    (root / "log.csv").write_text("\n".join(lines) + "\n")
    (root / "mapping.yaml").write_text(MAPPING)
    done = simpersona(
        "prepare",
        str(root / "log.csv"),
        "--mapping",
        str(root / "mapping.yaml"),
        "--out",
        str(root / "data"),
        "--no-progress",
    )
    assert done.returncode == 0, done.stderr
    return root / "data"


def columns(line: str) -> list[str]:
    return line.split()


def test_conversion_counts_sessions_buyers_and_actions(prepared: Path) -> None:
    overall, per = conversion(prepared)

    def counts(c):
        return c.sessions, c.converted_sessions, c.buyers, c.converted_buyers

    assert counts(overall) == (6, 2, 5, 2)
    assert counts(per["shop-a"]) == (4, 2, 3, 2) and counts(per["shop-b"]) == (2, 0, 2, 0)
    assert overall.buyers_by_action == {
        "page_view": 0,
        "search": 1,
        "product_view": 5,
        "favorite": 1,
        "add_to_cart": 3,
        "remove_from_cart": 1,
        "checkout": 0,
        "purchase": 2,
    }
    assert per["shop-a"].action_share("favorite") == pytest.approx(1 / 3)
    assert per["shop-b"].action_share("remove_from_cart") == 0.5


def test_inspect_prints_labelled_conversion_and_action_shares(prepared: Path) -> None:
    done = simpersona("inspect", str(prepared))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()

    head = lines.index("merchants: 2 (top 2 by buyers; a buyer is one user at one merchant)")
    assert columns(lines[head + 1]) == [
        "merchant",
        "buyers",
        "sessions",
        "events",
        "products",
        "session",
        "conv.",
        "buyer",
        "conv.",
    ]
    # merchant, buyers, sessions, events, products, session conversion, buyer conversion
    assert columns(lines[head + 2]) == ["all", "merchants", "5", "6", "14", "3", "33.3%", "40.0%"]
    assert columns(lines[head + 3]) == ["shop-a", "3", "4", "10", "2", "50.0%", "66.7%"]
    assert columns(lines[head + 4]) == ["shop-b", "2", "2", "4", "1", "0.0%", "0.0%"]
    assert "session conv. = share of sessions with a purchase (2 of 6 overall)" in done.stdout
    assert "buyer conv.   = share of buyers with a purchase (2 of 5 overall)" in done.stdout

    acts = lines.index("buyers who took each action at least once (share of the merchant's buyers):")
    assert columns(lines[acts + 1]) == ["merchant", *schema.EVENT_TYPES]
    # page_view, search, product_view, favorite, add_to_cart, remove_from_cart, checkout, purchase
    assert columns(lines[acts + 2])[2:] == [
        "0.0%",
        "20.0%",
        "100.0%",
        "20.0%",
        "60.0%",
        "20.0%",
        "0.0%",
        "40.0%",
    ]
    assert columns(lines[acts + 3])[1:] == [
        "0.0%",
        "33.3%",
        "100.0%",
        "33.3%",
        "66.7%",
        "0.0%",
        "0.0%",
        "66.7%",
    ]
    assert columns(lines[acts + 4])[1:] == [
        "0.0%",
        "0.0%",
        "100.0%",
        "0.0%",
        "50.0%",
        "50.0%",
        "0.0%",
        "0.0%",
    ]
    # The cumulative funnel depth (every shop-a buyer "reached favorite", having carted) is gone.
    assert "funnel" not in done.stdout
