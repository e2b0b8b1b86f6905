"""Examples (history, hindsight goals, quarantine accounting) and the shared prompt format."""

from __future__ import annotations

import json
import re
from dataclasses import replace

import pyarrow as pa
import pytest

from envs.render import GOAL_MARK, TYPICAL_PREFIX, listed_products, mark_goal, price_cell
from learners.agent.actions import action_kind, listed_actions, page_kind
from learners.agent.base_models import load_base
from learners.agent.examples import (
    INSERTED_SEARCH,
    build_examples,
    session_goal,
    split_examples,
    step_products,
)
from learners.agent.prompt import (
    GOAL_PREFIX,
    IGNORE_INDEX,
    PROMPT_LAYOUT,
    PromptFormat,
    alias_goal,
    encode_buyer,
    encode_page,
    encode_prompt,
    encode_target,
    page_text,
    render_prompt,
    saved_prompt_format,
)
from learners.agent.random_policy import page_queries
from learners.agent.scoring import listing_features
from learners.agent.tokens import add_persona_tokens
from learners.agent.train_loop import collate
from learners.data.traces import RealEvent, ReplayReport, TraceRows, replay_session
from tests.learners.agent.conftest import storefront


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
    free = [r for r in ex if r["goal"] is None]
    for prev, row in zip(free, free[1:], strict=False):
        if (row["merchant_id"], row["buyer_id"], row["session_id"]) == (
            prev["merchant_id"],
            prev["buyer_id"],
            prev["session_id"],
        ):
            assert row["history"] == prev["history"] + [prev["action"]]
        else:
            assert row["history"] == []
    # A goal-shown copy's history is the same session's, with the goal named as the agent names it.
    original = {(r["merchant_id"], r["buyer_id"], r["session_id"], r["step"]): r for r in free}
    copies = [r for r in ex if r["goal"] is not None]
    assert copies
    for r in copies:
        before = original[r["merchant_id"], r["buyer_id"], r["session_id"], r["step"]]["history"]
        assert r["history"] == [alias_goal(a, r["goal"]) for a in before]
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
    bought_only = build_examples(traces, codes, goal_share=1e-9).examples.to_pylist()
    assert none.column("goal").null_count == none.num_rows

    def steps(rows, goal_shown: bool) -> list[tuple]:
        return sorted(
            (r["buyer_id"], r["session_id"], r["merchant_id"], r["step"], r["action"])
            for r in rows
            if (r["goal"] is not None) == goal_shown
        )

    # Every step once without a goal (the real rates), whatever the share of goal-shown copies.
    assert steps(ex, goal_shown=False) == steps(none.to_pylist(), goal_shown=False)
    # Each copy is the steps that name its product, the product named "your goal" (as the agent names it).
    originals = {
        (r["buyer_id"], r["session_id"], r["merchant_id"], r["step"]): r for r in ex if r["goal"] is None
    }
    copies = [r for r in ex if r["goal"] is not None]
    assert copies
    for r in copies:
        original = originals[r["buyer_id"], r["session_id"], r["merchant_id"], r["step"]]
        assert r["goal"] in step_products(original["action"], original["observation"])
        assert r["action"] == alias_goal(original["action"], r["goal"])
        assert r["observation"] == mark_goal(original["observation"], r["goal"])
        assert r["action"] in r["valid_actions"] and f"open product {r['goal']}" not in r["valid_actions"]
    goals = {(r["buyer_id"], r["session_id"], r["merchant_id"], r["goal"]) for r in copies}
    acted = {
        (r["buyer_id"], r["session_id"], r["merchant_id"], p)
        for r in originals.values()
        for p in step_products(r["action"], r["observation"])
    }
    assert goals == acted  # goal_share 1: every product a session acts on
    # Every purchase keeps its copy at any positive share: the bought product's view, cart, checkout
    # and order, each once.
    bought = {(r["buyer_id"], r["session_id"], r["merchant_id"], r["goal"]) for r in bought_only if r["goal"]}
    assert bought and bought < goals
    for key in bought:
        copy = [
            r["action"]
            for r in bought_only
            if r["goal"] and (r["buyer_id"], r["session_id"], r["merchant_id"], r["goal"]) == key
        ]
        assert copy[0] == "open product your goal" and copy[-1] == "place order"
        assert set(copy[1:]) <= {"add to cart", "buy now", "checkout", "place order"}
        assert len(set(copy)) == len(copy)  # no step twice
        assert session_goal([a.replace("your goal", key[3]) for a in copy]) == key[3]


def _replayed() -> tuple[pa.Table, list[str]]:
    """One real session replayed by the trace builder: a view of a product x the home page does not
    list (the replay inserts a search for its id), x into the cart, back home and a real search
    ("tea", which finds nothing) followed by a view of another unlisted product z (the replay
    inserts its search), then of an unlisted w (a search from z's page), a view of a featured product
    y (the replay inserts ``home``), x viewed again, and x bought."""
    shop = storefront("m1", n_products=60)  # 20 per category: the last ones are on a second page
    x, z, w, y = (shop.catalog.products[i].product_id for i in (-1, -2, -3, 0))
    events = [
        RealEvent(0, "product_view", x, None, None),
        RealEvent(1, "add_to_cart", x, None, None),
        RealEvent(2, "page_view", None, None, None),
        RealEvent(3, "search", None, None, "tea"),
        RealEvent(4, "product_view", z, None, None),
        RealEvent(5, "product_view", w, None, None),
        RealEvent(6, "product_view", y, None, None),
        RealEvent(7, "product_view", x, None, None),
        RealEvent(8, "purchase", x, None, None),
    ]
    rows, report = TraceRows(), ReplayReport()
    replay_session(shop, ("m1", "u1", "s1"), events, rows, report)
    assert report.mapped_events == len(events)
    return rows.table(), [x, z, w, y]


def test_hindsight_goals_of_a_replayed_session():
    traces, (x, z, w, y) = _replayed()
    actions = traces.column("action").to_pylist()
    real = traces.column("real_event").to_pylist()
    inserted = [i for i, a in enumerate(actions) if a.startswith("search") and not real[i]]
    assert [actions[i] for i in inserted] == [f'search "{q}"' for q in (x, z, w, x)]
    assert actions[inserted[1] - 1] == 'search "tea"' and real[inserted[1] - 1]
    assert actions.count(f"open product {x}") == 2  # x viewed twice
    built = build_examples(traces, None, goal_share=1.0)
    assert built.rows_read + built.goal_copies == built.examples.num_rows + built.quarantine.num_rows
    # The replay's searches are not the buyer's: never shown without a goal.
    assert built.quarantine.column("reason").to_pylist() == [INSERTED_SEARCH] * 4
    assert built.quarantine.column("line").to_pylist() == inserted
    rows = built.examples.to_pylist()
    free = [r for r in rows if r["goal"] is None]
    kept = [a for i, a in enumerate(actions) if i not in inserted]
    assert [r["action"] for r in free] == kept  # the buyer's real search stays, goal-free
    assert [r["history"] for r in free] == [
        actions[:i] for i in range(len(actions)) if i not in inserted
    ]  # the history is what happened, the replay's searches included
    copies = {g: [r for r in rows if r["goal"] == g] for g in (x, z, w, y)}
    # x: its search and first view, its cart and purchase; not its second visit.
    assert [r["action"] for r in copies[x]] == [
        'search "your goal"',
        "open product your goal",
        "add to cart",
        "go to cart",
        "checkout",
        "place order",
    ]
    # z: the buyer's own search ("tea"), which the replay had to follow with z's id, was for z.
    assert [r["action"] for r in copies[z]] == ['search "your goal"', "open product your goal"]
    assert [r["step"] for r in copies[z]] == [inserted[1] - 1, inserted[1] + 1]
    # w: searched for from z's page.
    assert [r["action"] for r in copies[w]] == ['search "your goal"', "open product your goal"]
    assert [r["action"] for r in copies[y]] == ["home", "open product your goal"]
    for goal, copy in copies.items():
        named = [alias_goal(a, goal) for a in actions]
        for r in copy:
            named[r["step"]] = r["action"]  # the buyer's "tea" was a search for z
        for r in copy:
            assert r["history"] == named[: r["step"]]  # what the session did before, goal named
            assert r["observation"] == mark_goal(traces.column("observation")[r["step"]].as_py(), goal)
            assert r["action"] in r["valid_actions"] or r["action"] == 'search "your goal"'
    home = copies[x][0]["observation"]
    assert GOAL_PREFIX + x in home and GOAL_MARK not in home  # not listed: searched for
    assert x in page_queries(home)  # and its id is among the page's suggested searches
    results = copies[x][1]["observation"].split("\n")  # the search results list the goal, marked
    assert [line for line in results if line.endswith(GOAL_MARK)][0].startswith(f"- product {x} |")
    assert sum(r["goal"] is not None for r in rows) == built.goal_copies == 12
    # Without goal copies the inserted searches are still not shown goal-free.
    none = build_examples(traces, None, goal_share=0.0)
    assert none.goal_copies == 0 and none.quarantine.num_rows == 4
    assert [r["action"] for r in none.examples.to_pylist()] == kept
    # Products not bought get their copy with probability goal_share; the bought one always.
    some = build_examples(traces, None, goal_share=1e-9).examples.column("goal").to_pylist()
    assert {g for g in some if g} == {x}


def test_goal_copies_carry_codes_drawn_from_every_buyer_type(traces_and_codes):
    """Goal-free rows keep the buyer's code; goal-shown copies draw one of the codes the buyers have,
    seeded, so every type sees goals through to the purchase."""
    traces, codes = traces_and_codes
    own = {
        (m, b): c
        for m, b, c in zip(
            *(codes.column(k).to_pylist() for k in ("merchant_id", "buyer_id", "code")), strict=True
        )
    }
    rows = build_examples(traces, codes, goal_share=1.0, seed=3).examples.to_pylist()
    free = [r for r in rows if r["goal"] is None]
    copies = [r for r in rows if r["goal"] is not None]
    assert free and all(r["code"] == own[(r["merchant_id"], r["buyer_id"])] for r in free)
    assert {r["code"] for r in copies} == set(own.values())
    assert any(r["code"] != own[(r["merchant_id"], r["buyer_id"])] for r in copies)
    by_episode = {}
    for r in copies:  # one code per copy (session and goal)
        by_episode.setdefault((r["merchant_id"], r["buyer_id"], r["session_id"], r["goal"]), set()).add(
            r["code"]
        )
    assert all(len(drawn) == 1 for drawn in by_episode.values())
    again = build_examples(traces, codes, goal_share=1.0, seed=3).examples.to_pylist()
    assert [r["code"] for r in again] == [r["code"] for r in rows]


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
        + "p3\n"
        + "Products:\n"
        + "- product p1 | category c | price 1.00\n" * 50
        + "Actions:\nopen product p3\nopen product p1"
    )
    history = ["home", "back", "open product p1"]
    ids = encode_prompt(tok, page, 1, "p3", history, tokens, fmt)
    text = tok.decode(ids)
    cue = tok("\nAction:", add_special_tokens=False)["input_ids"]
    assert ids[-len(cue) - 1] == tokens.token_id(1) and ids.count(tokens.token_id(1)) == 1
    assert ids[-len(cue) :] == cue
    assert text.startswith("Page:\n== Home ==")
    # A goal task: the goal named "your goal", other products "other", no id anywhere.
    assert "p3" not in text and "p1" not in text
    assert "History: back | open product other\nGoal: buy product your goal\n" in text  # the goal line last
    assert "open product your goal\nopen product other\nHistory:" in text  # the action list survives the cut
    named = tok.decode(encode_buyer(tok, 1, "p1", ["home", 'search "tea"', "open product p1"], tokens, fmt))
    assert 'History: search "other" | open product your goal\nGoal: buy product your goal\n' in named
    searched = tok.decode(encode_buyer(tok, 1, "p1", ['search "p1"'], tokens, fmt))
    assert 'History: search "your goal"\n' in searched
    no_persona = encode_prompt(tok, page, 1, None, [], None, fmt)
    assert tokens.token_id(1) not in no_persona
    # Buyers on the same page share the page's ids as the prompt's first part; their own part follows.
    shared = encode_page(tok, page, fmt)
    assert ids[: len(shared)] == shared == no_persona[: len(shared)]
    assert ids == shared + encode_buyer(tok, 1, "p3", history, tokens, fmt)
    target = encode_target(tok, "add to cart")
    assert target[-1] == tok.eos_token_id
    batch = collate([(ids, target), (no_persona, target)], tok.pad_token_id)
    for row, prompt in enumerate((ids, no_persona)):
        labelled = batch.labels[row][batch.labels[row] != IGNORE_INDEX].tolist()
        assert labelled == target
        assert (batch.labels[row][: len(prompt)] == IGNORE_INDEX).all()


def test_a_goal_tasks_page_names_the_goal_and_no_id():
    shop = storefront("m1", n_products=30)
    goal, other = shop.catalog.products[-1].product_id, shop.catalog.products[0].product_id
    state = shop.initial_state(goal=goal)
    pages = [shop.observe(state)]
    for action in (
        f'search "{goal}"',
        f"open product {goal}",
        "add to cart",
        "home",
        f"open product {other}",
    ):
        state, _ = shop.step(state, action)
        pages.append(shop.observe(state))
    shown = [page_text(p) for p in pages]
    for page, text in zip(pages, shown, strict=True):
        assert GOAL_PREFIX not in text and "m1p" not in text and "Shop other |" in text
        # Line for line the page, where every id reads "your goal" or "other".
        lines = [line for line in page.split("\n") if not line.startswith((GOAL_PREFIX, TYPICAL_PREFIX))]
        assert len(text.split("\n")) == len(lines)
        for line, seen in zip(lines, text.split("\n"), strict=True):
            if "m1p" not in line and not line.startswith("Shop "):
                assert seen == line  # lines without an id are as observed
            elif line.startswith("- product "):  # and without its price
                named = line.replace(goal, "your goal").replace(line.split()[2], "other")
                assert seen == re.sub(r" \| price [0-9.]+", "", named)
            elif line.startswith(("open product ", "Product id: ")):
                assert seen == line.replace(goal, "your goal").replace(line.split()[2], "other")
    assert '== Search results for "your goal" ==' in shown[1]
    assert "- product your goal | category" in shown[1] and shown[1].count(GOAL_MARK) == 1
    assert shown[2].startswith("== Product your goal ==") and f"Product id: your goal{GOAL_MARK}" in shown[2]
    assert "== Product other ==" in shown[5] and GOAL_MARK not in shown[5]
    # A goal-free page is the observation itself, its rows without their prices.
    free = shop.observe(shop.initial_state())
    assert page_text(free) == re.sub(r" \| price [0-9.]+", "", free) != free


def test_a_goal_free_prompt_keeps_the_page_first_layout():
    page = "== Home ==\nShop m1 | Cart: 0 items | Favourites: 0\nProducts:\n- product p1 | category c | bestseller"
    page += "\nActions:\nopen product p1\nexit"
    tokens = object()  # render_prompt only asks whether the agent has persona tokens
    fmt = PromptFormat(history_len=2)
    text = render_prompt(page, 3, None, ["home", "open product p1"], tokens, fmt)
    assert text == f"Page:\n{page}\nHistory: home | open product p1\n<persona_3>\nAction:"
    assert "your goal" not in text


def test_serving_refuses_an_agent_trained_on_another_prompt_layout(tmp_path):
    config = {"history_len": 3, "max_observation_tokens": 64}
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"config": config}))  # written before layouts were recorded
    with pytest.raises(ValueError, match="persona-first prompt layout.*retrain"):
        saved_prompt_format(tmp_path)
    manifest.write_text(json.dumps({"config": config, "prompt_layout": "page-first"}))  # unmarked goal pages
    with pytest.raises(ValueError, match="page-first prompt layout.*page-first-goal-marked.*retrain"):
        saved_prompt_format(tmp_path)
    priced_rows = {"config": config, "prompt_layout": "page-first-goal-marked"}
    manifest.write_text(json.dumps(priced_rows))
    with pytest.raises(ValueError, match="page-first-goal-marked prompt layout.*unpriced-rows.*retrain"):
        saved_prompt_format(tmp_path)
    manifest.write_text(json.dumps({"config": config, "prompt_layout": PROMPT_LAYOUT}))
    assert saved_prompt_format(tmp_path) == PromptFormat(3, 64)


def test_the_prompt_leaves_out_the_typical_price_the_price_response_reads():
    shop = storefront("m1")
    state = shop.step(shop.step(shop.initial_state(), "open category c0")[0], "open product m1p0")[0]
    page = shop.observe(state)
    assert f"\n{TYPICAL_PREFIX}16.00\n" in page and price_cell(page) == "far-below"
    shown = page_text(page)
    assert TYPICAL_PREFIX not in shown
    assert shown == "\n".join(line for line in page.split("\n") if not line.startswith(TYPICAL_PREFIX))
    goal_page = shop.observe(replace(state, goal="m1p0"))
    assert TYPICAL_PREFIX in goal_page and TYPICAL_PREFIX not in page_text(goal_page)


def test_the_prompt_leaves_out_the_rows_prices_and_row_choice_reads_them():
    shop = storefront("m1", n_products=30)
    state = shop.step(shop.initial_state(), "open category c0")[0]
    listing, actions = shop.observe(state), shop.valid_actions(state)
    # The first row three times dearer: its price against the page's median changes.
    dearer = re.sub(r"\| price ([0-9.]+)", lambda m: f"| price {float(m.group(1)) * 3:.2f}", listing, count=1)
    _, seen = listing_features(listing, actions)
    _, seen_dearer = listing_features(dearer, actions)
    assert seen_dearer[0, 2] > seen[0, 2] and (seen_dearer[:, :2] == seen[:, :2]).all()
    # The model reads both listings alike; the rows keep their ids, places and badges.
    assert page_text(dearer) == page_text(listing)
    rows = [line for line in page_text(listing).split("\n") if line.startswith("- product ")]
    listed = listed_products(listing)
    assert [r.split(" | ")[0][len("- product ") :] for r in rows] == [p for p, _, _ in listed]
    assert all(" price " not in r for r in rows)
    assert sum(r.endswith("| bestseller") for r in rows) == sum(b == "bestseller" for _, _, b in listed)
    # A cart row keeps its quantity; a product page keeps its price line.
    state = shop.step(state, "open product m1p0")[0]
    product = shop.observe(state)
    assert "\nPrice: " in page_text(product)
    cart = shop.observe(shop.step(shop.step(state, "add to cart")[0], "go to cart")[0])
    assert "- product m1p0 | category c0 | quantity 1" in page_text(cart).split("\n")


def test_per_visit_codes_give_each_visit_its_own(traces_and_codes):
    traces, _ = traces_and_codes
    visits = (
        traces.select(["merchant_id", "buyer_id", "session_id"])
        .group_by(["merchant_id", "buyer_id", "session_id"])
        .aggregate([])
    )
    rows = sorted(visits.to_pylist(), key=lambda r: (r["merchant_id"], r["buyer_id"], r["session_id"]))
    # Codes per visit (simpersona assign --other-visits): numbered in visit order, one visit left out.
    coded = {tuple(r.values()): i for i, r in enumerate(rows[1:], start=1)}
    codes = pa.Table.from_pylist(
        [
            {**dict(zip(("merchant_id", "buyer_id", "session_id"), k, strict=True)), "code": c}
            for k, c in coded.items()
        ]
    )
    built = build_examples(traces, codes)
    goal_free = [r for r in built.examples.to_pylist() if r["goal"] is None]
    seen = {(r["merchant_id"], r["buyer_id"], r["session_id"]): r["code"] for r in goal_free}
    assert seen and all(coded[k] == c for k, c in seen.items())
    assert len(set(seen.values())) == len(seen)  # a buyer's visits differ: not the buyer's one code
    first = tuple(rows[0].values())
    assert first not in seen
    assert any(
        r.startswith("buyer has no persona code") for r in built.quarantine.column("reason").to_pylist()
    )
