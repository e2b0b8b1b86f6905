"""scoring.py: the search template scores as the page's own searches, and picking it then a query is
the same as drawing among all scored actions at once."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from envs.storefront import SEARCH_TEMPLATE
from learners.agent.policy import ActRequest
from learners.agent.random_policy import page_queries
from learners.agent.scoring import action_scores, pick, scored_candidates

PAGE = "== Home ==\nProducts:\n- product p1\n- product p2\nActions:\nopen product p1\nexit"
VALID = ("open product p1", SEARCH_TEMPLATE, "exit")


def test_candidates_are_the_valid_actions_but_the_template_then_the_page_searches():
    request = ActRequest(PAGE, VALID)
    assert page_queries(PAGE) == ["p1", "p2"]
    assert scored_candidates(request) == ["open product p1", "exit", 'search "p1"', 'search "p2"']
    assert scored_candidates(ActRequest(PAGE, ("open product p1", "exit"))) == ["open product p1", "exit"]


def test_the_template_scores_the_total_probability_of_the_page_searches():
    request = ActRequest(PAGE, VALID)
    scores = np.log([0.3, 0.2, 0.05, 0.15])
    assert action_scores(request, scores) == pytest.approx(np.log([0.3, 0.2, 0.2]))


def test_a_temperature_one_pick_draws_among_all_scored_actions():
    request = ActRequest(PAGE, VALID)
    candidates = scored_candidates(request)
    scores = np.log([0.3, 0.2, 0.05, 0.15])
    flat = np.exp(scores) / np.exp(scores).sum()
    draws = 20_000
    counts = Counter(pick(ActRequest(PAGE, VALID, seed=s), candidates, scores, 1.0)[0] for s in range(draws))
    assert set(counts) <= set(candidates) and SEARCH_TEMPLATE not in counts
    for candidate, p in zip(candidates, flat, strict=True):
        assert counts[candidate] / draws == pytest.approx(p, abs=0.015), candidate


def test_greedy_pick_takes_the_search_class_then_its_best_query():
    request = ActRequest(PAGE, VALID, seed=4)
    candidates = scored_candidates(request)
    # No single search beats "open product p1", but together they do.
    scores = np.log([0.3, 0.1, 0.28, 0.29])
    action, score, per_action = pick(request, candidates, scores, 0.0)
    assert action == candidates[-1] and score == pytest.approx(scores[-1])
    assert int(np.argmax(per_action)) == VALID.index(SEARCH_TEMPLATE)
    scores[2:] = np.log(0.01)
    assert pick(request, candidates, scores, 0.0)[0] == "open product p1"
