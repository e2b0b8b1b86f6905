"""Offline metrics: exact on hand-made cases, and a full table over the baseline policies."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from learners.agent.examples import build_examples
from learners.agent.markov_policy import MarkovPolicy
from learners.agent.offline_eval import (
    FunnelRow,
    PolicySpec,
    evaluate,
    evaluate_all,
    funnel_calibration,
    kind_divergence,
    markdown_table,
    mismatched,
    requests_for,
)
from learners.agent.policy import ActResult
from learners.agent.random_policy import RandomPolicy


class Replay:
    """Answers with the real action of each request's row (a perfect policy)."""

    def __init__(self, actions):
        self.actions = actions
        self.i = 0

    def act(self, requests):
        out = [ActResult(a) for a in self.actions[self.i : self.i + len(requests)]]
        self.i += len(requests)
        return out


def test_kind_divergence_and_mismatch():
    assert kind_divergence(["purchase", "exit"], ["purchase", "exit"], [0, 0]) == pytest.approx(0.0)
    assert kind_divergence(["purchase"], ["exit"], [0]) == pytest.approx(1.0)
    # Weighted by steps: group 0 (2 steps) identical, group 1 (1 step) disjoint.
    assert kind_divergence(["exit", "exit", "search"], ["exit", "exit", "exit"], [0, 0, 1]) == pytest.approx(
        1 / 3
    )
    codes = list(range(5)) * 20
    swapped = mismatched(codes, 5, seed=3)
    assert all(a != b for a, b in zip(codes, swapped, strict=True)) and set(swapped) == set(range(5))


def test_perfect_and_baseline_policies(traces_and_codes):
    traces, codes = traces_and_codes
    examples = build_examples(traces, codes).examples
    perfect = evaluate(
        PolicySpec("replay", Replay(examples.column("action").to_pylist())), examples, "all", batch_size=7
    )
    assert (perfect.accuracy, perfect.macro_f1, perfect.kind_js, perfect.invalid_rate) == pytest.approx(
        (1, 1, 0, 0)
    )
    specs = [PolicySpec("markov", MarkovPolicy.fit(examples)), PolicySpec("random", RandomPolicy(), "none")]
    rows = evaluate_all(specs, {"train": examples}, batch_size=16)
    assert [r.policy for r in rows] == ["markov", "random"]
    assert all(r.invalid_rate == 0 and 0 <= r.accuracy <= 1 and r.steps == examples.num_rows for r in rows)
    assert rows[0].kind_js < rows[1].kind_js  # fitted on these very steps, Markov tracks the kinds better
    table = markdown_table(rows)
    assert table.count("\n") == 4 and "| train | markov |" in table
    assert all(r.persona is None for r in requests_for(examples, "none"))


class Leaky:
    """Scores ``go to cart`` log 6 above every other action, with or without a goal: P = 3/4 where
    the page offers it and two others."""

    def score(self, requests):
        return [
            np.array([np.log(6.0) if a == "go to cart" else 0.0 for a in r.valid_actions]) for r in requests
        ]


def _funnel_rows(goal, actions):
    """One row per action, each after ``add to cart`` on a page offering ``go to cart``, back, exit."""
    page = {"observation": "page", "valid_actions": ["go to cart", "back", "exit"], "code": 0}
    return [dict(page, goal=goal, history=["open product p", "add to cart"], action=a) for a in actions]


def test_funnel_calibration_shows_goal_copies_leaking_into_free_shopping():
    free = _funnel_rows(None, ["go to cart", "exit", "back", "exit"])  # real rate 1/4
    goal = _funnel_rows("p", ["go to cart", "go to cart", "go to cart", "exit"])  # real rate 3/4
    other = [dict(free[0], history=["home"])]  # not after "add to cart": not counted
    examples = pa.Table.from_pylist(free + goal + other)
    rows = funnel_calibration(Leaky(), examples, batch_size=3)
    assert rows == [
        FunnelRow("add to cart", "go to cart", False, 4, 0.25, pytest.approx(0.75)),
        FunnelRow("add to cart", "go to cart", True, 4, 0.75, pytest.approx(0.75)),
    ]

    # A policy that tells the two apart is calibrated on both.
    class Apart:
        def score(self, requests):
            want = {None: np.log(2 / 3), "p": np.log(6.0)}  # P(go to cart) = 1/4 free, 3/4 with the goal
            return [
                np.array([want[r.goal] if a == "go to cart" else 0.0 for a in r.valid_actions])
                for r in requests
            ]

    calibrated = funnel_calibration(Apart(), examples)
    assert [r.model for r in calibrated] == pytest.approx([0.25, 0.75])
