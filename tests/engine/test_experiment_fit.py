"""The fit's uncertainty in an experiment: intervals widened by the spread over posterior draws of
the agent's price response, and refused where there is nothing to draw."""

from __future__ import annotations

import math
import shutil

import numpy as np
import polars as pl
import pytest

from engine.experiment import ExperimentConfig, run_experiment
from engine.experiment_effects import MDE_FACTOR, Z_ALPHA
from engine.experiment_fit import DRAWS_DIR, draw_configs, widen
from engine.experiment_report import noise_line, summary_text
from envs.render import PRICE_CELLS, REGULAR_CELL
from learners.agent.price_response import CellResponse, PriceResponse
from learners.agent.scoring import read_price_bias
from learners.data.synth import SynthConfig, synth_prepared
from tests.engine.sim_fixtures import write_distributions, write_tiny_agent


def _row(metric: str, effect: float, low: float, high: float, se: float, kind: str = "cut") -> dict:
    return {
        "treatment": kind,
        "merchant": "all",
        "type": None,
        "metric": metric,
        "effect": effect,
        "low": low,
        "high": high,
        "unpaired_low": low - 0.1,
        "unpaired_high": high + 0.1,
        "se": se,
        "mde": MDE_FACTOR * se,
        "significant": low > 0 or high < 0,
        "fit_sd": None,
    }


def test_the_spread_over_draws_widens_each_side_in_quadrature():
    rows = [_row("conversion", 0.05, 0.04, 0.07, 0.007), _row("revenue", 1.0, 0.5, 1.5, 0.25)]
    draws = [
        [_row("conversion", e, 0, 0, se), _row("revenue", 1.0, 0, 0, 0.1)]
        for e, se in ((0.02, 0.01), (0.05, 0.02), (0.08, 0.02))
    ]
    conversion, revenue = widen(rows, draws)
    sd = np.std([0.02, 0.05, 0.08], ddof=1)
    assert conversion["fit_sd"] == pytest.approx(sd)
    assert conversion["fit_noise"] == pytest.approx(math.sqrt((0.01**2 + 2 * 0.02**2) / 3))
    assert conversion["low"] == pytest.approx(0.05 - math.hypot(0.01, Z_ALPHA * sd))
    assert conversion["high"] == pytest.approx(0.05 + math.hypot(0.02, Z_ALPHA * sd))
    assert conversion["mde"] == pytest.approx(MDE_FACTOR * math.hypot(0.007, sd))
    assert conversion["unpaired_low"] == pytest.approx(0.05 - math.hypot(0.11, Z_ALPHA * sd))
    # 0.05 ± the simulation's noise excluded 0; with the fit's uncertainty it does not.
    assert rows[0]["significant"] and not conversion["significant"]
    # Draws that agree add nothing.
    assert revenue["fit_sd"] == 0 and (revenue["low"], revenue["high"]) == (0.5, 1.5)
    # A scope the draws' smaller populations lack keeps the simulation's interval, marked unknown.
    (rare,) = widen([_row("conversion", 0.05, 0.04, 0.07, 0.007, kind="other")], draws)
    assert rare["fit_sd"] is None and (rare["low"], rare["high"]) == (0.04, 0.07)
    # Per type, the console says where the spread clears the draws' own noise.
    typed = [r | {"type": 0} for r in (conversion, revenue)] + [rare | {"type": 1}]
    assert noise_line(typed).startswith(
        "fit draws: the effects' spread over the draws exceeds the draws' own standard error in 1 of 2"
    )
    assert noise_line(rows) == ""


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("fit-draws")
    _, data = synth_prepared(SynthConfig(buyers=120, merchants=2, seed=3), root)
    merchants = sorted(pl.read_parquet(data / "merchants.parquet")["merchant_id"].to_list())
    agent = write_tiny_agent(root / "agent", data, merchants=merchants)
    return {
        "root": root,
        "agent": agent,
        "data": str(data),
        "distributions": str(write_distributions(root / "dist.parquet", merchants, codes=4)),
    }


def _answer(draws: list[float]) -> PriceResponse:
    """Every code answers every cheaper cell with +1 in add to cart's bias; ``draws``: the draws'."""
    cell = CellResponse(
        buyers=30,
        rows=100,
        contrast={"add_to_cart": 0.1},
        stderr={"add_to_cart": 0.05},
        shrunk={"add_to_cart": 0.1},
        bias={"add_to_cart": 1.0},
        draws=[{"add_to_cart": d} for d in draws],
    )
    cells = {c: cell for c in PRICE_CELLS if c != REGULAR_CELL}
    return PriceResponse({str(code): dict(cells) for code in range(4)})


def _config(world: dict, out, agent, **fields) -> ExperimentConfig:
    values = {
        "out": str(out),
        "data": world["data"],
        "distributions": world["distributions"],
        "policy": "transformers",
        "policy_path": str(agent),
        "buyers_per_merchant": 40,
        "max_steps": 8,
        "bootstrap": 200,
        "arms": {"control": {"kind": "none"}, "cut": {"kind": "price", "percent": -40}},
        "simulation": {"runners": 1, "runner_num_cpus": 0.5, "chunk_size": 64, "envs_per_runner": 64},
    }
    return ExperimentConfig(**(values | fields))


def test_fit_draws_are_refused_where_there_is_nothing_to_draw(world, tmp_path):
    with pytest.raises(ValueError, match="at least 2 draws"):
        _config(world, tmp_path / "x", world["agent"], fit_draws=1)
    markov = _config(world, tmp_path / "x", world["agent"], policy="markov", fit_draws=2)
    with pytest.raises(ValueError, match="policy is 'markov'; fix: set fit_draws 0"):
        draw_configs(markov)
    bare = tmp_path / "bare"
    shutil.copytree(world["agent"], bare)
    with pytest.raises(ValueError, match="holds no price response"):
        draw_configs(_config(world, tmp_path / "x", bare, fit_draws=2))
    _answer([]).save(bare)
    with pytest.raises(ValueError, match=r"keeps 0 posterior draws; .*--price-draws 3"):
        draw_configs(_config(world, tmp_path / "x", bare, fit_draws=3))


@pytest.mark.ray
def test_an_experiments_intervals_carry_the_draws_spread(world, tmp_path, ray_local):
    agent = tmp_path / "agent"
    shutil.copytree(world["agent"], agent)
    # The untrained model scores add to cart some 16 nats below the page's other actions.
    _answer([25.0, -25.0]).save(agent)
    plain = run_experiment(_config(world, tmp_path / "plain", agent))
    # The same agent, the same arms (copied: the posterior mean serves the same biases), and two draws.
    out = tmp_path / "drawn"
    shutil.copytree(tmp_path / "plain" / "arms", out / "arms")
    config = _config(world, out, agent, fit_draws=2, fit_draw_buyers=30)
    drawn = run_experiment(config)
    # Each draw's agent serves its draw, on its own population of 30 visits per merchant.
    for d, value in enumerate((25.0, -25.0)):
        served = read_price_bias(out / DRAWS_DIR / f"draw-{d}" / "agent")
        assert {b["add_to_cart"] for cells in served.values() for b in cells.values()} == {value}
        outcomes = pl.read_parquet(out / DRAWS_DIR / f"draw-{d}" / "arms" / "cut" / "outcomes.parquet")
        assert outcomes.height == 60
    assert drawn["fit_draws"] == {"draws": 2, "buyers_per_merchant": 30}
    assert "posterior draws of the agent's price response" in summary_text(drawn)

    def by_scope(result):
        return {(r["type"], r["metric"]): r for r in result["rows"]}

    before, after = by_scope(plain), by_scope(drawn)
    assert before.keys() == after.keys()
    for key, r in after.items():
        assert r["effect"] == before[key]["effect"]
        assert r["low"] <= before[key]["low"] and r["high"] >= before[key]["high"]
    # Adding to the cart or not on every cheaper page: the cut's add-to-cart effect differs by draw.
    overall = after[(None, "add_to_cart")]
    assert overall["fit_sd"] > 0
    assert (
        overall["high"] - overall["low"]
        > before[(None, "add_to_cart")]["high"] - before[(None, "add_to_cart")]["low"]
    )
