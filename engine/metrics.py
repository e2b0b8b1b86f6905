"""Fidelity metrics: how closely simulated buyers match real ones (definitions in docs/architecture.md).

Pure functions over counts and arrays, so each is checked on hand-computed cases; the evaluation
command feeds them from prepared data and rollouts.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

STRATA = ("A", "B", "C", "D")


def alignment(sim: float, real: float) -> float:
    """min/max ratio of two non-negative rates: 1 when equal (including both zero), 0 when one is zero."""
    if sim < 0 or real < 0:
        raise ValueError(f"rates must be non-negative, got sim={sim}, real={real}")
    hi = max(sim, real)
    return 1.0 if hi == 0 else min(sim, real) / hi


def conversion_rate_alignment(
    sim: Mapping[str, float], real: Mapping[str, float]
) -> tuple[dict[str, float], float]:
    """CRA per merchant and its mean over the merchants present in both mappings."""
    merchants = sorted(set(sim) & set(real))
    if not merchants:
        raise ValueError("no merchant is present in both the simulated and the real conversion rates")
    per = {m: alignment(sim[m], real[m]) for m in merchants}
    return per, float(np.mean(list(per.values())))


def conversion_correlation(sim: Mapping[str, float], real: Mapping[str, float]) -> float:
    """Pearson r of simulated vs real conversion over the merchants in both (nan when either side is
    constant): whether the simulation ranks merchants like reality does, whatever its level."""
    merchants = sorted(set(sim) & set(real))
    x = np.array([sim[m] for m in merchants], dtype=float)
    y = np.array([real[m] for m in merchants], dtype=float)
    if len(merchants) < 2 or x.std() == 0 or y.std() == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


def conversion_strata(real_cr: Mapping[str, float]) -> dict[str, str]:
    """Merchants split into four strata by real conversion-rate quartile; A is the highest.

    Merchants are ranked by conversion rate (descending, ties by id) and cut into four groups whose
    sizes differ by at most one, so every stratum is populated once there are four merchants.
    """
    ranked = sorted(real_cr, key=lambda m: (-real_cr[m], m))
    groups = np.array_split(np.arange(len(ranked)), len(STRATA))
    return {ranked[i]: STRATA[g] for g, idx in enumerate(groups) for i in idx}


@dataclass(frozen=True)
class ActionCounts:
    """Buyers of one merchant and how many of them took each action type at least once."""

    buyers: int
    took: Mapping[str, int]


def stratum_action_shares(
    counts: Mapping[str, ActionCounts], members: Sequence[str], actions: Sequence[str]
) -> dict[str, float]:
    """Share of the pooled buyers of ``members`` that took each action at least once."""
    buyers = sum(counts[m].buyers for m in members)
    if buyers == 0:
        return {a: 0.0 for a in actions}
    return {a: sum(counts[m].took.get(a, 0) for m in members) / buyers for a in actions}


def action_rate_alignment(
    sim: Mapping[str, ActionCounts],
    real: Mapping[str, ActionCounts],
    actions: Sequence[str] | None = None,
) -> tuple[dict[str, dict[str, float]], float]:
    """Stratified action-rate alignment (ARA).

    Strata A-D come from the real conversion rates (``purchase`` share). Within a stratum, buyers of
    its merchants are pooled and, per action type, the share that took it is compared sim vs real
    with ``alignment``. ARA is the mean over (stratum, action) cells. By default the action types are
    those some real buyer took, so a type nobody takes cannot inflate the score with 0/0 = 1.
    """
    merchants = sorted(set(sim) & set(real))
    if not merchants:
        raise ValueError("no merchant is present in both the simulated and the real action counts")
    if actions is None:
        actions = sorted({a for m in merchants for a, n in real[m].took.items() if n > 0})
    real_cr = {m: real[m].took.get("purchase", 0) / max(real[m].buyers, 1) for m in merchants}
    strata = conversion_strata(real_cr)
    cells: dict[str, dict[str, float]] = {}
    for s in STRATA:
        members = [m for m in merchants if strata[m] == s]
        if not members:
            continue
        sim_share = stratum_action_shares(sim, members, actions)
        real_share = stratum_action_shares(real, members, actions)
        cells[s] = {a: alignment(sim_share[a], real_share[a]) for a in actions}
    values = [v for row in cells.values() for v in row.values()]
    return cells, float(np.mean(values)) if values else float("nan")


def jensen_shannon(p: Sequence[float], q: Sequence[float]) -> float:
    """Jensen-Shannon divergence in bits (0 identical, 1 disjoint) of two count or probability vectors."""
    p_arr = np.asarray(p, dtype=float)
    q_arr = np.asarray(q, dtype=float)
    if p_arr.shape != q_arr.shape:
        raise ValueError(f"distributions differ in length: {p_arr.shape} vs {q_arr.shape}")
    if p_arr.sum() <= 0 or q_arr.sum() <= 0:
        raise ValueError("each distribution needs positive mass")
    p_arr, q_arr = p_arr / p_arr.sum(), q_arr / q_arr.sum()
    mid = (p_arr + q_arr) / 2

    def kl(a: np.ndarray) -> float:
        nz = a > 0
        return float(np.sum(a[nz] * np.log2(a[nz] / mid[nz])))

    return (kl(p_arr) + kl(q_arr)) / 2


def categorical_js(sim: Mapping[str, float], real: Mapping[str, float]) -> float:
    """JS divergence of two categorical distributions given as label -> count."""
    labels = sorted(set(sim) | set(real))
    return jensen_shannon([sim.get(k, 0) for k in labels], [real.get(k, 0) for k in labels])


def length_js(sim_lengths: Sequence[int], real_lengths: Sequence[int], cap: int = 30) -> float:
    """JS divergence of session-length histograms; lengths above ``cap`` share the last bin."""
    bins = np.arange(1, cap + 2)
    sim_hist = np.bincount(np.clip(np.asarray(sim_lengths, int), 1, cap), minlength=cap + 1)[bins[:-1]]
    real_hist = np.bincount(np.clip(np.asarray(real_lengths, int), 1, cap), minlength=cap + 1)[bins[:-1]]
    return jensen_shannon(sim_hist, real_hist)


def invalid_action_rate(valid: Sequence[bool]) -> float:
    """Share of steps whose action the page could not perform."""
    arr = np.asarray(valid, dtype=bool)
    if arr.size == 0:
        raise ValueError("no steps to rate")
    return float(1.0 - arr.mean())


def cohens_d(a: Sequence[float], b: Sequence[float]) -> float:
    """Standardised mean difference with the pooled standard deviation (0 when both are constant)."""
    x, y = np.asarray(a, float), np.asarray(b, float)
    if len(x) < 2 or len(y) < 2:
        raise ValueError("Cohen's d needs at least two observations per group")
    pooled = ((len(x) - 1) * x.var(ddof=1) + (len(y) - 1) * y.var(ddof=1)) / (len(x) + len(y) - 2)
    diff = float(x.mean() - y.mean())
    if pooled == 0:
        return 0.0 if diff == 0 else math.copysign(math.inf, diff)
    return diff / math.sqrt(pooled)


def cliffs_delta(a: Sequence[float], b: Sequence[float]) -> float:
    """P(a > b) - P(a < b) over all pairs, in [-1, 1]; computed by sorting, not by all pairs."""
    x, y = np.sort(np.asarray(a, float)), np.sort(np.asarray(b, float))
    if len(x) == 0 or len(y) == 0:
        raise ValueError("Cliff's delta needs observations in both groups")
    greater = np.searchsorted(y, x, side="left").sum()  # pairs with y < x
    less = (len(y) - np.searchsorted(y, x, side="right")).sum()  # pairs with y > x
    return float((greater - less) / (len(x) * len(y)))


@dataclass(frozen=True)
class Variation:
    """How one behavioural metric varies across persona types."""

    statistic: float
    p_value: float
    largest_pair: tuple[int, int]
    cliffs_delta: float
    cohens_d: float


def variation_across_types(values_by_type: Mapping[int, Sequence[float]], min_size: int = 2) -> Variation:
    """Kruskal-Wallis across types, and the effect sizes of the pair of types that differ most."""
    groups = {k: np.asarray(v, float) for k, v in values_by_type.items() if len(v) >= min_size}
    if len(groups) < 2:
        raise ValueError(f"need at least two types with >= {min_size} buyers each")
    arrays = list(groups.values())
    if all(np.all(a == arrays[0][0]) for a in arrays):
        statistic, p_value = 0.0, 1.0  # scipy refuses identical values; there is no variation
    else:
        statistic, p_value = stats.kruskal(*arrays)
    keys = sorted(groups)
    best = max(
        ((i, j) for n, i in enumerate(keys) for j in keys[n + 1 :]),
        key=lambda ij: abs(cliffs_delta(groups[ij[0]], groups[ij[1]])),
    )
    return Variation(
        statistic=float(statistic),
        p_value=float(p_value),
        largest_pair=best,
        cliffs_delta=cliffs_delta(groups[best[0]], groups[best[1]]),
        cohens_d=cohens_d(groups[best[0]], groups[best[1]]),
    )


@dataclass(frozen=True)
class RateInterval:
    """A success rate with its confidence interval."""

    mean: float
    low: float
    high: float
    n: int


def success_rate_ci(per_seed_rates: Sequence[float], level: float = 0.95) -> RateInterval:
    """Mean of per-seed success rates with a Student-t interval over seeds (clipped to [0, 1])."""
    rates = np.asarray(per_seed_rates, float)
    if rates.size == 0:
        raise ValueError("no seeds to summarise")
    mean = float(rates.mean())
    if rates.size == 1:
        return RateInterval(mean, mean, mean, 1)
    half = float(stats.t.ppf(0.5 + level / 2, rates.size - 1) * rates.std(ddof=1) / math.sqrt(rates.size))
    return RateInterval(mean, max(0.0, mean - half), min(1.0, mean + half), int(rates.size))


def paired_difference_ci(
    a: Sequence[float], b: Sequence[float], level: float = 0.95
) -> dict[str, float | None]:
    """Mean of the paired differences ``a[i] - b[i]`` (e.g. two systems' success rates on the same seeds)
    with a Student-t interval over the pairs: ``diff``, ``low``, ``high`` (None with one pair), ``n``."""
    d = np.asarray(a, float) - np.asarray(b, float)
    if d.size == 0:
        raise ValueError("no pairs to compare")
    mean = float(d.mean())
    if d.size == 1:
        return {"diff": mean, "low": None, "high": None, "n": 1}
    half = float(stats.t.ppf(0.5 + level / 2, d.size - 1) * d.std(ddof=1) / math.sqrt(d.size))
    return {"diff": mean, "low": mean - half, "high": mean + half, "n": int(d.size)}


def wilson_interval(successes: int, trials: int, level: float = 0.95) -> RateInterval:
    """Wilson score interval for a pooled success count (used when there is a single seed)."""
    if trials <= 0:
        raise ValueError("trials must be positive")
    z = float(stats.norm.ppf(0.5 + level / 2))
    p = successes / trials
    centre = (p + z * z / (2 * trials)) / (1 + z * z / trials)
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / (1 + z * z / trials)
    return RateInterval(p, max(0.0, centre - half), min(1.0, centre + half), trials)
