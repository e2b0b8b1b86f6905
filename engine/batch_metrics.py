"""The fidelity metrics of ``engine/metrics.py`` over many resamples at once.

The bootstrap (``engine/bootstrap.py``) needs each metric for a thousand resamples of both sides. A
side of one resample is summed into ``Sums``: per merchant, the units, the converted units, the units
that took each action, the count of each action and the histogram of session lengths. Every metric is
then a few array operations over ``(replicates, merchants, ...)``; the definitions are the scalar
ones of ``engine/metrics.py`` (tests check both agree on the unresampled data).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engine.metrics import STRATA

METRICS = ("cra", "ara", "js_action", "js_length", "cr_corr")
"""The resampled fidelity metrics, in report order."""
LOWER_IS_BETTER = frozenset({"js_action", "js_length"})
RANGES = {
    "cra": (0.0, 1.0),
    "ara": (0.0, 1.0),
    "js_action": (0.0, 1.0),
    "js_length": (0.0, 1.0),
    "cr_corr": (-1.0, 1.0),
}
"""Where each metric can lie (an interval is clipped to it)."""


@dataclass(frozen=True)
class Sums:
    """One side's per-merchant sums over ``B`` resamples (arrays lead with ``(B, M)``)."""

    n: np.ndarray
    converted: np.ndarray
    took: np.ndarray
    """(B, M, A): units that took each action at least once."""
    kinds: np.ndarray
    """(B, M, A): steps or events of each action."""
    lengths: np.ndarray
    """(B, M, L): units' sessions per length bin."""

    @classmethod
    def from_rows(cls, summed: np.ndarray, actions: int) -> Sums:
        """Split summed feature rows (``engine.evaluate.Units`` layout, leading dims kept)."""
        a = actions
        return cls(
            summed[..., 0],
            summed[..., 1],
            summed[..., 2 : 2 + a],
            summed[..., 2 + a : 2 + 2 * a],
            summed[..., 2 + 2 * a :],
        )


def alignment(sim: np.ndarray, real: np.ndarray) -> np.ndarray:
    """Elementwise min/max of two non-negative rates, 1 where both are zero."""
    hi = np.maximum(sim, real)
    return np.where(hi > 0, np.minimum(sim, real) / np.where(hi > 0, hi, 1.0), 1.0)


def _rate(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    return np.where(den > 0, num / np.where(den > 0, den, 1.0), 0.0)


def jensen_shannon(p: np.ndarray, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """JS divergence in bits over the last axis, and where it is defined (both sides have mass)."""
    ps, qs = p.sum(-1, keepdims=True), q.sum(-1, keepdims=True)
    ok = (ps[..., 0] > 0) & (qs[..., 0] > 0)
    p, q = _rate(p, ps), _rate(q, qs)
    mid = (p + q) / 2

    def kl(a: np.ndarray) -> np.ndarray:
        safe = np.where(a > 0, a / np.where(mid > 0, mid, 1.0), 1.0)
        return (a * np.log2(safe)).sum(-1)

    return (kl(p) + kl(q)) / 2, ok


def _masked_mean(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    count = mask.sum(-1)
    total = np.where(mask, values, 0.0).sum(-1)
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def strata(cr_real: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """(B, M) stratum index 0..3 (A..D): ranks by real conversion, descending, ties by merchant id,
    cut into four groups whose sizes differ by at most one (``metrics.conversion_strata``)."""
    m = cr_real.shape[-1]
    order = np.lexsort((ids, -cr_real), axis=-1)
    sizes = [len(g) for g in np.array_split(np.arange(m), len(STRATA))]
    group_at = np.repeat(np.arange(len(STRATA)), sizes)
    out = np.empty_like(order)
    np.put_along_axis(out, order, np.broadcast_to(group_at, order.shape), axis=-1)
    return out


def pearson(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pearson r over the last axis; nan where either side is constant."""
    xc, yc = x - x.mean(-1, keepdims=True), y - y.mean(-1, keepdims=True)
    sx, sy = np.sqrt((xc**2).sum(-1)), np.sqrt((yc**2).sum(-1))
    ok = (sx > 1e-12) & (sy > 1e-12) & (x.shape[-1] > 1)
    # Clipped: rounding can carry a perfect correlation a hair past 1.
    return np.where(ok, np.clip((xc * yc).sum(-1) / np.where(ok, sx * sy, 1.0), -1.0, 1.0), np.nan)


def fidelity_batch(sim: Sums, real: Sums, ids: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Every metric of ``METRICS`` per resample, and both sides' pooled conversion: arrays of shape (B,).

    ``ids`` (B, M) names each merchant column by its position among the sorted merchants, which
    breaks conversion ties when strata are cut (a merchant drawn twice keeps its id).
    """
    cr_sim, cr_real = _rate(sim.converted, sim.n), _rate(real.converted, real.n)
    if ids is None:
        ids = np.broadcast_to(np.arange(cr_real.shape[-1]), cr_real.shape)
    out = {"cra": alignment(cr_sim, cr_real).mean(-1), "cr_corr": pearson(cr_sim, cr_real)}
    out["sim_conversion"] = _rate(sim.converted.sum(-1), sim.n.sum(-1))
    out["real_conversion"] = _rate(real.converted.sum(-1), real.n.sum(-1))

    stratum = strata(cr_real, ids)
    member = (stratum[..., None] == np.arange(len(STRATA))).astype(float)  # (B, M, S)
    pooled = {
        side: (
            np.einsum("bms,bma->bsa", member, s.took),
            np.einsum("bms,bm->bs", member, s.n),
        )
        for side, s in (("sim", sim), ("real", real))
    }
    share_sim = _rate(pooled["sim"][0], pooled["sim"][1][..., None])
    share_real = _rate(pooled["real"][0], pooled["real"][1][..., None])
    taken = real.took.sum(1) > 0  # (B, A): kinds some real buyer took
    populated = member.sum(1) > 0  # (B, S)
    cells = populated[..., None] & taken[:, None, :]
    ara = alignment(share_sim, share_real)
    out["ara"] = _masked_mean(ara.reshape(len(ara), -1), cells.reshape(len(cells), -1))

    js_action, ok_action = jensen_shannon(sim.kinds, real.kinds)
    out["js_action"] = _masked_mean(js_action, ok_action)
    js_length, ok_length = jensen_shannon(sim.lengths, real.lengths)
    out["js_length"] = _masked_mean(js_length, ok_length)
    return out
