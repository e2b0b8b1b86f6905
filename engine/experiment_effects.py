"""Effects of a treatment on each outcome, per buyer type and overall, with paired intervals and MDEs.

Visits of the control and of a treatment arm are *paired*: the same simulated buyer (merchant, persona
code, seeds) in both arms under common random numbers. Matching is by merchant, code and rank within
them (sim_buyer_id order), which is the buyer itself under common random numbers and an arbitrary
pairing of two independent populations otherwise. The population is stratified (each merchant's
code counts are fixed quotas), so the estimates are stratified too: a *cell* is one merchant x code;
a scope (every buyer, one type, one merchant) weights its cells by their visits, i.e. by the
population itself, each merchant's own persona mix.

For one scope and outcome:

- ``effect``: mean over the scope's visits of (treated − control), the paired difference;
- ``low, high``: its 95% percentile interval from a bootstrap over buyers, resampled within cells
  (each replicate draws every cell's buyers with replacement; a buyer's two visits stay together),
  each cell's spread scaled by sqrt(n / (n - 1)) so that small cells are not too sure of themselves;
- ``unpaired_low, unpaired_high``: the same with the two arms resampled independently, the interval
  an A/B test of two separate populations of the same size would give;
- ``se`` = sqrt(sum_c w_c^2 var(d_c) / n_c) (paired) and ``unpaired_se`` with var(treated_c) +
  var(control_c) in place of var(d_c); ``variance_ratio`` = se^2 / unpaired_se^2: the share of the
  variance pairing leaves (0.25: the same precision without pairing needs 4x the visits);
- ``mde`` = 2.80 x se: the smallest true effect this run detects with 80% power in a two-sided test
  at alpha 0.05 (z_0.975 + z_0.8 = 1.96 + 0.84);
- ``fit_sd``: None here; with posterior draws of the agent's price response, the effect's spread
  over them, which the interval and MDE then include, and ``fit_noise`` the draws' own standard
  error (engine/experiment_fit.py);
- ``changed``: the share of the scope's buyers whose visit took another path in the treatment arm
  (any action different; common random numbers only, else None). A type at 0 did exactly the same in
  both arms: the policy did not respond to what the treatment changes (a Markov chain reads no
  prices), so its effects are only what the change does by itself (revenue at the new prices).

Percentile intervals of a mean of many visits are accurate at the sample sizes an experiment has
(the bootstrap distribution of a mean is close to normal there, and needs no assumption about the
outcomes' shape, such as revenue's long tail); every replicate of a cell is drawn at once, as one
array of indices, and averaged in numpy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from engine.experiment_outcomes import METRICS

LEVEL = 0.95
Z_ALPHA = 1.959964
"""Two-sided test at alpha 0.05."""
Z_POWER = 0.841621
"""80% power."""
MDE_FACTOR = Z_ALPHA + Z_POWER
"""A true effect of MDE_FACTOR standard errors is detected with 80% power (2.80)."""
ALL = "all"
"""``merchant`` of a scope over every merchant."""
MAX_DRAWS = 4_000_000
"""Resampled values held at once (replicates x cell visits x outcomes); larger cells go in slices."""


@dataclass
class Pairs:
    """Matched visits of the control and one treatment arm, one row per buyer."""

    merchants: np.ndarray
    """(n,) merchant ids."""
    codes: np.ndarray
    """(n,) persona codes."""
    control: np.ndarray
    """(n, len(METRICS)) outcomes in the control arm."""
    treated: np.ndarray
    """(n, len(METRICS)) outcomes of the same buyers in the treatment arm."""
    same_buyers: bool
    """Each pair is one simulated buyer (same sim_buyer_id): common random numbers."""
    changed: np.ndarray | None = None
    """(n,) whether the buyer's visit took another path in the treatment arm; None: unknown."""


def pair_visits(control: pl.DataFrame, treated: pl.DataFrame) -> Pairs:
    """Match the arms' visits by merchant, code and rank within them; refuses different populations."""
    key = ["merchant_id", "code"]

    def ranked(frame: pl.DataFrame) -> pl.DataFrame:
        return frame.sort("sim_buyer_id").with_columns(rank=pl.int_range(pl.len()).over(key))

    c, t = ranked(control), ranked(treated)
    joined = c.join(t, on=[*key, "rank"], how="inner", suffix="_t").sort("sim_buyer_id")
    if not (joined.height == c.height == t.height):
        raise ValueError(
            f"the arms hold different populations ({c.height} and {t.height} visits, {joined.height} matched by"
            " merchant and type): were they simulated with the same merchants, distributions and sizes?"
        )
    return Pairs(
        merchants=joined["merchant_id"].to_numpy(),
        codes=joined["code"].to_numpy().astype(np.int64),
        control=joined.select(METRICS).to_numpy().astype(np.float64),
        treated=joined.select([f"{m}_t" for m in METRICS]).to_numpy().astype(np.float64),
        same_buyers=bool((joined["sim_buyer_id"] == joined["sim_buyer_id_t"]).all()),
        changed=(joined["path"] != joined["path_t"]).to_numpy() if "path" in joined.columns else None,
    )


def _cell_replicates(
    control: np.ndarray, treated: np.ndarray, replicates: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """(replicates, M) resampled mean paired differences of one cell, and the unpaired ones (the
    control drawn independently of the treated)."""
    n, m = control.shape
    diff = treated - control
    paired = np.empty((replicates, m))
    unpaired = np.empty_like(paired)
    step = max(1, MAX_DRAWS // (n * m))  # replicates per slice: bounded memory for large cells
    for lo in range(0, replicates, step):
        size = min(step, replicates - lo)
        drawn = rng.integers(0, n, size=(size, n))
        paired[lo : lo + size] = diff[drawn].mean(axis=1)
        unpaired[lo : lo + size] = treated[drawn].mean(axis=1) - control[
            rng.integers(0, n, size=(size, n))
        ].mean(axis=1)
    # A resampled mean of n values varies by (n - 1) / n of the mean's variance; small cells (a rare
    # type at one merchant) would get intervals too narrow, so the spread is scaled back up.
    inflate = np.sqrt(n / (n - 1)) if n > 1 else 1.0
    centre_p, centre_u = diff.mean(axis=0), treated.mean(axis=0) - control.mean(axis=0)
    return centre_p + (paired - centre_p) * inflate, centre_u + (unpaired - centre_u) * inflate


def _percentiles(replicates: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The LEVEL percentile interval of each column; sums that cancel to rounding noise read as 0."""
    tail = (1 - LEVEL) / 2 * 100
    low, high = np.percentile(replicates, [tail, 100 - tail], axis=0)
    scale = np.abs(replicates).max(axis=0) + 1.0
    return np.where(np.abs(low) < 1e-12 * scale, 0.0, low), np.where(np.abs(high) < 1e-12 * scale, 0.0, high)


def _var(x: np.ndarray) -> np.ndarray:
    return x.var(axis=0, ddof=1) if len(x) > 1 else np.zeros(x.shape[1])


def _value(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


def estimate(
    pairs: Pairs,
    treatment: str,
    replicates: int = 1000,
    seed: int | Sequence[int] = 0,
    per_merchant: bool | None = None,
) -> list[dict[str, Any]]:
    """Tidy rows, one per (scope, metric): every buyer, each type, and (with several merchants, or
    ``per_merchant``) each merchant; see the module docstring for the columns."""
    rng = np.random.default_rng(seed)
    cells: dict[tuple[str, int], np.ndarray] = {}
    for i, key in enumerate(zip(pairs.merchants.tolist(), pairs.codes.tolist(), strict=True)):
        cells.setdefault(key, []).append(i)  # type: ignore[arg-type]
    keys = sorted(cells)
    index = [np.asarray(cells[k]) for k in keys]
    d = pairs.treated - pairs.control
    sizes = np.array([len(i) for i in index], dtype=np.float64)
    reps = [_cell_replicates(pairs.control[i], pairs.treated[i], replicates, rng) for i in index]
    paired_reps = np.stack([r[0] for r in reps])  # (cells, B, M)
    unpaired_reps = np.stack([r[1] for r in reps])
    var_d = np.stack([_var(d[i]) for i in index])  # (cells, M)
    var_u = np.stack([_var(pairs.treated[i]) + _var(pairs.control[i]) for i in index])
    means_c = np.stack([pairs.control[i].mean(0) for i in index])
    means_t = np.stack([pairs.treated[i].mean(0) for i in index])
    # The effect is the mean difference, not means_t - means_c: identical visits give exactly 0.
    means_d = np.stack([d[i].mean(0) for i in index])
    # Whether a path changed means something only when each pair is one buyer.
    paths = pairs.changed if pairs.same_buyers else None
    changed = None if paths is None else np.array([paths[i].mean() for i in index])

    merchants = sorted({m for m, _ in keys})
    scopes: list[tuple[str, int | None]] = [(ALL, None), *((ALL, c) for c in sorted({c for _, c in keys}))]
    if per_merchant if per_merchant is not None else len(merchants) > 1:
        scopes += [(m, None) for m in merchants]
    rows = []
    for merchant, code in scopes:
        member = np.array(
            [(merchant in (ALL, m)) and (code is None or code == c) for m, c in keys], dtype=np.float64
        )
        n = float((member * sizes).sum())
        w = member * sizes / n  # each cell by its visits: the population's own mix
        se = np.sqrt((w[:, None] ** 2 * var_d / sizes[:, None]).sum(0))
        se_u = np.sqrt((w[:, None] ** 2 * var_u / sizes[:, None]).sum(0))
        control, treated = w @ means_c, w @ means_t
        low, high = _percentiles(np.einsum("c,cbm->bm", w, paired_reps))
        u_low, u_high = _percentiles(np.einsum("c,cbm->bm", w, unpaired_reps))
        effects = w @ means_d
        touched = None if changed is None else float(w @ changed)
        for j, metric in enumerate(METRICS):
            effect = effects[j]
            rows.append(
                {
                    "treatment": treatment,
                    "merchant": merchant,
                    "type": code,
                    "metric": metric,
                    "visits": int(n),
                    "control": float(control[j]),
                    "treated": float(treated[j]),
                    "effect": float(effect),
                    "relative": _value(effect / control[j]) if control[j] != 0 else None,
                    "low": float(min(low[j], effect)),
                    "high": float(max(high[j], effect)),
                    "se": float(se[j]),
                    "unpaired_low": float(min(u_low[j], effect)),
                    "unpaired_high": float(max(u_high[j], effect)),
                    "unpaired_se": float(se_u[j]),
                    "variance_ratio": _value(se[j] ** 2 / se_u[j] ** 2) if se_u[j] > 0 else None,
                    "mde": float(MDE_FACTOR * se[j]),
                    "significant": bool(low[j] > 0 or high[j] < 0),
                    "changed": touched,
                    "fit_sd": None,
                    "fit_noise": None,
                }
            )
    return rows


def effects_frame(rows: list[dict[str, Any]]) -> pl.DataFrame:
    """The tidy rows as a frame with stable column types (``type`` null for a scope over all types)."""
    schema = {
        "treatment": pl.String,
        "merchant": pl.String,
        "type": pl.Int64,
        "metric": pl.String,
        "visits": pl.Int64,
        **{
            k: pl.Float64
            for k in (
                "control",
                "treated",
                "effect",
                "relative",
                "low",
                "high",
                "se",
                "unpaired_low",
                "unpaired_high",
                "unpaired_se",
                "variance_ratio",
                "mde",
            )
        },
        "significant": pl.Boolean,
        "changed": pl.Float64,
        "fit_sd": pl.Float64,
        "fit_noise": pl.Float64,
    }
    return pl.DataFrame(rows, schema=schema)


def per_visit_variance(pairs: Pairs, metric: str) -> dict[int | None, float]:
    """The variance of one visit's paired difference in ``metric``, per type and over every buyer
    (stratified: the cells' variances weighted by their visits), as a planning input."""
    j = METRICS.index(metric)
    d = pairs.treated[:, j] - pairs.control[:, j]
    frame = pl.DataFrame({"m": pairs.merchants, "c": pairs.codes, "d": d})
    cells = frame.group_by("m", "c").agg(
        pl.len().alias("n"), pl.col("d").var(ddof=1).fill_null(0.0).alias("v")
    )
    out: dict[int | None, float] = {}
    for (code,), group in cells.group_by("c"):
        out[int(code)] = float((group["n"] * group["v"]).sum() / group["n"].sum())
    out[None] = float((cells["n"] * cells["v"]).sum() / cells["n"].sum())
    return out
