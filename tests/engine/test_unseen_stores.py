"""Replayed stores under unseen ids: every merchant and product id is new, the stores are the same."""

from __future__ import annotations

import re

import gymnasium as gym
import pyarrow as pa
import pyarrow.parquet as pq

import envs
from engine.unseen_stores import fresh_ids, write_unseen_stores

from .sim_fixtures import write_prepared


def test_fresh_ids_keep_the_form_and_take_numbers_no_id_has():
    taken = ["shop-000", "shop-001", "shop-011", "100149", "100198", "103000", "zeta"]
    mapping = fresh_ids(["shop-000", "shop-001", "100149", "100198", "zeta"], taken, seed=0)

    assert sorted(mapping) == ["100149", "100198", "shop-000", "shop-001", "zeta"]
    assert len(set(mapping.values())) == 5 and not set(mapping.values()) & set(taken)
    assert {mapping["shop-000"], mapping["shop-001"]} == {"shop-012", "shop-013"}  # above shop-011, 3 digits
    assert {mapping["100149"], mapping["100198"]} == {"103001", "103002"}  # above every numbered id
    assert mapping["zeta"] == "unseen-1"  # no number of its own to replace
    assert fresh_ids(["shop-000", "shop-001"], taken, seed=0) == fresh_ids(
        ["shop-000", "shop-001"], taken, seed=0
    )
    orders = {tuple(fresh_ids([f"p{i}" for i in range(10)], [], seed=s).values()) for s in range(5)}
    assert len(orders) > 1  # the seed hands the numbers out in its own order


def test_the_copy_holds_the_chosen_merchants_under_new_ids_and_renders_the_same_pages(tmp_path):
    data = write_prepared(tmp_path / "data", merchants=("m1", "m2", "m3"))
    events = pa.Table.from_pylist(
        [
            {"merchant_id": m, "buyer_id": "u1", "product_id": p, "category_id": "c0"}
            for m in ("m1", "m2", "m3")
            for p in ("p0", "p1", None)
        ]
    )
    pq.write_table(events, data / "events.parquet")
    (data / "manifest.json").write_text("{}")

    renamed = write_unseen_stores(data, ["m1", "m2"], tmp_path / "unseen", seed=3)

    assert sorted(renamed) == ["m1", "m2"] and set(renamed.values()) == {"m4", "m5"}  # above m3
    assert (tmp_path / "unseen" / "manifest.json").read_text() == "{}"
    original = pq.read_table(data / "catalogs.parquet").to_pylist()
    copied = pq.read_table(tmp_path / "unseen" / "catalogs.parquet").to_pylist()
    assert len(copied) == 2 * len(original) // 3
    assert not {r["product_id"] for r in copied} & {r["product_id"] for r in original}
    kept = [{k: v for k, v in r.items() if k not in ("merchant_id", "product_id")} for r in copied]
    assert kept == [
        {k: v for k, v in r.items() if k not in ("merchant_id", "product_id")}
        for r in original
        if r["merchant_id"] != "m3"
    ]
    copied_events = pq.read_table(tmp_path / "unseen" / "events.parquet").to_pylist()
    assert sorted({r["merchant_id"] for r in copied_events}) == ["m4", "m5"]
    assert [r["product_id"] is None for r in copied_events] == [False, False, True] * 2  # nulls stay null
    assert {r["product_id"] for r in copied_events} - {None} <= {r["product_id"] for r in copied}

    # The same store, shown under its new ids: its home page reads as the original's once the ids
    # are put back.
    home = gym.make(envs.STOREFRONT_ID, data=data).reset(seed=0, options={"merchant": "m2"})[0]
    unseen = gym.make(envs.STOREFRONT_ID, data=tmp_path / "unseen")
    page = unseen.reset(seed=0, options={"merchant": renamed["m2"]})[0]
    new_products = {
        r["product_id"]: o["product_id"]
        for r, o in zip(copied, [o for o in original if o["merchant_id"] != "m3"], strict=True)
    }
    restored = re.sub(r"\bp\d+\b", lambda m: new_products.get(m.group(0), m.group(0)), page)
    assert page != home and restored.replace(renamed["m2"], "m2") == home
