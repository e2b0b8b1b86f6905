"""True treatment effects on the planted types: planted responses, common random numbers, the CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest
import yaml

from engine.cli import main as cli_main
from envs.treatments import Treatment
from learners.data.planted_types import TYPE_NAMES
from learners.data.synth import SynthConfig
from learners.data.synth_model import S, build_chains, build_shop, build_world, walk_visits
from learners.data.synth_truth import (
    ALL,
    METRICS,
    NO_RESPONSE,
    TRUTH_FILE,
    TRUTH_REPORT,
    load_treatments,
    true_effects,
    visits_under,
)

CONFIG = SynthConfig(buyers=1500, merchants=6, seed=3)
VISITS = 6000
TREATMENTS = {
    "same": Treatment(),
    "cut": Treatment(kind="price", percent=-20),
    "cheap-first": Treatment(kind="order", order="price-ascending"),
    "long-pages": Treatment(kind="page-size", page_size=15),
    "short-pages": Treatment(kind="page-size", page_size=5),
    "banner": Treatment(kind="banner", category="1"),
    "no-fav": Treatment(kind="hide-favorite"),
}


@pytest.fixture(scope="module")
def table() -> pl.DataFrame:
    return true_effects(CONFIG, TREATMENTS, visits_per_type=VISITS, seed=11)


def cell(table: pl.DataFrame, treatment: str, type_name: str, metric: str) -> dict:
    rows = table.filter(
        (pl.col("treatment") == treatment) & (pl.col("type") == type_name) & (pl.col("metric") == metric)
    )
    assert rows.height == 1
    return rows.row(0, named=True)


def test_table_has_every_treatment_type_and_metric(table: pl.DataFrame) -> None:
    assert table.height == len(TREATMENTS) * (len(TYPE_NAMES) + 1) * len(METRICS)
    assert set(table["type"]) == {*TYPE_NAMES, ALL}
    assert table.filter(pl.col("type") != ALL)["n"].unique().to_list() == [VISITS]
    assert table.filter(pl.col("type") == ALL)["n"].unique().to_list() == [VISITS * len(TYPE_NAMES)]
    assert (table["effect"] - (table["treated"] - table["control"])).abs().max() < 1e-9


def test_identity_and_unplanted_treatments_have_exactly_zero_effect(table: pl.DataFrame) -> None:
    for name in ("same", "banner"):
        rows = table.filter(pl.col("treatment") == name)
        assert (rows["effect"] == 0.0).all() and (rows["se"] == 0.0).all(), name
        assert (rows["control"] == rows["treated"]).all()
    assert set(table.filter(pl.col("treatment") == "banner")["note"]) == {NO_RESPONSE}
    assert set(table.filter(pl.col("treatment") == "same")["note"]) == {""}


def test_price_cut_raises_deal_hunter_conversion_not_decisive(table: pl.DataFrame) -> None:
    deal = cell(table, "cut", "deal_hunter", "conversion")
    assert deal["effect"] > 4 * deal["se"] > 0
    assert cell(table, "cut", "deal_hunter", "add_to_cart")["effect"] > 0
    decisive = cell(table, "cut", "decisive_buyer", "conversion")
    assert abs(decisive["effect"]) <= decisive["se"]
    # The decisive buyer buys the same products at the treated price: revenue falls by the cut.
    revenue = cell(table, "cut", "decisive_buyer", "revenue")
    assert revenue["treated"] == pytest.approx(0.8 * revenue["control"], rel=0.01)
    for type_name in ("window_shopper", "researcher", "cart_abandoner"):
        assert cell(table, "cut", type_name, "product_views")["effect"] == 0.0


def test_price_ascending_order_shows_cheaper_products_and_converts_deal_hunters(table: pl.DataFrame) -> None:
    deal = cell(table, "cheap-first", "deal_hunter", "conversion")
    assert deal["effect"] > 4 * deal["se"] > 0
    # The decisive buyer ignores the listing altogether.
    assert (
        table.filter((pl.col("treatment") == "cheap-first") & (pl.col("type") == "decisive_buyer"))["effect"]
        == 0
    ).all()
    control = visits_under(CONFIG, Treatment(), VISITS, seed=11)
    treated = visits_under(CONFIG, TREATMENTS["cheap-first"], VISITS, seed=11)

    def viewed_price(v, type_name: str) -> float:
        view = (v.event_action == S["view"]) & (v.visit_type[v.event_visit] == TYPE_NAMES.index(type_name))
        return float(v.price[v.event_product[view]].mean())

    for type_name in ("window_shopper", "cart_abandoner", "deal_hunter"):
        assert viewed_price(treated, type_name) < 0.9 * viewed_price(control, type_name), type_name


def test_longer_listing_pages_raise_researcher_views(table: pl.DataFrame) -> None:
    longer = cell(table, "long-pages", "researcher", "product_views")
    assert longer["effect"] > 5 * longer["se"] > 0
    shorter = cell(table, "short-pages", "researcher", "product_views")
    assert shorter["effect"] < -5 * shorter["se"] < 0
    for type_name in ("window_shopper", "decisive_buyer", "cart_abandoner", "deal_hunter"):
        rows = table.filter((pl.col("treatment") == "long-pages") & (pl.col("type") == type_name))
        assert (rows["effect"] == 0).all(), type_name


def test_hidden_favourite_button_removes_favourites() -> None:
    control = visits_under(CONFIG, Treatment(), 2000, seed=1)
    hidden = visits_under(CONFIG, Treatment(kind="hide-favorite"), 2000, seed=1)
    assert (control.event_action == S["fav"]).sum() > 100
    assert (hidden.event_action == S["fav"]).sum() == 0


def test_common_random_numbers_leave_unresponsive_visits_identical() -> None:
    control = visits_under(CONFIG, Treatment(), 2000, seed=5)
    treated = visits_under(CONFIG, Treatment(kind="page-size", page_size=15), 2000, seed=5)
    decisive = TYPE_NAMES.index("decisive_buyer")
    before = control.visit_type[control.event_visit] == decisive
    after = treated.visit_type[treated.event_visit] == decisive
    assert np.array_equal(control.event_action[before], treated.event_action[after])
    assert np.array_equal(control.event_product[before], treated.event_product[after])
    # A researcher's visits do change (listing depth), and from the first step where they differ.
    assert not np.array_equal(control.metrics["product_views"], treated.metrics["product_views"])


def test_same_seed_same_table_other_seed_other_table(table: pl.DataFrame) -> None:
    again = true_effects(CONFIG, TREATMENTS, visits_per_type=VISITS, seed=11)
    assert again.equals(table)
    other = true_effects(CONFIG, {"cut": TREATMENTS["cut"]}, visits_per_type=VISITS, seed=12)
    assert not other.equals(table.filter(pl.col("treatment") == "cut"))


def test_category_price_cut_changes_only_that_category_and_draws_deal_hunters_to_it() -> None:
    world = build_world(CONFIG, np.random.default_rng(CONFIG.seed))
    category = int(np.bincount(world.product_category).argmax())
    shop = build_shop(world, Treatment(kind="price", percent=-30, category=str(category)))
    inside = world.product_category == category
    assert np.allclose(shop.price[inside], np.round(world.product_price[inside] * 0.7, 2))
    assert np.array_equal(shop.price[~inside], world.product_price[~inside])
    deal = TYPE_NAMES.index("deal_hunter")

    def share_in_category(v) -> float:
        view = (v.event_action == S["view"]) & (v.visit_type[v.event_visit] == deal)
        return float((world.product_category[v.event_product[view]] == category).mean())

    control = visits_under(CONFIG, Treatment(), 4000, seed=2)
    treated = visits_under(CONFIG, Treatment(kind="price", percent=-30, category=str(category)), 4000, seed=2)
    assert share_in_category(treated) > 1.2 * share_in_category(control) > 0


def test_logs_vary_prices_within_categories_and_listing_page_lengths() -> None:
    world = build_world(SynthConfig(), np.random.default_rng(0))
    log_ratio = np.log(world.product_price / world.reference)
    assert log_ratio.std() > 0.4  # a product can be far cheaper or dearer than its category's median
    shown = world.control.shown
    assert shown.max() == 10 and (shown < 10).mean() > 0.05  # short last pages and small categories
    assert world.control.position.max() > 50


def test_load_treatments_reads_a_mapping_a_list_and_experiment_arms(tmp_path: Path) -> None:
    as_map = tmp_path / "map.yaml"
    as_map.write_text(yaml.safe_dump({"cut": {"kind": "price", "percent": -10, "category": 3}}))
    assert load_treatments(as_map) == {"cut": Treatment(kind="price", percent=-10, category="3")}
    as_list = tmp_path / "list.yaml"
    as_list.write_text(
        yaml.safe_dump([{"kind": "hide-favorite"}, {"name": "big", "kind": "page-size", "page_size": 15}])
    )
    assert load_treatments(as_list) == {
        "hide-favorite": Treatment(kind="hide-favorite"),
        "big": Treatment(kind="page-size", page_size=15),
    }
    arms = tmp_path / "experiment.yaml"
    arms.write_text(
        yaml.safe_dump(
            {
                "out": "x",
                "arms": {"control": {"kind": "none"}, "asc": {"kind": "order", "order": "price-ascending"}},
            },
            sort_keys=False,
        )
    )
    assert list(load_treatments(arms)) == ["control", "asc"]
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"cut": {"kind": "price", "percentage": -10}}))
    with pytest.raises(ValueError, match="treatment 'cut'"):
        load_treatments(bad)


def test_unknown_category_is_refused() -> None:
    with pytest.raises(ValueError, match="not a synthetic category"):
        true_effects(CONFIG, {"cut": Treatment(kind="price", percent=-10, category="shoes")}, 10, 0)


def test_cli_writes_truth_effects(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = tmp_path / "treatments.yaml"
    spec.write_text(
        yaml.safe_dump(
            {"cut": {"kind": "price", "percent": -20}, "promo": {"kind": "banner", "product": "100001"}}
        )
    )
    out = tmp_path / "raw"
    args = ["synth", "--out", str(out), "--buyers", "200", "--merchants", "3", "--no-progress"]
    assert cli_main([*args, "--treatment", str(spec), "--truth-visits", "500"]) == 0
    printed = capsys.readouterr().out
    assert "cut (price -20% on every product): conversion +" in printed and NO_RESPONSE in printed
    truth = pq.read_table(out / TRUTH_FILE).to_pylist()
    assert len(truth) == 2 * (len(TYPE_NAMES) + 1) * len(METRICS)
    report = (out / TRUTH_REPORT).read_text()
    assert "## cut: price -20% on every product" in report and "| deal_hunter |" in report
    assert {"mapping.yaml", "truth.parquet", "README.md"} <= {p.name for p in out.iterdir()}
    spec.write_text("cut: {kind: price, percent: -20, page_size: 5}\n")
    assert cli_main([*args, "--out", str(tmp_path / "other"), "--treatment", str(spec)]) == 2
    assert "treatment 'cut'" in capsys.readouterr().err
    assert not (tmp_path / "other").exists()


def test_only_the_logs_control_walk_sees_its_weekly_markdowns() -> None:
    """A walk given the visits' weeks draws from the log's weekly choice CDFs, which belong to the
    control storefront: asking it of a treated one is an error, not a silent mix of the two."""
    world = build_world(CONFIG, np.random.default_rng(CONFIG.seed))
    chains = build_chains(CONFIG.behaviour_noise)
    visits = np.zeros(50, dtype=np.int64)
    weeks = np.zeros(50, dtype=np.int64)
    rows, _, _ = walk_visits(
        world, world.control, chains, visits.astype(np.int8), visits, key=1, visit_week=weeks
    )
    assert set(rows.tolist()) == set(range(50))
    cut = build_shop(world, Treatment(kind="price", percent=-20.0))
    with pytest.raises(ValueError, match="control shop"):
        walk_visits(world, cut, chains, visits.astype(np.int8), visits, key=1, visit_week=weeks)
