"""Markdown response: the within-buyer contrast sees through buyers who seek sales, the prior pulls
noise to 0, the fit carries the measured contrast, and scoring adds the biases only where a markdown
shows."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from envs.render import PRICE_PREFIX, shows_markdown
from learners.agent.actions import action_kind
from learners.agent.llm_policy import LLMPolicy
from learners.agent.markdown_response import (
    fit_markdown_response,
    product_page_rows,
    shrink,
    within_buyer_contrast,
)
from learners.agent.policy import ActRequest
from learners.agent.scoring import MARKDOWN_FILE, action_scores, pick, read_markdown_bias
from learners.agent.train import MARKDOWN_ROWS_FILE, AgentTrainConfig, train_agent

from .conftest import make_traces, storefront

ADD = "add to cart"
RESPONSE = {0: 0.25, 1: 0.0}
"""Planted rise of P(add to cart) on a marked-down page, per code."""


class UniformModel:
    """A model with no opinion: every valid action scores 0, so the fit must find the whole contrast."""

    def score(self, requests):
        return [np.zeros(len(r.valid_actions)) for r in requests]


def _pages(buyers: int, seed: int) -> pa.Table:
    """Product pages of real storefronts. Half the buyers of each code seek sales (80% of their pages
    marked down against 20%) and, seeking, add to cart less at regular prices (0.05 against 0.35):
    comparing marked and regular pages across buyers mixes the two."""
    rng = np.random.default_rng(seed)
    shop = storefront("m1")
    home = shop.initial_state()
    listed = [a for a in shop.valid_actions(home) if a.startswith("open product")]
    rows: dict[str, list] = {
        k: [] for k in ("merchant_id", "buyer_id", "observation", "action", "goal", "code")
    }
    rows["valid_actions"] = []
    rows["history"] = []
    for b in range(buyers):
        code, seeker = b % 2, (b // 2) % 2 == 1
        for _ in range(12):
            state = shop.step(home, listed[int(rng.integers(len(listed)))])[0]
            product = shop.catalog.by_id[state.page.arg]
            marked = rng.random() < (0.8 if seeker else 0.2)
            if marked:
                state = state.priced(product.product_id, round(product.price * 0.7, 2))
            valid = [a for a in shop.valid_actions(state) if not a.startswith("search")]
            p_add = (0.05 if seeker else 0.35) + RESPONSE[code] * marked
            action = ADD if rng.random() < p_add else str(rng.choice([a for a in valid if a != ADD]))
            for key, value in zip(
                rows,
                ("m1", f"u{b}", shop.observe(state), action, None, code, valid, []),
                strict=True,
            ):
                rows[key].append(value)
    return pa.table(rows)


def test_the_within_buyer_contrast_sees_through_buyers_who_seek_sales():
    table = _pages(buyers=400, seed=0)
    marked = np.array([shows_markdown(o) for o in table["observation"].to_pylist()])
    added = np.array([a == ADD for a in table["action"].to_pylist()], dtype=float)[:, None]
    buyer = np.array(table["buyer_id"].to_pylist())
    codes = np.array(table["code"].to_pylist())
    for code, planted in RESPONSE.items():
        mine = codes == code
        contrast, stderr, buyers = within_buyer_contrast(added[mine], marked[mine], buyer[mine])
        naive = added[mine & marked].mean() - added[mine & ~marked].mean()
        assert contrast[0] == pytest.approx(planted, abs=3 * stderr[0]) and stderr[0] < 0.04
        assert abs(naive - planted) > 0.1  # the seekers' low base rate sits on the marked pages
        assert 150 < buyers <= 200


def test_the_prior_pulls_noise_to_zero_and_keeps_a_clear_contrast():
    rng = np.random.default_rng(1)
    stderr = np.full(8, 0.02)
    noise = rng.normal(0, 0.02, 8)
    assert np.abs(shrink(noise, stderr)).max() < np.abs(noise).max() / 2
    clear = noise + np.array([0.3, 0, 0, 0, 0, 0, 0.3, 0])
    kept = shrink(clear, stderr)
    assert kept[[0, 6]] == pytest.approx(clear[[0, 6]], rel=0.05)
    # A code no buyer measured (infinite error) gets nothing.
    assert shrink(np.array([0.3, 0.2]), np.array([np.inf, 0.01]))[0] == 0.0


def test_the_fit_carries_each_codes_contrast_onto_its_marked_down_pages(tmp_path):
    rows = product_page_rows(_pages(buyers=400, seed=3), max_rows=100_000)
    fit = fit_markdown_response(UniformModel(), rows, personas=True)
    assert set(fit.codes) == {"0", "1"}
    for code, planted in RESPONSE.items():
        found = fit.codes[str(code)]
        assert found.shrunk["add_to_cart"] == pytest.approx(planted, abs=3 * found.stderr["add_to_cart"])
    assert fit.line().startswith("markdown response") and "code 0 +0.2" in fit.line()
    fit.save(tmp_path)
    served = read_markdown_bias(tmp_path)
    assert served == {int(k): v.bias for k, v in fit.codes.items()}

    # Served on the code's marked-down pages, its mean P(add to cart) rises by the measured contrast.
    observations = rows["observation"].to_pylist()
    for code in (0, 1):
        requests = [
            ActRequest(o, tuple(v), code)
            for o, v, c in zip(
                observations, rows["valid_actions"].to_pylist(), rows["code"].to_pylist(), strict=True
            )
            if c == code and shows_markdown(o)
        ]
        before, after = [], []
        for r in requests:
            for out, bias in ((before, None), (after, served)):
                z = action_scores(r, np.zeros(len(r.valid_actions)), None, bias)
                out.append(np.exp(z - np.logaddexp.reduce(z))[r.valid_actions.index(ADD)])
        shrunk = fit.codes[str(code)].shrunk["add_to_cart"]
        assert np.mean(after) - np.mean(before) == pytest.approx(shrunk, abs=2e-3)


def test_scoring_adds_a_codes_bias_only_on_goal_free_marked_down_pages():
    shop = storefront("m1")
    home = shop.initial_state()
    regular = shop.step(home, next(a for a in shop.valid_actions(home) if a.startswith("open product")))[0]
    product = shop.catalog.by_id[regular.page.arg]
    marked = regular.priced(product.product_id, round(product.price * 0.7, 2))
    valid = tuple(a for a in shop.valid_actions(regular) if not a.startswith("search"))
    raw = np.linspace(-1.0, -2.0, len(valid))
    bias = {0: {"add_to_cart": 2.0, "exit": -1.0}}
    on_sale = ActRequest(shop.observe(marked), valid, 0)
    got = action_scores(on_sale, raw, None, bias)
    want = raw + np.array([bias[0].get(action_kind(a), 0.0) for a in valid])
    assert got == pytest.approx(want)
    assert pick(on_sale, list(valid), raw, 0.0, None, bias)[0] == ADD
    for untouched in (
        ActRequest(shop.observe(regular), valid, 0),  # no markdown shown
        ActRequest(shop.observe(marked), valid, 1),  # another code
        ActRequest(shop.observe(marked), valid, 0, goal=product.product_id),  # a goal task
    ):
        assert np.array_equal(action_scores(untouched, raw, None, bias), raw)


def test_a_log_without_markdowns_fits_nothing():
    table = _pages(buyers=20, seed=4)
    plain = table.filter(pa.array([not shows_markdown(o) for o in table["observation"].to_pylist()]))
    fit = fit_markdown_response(UniformModel(), product_page_rows(plain, 1000), personas=True)
    assert fit.codes == {} and "no buyer saw both" in fit.line()


def test_rows_are_whole_buyers_who_saw_both_kinds_of_page_up_to_the_cap():
    table = _pages(buyers=30, seed=5)
    # Buyer u0 sees only regular prices: nothing to compare within them.
    regular = [
        b != "u0" or not shows_markdown(o)
        for b, o in zip(table["buyer_id"].to_pylist(), table["observation"].to_pylist(), strict=True)
    ]
    table = table.filter(pa.array(regular))
    assert "u0" not in set(product_page_rows(table, max_rows=100_000)["buyer_id"].to_pylist())
    rows = product_page_rows(table, max_rows=100, seed=0)
    assert rows.num_rows <= 100
    kept = set(rows["buyer_id"].to_pylist())
    assert sum(b in kept for b in table["buyer_id"].to_pylist()) == rows.num_rows
    assert rows.num_rows > 80  # 12 pages a buyer: the cap is nearly filled


def test_training_measures_each_codes_answer_and_the_policy_serves_it(tmp_path):
    # Persona 0 adds a marked-down product to cart; persona 1 adds every product it opens.
    traces, codes = make_traces(merchants=("m1", "m2"), buyers=12, sessions=3, seed=6, markdown=0.5)
    # A token budget keeps some sessions for training; the answer is measured on every buyer's pages.
    config = AgentTrainConfig(
        workers=0,
        stage1_epochs=0,
        stage2_epochs=1,
        batch_size=8,
        max_observation_tokens=96,
        log_every=1000,
        max_tokens=20_000,
    )
    lines: list[str] = []
    train_agent(config, traces, codes, tmp_path / "agent", log=lines.append)
    trained = pq.read_table(tmp_path / "agent" / "data" / "train.parquet")
    pages = pq.read_table(tmp_path / "agent" / "data" / MARKDOWN_ROWS_FILE)
    assert pages["goal"].null_count == pages.num_rows
    assert all("\n" + PRICE_PREFIX in o for o in pages["observation"].to_pylist())
    assert pages.num_rows > product_page_rows(trained, max_rows=100_000).num_rows > 0
    saved = json.loads((tmp_path / "agent" / MARKDOWN_FILE).read_text())["codes"]
    assert set(saved) == {"0", "1"}
    # What the model misses: after one epoch it answers a markdown alike for both personas.
    missed = {code: saved[code]["contrast"]["add_to_cart"] for code in saved}
    assert missed["0"] - missed["1"] > 0.1, missed
    served = LLMPolicy.from_pretrained(tmp_path / "agent").markdown_bias
    assert served == read_markdown_bias(tmp_path / "agent") and set(served) == {0, 1}
    assert any(line.startswith("markdown response (add to cart") for line in lines)
