"""How good a set of buyer types is: usage, separation, coherence, agreement with planted types.

Definitions (ours; the paper's exact formulas are not public):

- ``codes_in_use``: codes with at least one buyer. ``utilisation`` = codes_in_use / K.
- ``perplexity``: ``exp(H)`` of the code-usage distribution (K when usage is uniform, 1 when one code
  holds everyone).
- ``calinski_harabasz``: between- over within-type dispersion of the standardised fixed-length
  features, each scaled by its degrees of freedom (scikit-learn's score).
- ``coherence`` (within-type behaviour coherence): every buyer's behaviour is its distribution over
  the canonical event types (the ``share_*`` features). For a buyer ``i`` of type ``k`` let
  ``JS(i, k)`` be the Jensen-Shannon divergence (base 2, so in [0, 1]) between that distribution and
  the type's mean distribution. ``coherence = 1 - mean_i JS(i, type(i))``: 1 when all buyers of a
  type do the same mix of actions; a single type over the whole population gives the reference.
- ``nmi``: normalised mutual information (arithmetic mean normalisation) between the planted types
  and the learned codes after mapping every code to the planted type most of its buyers have
  (many-to-one, so splitting a planted type over several codes is not penalised). ``ari`` likewise.
- ``kruskal_conversion``: Kruskal-Wallis H test of the converted flag across types with at least
  ``min_size`` buyers, with the epsilon-squared effect size ``(H - g + 1) / (n - g)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import kruskal
from sklearn.metrics import adjusted_rand_score, calinski_harabasz_score, normalized_mutual_info_score

from learners.data.schema import EVENT_TYPES, FEATURE_NAMES

SHARE_COLUMNS = [FEATURE_NAMES.index(f"share_{t}") for t in EVENT_TYPES]


def usage_counts(codes: np.ndarray, k: int) -> np.ndarray:
    return np.bincount(np.asarray(codes, dtype=np.int64), minlength=k)


def codes_in_use(codes: np.ndarray, k: int) -> int:
    return int((usage_counts(codes, k) > 0).sum())


def perplexity(codes: np.ndarray, k: int) -> float:
    counts = usage_counts(codes, k).astype(np.float64)
    p = counts[counts > 0] / counts.sum()
    return float(np.exp(-(p * np.log(p)).sum()))


def calinski_harabasz(features: np.ndarray, codes: np.ndarray) -> float:
    """Calinski-Harabasz of the (standardised) features; 0 with fewer than two types in use."""
    n_types = len(np.unique(codes))
    if n_types < 2 or n_types >= len(codes):
        return 0.0
    return float(calinski_harabasz_score(features, codes))


def _entropy2(p: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, -p * np.log2(p), 0.0)
    return terms.sum(-1)


def event_distributions(raw_features: np.ndarray) -> np.ndarray:
    """Each buyer's distribution over EVENT_TYPES, from the unstandardised share_* features."""
    shares = np.clip(raw_features[:, SHARE_COLUMNS].astype(np.float64), 0.0, None)
    totals = shares.sum(1, keepdims=True)
    return np.divide(shares, totals, out=np.full_like(shares, 1.0 / len(EVENT_TYPES)), where=totals > 0)


def coherence_per_type(distributions: np.ndarray, codes: np.ndarray) -> dict[int, float]:
    """``1 - mean JS(buyer, type mean)`` for each type in use."""
    out: dict[int, float] = {}
    for code in np.unique(codes):
        members = distributions[codes == code]
        centre = members.mean(0)
        js = _entropy2((members + centre) / 2) - (_entropy2(members) + _entropy2(centre)) / 2
        out[int(code)] = float(1.0 - np.clip(js, 0.0, 1.0).mean())
    return out


def coherence(distributions: np.ndarray, codes: np.ndarray) -> float:
    """Buyer-weighted mean of ``coherence_per_type``."""
    per_type = coherence_per_type(distributions, codes)
    sizes = {c: int((codes == c).sum()) for c in per_type}
    return float(sum(per_type[c] * sizes[c] for c in per_type) / max(1, sum(sizes.values())))


def many_to_one(codes: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Each code replaced by the planted type most of its buyers have (ties: the smaller type id)."""
    codes, truth = np.asarray(codes), np.asarray(truth)
    mapped = np.empty_like(truth)
    for code in np.unique(codes):
        members = codes == code
        values, counts = np.unique(truth[members], return_counts=True)
        mapped[members] = values[np.argmax(counts)]
    return mapped


def nmi(codes: np.ndarray, truth: np.ndarray) -> float:
    return float(normalized_mutual_info_score(truth, many_to_one(codes, truth)))


def ari(codes: np.ndarray, truth: np.ndarray) -> float:
    return float(adjusted_rand_score(truth, many_to_one(codes, truth)))


@dataclass
class KruskalResult:
    statistic: float
    p_value: float
    groups: int
    """Types tested (those with at least min_size buyers)."""
    epsilon_squared: float


def kruskal_conversion(codes: np.ndarray, converted: np.ndarray, min_size: int = 5) -> KruskalResult:
    """Does conversion differ across types? (H = 0, p = 1 when it cannot differ.)"""
    codes, converted = np.asarray(codes), np.asarray(converted, dtype=np.float64)
    groups = [converted[codes == c] for c in np.unique(codes) if (codes == c).sum() >= min_size]
    n = sum(len(g) for g in groups)
    if len(groups) < 2 or np.unique(np.concatenate(groups)).size < 2:
        return KruskalResult(0.0, 1.0, len(groups), 0.0)
    h, p = kruskal(*groups)
    eps2 = (h - len(groups) + 1) / (n - len(groups)) if n > len(groups) else 0.0
    return KruskalResult(float(h), float(p), len(groups), float(eps2))


def type_metrics(
    codes: np.ndarray,
    k: int,
    standardised: np.ndarray,
    raw_features: np.ndarray,
    converted: np.ndarray,
    truth: np.ndarray | None = None,
) -> dict[str, float]:
    """All of the above for one assignment (``nmi``/``ari`` only with planted types)."""
    kw = kruskal_conversion(codes, converted)
    out = {
        "codes": float(k),
        "codes_in_use": float(codes_in_use(codes, k)),
        "utilisation": codes_in_use(codes, k) / k,
        "perplexity": perplexity(codes, k),
        "calinski_harabasz": calinski_harabasz(standardised, codes),
        "coherence": coherence(event_distributions(raw_features), codes),
        "kruskal_conversion_h": kw.statistic,
        "kruskal_conversion_p": kw.p_value,
        "kruskal_conversion_eps2": kw.epsilon_squared,
    }
    if truth is not None:
        out["nmi"] = nmi(codes, truth)
        out["ari"] = ari(codes, truth)
    return out
