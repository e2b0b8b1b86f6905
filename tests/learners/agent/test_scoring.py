"""scoring.py: the search template scores as the page's own searches, and picking it then a query is
the same as drawing among all scored actions at once; item actions and the searches score in two
levels (the template's log-probability, then the page's items), which keeps the template's mass and
the ranking of its items; a goal task names its goal ``your goal`` and the pick maps it back; an
agent's manifest names the rule it is served with."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import replace

import numpy as np
import pytest

from envs.catalog import Catalog
from envs.render import GOAL_MARK, GOAL_PREFIX
from envs.storefront import SEARCH_TEMPLATE, Storefront
from learners.agent.actions import is_offered
from learners.agent.base_models import train_bpe_tokenizer
from learners.agent.llm_policy import LLMPolicy
from learners.agent.policy import ActRequest
from learners.agent.prompt import encode_target
from learners.agent.random_policy import page_queries
from learners.agent.scoring import (
    SCORING_RULE,
    ItemGroups,
    action_scores,
    candidate_scores,
    check_scoring_rule,
    item_groups,
    item_template,
    pick,
    scored_candidates,
    unseen_store_tokens,
)


def storefront_with(n: int) -> Storefront:
    records = [
        {"product_id": str(100200 + i), "category_id": f"c{i % 4}", "popularity": 1.0 / (i + 1)}
        for i in range(n)
    ]
    return Storefront(Catalog.from_records("m1", records))


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


# ---- two-level item scoring ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def tok():
    corpus = [" open product 100230", " open category 7", " remove product 12", " home", " exit"] * 5
    return train_bpe_tokenizer(corpus, vocab_size=300)


def _page(products: list[str]) -> tuple[ActRequest, list[str]]:
    lines = [f"- product {p}" for p in products]
    valid = (*(f"open product {p}" for p in products), "open category c1", SEARCH_TEMPLATE, "home", "exit")
    observation = "== Home ==\nProducts:\n" + "\n".join(lines) + "\nActions:\n" + "\n".join(valid)
    request = ActRequest(observation, valid)
    return request, scored_candidates(request)


def _token_logprobs(
    tok, candidates: list[str], seed: int, sure: tuple[str, ...] = ()
) -> tuple[np.ndarray, list[list[int]]]:
    """Seeded per-token log-probabilities as a backend gives them: equal for equal target prefixes
    (the same tokens in the same context), whatever follows. The ``sure`` candidates' tokens after
    their template prefix have probability 1 (the model puts all its id mass on them)."""
    rng = np.random.default_rng(seed)
    targets = [encode_target(tok, c) for c in candidates]
    by_prefix: dict[tuple[int, ...], float] = {}
    values = []
    for c, t in zip(candidates, targets, strict=True):
        k0 = len(encode_target(tok, item_template(c).rstrip())) - 1 if c in sure else len(t)
        for k in range(len(t)):
            values.append(0.0 if k >= k0 else by_prefix.setdefault(tuple(t[: k + 1]), -rng.exponential(2.0)))
    return np.array(values), targets


def _whole(logprobs: np.ndarray, targets: list[list[int]]) -> np.ndarray:
    """The plain full-sequence rule: each target's summed log-probabilities."""
    bounds = np.cumsum([0] + [len(t) for t in targets])
    return np.array([logprobs[a:b].sum() for a, b in zip(bounds[:-1], bounds[1:], strict=True)])


def test_item_templates_are_the_per_item_actions():
    assert item_template("open product 100230") == "open product "
    assert item_template("open category c1") == "open category "
    assert item_template("remove product p1") == "remove product "
    assert item_template('search "p1"') == 'search "'
    for action in ("home", "exit", "add to cart", "remove from cart", 'search "', "open product "):
        assert item_template(action) is None


def test_one_listed_product_gets_its_template_mass(tok):
    request, candidates = _page(["100230"])
    product = candidates.index("open product 100230")
    # All the model's id mass on the one listed product (and category): the whole actions' scores.
    sure = ("open product 100230", "open category c1")
    logprobs, targets = _token_logprobs(tok, candidates, seed=0, sure=sure)
    lengths = [len(t) for t in targets]
    groups = item_groups(tok, candidates, targets)
    searches = tuple(i for i, c in enumerate(candidates) if c.startswith('search "'))
    assert sorted(groups.members) == sorted([(product,), (candidates.index("open category c1"),), searches])
    scores = candidate_scores(logprobs, lengths, groups)
    others = [i for i in range(len(candidates)) if i not in searches]
    assert scores[others] == pytest.approx(_whole(logprobs, targets)[others], abs=1e-12)
    # Whatever the model thinks of its id, the one listed item holds the template's whole mass.
    logprobs, targets = _token_logprobs(tok, candidates, seed=0)
    scores = candidate_scores(logprobs, lengths, groups)
    k = groups.prefix_tokens[groups.members.index((product,))]
    start = sum(lengths[:product])
    assert scores[product] == pytest.approx(logprobs[start : start + k].sum(), abs=1e-12)
    assert scores[product] > _whole(logprobs, targets)[product]


def test_many_products_keep_the_template_mass_and_rank_by_their_ids(tok):
    products = ["100230", "100231", "7", "55012", "100230123"]
    request, candidates = _page(products)
    logprobs, targets = _token_logprobs(tok, candidates, seed=1)
    lengths = [len(t) for t in targets]
    groups = item_groups(tok, candidates, targets)
    scores = candidate_scores(logprobs, lengths, groups)
    whole = _whole(logprobs, targets)
    items = [candidates.index(f"open product {p}") for p in products]
    prefix = encode_target(tok, "open product")[:-1]
    assert groups.members[0] == tuple(items) and groups.prefix_tokens[0] == len(prefix)
    # Template mass preserved: the items' total probability is the prefix's own.
    start = sum(lengths[: items[0]])
    log_prefix = logprobs[start : start + len(prefix)].sum()
    assert np.logaddexp.reduce(scores[items]) == pytest.approx(log_prefix, abs=1e-9)
    assert np.logaddexp.reduce(whole[items]) < log_prefix - 1.0  # which the whole-action rule loses
    # Ranked by their continuations (ids + EOS), which is the whole-action order within the template.
    continuation = [whole[i] - log_prefix for i in items]
    assert list(np.argsort(scores[items])) == list(np.argsort(continuation))
    assert scores[items] - scores[items[0]] == pytest.approx(np.array(continuation) - continuation[0])
    # Non-item actions keep their whole-action scores.
    plain = [i for i, c in enumerate(candidates) if item_template(c) is None]
    assert len(plain) == 2
    assert scores[plain] == pytest.approx(whole[plain], abs=1e-12)
    # The searches are a template too: together they hold the probability of `` search "``, which
    # their whole-action scores lose, and they rank by their queries.
    per_action = action_scores(request, scores)
    searches = [i for i, c in enumerate(candidates) if c.startswith('search "')]
    assert len(searches) == len(page_queries(request.observation)) > 1
    search_prefix = encode_target(tok, 'search "')[:-1]
    start = sum(lengths[: searches[0]])
    log_search = logprobs[start : start + len(search_prefix)].sum()
    assert per_action[request.valid_actions.index(SEARCH_TEMPLATE)] == pytest.approx(log_search, abs=1e-9)
    assert np.logaddexp.reduce(whole[searches]) < log_search
    assert list(np.argsort(scores[searches])) == list(np.argsort(whole[searches]))
    # Length normalisation divides each candidate's rule score by its target length.
    normed = candidate_scores(logprobs, lengths, groups, length_normalize=True)
    assert normed == pytest.approx(scores / np.array(lengths))


def test_a_digit_split_tokenizer_spells_numbers_and_keeps_the_item_templates():
    corpus = [" open product 100230", " open product 100231", "Price: 34.29", "price 48.99", " exit"] * 20
    merged = train_bpe_tokenizer(corpus, vocab_size=300)
    digits = train_bpe_tokenizer(corpus, vocab_size=300, split_digits=True)
    assert any(sum(c.isdigit() for c in t) > 1 for t in merged.tokenize("Price: 34.29 price 48.99"))
    spelled = digits.tokenize("Price: 34.29 price 48.99")
    assert all(sum(c.isdigit() for c in t) <= 1 for t in spelled)
    assert [t for t in spelled if any(c.isdigit() for c in t)] == ["3", "4", "2", "9", "4", "8", "9", "9"]
    assert digits.decode(digits.encode(" open product 100230")) == " open product 100230"
    # The two-level rule still finds `` open product`` as every item's token prefix.
    request, candidates = _page(["100230", "100231", "7"])
    targets = [encode_target(digits, c) for c in candidates]
    groups = item_groups(digits, candidates, targets)
    items = tuple(candidates.index(f"open product {p}") for p in ("100230", "100231", "7"))
    assert items in groups.members


def test_products_get_their_template_mass_on_the_pick():
    """Ids the model cannot predict no longer hide the template: a greedy pick opens the best product
    when the model's next-token mass is on "open product"; the whole-action rule would exit."""
    candidates = ["open product 100230", "open product 100231", "exit"]
    request = ActRequest("== Home ==", tuple(candidates), seed=3)
    # Tokens: [open, product, id..., EOS]: the prefix at 0.6 x 0.9, each id token about 1/1000.
    lengths = [2 + 3 + 1, 2 + 3 + 1, 1 + 1]
    ids = [np.log(0.6), np.log(0.9), *[np.log(1e-3)] * 3, 0.0]
    logprobs = np.array([*ids, *ids[:-2], np.log(2e-3), 0.0, np.log(0.3), 0.0])
    groups = ItemGroups(((0, 1),), (2,))
    whole = candidate_scores(logprobs, lengths, ItemGroups((), ()))
    assert pick(request, candidates, whole, 0.0)[0] == "exit"
    scores = candidate_scores(logprobs, lengths, groups)
    assert np.exp(scores[:2]) == pytest.approx([0.18, 0.36])  # 0.54 shared 1:2 by their ids
    assert scores[2] == whole[2] == pytest.approx(np.log(0.3))
    assert pick(request, candidates, scores, 0.0)[0] == "open product 100231"


class MergingTokenizer:
    """Characters as tokens, but ``t`` and a following `` 1`` merge into one token: the template's
    prefix `` open product`` is then not a token-prefix of ``open product 1...``."""

    eos_token_id = 0

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict:
        ids, i = [], 0
        while i < len(text):
            if text.startswith("t 1", i):
                ids.append(1000)
                i += 3
            else:
                ids.append(ord(text[i]))
                i += 1
        return {"input_ids": ids}


def test_a_template_merged_with_its_ids_scores_its_items_whole():
    tok = MergingTokenizer()
    candidates = ["open product 12", "open product 13", "open product x4", "remove product 9", "home"]
    targets = [encode_target(tok, c) for c in candidates]
    groups = item_groups(tok, candidates, targets)
    assert groups.members == ((3,),)  # only "remove product 9" keeps its prefix
    assert groups.prefix_tokens == (len(" remove product"),)
    rng = np.random.default_rng(2)
    logprobs = -rng.exponential(1.0, size=sum(map(len, targets)))
    scores = candidate_scores(logprobs, [len(t) for t in targets], groups)
    whole = _whole(logprobs, targets)
    assert scores[[0, 1, 2, 4]] == pytest.approx(whole[[0, 1, 2, 4]])


def test_unseen_store_tokens_are_an_item_actions_id_or_query_and_eos(tok):
    def unseen(action: str) -> list[int]:
        target = encode_target(tok, action)
        return target[len(target) - unseen_store_tokens(tok, action, target) :]

    for action, template in [
        ("open product 100230", "open product"),
        ("open category 7", "open category"),
        ("remove product 12", "remove product"),
        ('search "100230"', 'search "'),
    ]:
        prefix = encode_target(tok, template)[:-1]
        assert prefix + unseen(action) == encode_target(tok, action)
        assert unseen(action)[-1] == tok.eos_token_id and len(unseen(action)) >= 2
    for action in ("home", "exit", "add to cart", "open product your goal", 'search "your goal"'):
        assert unseen(action) == []
    merging = MergingTokenizer()  # the prefix merged into the id: scored whole, nothing left out
    assert unseen_store_tokens(merging, "open product 12", encode_target(merging, "open product 12")) == 0


def test_the_manifest_names_the_scoring_rule_old_agents_get_this_one(tmp_path):
    assert check_scoring_rule(tmp_path) == SCORING_RULE  # no manifest: a plain model directory
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"config": {}, "prompt_layout": "page-first"}))  # before the field
    assert check_scoring_rule(tmp_path) == SCORING_RULE
    manifest.write_text(json.dumps({"config": {}, "scoring": SCORING_RULE}))
    assert check_scoring_rule(tmp_path) == SCORING_RULE
    manifest.write_text(json.dumps({"config": {}, "scoring": "two-level-v1"}))  # searches scored whole
    with pytest.raises(ValueError, match="'two-level-v1' scoring rule.*'two-level-v2' only"):
        check_scoring_rule(tmp_path)
    with pytest.raises(ValueError, match="'two-level-v1' scoring rule"):
        LLMPolicy.from_pretrained(tmp_path)  # refused before any weights are read


# ---- goal tasks: the goal is named "your goal" -----------------------------------------------------


def _goal_page(listed: bool) -> ActRequest:
    """A hand-made goal-task home page (envs/render.py's layout) for the goal 100231, listed or not."""
    rows = ["- product 100230 | category c1 | price 1.00", "- product 7 | category c1 | price 3.00"]
    valid = ["open product 100230", "open product 7"]
    if listed:
        rows.insert(1, "- product 100231 | category c1 | price 2.00" + GOAL_MARK)
        valid.insert(1, "open product 100231")
    valid = (*valid, "open category c1", SEARCH_TEMPLATE, "home", "exit")
    lines = ["== Home ==", "Shop m | Cart: 0 items | Favourites: 0", GOAL_PREFIX + "100231", "Products:"]
    observation = "\n".join([*lines, *rows, "Actions:", *valid])
    return ActRequest(observation, valid, goal="100231", seed=5)


def test_a_listed_goal_is_scored_as_your_goal_and_picked_as_its_real_action(tok):
    request = _goal_page(listed=True)
    candidates = scored_candidates(request)
    assert "open product your goal" in candidates and "open product 100231" not in candidates
    assert candidates.index("open product your goal") == request.valid_actions.index("open product 100231")
    assert 'search "your goal"' in candidates and 'search "100231"' not in candidates
    # The model puts its id mass on "your goal": the greedy pick opens the goal, by its real id.
    logprobs, targets = _token_logprobs(tok, candidates, seed=3, sure=("open product your goal",))
    groups = item_groups(tok, candidates, targets)
    scores = candidate_scores(logprobs, [len(t) for t in targets], groups)
    action, _, per_action = pick(request, candidates, scores, 0.0)
    template = per_action[request.valid_actions.index("open product 100231")]
    if action != "open product 100231":  # another template outweighs "open product": still reachable
        assert template == max(per_action[: len(request.valid_actions) - 4])
    products = [request.valid_actions.index(a) for a in request.valid_actions if a.startswith("open product")]
    assert int(np.argmax(per_action[products])) == request.valid_actions.index("open product 100231")


def test_an_unlisted_goal_is_among_the_searches_and_the_pick_searches_its_id():
    request = _goal_page(listed=False)
    assert "100231" in page_queries(request.observation)  # the goal line names it
    candidates = scored_candidates(request)
    assert 'search "your goal"' in candidates
    scores = np.full(len(candidates), -8.0)
    scores[candidates.index('search "your goal"')] = -0.1
    action, score, per_action = pick(request, candidates, scores, 0.0)
    assert action == 'search "100231"' and score == pytest.approx(-0.1)
    assert is_offered(action, request.valid_actions)


def test_without_a_goal_candidates_and_picks_are_unchanged():
    with_goal = _goal_page(listed=True)
    request = ActRequest(
        "\n".join(line for line in with_goal.observation.split("\n") if not line.startswith(GOAL_PREFIX)),
        with_goal.valid_actions,
        seed=5,
    )
    request = ActRequest(request.observation.replace(GOAL_MARK, ""), request.valid_actions, seed=5)
    candidates = scored_candidates(request)
    plain = [a for a in request.valid_actions if a != SEARCH_TEMPLATE]
    assert candidates == plain + [f'search "{q}"' for q in page_queries(request.observation)]
    assert not any("your goal" in c for c in candidates)
    rng = np.random.default_rng(0)
    for seed in range(20):
        scores = rng.normal(size=len(candidates))
        assert pick(replace(request, seed=seed), candidates, scores, 1.0)[0] in candidates


def test_choosing_the_goal_whenever_it_is_named_buys_it_on_a_real_storefront():
    """The path of an agent that always prefers its goal's actions reaches the purchase: every pick
    is a real, valid action of the page, whether the goal is listed (home) or must be searched."""
    shop = storefront_with(30)
    prefer = {"open product your goal": 0.0, 'search "your goal"': -1.0, "buy now": 0.0, "place order": 0.0}
    for goal in (shop.catalog.products[1].product_id, shop.catalog.products[-1].product_id):
        state, history = shop.initial_state(goal=goal), []
        for _ in range(6):
            request = ActRequest(shop.observe(state), tuple(shop.valid_actions(state)), goal=goal, seed=1)
            candidates = scored_candidates(request)
            scores = np.array([prefer.get(c, -10.0) for c in candidates])
            action = pick(request, candidates, scores, 0.0)[0]
            state, _ = shop.step(state, action)
            history.append(action)
            if shop.goal_reached(state):
                break
        assert shop.goal_reached(state), history
        assert history[-3:] == [f"open product {goal}", "buy now", "place order"]
        assert (history[0] == f'search "{goal}"') == (goal == shop.catalog.products[-1].product_id)
