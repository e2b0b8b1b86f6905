"""Policies behind one interface: batched scoring equals a naive loop, the Markov chain reproduces its
training frequencies, and no policy ever returns an action the page does not offer."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

import numpy as np
import pyarrow as pa
import pytest
import torch

from envs.storefront import SEARCH_TEMPLATE
from learners.agent.actions import action_kind, is_offered, page_kind
from learners.agent.base_models import load_base
from learners.agent.examples import build_examples
from learners.agent.llm_policy import LLMPolicy
from learners.agent.markov_policy import START, MarkovPolicy
from learners.agent.packing import PADDING_SLACK, length_groups
from learners.agent.policy import ActRequest, Policy, choose
from learners.agent.prompt import PromptFormat, encode_prompt, encode_target
from learners.agent.random_policy import (
    FALLBACK_QUERY,
    RandomPolicy,
    page_queries,
    page_query,
    search_actions,
)
from learners.agent.scoring import item_template
from learners.agent.tokens import add_persona_tokens
from tests.learners.agent.conftest import storefront


@pytest.fixture(scope="module")
def examples(traces_and_codes):
    traces, codes = traces_and_codes
    return build_examples(traces, codes).examples


@pytest.fixture(scope="module")
def llm(examples):
    model, tok = load_base("tiny", examples.column("observation").to_pylist(), seed=5)
    tokens = add_persona_tokens(model, tok, 2)
    return model, tok, tokens


def _requests(examples, n=6, seed=0) -> list[ActRequest]:
    rows = examples.slice(0, n).to_pylist()
    return [
        ActRequest(
            r["observation"], tuple(r["valid_actions"]), r["code"], r["goal"], tuple(r["history"]), seed + i
        )
        for i, r in enumerate(rows)
    ]


def test_batched_scoring_matches_naive_loop(llm, examples):
    model, tok, tokens = llm
    fmt = PromptFormat(history_len=3, max_observation_tokens=200)
    requests = _requests(examples)
    policy = LLMPolicy(model, tok, tokens, fmt, temperature=0.0)
    results = policy.act(requests)
    assert any(SEARCH_TEMPLATE in r.valid_actions for r in requests)
    grouped = searched = 0
    for request, result in zip(requests, results, strict=True):
        naive = []
        prompt = encode_prompt(
            tok, request.observation, request.persona, request.goal, request.history, tokens, fmt
        )
        whole = {c: _naive_score(model, prompt, encode_target(tok, c)) for c in request.valid_actions}
        for candidate in request.valid_actions:
            template = item_template(candidate)
            if candidate == SEARCH_TEMPLATE:  # the total probability of the page's own searches
                searches = [encode_target(tok, f'search "{q}"') for q in page_queries(request.observation)]
                prefix = encode_target(tok, 'search "')[:-1]
                if all(t[: len(prefix)] == prefix for t in searches):  # two levels: `` search "``'s own
                    naive.append(_naive_score(model, prompt, prefix))
                    searched += 1
                else:
                    scores = [_naive_score(model, prompt, t) for t in searches]
                    naive.append(float(np.logaddexp.reduce(scores)))
            elif template is not None:  # two levels: the template's own pass, then the page's items
                prefix = encode_target(tok, template.rstrip())[:-1]
                assert encode_target(tok, candidate)[: len(prefix)] == prefix  # no merge at the boundary
                items = [whole[c] for c in request.valid_actions if item_template(c) == template]
                grouped += len(items) > 1
                naive.append(
                    _naive_score(model, prompt, prefix) + whole[candidate] - float(np.logaddexp.reduce(items))
                )
            else:
                naive.append(whole[candidate])
        assert result.info["scores"] == pytest.approx(naive, abs=1e-4)
        best = request.valid_actions[max(range(len(naive)), key=naive.__getitem__)]
        assert result.action == best or (best == SEARCH_TEMPLATE and result.action.startswith('search "'))
    assert grouped and searched  # some pages list several items of a template; searches are one


def test_item_templates_keep_the_mass_the_model_gives_their_prefix(llm):
    model, tok, tokens = llm
    shop = storefront("m1")
    home = shop.initial_state()
    observation, actions = shop.observe(home), tuple(shop.valid_actions(home))
    policy = LLMPolicy(model, tok, tokens, temperature=0.0)
    many = ActRequest(observation, actions, 1)
    products = [a for a in actions if item_template(a) == "open product "]
    one = replace(many, valid_actions=(products[0], "home", "exit"))
    (scores,), (alone,) = policy.score([many]), policy.score([one])
    prompt = policy.prompt_ids(many)
    prefix = _naive_score(model, prompt, encode_target(tok, "open product")[:-1])
    assert len(products) > 1
    listed = [scores[actions.index(a)] for a in products]
    assert np.logaddexp.reduce(listed) == pytest.approx(prefix, abs=1e-4)  # the template's mass
    whole = [_naive_score(model, prompt, encode_target(tok, a)) for a in products]
    assert np.argsort(listed).tolist() == np.argsort(whole).tolist()  # ranked by the model's ids
    assert alone[0] == pytest.approx(prefix, abs=1e-4)  # the only product holds it all
    for k, action in ((1, "home"), (2, "exit")):  # other actions score whole
        assert alone[k] == pytest.approx(_naive_score(model, prompt, encode_target(tok, action)), abs=1e-4)


def _naive_score(model, prompt: list[int], target: list[int]) -> float:
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([prompt + target])).logits[0].float(), -1)
    return sum(float(logp[len(prompt) + j - 1, t]) for j, t in enumerate(target))


def test_search_query_is_the_best_scored_page_query(llm, examples):
    model, tok, tokens = llm
    fmt = PromptFormat(history_len=3, max_observation_tokens=200)
    policy = LLMPolicy(model, tok, tokens, fmt, temperature=0.0)
    pages = [r.observation for r in _requests(examples, n=4)]
    requests = [ActRequest(page, (SEARCH_TEMPLATE,), 1, None, ("home",)) for page in pages]
    for request, result in zip(requests, policy.act(requests), strict=True):
        prompt = encode_prompt(tok, request.observation, 1, None, ("home",), tokens, fmt)
        queries = page_queries(request.observation)
        naive = [_naive_score(model, prompt, encode_target(tok, f'search "{q}"')) for q in queries]
        assert len(queries) > 1
        assert result.action == f'search "{queries[int(np.argmax(naive))]}"'


def test_length_normalisation_and_seeded_sampling(llm, examples):
    model, tok, tokens = llm
    requests = _requests(examples, n=4)
    plain = LLMPolicy(model, tok, tokens, temperature=0.0).score(requests)
    normer = LLMPolicy(model, tok, tokens, temperature=0.0, length_normalize=True)
    normed = normer.score(requests)
    assert any(SEARCH_TEMPLATE in r.valid_actions for r in requests)
    for r, a, b in zip(requests, plain, normed, strict=True):
        whole = [i for i, c in enumerate(r.valid_actions) if c != SEARCH_TEMPLATE]
        lengths = [len(encode_target(tok, r.valid_actions[i])) for i in whole]
        assert list(b[whole]) == pytest.approx(
            [a[i] / n for i, n in zip(whole, lengths, strict=True)], rel=1e-6
        )
        if SEARCH_TEMPLATE in r.valid_actions:  # the logsumexp of the page's searches, each normalised
            searches = replace(r, valid_actions=tuple(search_actions(r.observation)))
            (each,) = normer.score([searches])
            assert b[r.valid_actions.index(SEARCH_TEMPLATE)] == pytest.approx(np.logaddexp.reduce(each))
    sampler = LLMPolicy(model, tok, tokens, temperature=1.0)
    first = [x.action for x in sampler.act(requests)]
    again = [x.action for x in sampler.act(list(reversed(requests)))][::-1]
    assert first == again  # per-request seeds make answers order-independent


def test_markov_reproduces_transition_frequencies():
    pages = {
        "home": "== Home ==\nActions:\nopen product a\nopen product b\nexit",
        "product": "== Product a ==\nShop\nProduct id: a\nActions:\nadd to cart\nback\nexit",
    }
    sessions = [
        [("home", "open product a"), ("product", "add to cart"), ("product", "exit")],
        [("home", "open product b"), ("product", "back"), ("home", "exit")],
        [("home", "open product a"), ("product", "add to cart"), ("product", "back")],
        [("home", "exit")],
    ]
    rows = {"observation": [], "action": [], "history": [], "code": []}
    for session in sessions:
        for i, (page, action) in enumerate(session):
            rows["observation"].append(pages[page])
            rows["action"].append(action)
            rows["history"].append([a for _, a in session[:i]])
            rows["code"].append(1)
    policy = MarkovPolicy.fit(pa.table(rows), smoothing=0.0)
    expected: dict[tuple, Counter] = {}
    for obs, action, history in zip(rows["observation"], rows["action"], rows["history"], strict=True):
        prev = action_kind(history[-1]) if history else START
        expected.setdefault((prev, page_kind(obs)), Counter())[action_kind(action)] += 1
    for (prev, page), counts in expected.items():
        p = policy.probabilities(prev, page, 1)
        total = sum(counts.values())
        for kind, n in counts.items():
            assert p[kind] == pytest.approx(n / total)
        assert sum(p.values()) == pytest.approx(1.0)
    assert policy.probabilities(START, "home", 1)["product_view"] == pytest.approx(3 / 4)
    # Smoothed, an unseen code backs off to the code-free context.
    smooth = MarkovPolicy.fit(pa.table(rows), smoothing=1.0)
    assert smooth.probabilities(START, "home", 7)["product_view"] == pytest.approx(
        smooth.probabilities(START, "home", None)["product_view"]
    )


def test_markov_counts_the_goal_free_examples_only(examples):
    goal_free = examples.filter(pa.compute.is_null(examples["goal"]))
    assert 0 < goal_free.num_rows < examples.num_rows  # the fixture has goal-shown copies
    fitted, plain = MarkovPolicy.fit(examples), MarkovPolicy.fit(goal_free)
    assert fitted.counts == plain.counts and fitted.action_counts == plain.action_counts
    assert not any("your goal" in action for action in fitted.action_counts)


def test_markov_save_load_round_trip(tmp_path, examples):
    policy = MarkovPolicy.fit(examples)
    loaded = MarkovPolicy.load(policy.save(tmp_path / "markov.json"))
    requests = _requests(examples, n=20)
    assert [r.action for r in policy.act(requests)] == [r.action for r in loaded.act(requests)]


def test_policies_only_return_offered_actions(llm, examples):
    model, tok, tokens = llm
    markov = MarkovPolicy.fit(examples)
    policies: dict[str, Policy] = {
        "random": RandomPolicy(),
        "markov": markov,
        "llm-score": LLMPolicy(model, tok, tokens, temperature=1.0),
    }
    requests = _requests(examples, n=12, seed=11)
    search_page = ActRequest("== Home ==\nActions:\nexit", ('search "<query>"', "exit"), 0, None, (), 3)
    requests.append(search_page)
    for name, policy in policies.items():
        assert isinstance(policy, Policy)
        results = policy.act(requests)
        assert len(results) == len(requests)
        for request, result in zip(requests, results, strict=True):
            assert is_offered(result.action, request.valid_actions), (name, result.action)
    seeds_differ = {
        RandomPolicy().act([ActRequest("x", tuple("abcdefgh"), seed=s)])[0].action for s in range(20)
    }
    assert len(seeds_differ) > 1


def test_the_draw_is_the_softmax_keyed_by_each_options_text():
    keys = ["open product a", "open product b", "open product c", "exit", "go to cart"]
    scores = np.array([0.0, 1.0, -0.5, 0.5, -1.0])
    seeds = range(20000)
    first = np.array([choose(scores, 1.0, s, keys) for s in seeds])
    softmax = np.exp(scores) / np.exp(scores).sum()
    assert np.bincount(first, minlength=5) / len(seeds) == pytest.approx(softmax, abs=0.012)
    # Reordered options: every seed picks the same option (a draw through the cumulative
    # probabilities in list order would not).
    order = [3, 0, 4, 2, 1]
    again = [choose(scores[order], 1.0, s, [keys[i] for i in order]) for s in seeds]
    assert [keys[order[k]] for k in again] == [keys[k] for k in first]
    # One product made likelier: a choice moves only into the products' template, and among the
    # products only to that one.
    raised = scores + np.array([0.0, 1.0, 0.0, 0.0, 0.0])
    after = np.array([choose(raised, 1.0, s, keys) for s in seeds])
    moved = after != first
    assert 0 < moved.mean() < 0.3 and set(after[moved]) <= {0, 1, 2}
    assert set(after[moved & (first <= 2)]) == {1}
    # Other products listed at the same scores: every seed keeps opening a product, or not.
    other = ["open product x", "open product y", "open product z", "exit", "go to cart"]
    listed = np.array([choose(scores, 1.0, s, other) for s in seeds])
    assert np.array_equal(listed <= 2, first <= 2) and np.array_equal(listed[first > 2], first[first > 2])
    assert choose(scores, 0.0, 5, keys) == 1


def test_policies_answer_alike_whatever_the_order_of_the_actions(llm, examples):
    model, tok, tokens = llm
    requests = _requests(examples, n=12, seed=4)
    assert all(len(r.valid_actions) > 2 for r in requests)
    flipped = [replace(r, valid_actions=r.valid_actions[::-1]) for r in requests]
    policies: dict[str, Policy] = {
        "random": RandomPolicy(),
        "markov": MarkovPolicy.fit(examples),
        "llm-score": LLMPolicy(model, tok, tokens, temperature=1.0),
    }
    for name, policy in policies.items():
        answers = [r.action for r in policy.act(requests)]
        assert [r.action for r in policy.act(flipped)] == answers, name
        assert len(set(answers)) > 1, name


def test_generation_is_parsed_strictly(llm, examples):
    model, tok, tokens = llm
    policy = LLMPolicy(model, tok, tokens, mode="generate", temperature=0.0, max_new_tokens=6)
    requests = _requests(examples, n=3)
    for request, result in zip(requests, policy.act(requests), strict=True):
        assert result.info["valid"] == is_offered(result.action, request.valid_actions)
        assert result.tokens > 0
    none_persona = LLMPolicy(model, tok, None, temperature=0.0).act(
        [ActRequest(requests[0].observation, requests[0].valid_actions, None)]
    )
    assert none_persona[0].action in requests[0].valid_actions


def test_chunked_and_grouped_scoring_agree(llm, examples):
    model, tok, tokens = llm
    requests = _requests(examples, n=10)
    whole = LLMPolicy(model, tok, tokens, temperature=0.0).score(requests)
    chunked = LLMPolicy(model, tok, tokens, temperature=0.0, max_requests_per_forward=3).score(requests)
    one_by_one = [LLMPolicy(model, tok, tokens, temperature=0.0).score([r])[0] for r in requests]
    for a, b, c in zip(whole, chunked, one_by_one, strict=True):
        assert list(a) == pytest.approx(list(c), abs=1e-5)
        assert list(b) == pytest.approx(list(c), abs=1e-5)


def _same_page_requests(examples) -> list[ActRequest]:
    """Three pages, each seen by three buyers who differ in persona, goal and history."""
    pages = _requests(examples, n=3)
    buyers = [(0, None, ()), (1, "p1", ("home",)), (1, None, ("home", "back", "home"))]
    return [
        ActRequest(page.observation, page.valid_actions, code, goal, history, seed=7 * i + j)
        for i, page in enumerate(pages)
        for j, (code, goal, history) in enumerate(buyers)
    ]


def test_buyers_on_the_same_page_share_its_pass_and_score_as_alone(llm, examples):
    model, tok, tokens = llm
    requests = _same_page_requests(examples)
    fed: list[int] = []
    hook = model.register_forward_pre_hook(
        lambda _m, _a, kw: fed.append(int(kw["input_ids"].numel())), with_kwargs=True
    )
    try:
        policy = LLMPolicy(model, tok, tokens, temperature=0.0)
        together = policy.score(requests)
        shared_tokens = sum(fed)
        fed.clear()
        alone = [policy.score([r])[0] for r in requests]
        alone_tokens = sum(fed)
    finally:
        hook.remove()
    for a, b in zip(together, alone, strict=True):
        assert list(a) == pytest.approx(list(b), abs=1e-5)
    # Each distinct page ran once: fewer tokens went through the model than for the buyers one by one.
    assert shared_tokens < alone_tokens
    distinct = {tuple(policy.prompt(r)[0]) for r in requests}
    requested = sum(len(page) + len(own) for page, own in map(policy.prompt, requests))
    run = sum(map(len, distinct)) + sum(len(policy.prompt(r)[1]) for r in requests)
    assert len(distinct) == 3 and policy.prefill.run == run + requested  # together, then alone
    assert policy.prefill.requested == 2 * requested


def test_length_groups_cover_every_request_once_within_the_padding_slack():
    lengths = [int(x) for x in np.random.default_rng(0).integers(1, 400, size=200)]
    groups = length_groups(lengths, max_size=16)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    for group in groups:
        assert len(group) <= 16
        if len(group) > 1:
            assert len(group) * max(lengths[i] for i in group) <= PADDING_SLACK * sum(
                lengths[i] for i in group
            )
    assert len(length_groups([100] * 64)) == 1  # equal lengths never pad


def test_cached_generation_matches_full_recomputation(llm, examples):
    model, tok, tokens = llm
    fmt = PromptFormat(history_len=3, max_observation_tokens=200)
    requests = _requests(examples, n=2) + _same_page_requests(examples)[:3]
    policy = LLMPolicy(model, tok, tokens, fmt, mode="generate", temperature=0.0, max_new_tokens=5)
    for request, result in zip(requests, policy.act(requests), strict=True):
        ids = encode_prompt(
            tok, request.observation, request.persona, request.goal, request.history, tokens, fmt
        )
        generated: list[int] = []
        for _ in range(5):
            with torch.no_grad():
                token = int(model(torch.tensor([ids + generated])).logits[0, -1].argmax())
            if token == tok.eos_token_id:
                break
            generated.append(token)
            if "\n" in tok.decode(generated, skip_special_tokens=True):
                break
        assert result.info["generated"] == tok.decode(generated, skip_special_tokens=True)
        assert result.tokens == len(ids) + len(generated)


def _storefront_states(shop):
    """A home, category, product, cart and search page of a real storefront."""
    home = shop.initial_state()
    category, _ = shop.step(home, "open category c1")
    product, _ = shop.step(home, f"open product {shop.catalog.products[2].product_id}")
    in_cart, _ = shop.step(product, "add to cart")
    cart, _ = shop.step(in_cart, "go to cart")
    search, _ = shop.step(home, 'search "Product"')
    return [home, category, product, cart, search]


def test_policies_fill_the_search_template_with_a_valid_query(llm, examples):
    model, tok, tokens = llm
    shop = storefront("m1")
    with_queries = pa.table(
        {
            "observation": [shop.observe(shop.initial_state())] * 2,
            "action": ['search "p-of-another-shop"', 'search "<query>"'],
            "history": [[], []],
            "code": [0, 0],
        }
    )
    policies: dict[str, Policy] = {
        "random": RandomPolicy(),
        "markov (no training queries)": MarkovPolicy.fit(examples),
        "markov (training queries)": MarkovPolicy.fit(with_queries),
        "llm-score": LLMPolicy(model, tok, tokens, temperature=1.0),
    }
    for state in _storefront_states(shop):
        observation, actions = shop.observe(state), tuple(shop.valid_actions(state))
        assert SEARCH_TEMPLATE in actions
        for name, policy in policies.items():
            # The LLM's whole-page choices are checked above; here it only has to search.
            seeds = range(40) if name != "llm-score" else ()
            full = [ActRequest(observation, actions, 0, None, (), seed) for seed in seeds]
            only_search = [
                ActRequest(observation, (SEARCH_TEMPLATE,), 0, None, (), seed) for seed in range(4)
            ]
            results = policy.act(full + only_search)
            for result in results:
                assert result.action != SEARCH_TEMPLATE, name
                assert shop.is_valid(state, result.action), (name, result.action)
                if result.action.startswith('search "'):
                    # Grounded in the page: never a query naming another storefront's product.
                    assert result.action[len('search "') : -1] in page_queries(observation), (
                        name,
                        result.action,
                    )
            assert all(r.action.startswith('search "') for r in results[len(full) :]), name
    # The page's own ids are the queries, so the search finds something on the storefront.
    home = shop.initial_state()
    query = RandomPolicy().act([ActRequest(shop.observe(home), (SEARCH_TEMPLATE,), seed=1)])[0].action
    assert shop.search_results(query[len('search "') : -1])


def test_page_query_falls_back_without_ids():
    rng = np.random.default_rng(0)
    assert page_query('== Checkout ==\nsay "hi"', rng) in {"==", "Checkout", "say", "hi"}
    assert page_query("", rng) == FALLBACK_QUERY


def test_a_page_without_ids_never_suggests_the_search_placeholder():
    # A confirmation or empty cart page names no product; its words include the template itself.
    observation = f"page: cart\nyour cart is empty\nactions: {SEARCH_TEMPLATE} | go to cart | home | exit"
    queries = page_queries(observation)
    assert "<query>" not in queries and queries
    request = ActRequest(observation, (SEARCH_TEMPLATE, "go to cart", "home", "exit"), seed=3)
    for seed in range(20):
        action = RandomPolicy().act([replace(request, seed=seed)])[0].action
        assert action != SEARCH_TEMPLATE


def test_markov_draws_navigation_by_its_context(tmp_path):
    """Navigation is one kind of many templates: after an add-to-cart the buyers here always go to the
    cart, while 'back' is the most frequent action overall; the chain follows the context."""
    product = "== Item ==\nShop m | Cart: 0 items | Favourites: 0\nProduct id: a\nActions:\nadd to cart"
    rows = {"observation": [], "action": [], "history": [], "code": []}
    sessions = [["open product a", "add to cart", "go to cart"]] * 5 + [["open product a", "back"]] * 40
    for session in sessions:
        for i, action in enumerate(session[1:], start=1):
            rows["observation"].append(product)
            rows["action"].append(action)
            rows["history"].append(session[:i])
            rows["code"].append(0)
    policy = MarkovPolicy.fit(pa.table(rows))
    offered = (
        "add to cart",
        "buy now",
        "favorite",
        "open category c",
        'search "<query>"',
        "go to cart",
        "home",
        "back",
        "exit",
    )
    requests = [
        ActRequest(product, offered, 0, None, ("open product a", "add to cart"), seed) for seed in range(200)
    ]
    chosen = Counter(r.action for r in policy.act(requests))
    assert chosen["go to cart"] > 0.6 * len(requests)
    assert chosen["go to cart"] > 5 * chosen["back"]
    loaded = MarkovPolicy.load(policy.save(tmp_path / "markov.json"))
    assert [r.action for r in loaded.act(requests)] == [r.action for r in policy.act(requests)]
