"""Kind calibration: the fit recovers planted per-kind biases, the shared share fit meets any target,
scoring adds the biases without changing any ranking within a kind, and training calibrates on its
validation merchants' goal-free rows."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from learners.agent.calibration import fit_kind_bias, fit_share_bias, kind_rates
from learners.agent.llm_policy import LLMPolicy
from learners.agent.policy import ActRequest
from learners.agent.scoring import (
    CALIBRATION_FILE,
    PRICE_RESPONSE_FILE,
    action_scores,
    pick,
    read_kind_bias,
    read_price_bias,
)
from learners.agent.train import CALIBRATION_ROWS_FILE, AgentTrainConfig, train_agent

from .conftest import make_traces

KINDS = ["exit", "page_view", "page_view", "checkout", "product_view", "product_view", "product_view"]
PLANTED = {"exit": -0.4, "page_view": 0.0, "checkout": 0.8, "product_view": 0.0}


def _rows(n: int, seed: int):
    """Rows of random model scores whose real choices follow the scores plus ``PLANTED``."""
    rng = np.random.default_rng(seed)
    scores, kinds, chosen = [], [], []
    for _ in range(n):
        size = int(rng.integers(3, len(KINDS) + 1))
        names = KINDS[:size]
        z = rng.normal(0, 1.5, size)
        p = np.exp(z + np.array([PLANTED[k] for k in names]))
        scores.append(z)
        kinds.append(names)
        chosen.append(names[rng.choice(size, p=p / p.sum())])
    return scores, kinds, chosen


def test_the_fit_recovers_planted_kind_biases_and_matches_the_real_shares():
    scores, kinds, chosen = _rows(6000, seed=0)
    bias = fit_kind_bias(scores, kinds, chosen)
    # Only differences between kinds matter (the ridge fixes the shared offset).
    for kind, planted in PLANTED.items():
        assert bias[kind] - bias["page_view"] == pytest.approx(planted, abs=0.12), (kind, bias)
    real = {k: chosen.count(k) / len(chosen) for k in PLANTED}
    before, after = kind_rates(scores, kinds, {}), kind_rates(scores, kinds, bias)
    assert max(abs(after[k] - real[k]) for k in real) < 0.003
    assert abs(before["checkout"] - real["checkout"]) > 0.02  # there was something to correct


def test_the_biases_make_the_mean_shares_equal_the_target():
    rng = np.random.default_rng(2)
    scores = [rng.normal(0, 1.5, 5) for _ in range(300)]
    kinds = [rng.integers(0, 3, 5) for _ in range(300)]
    target = np.array([0.5, 0.3, 0.2])
    bias = fit_share_bias(scores, kinds, target)
    share = np.zeros(3)
    for z, k in zip(scores, kinds, strict=True):
        p = np.exp(z + bias[k] - np.logaddexp.reduce(z + bias[k]))
        np.add.at(share, k, p)
    assert share / len(scores) == pytest.approx(target, abs=1e-3)


def test_rows_whose_real_kind_the_page_does_not_offer_are_left_out():
    scores, kinds, chosen = _rows(2000, seed=1)
    with_foreign = fit_kind_bias([*scores, np.zeros(3)], [*kinds, KINDS[:3]], [*chosen, "purchase"])
    assert with_foreign == fit_kind_bias(scores, kinds, chosen)
    assert fit_kind_bias([np.zeros(3)], [KINDS[:3]], ["purchase"]) == {}


def test_scoring_adds_the_kind_bias_to_goal_free_requests_and_keeps_rankings_within_a_kind():
    request = ActRequest("page", ("open product a", "open product b", "home", "exit"), None, None, (), 3)
    raw = np.array([-1.0, -2.5, -1.2, -0.7])
    bias = {"product_view": 1.0, "exit": -0.5}
    assert np.array_equal(action_scores(request, raw, {}), action_scores(request, raw))
    biased = action_scores(request, raw, bias)
    assert biased.tolist() == pytest.approx([0.0, -1.5, -1.2, -1.2])
    # At temperature 0 the biased agent opens the product the model ranks first; unbiased, it exits.
    assert pick(request, list(request.valid_actions), raw, 0.0)[0] == "exit"
    assert pick(request, list(request.valid_actions), raw, 0.0, bias)[0] == "open product a"
    # A goal task's buyer knows what to buy: the goal-free biases leave its scores alone.
    goal_task = ActRequest("page", request.valid_actions, None, "a", (), 3)
    assert np.array_equal(action_scores(goal_task, raw, bias), action_scores(goal_task, raw))


def test_a_codes_own_biases_add_to_the_kind_biases_for_its_buyers_only():
    actions = ("open product a", "open product b", "home", "exit")
    raw = np.array([-1.0, -2.5, -1.2, -0.7])
    bias = {"product_view": 1.0, "exit": -0.5}
    own = {3: {"exit": 2.0}, None: {"page_view": 5.0}}
    coded = ActRequest("page", actions, 3, None, (), 3)
    assert action_scores(coded, raw, bias, code_bias=own).tolist() == pytest.approx([0.0, -1.5, -1.2, 0.8])
    assert pick(coded, list(actions), raw, 0.0, bias, code_bias=own)[0] == "exit"
    other = ActRequest("page", actions, 2, None, (), 3)  # a code without biases of its own
    assert np.array_equal(action_scores(other, raw, bias, code_bias=own), action_scores(other, raw, bias))
    no_persona = ActRequest("page", actions, None, None, (), 3)  # key None: a no-persona agent's
    assert action_scores(no_persona, raw, bias, code_bias=own).tolist() == pytest.approx(
        [0.0, -1.5, 3.8, -1.2]
    )
    goal_task = ActRequest("page", actions, 3, "a", (), 3)
    assert np.array_equal(action_scores(goal_task, raw, bias, code_bias=own), raw)


def _config(**overrides) -> AgentTrainConfig:
    base = dict(
        workers=0,
        stage1_epochs=0,
        stage2_epochs=1,
        batch_size=8,
        max_observation_tokens=96,
        goal_share=0.5,
        log_every=100,
        validation_share=1 / 3,
        patience=0,
    )
    return AgentTrainConfig(**{**base, **overrides})


def test_training_calibrates_on_the_validation_merchants_goal_free_rows(tmp_path):
    traces, codes = make_traces(merchants=("m1", "m2", "m3"), buyers=4, sessions=2, seed=5)
    lines: list[str] = []
    train_agent(_config(calibration_rows=40), traces, codes, tmp_path / "on", log=lines.append)
    agent = tmp_path / "on"
    rows = pq.read_table(agent / "data" / CALIBRATION_ROWS_FILE)
    manifest = json.loads((agent / "manifest.json").read_text())
    assert set(rows["merchant_id"].to_pylist()) == set(manifest["validation"]["merchants"])
    assert 0 < rows.num_rows <= 40 and rows["goal"].null_count == rows.num_rows
    saved = json.loads((agent / CALIBRATION_FILE).read_text())
    assert saved["rows"] == rows.num_rows and saved["merchants"] == 1
    assert LLMPolicy.from_pretrained(agent).kind_bias == read_kind_bias(agent) == saved["bias"]
    gap = {w: sum(abs(saved[w][k] - saved["real"][k]) for k in saved["real"]) for w in ("before", "after")}
    assert gap["after"] < gap["before"]
    assert any(line.startswith(f"calibrated on {rows.num_rows} goal-free rows") for line in lines)
    # These traces never change a price, but two of their categories have a typical price: the price
    # response is measured on the pages below it, and on no marked-down cell.
    saved_cells = json.loads((agent / PRICE_RESPONSE_FILE).read_text())["codes"]
    assert saved_cells and not any("marked" in c for cells in saved_cells.values() for c in cells)
    assert LLMPolicy.from_pretrained(agent).price_bias == read_price_bias(agent)
    assert any(line.startswith("price response (add to cart") for line in lines)

    train_agent(
        _config(calibration_rows=0, price_rows=0), traces, codes, tmp_path / "off", log=lambda _: None
    )
    assert (
        not (tmp_path / "off" / CALIBRATION_FILE).exists()
        and not (tmp_path / "off" / PRICE_RESPONSE_FILE).exists()
    )
    assert LLMPolicy.from_pretrained(tmp_path / "off").kind_bias == {}
