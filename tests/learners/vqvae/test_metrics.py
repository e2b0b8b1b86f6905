"""Type-structure metrics on hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import kruskal

from learners.data.schema import EVENT_TYPES, FEATURE_NAMES, N_FEATURES
from learners.vqvae import metrics


def test_usage_and_perplexity():
    codes = np.array([0, 0, 1, 1, 3, 3])
    assert metrics.codes_in_use(codes, 5) == 3
    assert math.isclose(metrics.perplexity(codes, 5), 3.0)
    assert math.isclose(metrics.perplexity(np.array([2, 2, 2]), 4), 1.0)
    # p = (3/4, 1/4): exp(-(.75 ln .75 + .25 ln .25))
    expected = math.exp(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25)))
    assert math.isclose(metrics.perplexity(np.array([0, 0, 0, 1]), 2), expected)


def test_calinski_harabasz_by_hand():
    x = np.array([[0.0], [2.0], [10.0], [12.0]])
    codes = np.array([0, 0, 1, 1])
    # B = 2*(1-6)^2 + 2*(11-6)^2 = 100, W = 1+1+1+1 = 4; CH = (B/(k-1)) / (W/(n-k)) = 100 / 2 = 50
    assert math.isclose(metrics.calinski_harabasz(x, codes), 50.0)
    assert metrics.calinski_harabasz(x, np.zeros(4, int)) == 0.0


def shares(*rows: list[float]) -> np.ndarray:
    feats = np.zeros((len(rows), N_FEATURES), np.float32)
    for i, r in enumerate(rows):
        for t, v in zip(EVENT_TYPES, r, strict=False):
            feats[i, FEATURE_NAMES.index(f"share_{t}")] = v
    return feats


def test_coherence_is_one_for_identical_behaviour_and_matches_a_hand_js():
    same = metrics.event_distributions(shares([0.5, 0.5], [0.5, 0.5]))
    assert math.isclose(metrics.coherence(same, np.array([0, 0])), 1.0)
    # Two opposite buyers in one type: centre (.5, .5); JS(buyer, centre) = H(.75,.25) - (0 + 1)/2.
    opposite = metrics.event_distributions(shares([1.0], [0.0, 1.0]))
    h = -(0.75 * math.log2(0.75) + 0.25 * math.log2(0.25))
    assert math.isclose(metrics.coherence(opposite, np.array([0, 0])), 1 - (h - 0.5), rel_tol=1e-9)
    assert math.isclose(metrics.coherence(opposite, np.array([0, 1])), 1.0)


def test_nmi_many_to_one_forgives_splits_but_not_mixing():
    truth = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    split = np.array([5, 5, 6, 6, 7, 7, 8, 8])
    assert math.isclose(metrics.nmi(split, truth), 1.0)
    assert math.isclose(metrics.ari(split, truth), 1.0)
    assert metrics.many_to_one(np.array([0, 0, 0, 1, 1, 1, 1, 1]), truth).tolist() == [0, 0, 0, 1, 1, 1, 1, 1]
    mixed = np.array([0, 0, 1, 1, 0, 0, 1, 1])
    assert metrics.nmi(mixed, truth) == pytest.approx(0.0, abs=1e-12)


def test_kruskal_conversion_matches_scipy_and_handles_constant_input():
    codes = np.array([0] * 6 + [1] * 6 + [2] * 2)
    converted = np.array([1, 1, 1, 1, 0, 1, 0, 0, 0, 1, 0, 0, 1, 1])
    result = metrics.kruskal_conversion(codes, converted, min_size=5)
    h, p = kruskal(converted[:6], converted[6:12])
    assert result.groups == 2
    assert math.isclose(result.statistic, h) and math.isclose(result.p_value, p)
    assert math.isclose(result.epsilon_squared, (h - 1) / (12 - 2))
    constant = metrics.kruskal_conversion(codes, np.zeros(14), min_size=1)
    assert (constant.statistic, constant.p_value) == (0.0, 1.0)
