"""``simpersona experiment CONFIG --plan``: the visits each buyer type needs to detect an effect.

A paired effect over n visits has standard error sqrt(v / n), v the variance of one visit's paired
difference; it is detected with 80% power at alpha 0.05 (two-sided) when it is MDE_FACTOR = 2.80
standard errors, so detecting ``mde`` needs n = 2.80^2 v / mde^2 visits (four times as many for
half the effect). v comes from, in this order:

1. a *pilot*: complete arms already in OUT (a run of this experiment, e.g. with few buyers: then run
   the full one with a new --out): the measured paired variance, per type, the largest over the
   treatments; where every paired difference of a type is 0 (no treatment changed that outcome for
   it), the bound below stands in, as a pilot says nothing there about an effect's variance;
2. for conversion and add_to_cart without a pilot, the conservative Bernoulli bound
   v = 2 p (1 − p), p the merchant's real per-session rate in the prepared data (sessions.parquet):
   the variance of the difference of two *independent* visits. Common random numbers only lower it,
   so the sizes are upper bounds; a pilot usually shows far fewer are needed.

Other outcomes (product views, revenue, visit length) have no bound without a pilot. A type's visits
come from every merchant in proportion to its share of that merchant's mix, so the buyers per
merchant a type needs is its visits over the sum of its shares.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from engine.experiment import (
    ExperimentConfig,
    arm_dir,
    arm_outcome_frames,
    arm_simulation,
    experiment_arms,
    type_descriptions,
)
from engine.experiment_effects import MDE_FACTOR, pair_visits, per_visit_variance
from engine.experiment_outcomes import METRICS
from engine.experiment_report import type_name
from engine.population import PopulationSampler
from engine.rollout_store import MANIFEST
from engine.simulation_config import build_population

BERNOULLI = {"conversion": "converted", "add_to_cart": "n_carts"}
"""Outcomes with a Bernoulli bound: the sessions.parquet column whose positive rows are the visits."""
PLAN_FILE = "plan.json"


def visits_needed(variance: float, mde: float) -> int:
    """Visits of a paired test that detect ``mde`` with 80% power at alpha 0.05 (two-sided)."""
    if mde <= 0:
        raise ValueError(f"mde must be > 0, got {mde}")
    return math.ceil(MDE_FACTOR**2 * variance / mde**2)


def real_rates(data: str, metric: str, merchants: list[str]) -> dict[str, float]:
    """Each merchant's real per-session rate of a Bernoulli outcome (sessions.parquet)."""
    path = Path(data) / "sessions.parquet"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: the Bernoulli bound needs the prepared sessions")
    column = BERNOULLI[metric]
    frame = (
        pl.scan_parquet(path)
        .filter(pl.col("merchant_id").is_in(merchants))
        .group_by("merchant_id")
        .agg((pl.col(column).cast(pl.Int64) > 0).mean().alias("p"))
        .collect()
    )
    return dict(zip(frame["merchant_id"].to_list(), frame["p"].to_list(), strict=True))


def pilot_variances(config: ExperimentConfig, metric: str) -> tuple[dict[int | None, float], str] | None:
    """Per-type paired variances measured on complete arms in OUT (the largest over treatments)."""
    arms = experiment_arms(config)
    done = [a for a in arms if _complete(config, a)]
    if not done or done[0].name != config.control or len(done) < 2:
        return None
    frames = arm_outcome_frames(config, done)
    control = frames[config.control]
    worst: dict[int | None, float] = {}
    for arm in done[1:]:
        for code, v in per_visit_variance(pair_visits(control, frames[arm.name]), metric).items():
            worst[code] = max(worst.get(code, 0.0), v)
    visits = control.height
    names = ", ".join(a.name for a in done[1:])
    return (
        worst,
        f"pilot: paired variance measured on the {visits:,} visits per arm in {config.out} ({names})",
    )


def _complete(config: ExperimentConfig, arm: Any) -> bool:
    path = arm_dir(config, arm) / MANIFEST
    return path.exists() and bool(json.loads(path.read_text(encoding="utf-8")).get("complete"))


def plan(config: ExperimentConfig, metric: str | None = None, mde: float | None = None) -> dict[str, Any]:
    """Visits needed per type (and overall) for ``mde`` on ``metric`` (defaults: the config's)."""
    metric, mde = metric or config.mde_metric, mde if mde is not None else config.mde
    if metric not in METRICS:
        raise ValueError(f"mde_metric must be one of {METRICS}, got {metric!r}")
    if not config.distributions:
        raise ValueError("experiment config: `distributions` is not set (merchant_distributions.parquet)")
    control = experiment_arms(config)[0]
    sim = arm_simulation(config, control)
    sampler = PopulationSampler.from_parquet(sim.distributions or "", sim.smoothing, sim.codebook_size)
    merchants = list(sim.merchants) or sampler.merchants
    mix = np.stack([sampler.probabilities(m) for m in merchants])  # (merchants, K)
    now = (
        pl.DataFrame({"code": [b.code for b in build_population(sim)]}, schema={"code": pl.Int64})
        .group_by("code")
        .len()
    )
    current = dict(zip(now["code"].to_list(), now["len"].to_list(), strict=True))
    measured = pilot_variances(config, metric)
    bounded = None
    if metric in BERNOULLI and config.data:
        rates = real_rates(config.data, metric, merchants)
        bound = np.array([2 * rates.get(m, 0.5) * (1 - rates.get(m, 0.5)) for m in merchants])
        weight = mix.sum(0)
        bounded = {int(k): float(mix[:, k] @ bound / weight[k]) for k in np.flatnonzero(weight > 0)}
        bounded[None] = float(bound.mean())
    bound_text = (
        f"conservative Bernoulli bound 2p(1-p), p = each merchant's real per-session {metric} rate in"
        f" {config.data} (independent visits; common random numbers only lower it)"
    )
    sources: dict[int | None, str] = {}
    if measured is not None:
        variances, source = measured
        sources = {k: "pilot" for k in variances}
        for k, v in list(variances.items()):
            # No treatment of the pilot changed this outcome for the type: its variance under a real
            # effect is unknown there, so the bound stands in where there is one.
            if v == 0 and bounded is not None and k in bounded:
                variances[k], sources[k] = bounded[k], "bound"
        if "bound" in sources.values():
            source += f"; where the pilot's paired differences are all 0: {bound_text}"
    elif bounded is not None:
        variances, source = bounded, bound_text
        sources = {k: "bound" for k in variances}
    else:
        raise ValueError(
            f"--plan for {metric} needs a pilot: run this experiment with a small buyers_per_merchant first"
            " (its arms in OUT give the paired variance); conversion and add_to_cart also have a bound"
            " from the prepared data (`data`)"
        )
    descriptions = type_descriptions(config)
    rows = []
    share = mix.sum(0)
    for code in [*sorted(k for k in variances if k is not None), None]:
        v = variances[code]
        need = visits_needed(v, mde)
        per_merchant_share = len(merchants) if code is None else float(share[code])
        have = sum(current.values()) if code is None else current.get(code, 0)
        rows.append(
            {
                "type": code,
                "name": type_name(code, descriptions, short=True),
                "share": float(per_merchant_share / len(merchants)),
                "variance": v,
                "variance_from": sources[code],
                "visits_needed": need,
                "buyers_per_merchant_needed": math.ceil(need / per_merchant_share)
                if per_merchant_share
                else None,
                "visits_now": int(have),
                "mde_now": float(MDE_FACTOR * math.sqrt(v / have)) if have else None,
            }
        )
    return {
        "metric": metric,
        "mde": mde,
        "power": 0.8,
        "alpha": 0.05,
        "formula": "visits = 2.80^2 x variance / mde^2 (paired, two-sided)",
        "variance_source": source,
        "merchants": merchants,
        "buyers_per_merchant": config.buyers_per_merchant,
        "rows": rows,
    }


def format_plan(result: dict[str, Any]) -> str:
    """The plan as a fixed-width table with a header that says where the variance comes from."""
    lines = [
        f"visits needed to detect an effect of {result['mde']:g} on {result['metric']} (80% power, alpha 0.05,"
        f" two-sided; {result['formula']})",
        f"variance: {result['variance_source']}",
        f"now: {result['buyers_per_merchant']} buyers per merchant x {len(result['merchants'])} merchants;"
        " buyers/merchant: what gives the type its visits (each merchant sends it its share of visits)",
        "",
        f"{'type':<44} {'share':>6} {'variance':>9} {'from':>5} {'visits needed':>13} {'buyers/merchant':>15}"
        f" {'visits now':>10} {'MDE now':>8}",
    ]
    for r in result["rows"]:
        mde_now = "–" if r["mde_now"] is None else f"{r['mde_now']:.4g}"
        per = "–" if r["buyers_per_merchant_needed"] is None else f"{r['buyers_per_merchant_needed']:,}"
        lines.append(
            f"{r['name'][:44]:<44} {r['share']:>6.1%} {r['variance']:>9.4g} {r['variance_from']:>5}"
            f" {r['visits_needed']:>13,} {per:>15}"
            f" {r['visits_now']:>10,} {mde_now:>8}"
        )
    return "\n".join(lines)


def write_plan(result: dict[str, Any], out: str | Path) -> Path:
    path = Path(out) / PLAN_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return path
