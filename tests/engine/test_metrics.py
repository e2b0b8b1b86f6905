"""Fidelity metrics on hand-computed cases."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from engine import metrics as M


def test_alignment_is_min_over_max():
    assert M.alignment(0.1, 0.2) == pytest.approx(0.5)
    assert M.alignment(0.2, 0.1) == pytest.approx(0.5)
    assert M.alignment(0.0, 0.0) == 1.0
    assert M.alignment(0.0, 0.3) == 0.0
    with pytest.raises(ValueError):
        M.alignment(-0.1, 0.2)


def test_cra_uses_merchants_present_in_both():
    per, mean = M.conversion_rate_alignment({"a": 0.1, "b": 0.3}, {"a": 0.2, "b": 0.3, "c": 0.5})
    assert per == pytest.approx({"a": 0.5, "b": 1.0})
    assert mean == pytest.approx(0.75)
    with pytest.raises(ValueError, match="no merchant"):
        M.conversion_rate_alignment({"x": 0.1}, {"y": 0.1})


def test_conversion_correlation_hand_case():
    real = {"a": 0.1, "b": 0.2, "c": 0.3}
    # Twice the level, same ranking: perfectly correlated although no rate is aligned.
    assert M.conversion_correlation({m: 2 * v for m, v in real.items()}, real) == pytest.approx(1.0)
    # sim (0.3, 0.1, 0.2): deviations (1, -1, 0) against (-1, 0, 1), so r = -1 / 2.
    assert M.conversion_correlation({"a": 0.3, "b": 0.1, "c": 0.2}, real) == pytest.approx(-0.5)
    assert math.isnan(M.conversion_correlation({"a": 0.5, "b": 0.5, "c": 0.5}, real))
    assert math.isnan(M.conversion_correlation({"a": 0.5}, real))


def test_strata_are_quartiles_with_a_highest():
    real = {f"m{i}": i / 10 for i in range(1, 9)}
    strata = M.conversion_strata(real)
    assert [strata[f"m{i}"] for i in (8, 7)] == ["A", "A"]
    assert [strata[f"m{i}"] for i in (2, 1)] == ["D", "D"]
    assert sorted(strata.values()) == sorted("AABBCCDD")


def test_ara_hand_case():
    def counts(view, purchase):
        return M.ActionCounts(buyers=10, took={"product_view": view, "purchase": purchase})

    real = {"m1": counts(10, 8), "m2": counts(10, 6), "m3": counts(10, 4), "m4": counts(10, 2)}
    sim = {"m1": counts(10, 4), "m2": counts(10, 6), "m3": counts(10, 4), "m4": counts(5, 2)}
    cells, ara = M.action_rate_alignment(sim, real)
    assert cells["A"] == pytest.approx({"product_view": 1.0, "purchase": 0.5})
    assert cells["D"] == pytest.approx({"product_view": 0.5, "purchase": 1.0})
    assert ara == pytest.approx(7 / 8)


def test_ara_ignores_action_types_no_real_buyer_took():
    real = {"m": M.ActionCounts(10, {"product_view": 10, "favorite": 0})}
    sim = {"m": M.ActionCounts(10, {"product_view": 5, "favorite": 0})}
    cells, ara = M.action_rate_alignment(sim, real)
    assert list(cells["A"]) == ["product_view"]
    assert ara == pytest.approx(0.5)


def test_jensen_shannon_hand_values():
    assert M.jensen_shannon([1, 0], [0, 1]) == pytest.approx(1.0)
    assert M.jensen_shannon([3, 1], [6, 2]) == pytest.approx(0.0)
    expected = (0.5 * math.log2(0.5 / 0.75) + 0.5 * math.log2(0.5 / 0.25) + math.log2(1 / 0.75)) / 2
    assert M.jensen_shannon([1, 1], [1, 0]) == pytest.approx(expected)
    assert M.categorical_js({"view": 1, "buy": 1}, {"view": 2}) == pytest.approx(expected)
    with pytest.raises(ValueError):
        M.jensen_shannon([0, 0], [1, 0])


def test_length_js_caps_long_sessions():
    assert M.length_js([1, 1, 2], [1, 2, 1]) == pytest.approx(0.0)
    assert M.length_js([1], [40], cap=30) == pytest.approx(1.0)
    assert M.length_js([30], [40], cap=30) == pytest.approx(0.0)


def test_invalid_action_rate():
    assert M.invalid_action_rate([True, False, True, True]) == pytest.approx(0.25)
    with pytest.raises(ValueError):
        M.invalid_action_rate([])


def test_cohens_d_hand_value():
    assert M.cohens_d([1, 2, 3], [2, 3, 4]) == pytest.approx(-1.0)
    assert M.cohens_d([1, 1], [1, 1]) == 0.0


def test_cliffs_delta_matches_all_pairs():
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 5, 40), rng.integers(1, 6, 30)
    brute = sum(np.sign(x - y) for x, y in itertools.product(a, b)) / (len(a) * len(b))
    assert M.cliffs_delta(a, b) == pytest.approx(brute)
    assert M.cliffs_delta([3, 4], [1, 2]) == 1.0
    assert M.cliffs_delta([1, 2, 3], [2]) == 0.0


def test_variation_across_types_finds_the_differing_pair():
    rng = np.random.default_rng(1)
    groups = {0: rng.normal(0, 1, 50), 1: rng.normal(0.1, 1, 50), 2: rng.normal(3, 1, 50)}
    v = M.variation_across_types(groups)
    assert v.p_value < 1e-6
    assert 2 in v.largest_pair and v.largest_pair[0] in (0, 1)
    same = M.variation_across_types({0: [1.0, 1.0], 1: [1.0, 1.0]})
    assert same.p_value == 1.0 and same.cliffs_delta == 0.0


def test_success_rate_intervals():
    ci = M.success_rate_ci([0.4, 0.5, 0.6])
    assert ci.mean == pytest.approx(0.5)
    assert ci.high - ci.mean == pytest.approx(4.302653 * 0.1 / math.sqrt(3), rel=1e-5)
    assert M.success_rate_ci([0.3]).low == 0.3
    d = M.paired_difference_ci([0.9, 0.8, 0.7], [0.5, 0.6, 0.7])  # differences 0.4, 0.2, 0.0
    assert d["diff"] == pytest.approx(0.2) and d["n"] == 3
    assert d["high"] - d["diff"] == pytest.approx(4.302653 * 0.2 / math.sqrt(3), rel=1e-5)
    assert d["low"] < 0 < d["high"]  # not clipped: a difference may be negative
    assert M.paired_difference_ci([0.9], [0.5])["low"] is None
    w = M.wilson_interval(5, 10)
    assert (w.low, w.high) == pytest.approx((0.2366, 0.7634), abs=1e-4)
