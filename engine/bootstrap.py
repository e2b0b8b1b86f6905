"""Where a simulator stands between knowing nothing and being perfect, on this data.

Every fidelity metric is noisy on stores with a few dozen real sessions: a simulator that reproduces
each merchant's behaviour exactly still scores well below 1, because the real side is a small sample.
This module puts each figure in its place:

- **ceiling**: the metric of a *perfect simulator*, whose visits are drawn from each merchant's own
  real units, with the run's number of simulated visits, against an independent resample of the real
  units at the real sample size. Also at unlimited visits (the simulated side is the real units'
  exact proportions): the part of the gap that more visits cannot close is the real side's noise.
- **floor**: the same for a simulator that knows nothing about the merchant: its visits are drawn from
  a pool of other merchants' units (the training merchants when given, else every other evaluated
  merchant), the same for every merchant up to the visit count.
- **intervals**: a bias-corrected percentile bootstrap per system over merchants (drawn with
  replacement) and units within them, on both sides. CRA, ARA and JS are biased by sampling noise
  (noise only lowers a min/max ratio and raises a divergence), and resampling both sides adds that
  noise a second time, so the replicates are shifted by their bias (their mean minus the observed
  value) before the percentiles are read: the interval is the bootstrap's spread around the observed
  figure, on the same footing as the ceiling. **Paired** intervals of each difference use the same
  merchant draws and the same real resamples for both systems, so what they share cancels.
- **normalised score**: ``(value - floor) / (ceiling - floor)``, 1 = perfect, 0 = knows nothing, for
  lower-is-better metrics too.
- **effect ceiling**: a perfect simulator's paired difference over a perfect simulator given another
  merchant's buyers (visits drawn from another evaluated merchant's real units), against the same
  real resamples: the most a "persona beats another merchant's codes" effect can be, and how often
  its interval would clear 0. Each merchant's real units stand for its truth, as for the ceiling,
  so merchants that differ only by sampling noise still show a gain: it is an upper bound. On the
  Tmall samples a perfect simulator clears 0 on ARA in about half the draws (benchmarks/RESULTS.md).

The bootstrap is non-parametric, over units (a real session or buyer, a simulated visit): a unit's
conversion, actions and length are resampled together, so the metrics that mix them (ARA's strata are
cut by conversion, JS compares action and length profiles) keep their joint structure without a model
of it. A parametric draw per figure would have to model that dependence and would add assumptions for
nothing. A resample of a few dozen units fills fewer histogram bins than fresh units do, which biases
the divergences: their ceiling and floor are corrected by the bias measured one level down (the same
construction with a real resample standing in for the truth). The rates need no correction. Measured
on hand-made merchants (tests/engine/test_bootstrap.py: 30 merchants, 60 real sessions and 300 visits
each, 20 fresh draws as the truth), the ceiling is within 0.03 of a perfect simulator's mean CRA, ARA,
JS of actions and cr_corr; for the JS of session lengths it stays optimistic (0.052 against 0.066), so
read that ceiling as a bound. With a merchant's units compressed to their distinct feature rows, one multinomial per
merchant draws all resamples at once (``resample_sums``), so a study's bootstrap takes seconds.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from engine.batch_metrics import METRICS, RANGES, Sums, fidelity_batch
from engine.evaluate import Units

LEVEL = 0.95
DIVERGENCES = ("js_action", "js_length")
"""Metrics over sparse histograms, whose bootstrap bias ``Bootstrap._debiased`` removes."""
NORMALISED_TARGET = 0.95
"""A study's target for a normalised score; ``uncertainty`` says how often a perfect simulator meets it."""


def compress(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A set of units as its distinct feature rows and their shares (what a resample draws from)."""
    unique, counts = np.unique(rows, axis=0, return_counts=True)
    return unique, counts / counts.sum()


def resample_sums(
    rows: np.ndarray | tuple[np.ndarray, np.ndarray], draws: int, replicates: int, rng: np.random.Generator
) -> np.ndarray:
    """(replicates, features): sums of ``draws`` rows drawn with replacement, per replicate; ``rows``
    may be given compressed (``compress``) when it is drawn from many times."""
    unique, shares = rows if isinstance(rows, tuple) else compress(rows)
    return rng.multinomial(draws, shares, size=replicates) @ unique


def _interval(samples: np.ndarray, level: float = LEVEL) -> dict[str, float | None]:
    finite = samples[np.isfinite(samples)]
    if finite.size == 0:
        return {"mean": None, "low": None, "high": None}
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(finite, [tail, 100 - tail])
    return {"mean": float(finite.mean()), "low": float(low), "high": float(high)}


def _centred(samples: np.ndarray, value: float | None) -> np.ndarray:
    """Replicates shifted so that their mean is the observed value (the bootstrap's bias removed)."""
    finite = np.isfinite(samples)
    if value is None or not finite.any():
        return samples
    return samples + (value - samples[finite].mean())


def _finite(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


def _share_normalised(ceiling: np.ndarray, bottom: float | None, top: float | None) -> float | None:
    """The share of a perfect simulator's replicates (``ceiling``) whose normalised score is at least
    ``NORMALISED_TARGET``; about half by construction, so such a target on a point estimate is met
    by a perfect simulator about half the time."""
    scores = _normalise(ceiling[np.isfinite(ceiling)], bottom, top)
    if scores.size == 0 or not np.isfinite(scores).any():
        return None
    return float(np.mean(scores >= NORMALISED_TARGET))


def _normalise(values: np.ndarray, floor: float | None, ceiling: float | None) -> np.ndarray:
    if floor is None or ceiling is None or abs(ceiling - floor) < 1e-9:
        return np.full(np.shape(values), np.nan)
    return (values - floor) / (ceiling - floor)


class Bootstrap:
    """Resamples of one comparison: real units of some merchants against each system's visits."""

    def __init__(
        self,
        real: Units,
        systems: Mapping[str, Units],
        pool: Units | None = None,
        replicates: int = 1000,
        seed: int = 0,
    ) -> None:
        if replicates < 2:
            raise ValueError(f"the bootstrap needs at least 2 replicates, got {replicates}")
        merchants = set(real.rows)
        for units in systems.values():
            merchants &= set(units.rows)
            if units.actions != real.actions:
                raise ValueError("simulated and real units must share one action vocabulary")
        self.merchants = sorted(merchants)
        if not self.merchants:
            raise ValueError("no merchant has both real units and simulated visits in every system")
        self.real, self.systems, self.pool = real, dict(systems), pool
        self.replicates, self.actions = replicates, len(real.actions)
        self.rng = np.random.default_rng(seed)
        self._distinct: dict[tuple[int, str], tuple[np.ndarray, np.ndarray]] = {}
        # First level: each merchant's real units resampled, kept as weights over its distinct rows, so
        # that a resample can stand in for the truth one level down (``_debiased``).
        self._real_weights = {
            m: self.rng.multinomial(len(real.rows[m]), self._compressed(real, m)[1], size=replicates)
            for m in self.merchants
        }
        self.real_draws = self._weighted(self._real_weights)
        self.real_draws2 = self._weighted(
            {
                m: self.rng.multinomial(len(real.rows[m]), w / w.sum(1, keepdims=True))
                for m, w in self._real_weights.items()
            }
        )
        self.merchant_draws = self.rng.integers(0, len(self.merchants), (replicates, len(self.merchants)))
        self._cache: dict[str, dict[str, np.ndarray]] = {}

    def _stack(self, per_merchant: Sequence[np.ndarray]) -> Sums:
        return Sums.from_rows(np.stack(per_merchant, axis=1), self.actions)

    def _resampled(self, units: Units, draws: Mapping[str, int] | None = None) -> np.ndarray:
        """(B, M, D): each merchant's units resampled (``draws`` of them, default their own count)."""
        return np.stack(
            [
                resample_sums(
                    self._compressed(units, m),
                    (draws or {}).get(m, len(units.rows[m])),
                    self.replicates,
                    self.rng,
                )
                for m in self.merchants
            ],
            axis=1,
        )

    def _compressed(self, units: Units, merchant: str) -> tuple[np.ndarray, np.ndarray]:
        key = (id(units), merchant)
        if key not in self._distinct:
            self._distinct[key] = compress(units.rows[merchant])
        return self._distinct[key]

    def _weighted(self, weights: Mapping[str, np.ndarray]) -> np.ndarray:
        """(B, M, D): each merchant's distinct real rows summed with per-replicate weights."""
        return np.stack([weights[m] @ self._compressed(self.real, m)[0] for m in self.merchants], axis=1)

    def _from_resamples(self, draws: Mapping[str, int]) -> np.ndarray:
        """(B, M, D): ``draws`` units per merchant drawn from each replicate's real resample."""
        return self._weighted(
            {
                m: self.rng.multinomial(draws[m], w / w.sum(1, keepdims=True))
                for m, w in self._real_weights.items()
            }
        )

    def _debiased(self, first: dict[str, np.ndarray], second: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """``first`` shifted by the bootstrap's own bias, measured one level down (``second``: the same
        construction with a real resample as the truth). Resampling a few dozen units makes clumpier
        samples than fresh ones; a divergence over a sparse histogram grows with that clumpiness."""
        out = dict(first)
        for k in DIVERGENCES:
            a, b = first[k][np.isfinite(first[k])], second[k][np.isfinite(second[k])]
            if a.size and b.size:
                out[k] = first[k] - (b.mean() - a.mean())
        return out

    def _exact(self, units: Units) -> Sums:
        return self._stack([units.rows[m].sum(0)[None] for m in self.merchants])

    def _by_merchant_draws(self, summed: np.ndarray) -> np.ndarray:
        return np.take_along_axis(summed, self.merchant_draws[..., None], axis=1)

    def point(self, name: str) -> dict[str, float | None]:
        """Each metric of one system on the data as it is (no resampling)."""
        values = fidelity_batch(self._exact(self.systems[name]), self._exact(self.real))
        return {k: _finite(v[0]) for k, v in values.items()}

    def replicates_of(self, name: str) -> dict[str, np.ndarray]:
        """Each metric of one system per bootstrap replicate (merchants and units resampled)."""
        if name not in self._cache:
            sim = self._by_merchant_draws(self._resampled(self.systems[name]))
            real = self._by_merchant_draws(self.real_draws)
            self._cache[name] = fidelity_batch(
                Sums.from_rows(sim, self.actions), Sums.from_rows(real, self.actions), self.merchant_draws
            )
        return self._cache[name]

    def ceiling(self, visits: Mapping[str, int] | None) -> dict[str, np.ndarray]:
        """Per replicate, a perfect simulator's metrics: ``visits`` draws of the merchant's own real
        units (None: unlimited visits, the real units' exact proportions) against a real resample."""
        if visits is None:
            exact = np.stack([self.real.rows[m].sum(0) for m in self.merchants])
            sim, sim2 = np.broadcast_to(exact, self.real_draws.shape), self.real_draws
        else:
            sim, sim2 = self._resampled(self.real, visits), self._from_resamples(visits)
        return self._debiased(self._metrics(sim, self.real_draws), self._metrics(sim2, self.real_draws2))

    def floor(self, visits: Mapping[str, int]) -> dict[str, np.ndarray]:
        """Per replicate, the metrics of a simulator that draws every merchant's visits from the pool
        (the training merchants' units, else every other evaluated merchant's); NaN (no floor) for one
        merchant without a pool, which has no other merchant to draw from."""
        if self.pool is None and len(self.merchants) < 2:
            return {k: np.full(self.replicates, np.nan) for k in METRICS}
        if self.pool is not None:
            pooled = compress(np.concatenate(list(self.pool.rows.values())))
            pools = [pooled] * len(self.merchants)
        else:
            # One set of distinct rows for all merchants; each pool is the others' counts over it.
            blocks = [self.real.rows[m] for m in self.merchants]
            unique, inverse = np.unique(np.concatenate(blocks), axis=0, return_inverse=True)
            owner = np.repeat(np.arange(len(blocks)), [len(b) for b in blocks])
            counts = np.zeros((len(blocks), len(unique)))
            np.add.at(counts, (owner, inverse.ravel()), 1.0)
            others = counts.sum(0) - counts
            others[others.sum(1) == 0] = counts[others.sum(1) == 0]  # a merchant no other shares rows with
            pools = [(unique, row / row.sum()) for row in others]
        draws = [
            np.stack(
                [
                    resample_sums(p, visits[m], self.replicates, self.rng)
                    for m, p in zip(self.merchants, pools, strict=True)
                ],
                axis=1,
            )
            for _ in range(2)
        ]
        return self._debiased(
            self._metrics(draws[0], self.real_draws), self._metrics(draws[1], self.real_draws2)
        )

    def effect_ceiling(self, visits: Mapping[str, int]) -> dict[str, np.ndarray] | None:
        """Per replicate, a perfect simulator's metrics minus those of a perfect simulator given another
        merchant's buyers (``visits`` draws of that merchant's real units; a fixed derangement of the
        merchants), both against the same real resample: the most a paired effect over another
        merchant's codes can be on this data. None with fewer than two merchants."""
        if len(self.merchants) < 2:
            return None
        order = self.rng.permutation(len(self.merchants))
        other = {
            self.merchants[order[i]]: self.merchants[order[(i + 1) % len(order)]] for i in range(len(order))
        }
        wrong = np.stack(
            [
                resample_sums(self._compressed(self.real, other[m]), visits[m], self.replicates, self.rng)
                for m in self.merchants
            ],
            axis=1,
        )
        own = self._metrics(self._resampled(self.real, visits), self.real_draws)
        mixed = self._metrics(wrong, self.real_draws)
        return {k: own[k] - mixed[k] for k in METRICS}

    def _metrics(self, sim: np.ndarray, real: np.ndarray) -> dict[str, np.ndarray]:
        return fidelity_batch(Sums.from_rows(sim, self.actions), Sums.from_rows(real, self.actions))

    def visits(self, name: str) -> dict[str, int]:
        return {m: len(self.systems[name].rows[m]) for m in self.merchants}


def uncertainty(
    real: Units,
    systems: Mapping[str, Units],
    main: str,
    compare: Sequence[str] = (),
    pool: Units | None = None,
    replicates: int = 1000,
    seed: int = 0,
) -> dict:
    """Every system's metrics with intervals, the ceiling and floor, normalised scores, the paired
    differences ``main - other`` for each of ``compare``, and ``effect_ceiling``: a perfect simulator's
    difference over one given another merchant's buyers, with ``power``, the share of replicates in
    which it exceeds 1.96 of its standard deviations (about how often a perfect simulator's paired
    interval over another merchant's codes would lie above 0; JSON-ready; None where undefined)."""
    boot = Bootstrap(real, systems, pool, replicates, seed)
    visits = boot.visits(main)
    ceiling, unlimited, floor = boot.ceiling(visits), boot.ceiling(None), boot.floor(visits)
    bounds = {
        k: {
            "ceiling": _interval(ceiling[k]),
            "ceiling_unlimited": _interval(unlimited[k]),
            "floor": _interval(floor[k]),
        }
        for k in METRICS
    }
    for k, b in bounds.items():
        b["ceiling"]["meets_target"] = _share_normalised(ceiling[k], b["floor"]["mean"], b["ceiling"]["mean"])
    points = {name: boot.point(name) for name in systems}
    out_systems = {}
    for name in systems:
        point, draws = points[name], boot.replicates_of(name)
        row = {}
        for k in METRICS:
            value = point[k]
            centred = _centred(draws[k], value)
            spread = _interval(np.clip(centred, *RANGES[k]))
            top, bottom = bounds[k]["ceiling"]["mean"], bounds[k]["floor"]["mean"]
            norm = _interval(_normalise(centred, bottom, top))
            row[k] = {
                "value": value,
                "low": spread["low"],
                "high": spread["high"],
                "normalised": None if value is None else _finite(_normalise(np.array(value), bottom, top)),
                "normalised_low": norm["low"],
                "normalised_high": norm["high"],
            }
        for side in ("sim", "real"):
            value = point[f"{side}_conversion"]
            spread = _interval(np.clip(_centred(draws[f"{side}_conversion"], value), 0.0, 1.0))
            row[f"{side}_conversion"] = {"value": value, "low": spread["low"], "high": spread["high"]}
        out_systems[name] = row
    effects = {}
    main_draws = boot.replicates_of(main)
    for other in compare:
        if other == main or other not in systems:
            continue
        other_draws, diffs = boot.replicates_of(other), {}
        point_main, point_other = points[main], points[other]
        for k in METRICS:
            diff = None if point_main[k] is None or point_other[k] is None else point_main[k] - point_other[k]
            spread = _interval(_centred(main_draws[k] - other_draws[k], diff))
            claimed = spread["low"] is not None and (spread["low"] > 0 or spread["high"] < 0)
            diffs[k] = {"diff": diff, "low": spread["low"], "high": spread["high"], "claimed": bool(claimed)}
        effects[other] = diffs
    # Drawn last, so that every figure above stays what the same seed gave before it existed.
    gains = boot.effect_ceiling(visits)
    effect_ceiling = None
    if gains is not None:
        effect_ceiling = {}
        for k in METRICS:
            finite = gains[k][np.isfinite(gains[k])] * (-1 if k in DIVERGENCES else 1)  # lower is better
            power = float(np.mean(finite > 1.96 * finite.std())) if finite.size else None
            effect_ceiling[k] = {**_interval(gains[k]), "power": power}
    sizes = np.array([len(real.rows[m]) for m in boot.merchants])
    drawn = np.array(list(visits.values()))
    return {
        "method": "non-parametric bootstrap over merchants and units (engine/bootstrap.py)",
        "replicates": replicates,
        "seed": seed,
        "level": LEVEL,
        "merchants": len(boot.merchants),
        "real_units": {"min": int(sizes.min()), "median": float(np.median(sizes)), "max": int(sizes.max())},
        "visits": {"min": int(drawn.min()), "median": float(np.median(drawn)), "max": int(drawn.max())},
        "floor_pool": (
            "training merchants"
            if pool is not None
            else "the other evaluated merchants"
            if len(boot.merchants) > 1
            else None
        ),
        "bounds": bounds,
        "systems": out_systems,
        "effects": {"main": main, "vs": effects},
        "effect_ceiling": effect_ceiling,
    }
