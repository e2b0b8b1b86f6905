"""Row choice: the conditional logit recovers each code's planted choice among a listing's rows,
shrinks a code with few buyers toward the pool, and scoring serves it within the ``open product``
template's mass, on goal-free requests of its code only."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from envs.catalog import BESTSELLER, Catalog, Product
from envs.storefront import OPEN_PRODUCT, SEARCH_TEMPLATE, Storefront
from learners.agent.llm_policy import LLMPolicy
from learners.agent.policy import ActRequest
from learners.agent.price_response import FIT_COLUMNS
from learners.agent.row_choice import RowChoice, fit_row_choice, listing_page_rows
from learners.agent.scoring import (
    POOLED_ROWS,
    ROW_FEATURES,
    action_scores,
    listing_features,
    pick,
    read_row_choice,
)
from learners.agent.train import LISTING_ROWS_FILE, AgentTrainConfig, train_agent

from .conftest import make_traces

PLANTED = {0: np.array([2.0, 0.0, 0.0]), 1: np.array([0.0, -1.0, -1.0])}
"""Per code, the coefficients of ``ROW_FEATURES`` its buyers choose rows by: code 0 goes for
bestsellers wherever they are; code 1 for the top rows and the cheap ones."""


def badged_shop(seed: int = 0) -> Storefront:
    """40 products in two categories (two listing pages each), prices spread log-normally, a random
    third of them bestsellers."""
    rng = np.random.default_rng(seed)
    products = tuple(
        Product(
            f"p{i}",
            f"c{i % 2}",
            round(float(20 * np.exp(rng.normal(0, 0.5))), 2),
            f"Product p{i}",
            1.0 / (i + 1),
            badge=BESTSELLER if rng.random() < 0.33 else "",
        )
        for i in range(40)
    )
    return Storefront(Catalog("m1", products))


def listing_states(shop: Storefront) -> list:
    home = shop.initial_state()
    states = [home]
    for category in ("c0", "c1"):
        first = shop.step(home, f"open category {category}")[0]
        states += [first, shop.step(first, "next page")[0]]
    return states


def choice_table(buyers: dict[int, int], pages: int, seed: int) -> pa.Table:
    """Goal-free listing pages of ``badged_shop``, ``pages`` per buyer, ``buyers`` per code, each
    buyer opening a row by its code's ``PLANTED`` logit."""
    rng = np.random.default_rng(seed)
    shop = badged_shop()
    states = listing_states(shop)
    rows: dict[str, list] = {c: [] for c in FIT_COLUMNS}
    for code, count in buyers.items():
        for b in range(count):
            for _ in range(pages):
                state = states[int(rng.integers(len(states)))]
                observation = shop.observe(state)
                valid = [a for a in shop.valid_actions(state) if a != SEARCH_TEMPLATE]
                index, features = listing_features(observation, valid)
                z = features @ PLANTED[code]
                p = np.exp(z - z.max())
                action = valid[index[rng.choice(len(index), p=p / p.sum())]]
                values = ("m1", f"c{code}b{b}", observation, action, [], None, code, valid)
                for key, value in zip(FIT_COLUMNS, values, strict=True):
                    rows[key].append(value)
    return pa.table(rows)


def test_the_fit_recovers_each_codes_planted_choice():
    fit = fit_row_choice(listing_page_rows(choice_table({0: 150, 1: 150}, pages=10, seed=1), 100_000), True)
    assert set(fit.codes) == {"0", "1"}
    for code, planted in PLANTED.items():
        got = np.array([fit.codes[str(code)].coef[f] for f in ROW_FEATURES])
        assert got == pytest.approx(planted, abs=0.3), (code, got)
    assert fit.codes["0"].bestseller_share > 0.6 > fit.codes["1"].bestseller_share
    assert fit.codes["1"].first_share > fit.codes["0"].first_share
    # What the console says: the pooled fit and the codes furthest from it.
    assert fit.line().startswith("row choice (coefficients of bestseller, log_place, log_relative_price)")


def test_a_code_with_few_buyers_chooses_closer_to_the_pool():
    table = choice_table({0: 100, 1: 100}, pages=10, seed=2)
    few = choice_table({1: 2}, pages=3, seed=3)
    few = few.set_column(few.schema.get_field_index("code"), "code", pa.array([2] * few.num_rows))
    few = few.set_column(few.schema.get_field_index("buyer_id"), "buyer_id", pa.array(["few"] * few.num_rows))
    fit = fit_row_choice(listing_page_rows(pa.concat_tables([table, few]), 100_000), True)
    small = fit.codes["2"]
    assert small.buyers == 1 and small.choices == 6
    for f in ROW_FEATURES:
        # One buyer: no standard error over buyers, so it chooses as the pool does.
        assert small.coef[f] == pytest.approx(fit.pooled[f], abs=1e-6)
        for code in fit.codes.values():
            assert abs(code.coef[f] - fit.pooled[f]) <= abs(code.estimate[f] - fit.pooled[f]) + 1e-9


def test_listing_rows_are_goal_free_opens_of_one_of_several_listed_rows():
    table = choice_table({0: 6, 1: 6}, pages=5, seed=4)
    actions, goals = table["action"].to_pylist(), table["goal"].to_pylist()
    actions[0] = "next page"  # not an open product
    goals[1] = "p3"  # a goal task keeps the model's ranking
    table = table.set_column(table.schema.get_field_index("action"), "action", pa.array(actions))
    table = table.set_column(table.schema.get_field_index("goal"), "goal", pa.array(goals, pa.string()))
    rows = listing_page_rows(table, 100_000)
    assert rows.num_rows == table.num_rows - 2
    capped = listing_page_rows(table, 17, seed=0)
    kept = set(capped["buyer_id"].to_pylist())
    assert capped.num_rows <= 17 and sum(b in kept for b in rows["buyer_id"].to_pylist()) == capped.num_rows


def test_scoring_serves_a_codes_choice_within_the_open_product_mass():
    shop = badged_shop()
    state = listing_states(shop)[1]
    observation = shop.observe(state)
    valid = tuple(a for a in shop.valid_actions(state) if a != SEARCH_TEMPLATE)
    index, features = listing_features(observation, valid)
    assert len(index) == 10 and all(valid[i].startswith(OPEN_PRODUCT) for i in index)
    raw = np.random.default_rng(5).normal(size=len(valid))
    choice = {0: [3.0, -1.0, 0.5]}
    got = action_scores(ActRequest(observation, valid, 0), raw, None, None, choice)
    # The template keeps its mass; within it, the rows' shares are the code's logit's.
    assert np.logaddexp.reduce(got[index]) == pytest.approx(np.logaddexp.reduce(raw[index]))
    z = features @ np.array(choice[0])
    assert np.exp(got[index] - np.logaddexp.reduce(got[index])) == pytest.approx(
        np.exp(z - np.logaddexp.reduce(z))
    )
    others = np.setdiff1d(np.arange(len(valid)), index)
    assert got[others] == pytest.approx(raw[others])
    strong = {0: [50.0, 0.0, 0.0]}
    action = pick(
        ActRequest(observation, valid, 0),
        list(valid),
        raw + 10 * np.isin(np.arange(len(valid)), index),
        0.0,
        None,
        None,
        strong,
    )[0]
    assert action[len(OPEN_PRODUCT) :] in {p.product_id for p in shop.catalog.products if p.badge}
    for untouched in (
        ActRequest(observation, valid, 1),  # a code without a fit, and no pooled fit to serve it
        ActRequest(observation, valid, 0, goal="p4"),  # a goal task
    ):
        assert np.array_equal(action_scores(untouched, raw, None, None, choice), raw)
    # With a pooled fit, a code without its own is served the pooled one; a fitted code keeps its own.
    with_pool = {**choice, POOLED_ROWS: [-2.0, 1.0, 0.0]}
    assert action_scores(ActRequest(observation, valid, 1), raw, None, None, with_pool) == pytest.approx(
        action_scores(ActRequest(observation, valid, 0), raw, None, None, {0: with_pool[POOLED_ROWS]})
    )
    assert np.array_equal(action_scores(ActRequest(observation, valid, 0), raw, None, None, with_pool), got)


def test_a_saved_fit_is_what_the_policy_reads(tmp_path):
    fit = fit_row_choice(listing_page_rows(choice_table({0: 20, 1: 20}, pages=5, seed=6), 100_000), True)
    fit.save(tmp_path)
    assert RowChoice.load(tmp_path) == fit
    assert (
        read_row_choice(tmp_path)
        == fit.served()
        == {
            **{int(k): [v.coef[f] for f in ROW_FEATURES] for k, v in fit.codes.items()},
            POOLED_ROWS: [fit.pooled[f] for f in ROW_FEATURES],
        }
    )
    assert RowChoice.load(tmp_path / "absent") == RowChoice() and read_row_choice(tmp_path / "absent") == {}


def test_training_fits_each_codes_row_choice_and_the_policy_serves_it(tmp_path):
    traces, codes = make_traces(merchants=("m1", "m2"), buyers=10, sessions=3, seed=7)
    config = AgentTrainConfig(
        workers=0, stage1_epochs=0, stage2_epochs=1, batch_size=8, max_observation_tokens=96, log_every=1000
    )
    lines: list[str] = []
    train_agent(config, traces, codes, tmp_path / "agent", log=lines.append)
    pages = pq.read_table(tmp_path / "agent" / "data" / LISTING_ROWS_FILE)
    assert pages.num_rows > 0 and pages["goal"].null_count == pages.num_rows
    served = LLMPolicy.from_pretrained(tmp_path / "agent").row_choice
    assert served == read_row_choice(tmp_path / "agent") and set(served) == {0, 1, POOLED_ROWS}
    assert any(line.startswith("row choice (coefficients of") for line in lines)
    # Off: no pages kept, no fit, the model ranks the rows.
    train_agent(replace(config, row_choice_rows=0), traces, codes, tmp_path / "off", log=lambda _: None)
    assert not (tmp_path / "off" / "data" / LISTING_ROWS_FILE).exists()
    assert LLMPolicy.from_pretrained(tmp_path / "off").row_choice == {}
