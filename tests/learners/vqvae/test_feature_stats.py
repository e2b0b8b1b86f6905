"""Feature standardisation: every aspect of behaviour weighs alike, whatever its number of columns."""

from __future__ import annotations

import numpy as np

from learners.data.schema import FEATURE_ASPECTS, FEATURE_NAMES, N_FEATURES
from learners.vqvae.dataset import FeatureStats


def _features(seed: int, constant: tuple[str, ...] = ()) -> np.ndarray:
    x = np.random.default_rng(seed).normal(3.0, 2.0, size=(500, N_FEATURES)).astype(np.float32)
    for name in constant:
        x[:, FEATURE_NAMES.index(name)] = 0.0
    return x


def _aspect_variance(standardised: np.ndarray) -> dict[str, float]:
    variance = standardised.var(0)
    return {
        a: float(sum(variance[FEATURE_NAMES.index(c)] for c in cols)) for a, cols in FEATURE_ASPECTS.items()
    }


def test_aspects_partition_the_features():
    columns = [c for cols in FEATURE_ASPECTS.values() for c in cols]
    assert sorted(columns) == sorted(FEATURE_NAMES)
    assert len(columns) == len(set(columns))


def test_balanced_aspects_carry_equal_variance_and_the_total_is_kept():
    x = _features(0)
    standardised = FeatureStats.fit(x, balanced=True).apply(x)
    per_aspect = _aspect_variance(standardised)
    assert np.allclose(list(per_aspect.values()), N_FEATURES / len(FEATURE_ASPECTS), rtol=1e-3)
    assert np.isclose(standardised.var(0).sum(), N_FEATURES, rtol=1e-3)
    # Unbalanced, each column has unit variance, so the 8 event counts outweigh the 1 pace column 8:1.
    plain = _aspect_variance(FeatureStats.fit(x, balanced=False).apply(x))
    assert np.isclose(plain["event counts"] / plain["pace"], 8.0, rtol=1e-3)


def test_a_log_without_prices_spreads_the_weight_over_the_aspects_it_has():
    prices = FEATURE_ASPECTS["prices"]
    x = _features(1, constant=prices)
    standardised = FeatureStats.fit(x, balanced=True).apply(x)
    per_aspect = _aspect_variance(standardised)
    assert per_aspect["prices"] == 0.0
    others = [v for a, v in per_aspect.items() if a != "prices"]
    varying = N_FEATURES - len(prices)
    assert np.allclose(others, varying / len(others), rtol=1e-3)
    assert np.isclose(standardised.var(0).sum(), varying, rtol=1e-3)
