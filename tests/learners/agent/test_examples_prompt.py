"""Examples (history, hindsight goals, quarantine accounting) and the shared prompt format."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest

from learners.agent.actions import action_kind, listed_actions, page_kind
from learners.agent.base_models import load_base
from learners.agent.examples import build_examples, session_goal, split_examples
from learners.agent.prompt import (
    GOAL_PREFIX,
    IGNORE_INDEX,
    PROMPT_LAYOUT,
    PromptFormat,
    encode_buyer,
    encode_page,
    encode_prompt,
    encode_target,
    saved_prompt_format,
)
from learners.agent.tokens import add_persona_tokens
from learners.agent.train_loop import collate


def test_rows_read_equal_examples_plus_quarantine(traces_and_codes):
    traces, codes = traces_and_codes
    codes = codes.filter(pa.compute.not_equal(codes["buyer_id"], "u1"))  # one buyer without a code
    built = build_examples(traces, codes)
    assert built.rows_read == traces.num_rows
    assert built.rows_read + built.goal_copies == built.examples.num_rows + built.quarantine.num_rows
    assert built.goal_copies == built.examples.num_rows - built.examples.column("goal").null_count
    reasons = built.quarantine.column("reason").to_pylist()
    invalid = sum(not v for v in traces.column("valid").to_pylist())
    assert sum(r.startswith("action invalid") for r in reasons) == invalid
    assert any(r.startswith("buyer has no persona code") for r in reasons)
    assert set(built.quarantine.column("column").to_pylist()) <= {"valid", "code"}


def test_history_is_the_sessions_earlier_actions(traces_and_codes):
    traces, codes = traces_and_codes
    ex = build_examples(traces, codes).examples.to_pylist()

    def episode(r: dict) -> tuple:  # a goal-shown copy is its own episode of the same session
        return r["merchant_id"], r["buyer_id"], r["session_id"], r["goal"] is None

    for prev, row in zip(ex, ex[1:], strict=False):
        if episode(row) == episode(prev):
            assert row["history"] == prev["history"] + [prev["action"]]
        else:
            assert row["history"] == []
    assert all(r["kind"] == action_kind(r["action"]) for r in ex)
    assert all(r["action"] in r["valid_actions"] for r in ex)


def test_hindsight_goal_is_the_bought_product(traces_and_codes):
    assert (
        session_goal(
            ["open product a", "add to cart", "open product b", "go to cart", "checkout", "place order"]
        )
        == "a"
    )
    assert session_goal(["open product a", "buy now", "place order"]) == "a"
    assert session_goal(["open product a", "add to cart", "exit"]) is None
    traces, codes = traces_and_codes
    ex = build_examples(traces, codes, goal_share=1.0).examples.to_pylist()
    none = build_examples(traces, codes, goal_share=0.0).examples
    assert none.column("goal").null_count == none.num_rows
    buying = {(r["buyer_id"], r["session_id"], r["merchant_id"]) for r in ex if r["action"] == "place order"}
    assert buying, "fixture should contain purchasing sessions"

    def steps(rows, goal_shown: bool) -> list[tuple]:
        return sorted(
            (r["buyer_id"], r["session_id"], r["merchant_id"], r["step"], r["action"])
            for r in rows
            if (r["goal"] is not None) == goal_shown
        )

    # Every step once without a goal (the real rates), and the buying sessions once more with theirs.
    assert steps(ex, goal_shown=False) == steps(none.to_pylist(), goal_shown=False)
    assert steps(ex, goal_shown=True) == [s for s in steps(ex, goal_shown=False) if s[:3] in buying]


def test_split_is_merchant_disjoint(traces_and_codes):
    traces, codes = traces_and_codes
    ex = build_examples(traces, codes).examples
    parts = split_examples(ex, 0.5, 0.3, seed=1)
    assert sum(p.num_rows for p in parts.values()) == ex.num_rows
    held = set(parts["heldout_merchants"].column("merchant_id").to_pylist())
    assert held.isdisjoint(parts["train"].column("merchant_id").to_pylist())
    train_buyers = set(
        zip(parts["train"]["merchant_id"].to_pylist(), parts["train"]["buyer_id"].to_pylist(), strict=True)
    )
    held_buyers = set(
        zip(
            parts["heldout_buyers"]["merchant_id"].to_pylist(),
            parts["heldout_buyers"]["buyer_id"].to_pylist(),
            strict=True,
        )
    )
    assert train_buyers.isdisjoint(held_buyers)


def test_page_parsing_matches_the_storefront(traces_and_codes):
    traces, _ = traces_and_codes
    kinds = {page_kind(o) for o in traces.column("observation").to_pylist()}
    assert {"home", "product"} <= kinds and "other" not in kinds
    assert listed_actions("== Cart ==\nx\nActions:\ncheckout\nhome") == ("checkout", "home")


def test_prompt_persona_goal_and_target_only_loss(traces_and_codes):
    traces, _ = traces_and_codes
    model, tok = load_base("tiny", traces.column("observation").to_pylist()[:20])
    tokens = add_persona_tokens(model, tok, 2)
    fmt = PromptFormat(history_len=2, max_observation_tokens=40)
    page = (
        "== Home ==\n"
        + GOAL_PREFIX
        + "p9\n"
        + "Products:\n"
        + "- product p1\n" * 50
        + "Actions:\nopen product p1"
    )
    ids = encode_prompt(tok, page, 1, "p3", ["home", "back", "open product p1"], tokens, fmt)
    text = tok.decode(ids)
    cue = tok("\nAction:", add_special_tokens=False)["input_ids"]
    assert ids[-len(cue) - 1] == tokens.token_id(1) and ids.count(tokens.token_id(1)) == 1
    assert ids[-len(cue) :] == cue
    assert text.startswith("Page:\n== Home ==")
    assert "Goal: buy product p3" in text and "p9" not in text  # the request's goal, not the page's
    assert "History: back | open product p1" in text
    assert "open product p1\nGoal: buy product p3\nHistory:" in text  # the action list survives the cut
    no_persona = encode_prompt(tok, page, 1, None, [], None, fmt)
    assert tokens.token_id(1) not in no_persona
    # Buyers on the same page share the page's ids as the prompt's first part; their own part follows.
    shared = encode_page(tok, page, fmt)
    assert ids[: len(shared)] == shared == no_persona[: len(shared)]
    assert ids == shared + encode_buyer(tok, 1, "p3", ["home", "back", "open product p1"], tokens, fmt)
    target = encode_target(tok, "add to cart")
    assert target[-1] == tok.eos_token_id
    batch = collate([(ids, target), (no_persona, target)], tok.pad_token_id)
    for row, prompt in enumerate((ids, no_persona)):
        labelled = batch.labels[row][batch.labels[row] != IGNORE_INDEX].tolist()
        assert labelled == target
        assert (batch.labels[row][: len(prompt)] == IGNORE_INDEX).all()


def test_serving_refuses_an_agent_trained_on_another_prompt_layout(tmp_path):
    config = {"history_len": 3, "max_observation_tokens": 64}
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"config": config}))  # written before layouts were recorded
    with pytest.raises(ValueError, match="persona-first prompt layout.*retrain"):
        saved_prompt_format(tmp_path)
    manifest.write_text(json.dumps({"config": config, "prompt_layout": PROMPT_LAYOUT}))
    assert saved_prompt_format(tmp_path) == PromptFormat(3, 64)
