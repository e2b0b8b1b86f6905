"""The fit's uncertainty in an experiment's intervals: posterior draws of the agent's price response.

A simulated effect's bootstrap interval (engine/experiment_effects.py) holds the simulation's noise
only: it says how sure the run is of what *this* agent does, not how sure the logs make us of how
the buyers answer. Where an agent serves a price response (learners/agent/price_response.py), each
code's answer to a price cell was measured on a few dozen buyers; a price experiment's effect rests
on it, and with the pairing this tight a run of a few thousand visits resolves differences far
smaller than that measurement's error. On the truth benchmark (benchmarks/RESULTS.md, session 34)
the intervals then excluded the planted truth wherever the fit missed it by a few of its own errors.

So with ``fit_draws: D`` the experiment runs every arm D more times, each on an agent that serves one
posterior draw of the price response (``CellResponse.draws``: its contrasts drawn from the
empirical-Bayes posterior, then fitted as biases like the posterior mean), on a smaller population
(``fit_draw_buyers`` per merchant), the same buyers and seeds in every draw and arm. Under common
random numbers a draw moves an effect only through what the draw changes, so the spread of an
effect over the draws is mostly the fit's uncertainty, not the simulation's noise. Each interval is
widened by it in quadrature on both sides (effect ∓ sqrt(half-width² + (1.96 sd)²)), the unpaired
one too (an A/B test of two populations of the same agent is as unsure of the fit), and the MDE uses
the total error; the variance ratio stays the pairing's saving on the simulation's noise. The main
run, with the posterior mean, gives the effect itself.

The spread holds some simulation noise still: a draw moves many buyers' paths where it moves a
type's biases much, and each draw's population is small. It is at most the draws' own standard error
(``fit_noise``), where their buyers' paths part entirely; so the intervals err wide, and the console
says in how many cells the spread clears that noise. Subtracting it instead (a between-minus-within
estimate) would assume the draws' noises independent, which common random numbers make them not;
on the truth benchmark it took one seed's price cut from 96% of the planted cells inside their
intervals to 72% (RESULTS.md, session 34).

What it leaves out: the uncertainty of the per-code biases of the agent's other calibrations (its
kinds and the rollout's), of the row choice, and of the model; and the prior's own spike and
variance, held at their fitted values. A Markov chain or an agent without draws has nothing to draw:
the experiment refuses ``fit_draws`` there.
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from engine.experiment_effects import MDE_FACTOR, Z_ALPHA
from learners.agent.price_response import PriceResponse
from learners.agent.scoring import PRICE_RESPONSE_FILE

if TYPE_CHECKING:
    from engine.experiment import ExperimentConfig

DRAWS_DIR = "fit-draws"
"""OUT/fit-draws/draw-<d>/: the draw's agent (``agent``) and arms (``arms/<arm>``)."""
AGENT_POLICIES = ("transformers", "vllm")


def draw_buyers(config: ExperimentConfig) -> int:
    """Simulated visits per merchant in each draw: ``fit_draw_buyers``, else a quarter of the run's."""
    return config.fit_draw_buyers or max(1, config.buyers_per_merchant // 4)


def served_response(config: ExperimentConfig) -> PriceResponse:
    """The agent's price response, refused with the fix where it cannot be drawn ``fit_draws`` times."""
    if config.policy not in AGENT_POLICIES or not config.policy_path:
        raise ValueError(
            f"experiment config: fit_draws {config.fit_draws} draws an agent's price response, and the policy"
            f" is {config.policy!r}; fix: set fit_draws 0, or run a transformers or vllm agent"
        )
    path = Path(config.policy_path) / PRICE_RESPONSE_FILE
    response = PriceResponse.load(config.policy_path)
    if not response.codes:
        raise ValueError(
            f"experiment config: fit_draws {config.fit_draws}: {path} holds no price response to draw (the"
            " agent was trained with price_rows 0, or its log shows no price cell); fix: set fit_draws 0"
        )
    if response.draw_count < config.fit_draws:
        raise ValueError(
            f"experiment config: fit_draws {config.fit_draws}, but {path} keeps {response.draw_count}"
            " posterior draws; fix: set fit_draws at most that, or train the agent again with"
            f" --price-draws {config.fit_draws} (a fit before session 34 keeps none)"
        )
    return response


def draw_configs(config: ExperimentConfig) -> list[ExperimentConfig]:
    """One experiment per draw, its agent written beside its arms: every file of the served agent
    linked, the price response replaced by the draw's."""
    if config.fit_draws == 0:
        return []
    response = served_response(config)
    agent = Path(config.policy_path or "").resolve()
    configs = []
    for d in range(config.fit_draws):
        root = Path(config.out) / DRAWS_DIR / f"draw-{d}"
        drawn = root / "agent"
        drawn.mkdir(parents=True, exist_ok=True)
        for entry in agent.iterdir():
            link = drawn / entry.name
            if entry.name != PRICE_RESPONSE_FILE and not link.is_symlink():
                link.symlink_to(entry)
        response.drawn(d).save(drawn)
        configs.append(
            replace(
                config,
                out=str(root),
                policy_path=str(drawn),
                buyers_per_merchant=draw_buyers(config),
                fit_draws=0,
            )
        )
    return configs


def widen(rows: list[dict[str, Any]], draws: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """``rows`` (experiment_effects.estimate's) with ``fit_sd``, the standard deviation of each row's
    effect over the draws' runs (``draws``: one list of rows per draw), added to its interval and MDE
    (module doc), and ``fit_noise``, the draws' own standard error (root mean square). A scope the
    draws' smaller populations do not hold (a rare type) keeps its interval, both None."""
    effects: dict[tuple, list[float]] = {}
    noise: dict[tuple, list[float]] = {}
    for drawn in draws:
        for r in drawn:
            effects.setdefault(_key(r), []).append(r["effect"])
            noise.setdefault(_key(r), []).append(r["se"] ** 2)
    out = []
    for r in rows:
        values = effects.get(_key(r), [])
        if len(values) < max(2, len(draws)):
            out.append(r | {"fit_sd": None, "fit_noise": None})
            continue
        sd = float(np.std(values, ddof=1))
        low, high = _wider(r["effect"], r["low"], r["high"], sd)
        unpaired = _wider(r["effect"], r["unpaired_low"], r["unpaired_high"], sd)
        out.append(
            r
            | {
                "fit_sd": sd,
                "fit_noise": math.sqrt(float(np.mean(noise[_key(r)]))),
                "low": low,
                "high": high,
                "unpaired_low": unpaired[0],
                "unpaired_high": unpaired[1],
                "mde": MDE_FACTOR * math.sqrt(r["se"] ** 2 + sd**2),
                "significant": bool(low > 0 or high < 0),
            }
        )
    return out


def _wider(effect: float, low: float, high: float, sd: float) -> tuple[float, float]:
    """The interval with Z_ALPHA x ``sd`` added in quadrature to each side's half-width."""
    spread = (Z_ALPHA * sd) ** 2
    return effect - math.sqrt((effect - low) ** 2 + spread), effect + math.sqrt((high - effect) ** 2 + spread)


def _key(row: dict[str, Any]) -> tuple:
    return row["treatment"], row["merchant"], row["type"], row["metric"]
