"""Sim-vs-real evaluation and the HTML report on a hand-computed case."""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime

import polars as pl
import pytest

from engine.bootstrap import uncertainty
from engine.evaluate import fidelity, real_stats, real_units, sim_stats, sim_units, step_quality
from engine.report import write_report


@pytest.fixture()
def case(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    day1, day2 = datetime(2024, 1, 1, tzinfo=UTC), datetime(2024, 1, 2, tzinfo=UTC)
    # b1 visits m1 twice and buys on the second visit; b2 and b3 visit once and only look.
    events = pl.DataFrame(
        {
            "merchant_id": ["m1", "m1", "m1", "m1", "m2"],
            "buyer_id": ["b1", "b1", "b1", "b2", "b3"],
            "session_id": ["s0", "s1", "s1", "s0", "s0"],
            "event_type": ["product_view", "product_view", "purchase", "product_view", "product_view"],
        }
    )
    events.write_parquet(data / "events.parquet")
    pl.DataFrame(
        {
            "merchant_id": ["m1", "m1", "m1", "m2"],
            "buyer_id": ["b1", "b1", "b2", "b3"],
            "session_id": ["s0", "s1", "s0", "s0"],
            "start": [day1, day2, day1, day2],
            "n_events": [1, 2, 1, 1],
        }
    ).write_parquet(data / "sessions.parquet")
    sim = tmp_path / "sim" / "rollouts"
    sim.mkdir(parents=True)
    steps = [
        ("s1", "m1", 0, "product_view", True),
        ("s1", "m1", 0, "purchase", True),
        ("s2", "m1", 1, "product_view", True),
        ("s2", "m1", 1, "search", True),
        ("s2", "m1", 1, "add_to_cart", False),
        ("s3", "m2", 1, "product_view", True),
        ("s3", "m2", 1, "purchase", True),
    ]
    pl.DataFrame(
        steps, schema=["sim_buyer_id", "merchant_id", "code", "action_kind", "valid"], orient="row"
    ).with_columns(reward=pl.lit(0.0)).write_parquet(sim / "part-00000.parquet")
    return data, sim.parent


def test_fidelity_hand_case(case):
    data, sim_dir = case
    real = real_stats(data, unit="buyer")
    sim = sim_stats(sim_dir, real_kinds={"product_view", "purchase"})
    assert sim["m1"].took == {"product_view": 2, "purchase": 1}  # search is not a real kind here
    result = fidelity(sim, real)
    assert result["cra_per_merchant"] == pytest.approx({"m1": 1.0, "m2": 0.0})
    assert result["cra"] == pytest.approx(0.5)
    assert result["ara_cells"]["B"] == pytest.approx({"product_view": 1.0, "purchase": 0.0})
    assert result["ara"] == pytest.approx(0.75)
    assert result["ara_shares"]["A"]["purchase"] == pytest.approx({"sim": 0.5, "real": 0.5})
    quality = step_quality(sim_dir)
    assert quality["invalid_rate"] == pytest.approx(1 / 7)
    assert quality["type_profile"]["1"]["purchase"] == pytest.approx(0.5)


def test_real_units_and_window(case):
    data, _ = case
    buyers = real_stats(data, unit="buyer")
    assert (buyers["m1"].buyers, buyers["m1"].converted) == (2, 1)
    assert buyers["m1"].took == {"product_view": 2, "purchase": 1}
    visits = real_stats(data)  # one real buyer per session, like one simulated episode
    assert (visits["m1"].buyers, visits["m1"].converted) == (3, 1)
    assert visits["m1"].took == {"product_view": 3, "purchase": 1}
    assert sorted(visits["m1"].lengths) == [1, 1, 2]
    later = real_stats(data, since=datetime(2024, 1, 2, tzinfo=UTC))
    assert (later["m1"].buyers, later["m1"].converted, later["m1"].conversion_rate) == (1, 1, 1.0)
    assert later["m1"].kind_counts == {"product_view": 1, "purchase": 1}
    assert (later["m2"].buyers, later["m2"].converted) == (1, 0)
    with pytest.raises(ValueError, match="unit"):
        real_stats(data, unit="user")


def test_missing_rollouts_are_explained(tmp_path):
    with pytest.raises(FileNotFoundError, match="simpersona simulate"):
        sim_stats(tmp_path)


@pytest.mark.browser
def test_report_renders_in_chromium(case, tmp_path):
    from playwright.sync_api import sync_playwright

    if not shutil.which("chromium"):
        pytest.fail("Debian chromium is missing: `make test` installs it")
    data, sim_dir = case
    system = fidelity(
        sim_stats(sim_dir, {"product_view", "purchase"}), real_stats(data, unit="buyer")
    ) | step_quality(sim_dir)
    units = real_units(data, unit="buyer")
    sims = sim_units(sim_dir, units.actions)
    bounded = uncertainty(units, {"persona": sims, "uniform": sims}, "persona", ["uniform"], replicates=50)
    page_path = write_report({"persona": system, "uniform": system}, tmp_path / "report", fidelity=bounded)
    metrics = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert metrics["systems"]["persona"]["cra"] == pytest.approx(0.5)
    assert metrics["fidelity"]["systems"]["persona"]["cra"]["value"] == pytest.approx(0.5)
    text = page_path.read_text()
    assert "ceiling (perfect simulator, " in text and "persona − uniform" in text
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path="/usr/bin/chromium",
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--disable-background-networking",
            ],
        )
        page = browser.new_page()
        page.goto(page_path.as_uri())
        widths = page.eval_on_selector_all("img", "imgs => imgs.map(i => i.complete ? i.naturalWidth : 0)")
        browser.close()
    assert len(widths) == 5 and all(w > 100 for w in widths)  # the fidelity plot and the four others


def test_page_views_are_not_compared(case, tmp_path):
    """Navigation depends on the site's layout, not on the buyer: real home-page views and the
    simulated storefront's many page views are left out of kinds, took and lengths on both sides."""
    data, sim_dir = case
    before = fidelity(sim_stats(sim_dir), real_stats(data))
    events = pl.read_parquet(data / "events.parquet")
    views = events.head(2).with_columns(event_type=pl.lit("page_view"))
    pl.concat([events, views]).write_parquet(data / "events.parquet")
    steps = pl.read_parquet(sim_dir / "rollouts" / "part-00000.parquet")
    navigation = pl.concat([steps.head(1).with_columns(action_kind=pl.lit("page_view"))] * 5)
    pl.concat([steps, navigation]).write_parquet(sim_dir / "rollouts" / "part-00000.parquet")
    real = real_stats(data)
    assert all("page_view" not in s.kind_counts and "page_view" not in s.took for s in real.values())
    assert sorted(real["m1"].lengths) == [1, 1, 2]
    sim = sim_stats(sim_dir)
    assert all("page_view" not in s.kind_counts for s in sim.values())
    assert sorted(sim["m1"].lengths) == [2, 2]
    units = real_units(data)
    assert "page_view" not in units.actions
    after = fidelity(sim, real)
    assert (after["js_action"], after["js_length"], after["ara"]) == (
        before["js_action"],
        before["js_length"],
        before["ara"],
    )
