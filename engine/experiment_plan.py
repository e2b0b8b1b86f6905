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

With ``fit_draws`` (engine/experiment_fit.py) an effect's error also holds the fit's spread over the
price response's posterior draws, sd_fit, which more simulated visits do not shrink: detecting
``mde`` needs n = 2.80^2 v / (mde^2 - (2.80 sd_fit)^2) visits, and no number of visits detects an
effect at or below 2.80 sd_fit (the type's floor: more real buyers would lower it, not more
simulated ones). sd_fit comes from a pilot run with draws in OUT (its effects.parquet; the largest
over the treatments); it holds some of the draws' own noise, so it errs high. Without one the sizes
hold the simulation's noise only, and the plan says so. The plan also counts the visits the draws
add.
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
from engine.experiment_fit import draw_buyers
from engine.experiment_outcomes import METRICS
from engine.experiment_report import EFFECTS_PARQUET, type_name
from engine.population import PopulationSampler
from engine.rollout_store import MANIFEST
from engine.simulation_config import build_population

BERNOULLI = {"conversion": "converted", "add_to_cart": "n_carts"}
"""Outcomes with a Bernoulli bound: the sessions.parquet column whose positive rows are the visits."""
PLAN_FILE = "plan.json"


def visits_needed(variance: float, mde: float, fit_sd: float = 0.0) -> int | None:
    """Visits of a paired test that detect ``mde`` with 80% power at alpha 0.05 (two-sided), the
    fit's spread ``fit_sd`` added to the error; None when that spread alone hides ``mde``."""
    if mde <= 0:
        raise ValueError(f"mde must be > 0, got {mde}")
    room = mde**2 - (MDE_FACTOR * fit_sd) ** 2
    return math.ceil(MDE_FACTOR**2 * variance / room) if room > 0 else None


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


def pilot_fit_spread(config: ExperimentConfig, metric: str) -> dict[int | None, float] | None:
    """Per type, the fit's spread over the draws (``fit_sd``) that a pilot run with fit draws measured
    in OUT, the largest over the treatments; None without ``fit_draws`` or such a run."""
    path = Path(config.out) / EFFECTS_PARQUET
    if not config.fit_draws or not path.exists():
        return None
    rows = pl.read_parquet(path)
    if "fit_sd" not in rows.columns:
        return None
    rows = rows.filter(
        (pl.col("merchant") == "all") & (pl.col("metric") == metric) & pl.col("fit_sd").is_not_null()
    )
    if rows.is_empty():
        return None
    worst = rows.group_by("type").agg(pl.col("fit_sd").max())
    return dict(zip(worst["type"].to_list(), worst["fit_sd"].to_list(), strict=True))


def draw_cost(config: ExperimentConfig, merchants: int) -> dict[str, int]:
    """Visits of the main run and the ones ``fit_draws`` adds (every arm once per draw)."""
    arms = len(experiment_arms(config))
    return {
        "draws": config.fit_draws,
        "draw_buyers_per_merchant": draw_buyers(config),
        "main_visits": arms * config.buyers_per_merchant * merchants,
        "draw_visits": config.fit_draws * arms * draw_buyers(config) * merchants,
    }


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
    spread = pilot_fit_spread(config, metric)
    rows = []
    share = mix.sum(0)
    for code in [*sorted(k for k in variances if k is not None), None]:
        v, fit = variances[code], (spread or {}).get(code)
        need = visits_needed(v, mde, fit or 0.0)
        per_merchant_share = len(merchants) if code is None else float(share[code])
        have = sum(current.values()) if code is None else current.get(code, 0)
        rows.append(
            {
                "type": code,
                "name": type_name(code, descriptions, short=True),
                "share": float(per_merchant_share / len(merchants)),
                "variance": v,
                "variance_from": sources[code],
                "fit_sd": fit,
                "mde_floor": None if fit is None else MDE_FACTOR * fit,
                "visits_needed": need,
                "buyers_per_merchant_needed": math.ceil(need / per_merchant_share)
                if per_merchant_share and need is not None
                else None,
                "visits_now": int(have),
                "mde_now": float(MDE_FACTOR * math.sqrt(v / have + (fit or 0.0) ** 2)) if have else None,
            }
        )
    draws = None
    if config.fit_draws:
        draws = draw_cost(config, len(merchants)) | {
            "spread_from": None
            if spread is None
            else f"pilot: the fit's spread over the draws in {config.out}"
        }
    return {
        "metric": metric,
        "mde": mde,
        "power": 0.8,
        "alpha": 0.05,
        "formula": "visits = 2.80^2 x variance / mde^2 (paired, two-sided)",
        "variance_source": source,
        "merchants": merchants,
        "buyers_per_merchant": config.buyers_per_merchant,
        "fit_draws": draws,
        "rows": rows,
    }


def format_plan(result: dict[str, Any]) -> str:
    """The plan as a fixed-width table with a header that says where the variance (and, with fit
    draws, the fit's spread) comes from."""
    lines = [
        f"visits needed to detect an effect of {result['mde']:g} on {result['metric']} (80% power, alpha 0.05,"
        f" two-sided; {result['formula']})",
        f"variance: {result['variance_source']}",
        f"now: {result['buyers_per_merchant']} buyers per merchant x {len(result['merchants'])} merchants;"
        " buyers/merchant: what gives the type its visits (each merchant sends it its share of visits)",
    ]
    draws = result.get("fit_draws")
    if draws:
        lines.append(
            f"fit draws: {draws['draws']} draws of every arm at {draws['draw_buyers_per_merchant']:,} buyers per"
            f" merchant add {draws['draw_visits']:,} visits to the main run's {draws['main_visits']:,}"
            f" ({draws['draw_visits'] / max(draws['main_visits'], 1):.2g}x)"
        )
        lines.append(
            f"fit's spread: {draws['spread_from']}; the error adds it in quadrature, and no number of visits"
            " detects an effect at or below a type's floor (2.80 x its spread: more real buyers lower it)"
            if draws["spread_from"]
            else "fit's spread: not known before a run with fit draws (run this one as a pilot first); the"
            " sizes below hold the simulation's noise only, so they are lower bounds"
        )
    floors = any(r.get("mde_floor") is not None for r in result["rows"])
    lines += [
        "",
        f"{'type':<44} {'share':>6} {'variance':>9} {'from':>5}"
        + (f" {'floor':>8}" if floors else "")
        + f" {'visits needed':>13} {'buyers/merchant':>15} {'visits now':>10} {'MDE now':>8}",
    ]
    for r in result["rows"]:
        mde_now = "–" if r["mde_now"] is None else f"{r['mde_now']:.4g}"
        per = "–" if r["buyers_per_merchant_needed"] is None else f"{r['buyers_per_merchant_needed']:,}"
        need = "below floor" if r["visits_needed"] is None else f"{r['visits_needed']:,}"
        floor = "–" if r.get("mde_floor") is None else f"{r['mde_floor']:.4g}"
        lines.append(
            f"{r['name'][:44]:<44} {r['share']:>6.1%} {r['variance']:>9.4g} {r['variance_from']:>5}"
            + (f" {floor:>8}" if floors else "")
            + f" {need:>13} {per:>15} {r['visits_now']:>10,} {mde_now:>8}"
        )
    return "\n".join(lines)


def write_plan(result: dict[str, Any], out: str | Path) -> Path:
    path = Path(out) / PLAN_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return path
