"""What-if experiments: visit outcomes by replay, paired effects, the plan, the report, the command."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import yaml

from engine.cli import main as simpersona
from engine.experiment import (
    ExperimentConfig,
    arm_simulation,
    experiment_arms,
    price_answers,
    row_choices,
    run_experiment,
    unchanged_storefronts,
)
from engine.experiment_effects import MDE_FACTOR, Pairs, estimate
from engine.experiment_outcomes import METRICS, path_hash, replay_visit
from engine.experiment_plan import format_plan, plan
from engine.experiment_report import price_lines, report_html, summary_text
from engine.simulation_config import SimulationConfig
from envs.catalog import Catalog
from envs.storefront import Storefront
from envs.treatments import TreatedStorefront, Treatment
from learners.agent.markov_policy import MarkovPolicy
from learners.agent.row_choice import CodeRowChoice, RowChoice
from learners.agent.scoring import PRICE_RESPONSE_FILE
from learners.data.synth import SynthConfig, synth_prepared
from tests.engine.sim_fixtures import write_distributions

pytestmark = pytest.mark.ray

CHAIN = {
    "home": {"product_view": 6, "page_view": 2, "exit": 1},
    "category": {"product_view": 6, "page_view": 1, "exit": 1},
    "search": {"product_view": 4, "exit": 1},
    "product": {"add_to_cart": 3, "checkout": 2, "favorite": 1, "page_view": 2, "exit": 2},
    "cart": {"checkout": 5, "exit": 1},
    "checkout": {"purchase": 5, "exit": 2},
    "confirmation": {"exit": 1},
}
"""A page-level Markov chain that buys often enough: a stochastic policy (each step drawn from the
step's seed), so a null arm is exactly the control only because the seeds are common."""


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("experiment")
    _, data = synth_prepared(SynthConfig(buyers=120, merchants=2, seed=3), root)
    merchants = sorted(pl.read_parquet(data / "merchants.parquet")["merchant_id"].to_list())
    chain = MarkovPolicy(CHAIN, {}).save(root / "markov.json")
    personas = root / "personas"
    personas.mkdir()
    types = {"0": {"description": "converts at 2.0x the average (40%); most reach purchase"}}
    (personas / "metrics.json").write_text(json.dumps({"types": types}))
    return {
        "data": str(data),
        "distributions": str(write_distributions(root / "dist.parquet", merchants, codes=4)),
        "policy_path": str(chain),
        "personas": str(personas),
    }


def experiment(store: dict[str, str], out: Path, arms: dict, **fields) -> ExperimentConfig:
    values = {
        "out": str(out),
        "policy": "markov",
        "buyers_per_merchant": 60,
        "max_steps": 12,
        "bootstrap": 300,
        "arms": {"control": {"kind": "none"}, **arms},
        "simulation": {"runners": 1, "runner_num_cpus": 0.5, "chunk_size": 64, "envs_per_runner": 64},
        **store,
    }
    return ExperimentConfig(**(values | fields))


def overall(result: dict, treatment: str) -> dict[str, dict]:
    return {
        r["metric"]: r
        for r in result["rows"]
        if r["treatment"] == treatment and r["merchant"] == "all" and r["type"] is None
    }


# ---- outcomes of one visit -----------------------------------------------------------------------


def _catalog() -> Catalog:
    return Catalog.from_records(
        "m",
        [
            {"product_id": f"p{i}", "category_id": "c", "price": 10.0 + i, "popularity": 9 - i}
            for i in range(3)
        ],
    )


def test_replay_counts_what_a_visit_did():
    sf = Storefront(_catalog())
    actions = [
        "open product p1",
        "add to cart",
        "add to cart",
        "go to cart",
        "checkout",
        "place order",
        "exit",
    ]
    assert replay_visit(sf, actions, [True] * len(actions)) == (1.0, 1.0, 1.0, 22.0, 5.0)
    # An invalid step emits nothing; a replay that disagrees with the rollout is refused.
    assert replay_visit(sf, ["place order", "open product p0", "home"], [False, True, True]) == (
        0,
        0,
        1,
        0,
        1,
    )
    with pytest.raises(RuntimeError, match="invalid on replay"):
        replay_visit(sf, ["place order"], [True])


def test_replay_uses_the_arms_prices_and_checkout():
    cheaper = TreatedStorefront(_catalog(), Treatment(kind="price", percent=-30))
    actions = ["open product p1", "add to cart", "add to cart", "go to cart", "checkout", "place order"]
    assert replay_visit(cheaper, actions, [True] * 6)[3] == pytest.approx(2 * 7.7)
    one_page = TreatedStorefront(_catalog(), Treatment(kind="one-page-checkout"))
    bought = replay_visit(one_page, ["open product p2", "add to cart", "place order"], [True] * 3)
    assert bought == (1.0, 1.0, 1.0, 12.0, 3.0)  # one of the product, at its price


def test_a_path_is_the_actions_in_order():
    walk = ["open product p1", "add to cart", "exit"]
    # Arms' outcomes may be replayed in different processes: no salted hash (PYTHONHASHSEED).
    other = subprocess.run(
        [
            sys.executable,
            "-c",
            f"from engine.experiment_outcomes import path_hash; print(path_hash({walk!r}))",
        ],
        env={**os.environ, "PYTHONHASHSEED": "123"},
        capture_output=True,
        text=True,
        check=True,
    )
    assert int(other.stdout) == path_hash(walk)
    assert path_hash(walk) != path_hash(walk[::-1])
    assert path_hash(["open product p1", "0"]) != path_hash(["open product p10"])  # the boundaries count
    assert path_hash([]) != path_hash(["exit"])


# ---- statistics on known distributions ----------------------------------------------------------


def test_changed_share_per_type_and_overall():
    """``changed`` is the share of each scope's buyers whose path differed, weighted like the effects."""
    zeros = np.zeros((6, len(METRICS)))
    pairs = Pairs(
        merchants=np.array(["a", "a", "a", "b", "b", "b"]),
        codes=np.array([0, 0, 1, 0, 1, 1]),
        control=zeros,
        treated=zeros,
        same_buyers=True,
        changed=np.array([True, False, False, True, True, False]),
    )
    rows = estimate(pairs, "t", replicates=20)
    share = {(r["merchant"], r["type"]): r["changed"] for r in rows}
    assert share["all", None] == pytest.approx(3 / 6)
    assert share["all", 0] == pytest.approx(2 / 3) and share["all", 1] == pytest.approx(1 / 3)
    assert share["a", None] == pytest.approx(1 / 3) and share["b", None] == pytest.approx(2 / 3)
    unknown = estimate(Pairs(pairs.merchants, pairs.codes, zeros, zeros, same_buyers=True), "t", 20)
    assert {r["changed"] for r in unknown} == {None}


def test_paired_intervals_cover_a_null_effect_and_beat_unpaired_ones():
    """Independent draws with a shared buyer component: under no effect the paired 95% interval
    covers 0 about 95% of the time, and is narrower than the unpaired one."""
    rng = np.random.default_rng(0)
    covered, narrower, runs, n = 0, 0, 120, 80
    shape = (2 * n, len(METRICS))
    for _ in range(runs):
        buyer = rng.normal(size=(2 * n, 1))
        pairs = Pairs(
            merchants=np.array(["m"] * 2 * n),
            codes=np.repeat([0, 1], n),
            control=buyer + 0.5 * rng.normal(size=shape),
            treated=buyer + 0.5 * rng.normal(size=shape),
            same_buyers=True,
        )
        rows = [r for r in estimate(pairs, "t", replicates=300, seed=1) if r["type"] is None]
        covered += sum(r["low"] <= 0 <= r["high"] for r in rows)
        narrower += sum(r["high"] - r["low"] < r["unpaired_high"] - r["unpaired_low"] for r in rows)
        assert all(r["variance_ratio"] < 0.5 for r in rows)
    cells = runs * len(METRICS)
    assert 0.92 <= covered / cells <= 0.98
    assert narrower == cells


# ---- experiments on a synthetic store -----------------------------------------------------------


def test_a_treatment_that_changes_nothing_has_no_effect(store, tmp_path, ray_local):
    """Common random numbers: with a stochastic policy, an arm whose storefront is the control's
    (plain, or treated with a change that changes nothing) replays every visit exactly."""
    null = {"same": {"kind": "none"}, "zero-price": {"kind": "price", "percent": 0}}
    for seed in (0, 1):
        result = run_experiment(experiment(store, tmp_path / f"crn-{seed}", null, seed=seed))
        assert result["same_buyers"] == {"same": True, "zero-price": True}
        assert all(r["effect"] == 0 and r["low"] <= 0 <= r["high"] for r in result["rows"])
        assert all(r["changed"] == 0 for r in result["rows"])  # every buyer walked the same path
        views = overall(result, "same")["product_views"]
        assert views["control"] > 0 and views["unpaired_high"] > views["unpaired_low"]  # the visits vary


def test_independent_arms_cover_zero_in_an_aa_test(store, tmp_path, ray_local):
    """Without common random numbers the arms are two populations; a null treatment's intervals then
    contain 0 in most cells (nominal 95%; zero-variance cells count as containing 0)."""
    cells = covered = 0
    for seed in (0, 1, 2):
        config = experiment(
            store, tmp_path / f"aa-{seed}", {"same": {}}, seed=seed, common_random_numbers=False
        )
        result = run_experiment(config)
        assert result["same_buyers"] == {"same": False}
        assert all(r["changed"] is None for r in result["rows"])  # different buyers: not comparable
        cells += len(result["rows"])
        covered += sum(r["low"] <= 0 <= r["high"] for r in result["rows"])
    assert covered / cells >= 0.9, f"{covered} of {cells} cells contain 0"


def test_price_cut_pairs_narrower_than_unpaired(store, tmp_path, ray_local):
    result = run_experiment(
        experiment(store, tmp_path / "price", {"price-30": {"kind": "price", "percent": -30}})
    )
    rows = [r for r in result["rows"] if r["treatment"] == "price-30"]
    for r in rows:
        assert r["high"] - r["low"] <= r["unpaired_high"] - r["unpaired_low"] + 1e-12
    revenue = overall(result, "price-30")["revenue"]
    assert revenue["high"] - revenue["low"] < 0.5 * (revenue["unpaired_high"] - revenue["unpaired_low"])
    assert revenue["relative"] == pytest.approx(-0.3, abs=0.01) and revenue["significant"]
    assert revenue["variance_ratio"] < 0.2 and revenue["mde"] > 0
    # The Markov chain does not read prices: the same buyers buy the same things, only cheaper, and
    # the report says that no buyer did anything else.
    assert overall(result, "price-30")["conversion"]["effect"] == 0
    assert revenue["changed"] == 0
    assert "price-30: 0% of buyers took another path than in control; every buyer did exactly the same" in (
        summary_text(result)
    )


@pytest.mark.browser
def test_command_report_resume_and_plan(store, tmp_path, ray_local, capsys):
    out = tmp_path / "cli"
    config = tmp_path / "experiment.yaml"
    arms = {
        "price-10": {"kind": "price", "percent": -10},
        "order": {"kind": "order", "order": "price-ascending"},
    }
    values = experiment(store, out, arms).__dict__
    config.write_text(yaml.safe_dump(values))

    assert simpersona(["experiment", str(config), "--plan", "--mde", "0.02"]) == 0
    assert "Bernoulli bound" in capsys.readouterr().out
    bound = _needed(out)
    assert simpersona(["experiment", str(config), "--plan", "--mde", "0.01"]) == 0
    assert _needed(out) == pytest.approx(4 * np.array(bound), abs=4)  # 1 / MDE^2

    assert simpersona(["experiment", str(config)]) == 0
    printed = capsys.readouterr().out
    assert "price-10" in printed and "revenue" in printed and "per type" in printed
    # A listing in another order shows the chain other products to open; a price cut changes no path.
    effects = json.loads((out / "effects.json").read_text())
    assert overall(effects, "order")["product_views"]["changed"] > 0.2
    assert overall(effects, "price-10")["product_views"]["changed"] == 0
    assert "order: " in printed and "of buyers took another path than in control" in printed
    frame = pl.read_parquet(out / "effects.parquet")
    assert set(frame["metric"]) == set(METRICS) and set(frame["treatment"]) == {"price-10", "order"}
    assert (out / "arms" / "order" / "rollouts").is_dir() and (
        out / "arms" / "price-10" / "outcomes.parquet"
    ).exists()
    page = (out / "report.html").read_text()
    assert "type 0: converts at 2.0x the average" in page and "type 1" in page  # a name, and the fallback
    assert "simpersona experiment" in page
    assert "took another path" in page
    # An agent's row choice (learners/agent/row_choice.py) shows in the type table; the chain has none.
    assert "which listed product it opens" not in page
    effects["types"]["0"]["row_choice"] = {
        "bestseller_share": 0.85,
        "bestseller_rows": 0.4,
        "first_share": 0.1,
        "buyers": 300,
    }
    page = report_html(effects, {})
    assert "which listed product it opens" in page
    assert "a bestseller in 85% of its opens (40% of rows), the first row in 10%; 300 buyers" in page

    parts = sorted((out / "arms").glob("*/rollouts/part-*.parquet"))
    before = [p.stat().st_mtime_ns for p in parts]
    assert simpersona(["experiment", str(config)]) == 0
    assert "not simulated again" in capsys.readouterr().out
    assert [p.stat().st_mtime_ns for p in parts] == before

    # Other settings in the same OUT would mix two populations: refused, with the way out.
    assert simpersona(["experiment", str(config), "--buyers-per-merchant", "61"]) == 2
    assert "buyers_per_merchant" in capsys.readouterr().err

    # With the arms in OUT, the plan measures the paired variance instead of bounding it.
    assert simpersona(["experiment", str(config), "--plan", "--mde", "0.02", "--mde-metric", "revenue"]) == 0
    assert "pilot" in capsys.readouterr().out
    pilot = _needed(out)
    assert simpersona(["experiment", str(config), "--plan", "--mde", "0.04", "--mde-metric", "revenue"]) == 0
    assert 4 * np.array(_needed(out)) == pytest.approx(pilot, abs=4)

    from playwright.sync_api import sync_playwright

    if not shutil.which("chromium"):
        pytest.fail("Debian chromium is missing: `make test` installs it")
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path="/usr/bin/chromium",
            args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
        )
        view = browser.new_page()
        view.goto((out / "report.html").as_uri())
        widths = view.eval_on_selector_all("img", "imgs => imgs.map(i => i.complete ? i.naturalWidth : 0)")
        browser.close()
    assert len(widths) == len(METRICS) and all(w > 100 for w in widths)


def _needed(out: Path) -> list[int]:
    """The visits needed per type (and overall, last) of the plan just written."""
    return [r["visits_needed"] for r in json.loads((out / "plan.json").read_text())["rows"]]


def test_config_is_checked_early(store, tmp_path):
    with pytest.raises(ValueError, match="control and at least one treatment"):
        ExperimentConfig(arms={"control": {}})
    with pytest.raises(ValueError, match="set by the experiment itself"):
        ExperimentConfig(arms={"control": {}, "b": {}}, simulation={"seed": 3})
    with pytest.raises(ValueError, match="unknown treatment kind"):
        experiment_arms(ExperimentConfig(arms={"control": {}, "b": {"kind": "discount"}}))
    with pytest.raises(ValueError, match="plain folder names"):
        ExperimentConfig(arms={"control": {}, "../b": {}})
    assert SimulationConfig(env_kwargs="{treatment: {kind: none}}").env_kwargs == {
        "treatment": {"kind": "none"}
    }
    flags = ExperimentConfig(
        arms="{control: {kind: none}, cut: {kind: price, percent: -10}}", simulation="{runners: 3}"
    )
    arms = experiment_arms(flags)
    assert [a.name for a in arms] == ["control", "cut"] and arms[1].treatment == {
        "kind": "price",
        "percent": -10.0,
    }
    sim = arm_simulation(experiment(store, tmp_path, {"cut": {"kind": "price", "percent": -10}}), arms[1])
    assert sim.env_id == "simpersona/TreatedStorefront-v0" and sim.env_kwargs["treatment"]["percent"] == -10.0
    assert plan(experiment(store, tmp_path / "p", {"b": {}}), "conversion", 0.05)["rows"][-1]["type"] is None


def test_the_plan_with_fit_draws_counts_their_visits_and_no_visits_beat_the_fits_floor(store, tmp_path):
    config = experiment(
        store, tmp_path, {"cut": {"kind": "price", "percent": -10}}, fit_draws=4, fit_draw_buyers=15
    )
    unknown = plan(config, "conversion", 0.05)
    assert unknown["fit_draws"] == {
        "draws": 4,
        "draw_buyers_per_merchant": 15,
        "main_visits": 2 * 60 * 2,  # arms x buyers per merchant x merchants
        "draw_visits": 4 * 2 * 15 * 2,
        "spread_from": None,
    }
    assert "not known before a run with fit draws" in format_plan(unknown)
    plain = {
        r["type"]: r["visits_needed"]
        for r in plan(
            experiment(store, tmp_path / "plain", {"cut": {"kind": "price", "percent": -10}}),
            "conversion",
            0.05,
        )["rows"]
    }
    assert {r["type"]: r["visits_needed"] for r in unknown["rows"]} == plain
    # A pilot run with draws in OUT: per type its largest spread over the treatments, overall ("all") only.
    spread = [("cut", "all", 0, "conversion", 0.01), ("cut", "all", 1, "conversion", 0.01)]
    spread += [("more", "all", 1, "conversion", 0.03), ("cut", "all", None, "conversion", 0.005)]
    spread += [("cut", "all", 2, "revenue", 9.0), ("cut", "m", 2, "conversion", 9.0)]
    columns = ["treatment", "merchant", "type", "metric", "fit_sd"]
    pl.DataFrame(spread, schema=columns, orient="row").write_parquet(tmp_path / "effects.parquet")
    result = plan(config, "conversion", 0.05)
    rows = {r["type"]: r for r in result["rows"]}
    assert result["fit_draws"]["spread_from"].startswith("pilot")
    assert rows[0]["fit_sd"] == 0.01 and rows[0]["mde_floor"] == pytest.approx(MDE_FACTOR * 0.01)
    room = 0.05**2 - (MDE_FACTOR * 0.01) ** 2
    assert rows[0]["visits_needed"] == int(np.ceil(MDE_FACTOR**2 * rows[0]["variance"] / room)) > plain[0]
    # Type 1's spread alone hides an effect of 0.05 (floor 0.084): no number of visits detects it.
    assert rows[1]["fit_sd"] == 0.03 and rows[1]["visits_needed"] is None
    assert rows[1]["buyers_per_merchant_needed"] is None and "below floor" in format_plan(result)
    assert rows[2]["fit_sd"] is None and rows[2]["visits_needed"] == plain[2]  # no spread for it: as before
    assert rows[None]["fit_sd"] == 0.005


def test_an_arm_that_changes_no_storefront_is_refused_and_a_partial_one_named(store, tmp_path):
    merchants = sorted(pl.read_parquet(Path(store["data"]) / "merchants.parquet")["merchant_id"].to_list())
    catalogs = pl.read_parquet(Path(store["data"]) / "catalogs.parquet")
    product = catalogs.filter(pl.col("merchant_id") == merchants[0])["product_id"][0]
    arms = {"promo": {"kind": "banner", "product": product}, "cut": {"kind": "price", "percent": -10}}
    arms |= {"a-a": {"kind": "none"}}  # meant to change nothing: neither refused nor named
    lines = unchanged_storefronts(experiment(store, tmp_path, arms))
    assert lines == [
        f"arm promo: the storefront is the control's at 1 of 2 merchants ({merchants[1]}: the product or"
        " category is not in their catalogue); their buyers' effect is 0"
    ]
    with pytest.raises(
        ValueError, match=r"arm 'gone' \(.*\) leaves the storefront unchanged at every merchant"
    ):
        unchanged_storefronts(
            experiment(store, tmp_path, {"gone": {"kind": "banner", "product": "none-such"}})
        )


def test_an_agents_measured_answer_to_a_price_is_reported_per_type(store, tmp_path):
    agent = tmp_path / "agent"
    agent.mkdir()
    fits = {
        "0": {
            "marked": {
                "buyers": 90,
                "shrunk": {"add_to_cart": 0.076, "exit": -0.03},
                "stderr": {"add_to_cart": 0.036, "exit": 0.02},
                "bias": {"add_to_cart": 0.2},
            },
            "far-below": {"buyers": 70, "shrunk": {"add_to_cart": 0.041}, "stderr": {"add_to_cart": 0.02}},
        },
        "2": {
            "marked": {"buyers": 40, "shrunk": {"add_to_cart": -0.004}, "stderr": {"add_to_cart": 0.05}},
        },
    }
    (agent / PRICE_RESPONSE_FILE).write_text(json.dumps({"codes": fits}))
    arms = {"cut": {"kind": "price", "percent": -30}}
    config = experiment(store, tmp_path / "out", arms, policy="transformers", policy_path=str(agent))
    answers = price_answers(config)
    assert answers == {
        0: {
            "marked": {"add_to_cart": 0.076, "stderr": 0.036, "buyers": 90},
            "far-below": {"add_to_cart": 0.041, "stderr": 0.02, "buyers": 70},
        },
        2: {"marked": {"add_to_cart": -0.004, "stderr": 0.05, "buyers": 40}},
    }
    # The Markov chain reads no prices: it has no answer to report.
    assert price_answers(experiment(store, tmp_path / "out", arms, policy_path=str(agent))) == {}
    result = {"types": {str(c): {"price_answers": a} for c, a in answers.items()} | {"1": {}}}
    (line,) = price_lines(result)
    assert line.endswith(
        "type 0 on marked +0.076 (± 0.036, 90 buyers), type 0 on far-below +0.041 (± 0.020, 70 buyers),"
        " type 2 on marked -0.004 (± 0.050, 40 buyers)"
    )
    assert price_lines({"types": {"0": {}}}) == []


def test_an_agents_row_choice_is_reported_per_type(store, tmp_path):
    agent = tmp_path / "agent"
    agent.mkdir()
    coef = {"bestseller": 2.0, "log_place": 0.0, "log_relative_price": 0.0}
    fit = RowChoice(
        coef,
        {
            "0": CodeRowChoice(300, 700, coef, {}, coef, 0.85, 0.4, 0.1),
            "none": CodeRowChoice(10, 20, coef, {}, coef, 0.3, 0.3, 0.3),
        },
    )
    fit.save(agent)
    arms = {"cheap": {"kind": "order", "order": "price-ascending"}}
    config = experiment(store, tmp_path / "out", arms, policy="transformers", policy_path=str(agent))
    assert row_choices(config) == {
        0: {"bestseller_share": 0.85, "bestseller_rows": 0.4, "first_share": 0.1, "buyers": 300}
    }
    # The Markov chain has none, and neither has an agent without the file.
    assert row_choices(experiment(store, tmp_path / "out", arms, policy_path=str(agent))) == {}
    other = experiment(store, tmp_path / "out", arms, policy="transformers", policy_path=str(tmp_path))
    assert row_choices(other) == {}
