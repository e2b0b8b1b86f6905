"""What a scoring LLM policy (the transformers and vLLM backends) scores for a request, and how it picks.

A page lists the search template ``search "<query>"``, but the agent can only search for what the
page suggests (random_policy.py's ``search_actions``: the ids the page names, which is what the
storefront's search matches; a goal task's page names its goal, so the goal is always among them).
So a policy scores the page's other valid actions and each suggested search as candidates (in two
levels for searches and item actions, below). The template's score is the total probability of those
searches (the logsumexp of their scores); when
the template is picked, its query is drawn among them by the same rule (policy.py's ``choose``,
seeded by ``(seed, 1)``). At temperature 1 this is the same as drawing among all the scored actions
at once.

Goal tasks: the agent names its goal product ``your goal`` (prompt.py's ``GOAL_ALIAS``; the page and
its history show it so), so the candidates ``open product P`` and ``search "P"`` of the goal P are
scored as ``open product your goal`` and ``search "your goal"``, and ``pick`` returns the real
action. The page marks the goal's rows (envs/render.py); the model learns to open the marked
product, or to search for its goal when none is marked, without copying an id it cannot predict
(writing the real id, with the goal's rows marked, an agent reached goal success 0.00 on the demo
study's held-out merchants, opening the goal in 43 of 2,254 steps).

The suggested searches score in two levels like the item actions below (``search "`` is their
template): the template keeps the probability the model gives to searching at all, and the model's
query preferences only rank the page's own suggestions. Scored whole, every suggestion paid for
query tokens that no page of a new storefront lets a model predict, and the agent never searched
(0 of 1,107 simulated steps on the demo study's held-out merchants, whose real buyers search in
7.7% of their events). The template's probability is only as good as the examples it was learned
from: trace replays reach products by searching their ids (learners/data/traces.py), and agents
trained on those inserted searches as if buyers had made them put most of their mass on searching
(on a Tmall study home page, 0.76 of the valid actions' mass; that agent searched in 94% of its
steps). Examples therefore show an inserted search only with its product as the goal
(learners/agent/examples.py), and the template learns the rate of the source's real searches.

Item actions score in two levels (``SCORING_RULE``; so do the searches, above). An item template
(``open product P``, ``open category C``, ``remove product P``: the action grammar's per-item
actions, envs/storefront.py) lists one action per item of the page. Scored whole, each pays for its
id tokens, which a model cannot predict on a storefront it has never seen, while ``home`` or
``exit`` is one cheap token: on a Tmall home page all products together got P ~ 0.0000 of the valid
actions' mass (issue measurement), so the agent never opened a product. So an item action scores::

    log P(template prefix) + log_softmax over the page's items of that template (continuation score)

where the prefix is the template's text as target tokens (`` open product``) and a continuation's
score is the log-likelihood of the rest of its target (the id and EOS). The template keeps the mass
the model gives it (the items' logsumexp equals log P(prefix)); the model's id preferences only rank
the page's own items, so a page's only item of a template gets the template's whole mass (its
whole-action score when the model puts all its id mass on it, more otherwise). Since
log_softmax_j(cont)_i = score_i - logsumexp_j score_j for the whole-action scores, both backends get
it from the same per-token log-probabilities (``candidate_scores``): the prefix tokens are the
candidate trie's shared nodes (packing.py), so no extra pass runs. When a tokenizer merges the prefix
with an id (the prefix ids are not a token-prefix of every item's target), that template's items are
scored whole: a shorter, shared prefix would overlap other templates' mass (`` open`` also begins
``open category``). The searches' template is `` search "`` (the query and its closing quote are
the continuation); other actions score whole; with ``length_normalize`` every candidate's rule score
is divided by its target length.

A calibrated agent (calibration.py) also adds one bias per action kind, fitted on stores it never
trained on, to every valid action's score (``action_scores``): the same in both backends, and kind
wide, so no ranking within a kind changes; rollout calibration (engine/rollout_calibration.py) adds
one more per code and kind, where a type's own rates on walked visits part from its real buyers'.
On a goal-free product page of an agent with a price response, the model reads the page at its
regular price (``model_request``) and the buyer's code's biases for the page's real price cell are
added (price_response.py: the type's measured answer to the price, in place of the model's own
reading); on a listing, which row an ``open product`` opens follows its code's row choice
(row_choice.py) instead of the model's id scores, within the template, whose mass it keeps.

The rule reads the model's probabilities only, but v2's search template is only sound for agents
trained on examples that show inserted searches with their goal alone (examples.py), which came
with the ``page-first-goal-marked`` prompt layout: an agent's manifest names the rule it is served
with (``"scoring"``); agents from before the field was recorded are served with this rule (their
prompt layout is refused anyway, prompt.py), and an agent naming another rule is refused
(``check_scoring_rule``).
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from transformers import PreTrainedTokenizerBase

from envs.catalog import BESTSELLER
from envs.render import REGULAR_CELL, at_regular_price, listed_products, price_cell
from envs.storefront import OPEN_CATEGORY, OPEN_PRODUCT, REMOVE_PRODUCT
from learners.agent.actions import SEARCH_PREFIX, SEARCH_TEMPLATE, action_kind
from learners.agent.policy import ActRequest, choose
from learners.agent.prompt import GOAL_ALIAS, alias_goal, encode_target, unalias_goal
from learners.agent.random_policy import search_actions

SCORING_RULE = "two-level-v2"
"""The rule above (v2: the searches too; v1 scored them whole); an agent's manifest names the rule
it is served with (``"scoring"``)."""
CALIBRATION_FILE = "calibration.json"
"""An agent directory's per-kind biases (calibration.py), when it was calibrated."""
PRICE_RESPONSE_FILE = "price_response.json"
"""An agent directory's per-code, per-price-cell biases on product pages (price_response.py)."""
PRICE_PAGES_READ = "at a regular price"
"""How the model reads the product pages a price response's biases are served on (``model_request``),
recorded in the file as ``model_reads``: biases fitted against the page as shown (before session 30)
do not fit this serving, and ``read_price_bias`` refuses them."""
ROW_CHOICE_FILE = "row_choice.json"
"""An agent directory's per-code choice among a listing's rows (row_choice.py)."""
POOLED_ROWS = -1
"""The row-choice mapping's key of the pooled fit, served to a code that opened no listed row in
training (persona codes are 0, 1, ...): the model's own ranking of the rows is worse than random."""
ROW_FEATURES = ("bestseller", "log_place", "log_relative_price")
"""What a code's row choice reads of each listed row (``listing_features``)."""
ITEM_TEMPLATES: tuple[str, ...] = (OPEN_PRODUCT, OPEN_CATEGORY, REMOVE_PRODUCT, SEARCH_PREFIX)
"""The action grammar's per-item templates (envs/web/page_reader.py groups the first three the same
way), and the suggested searches' ``search "``."""


def scored_candidates(request: ActRequest) -> list[str]:
    """The request's valid actions but the search template, then, when the page offers search, the
    searches it suggests; in a goal task, those naming the goal product as the agent names them
    (prompt.py's ``alias_goal``: ``open product your goal``, ``search "your goal"``)."""
    actions = [a for a in request.valid_actions if a != SEARCH_TEMPLATE]
    if len(actions) < len(request.valid_actions):
        actions += search_actions(request.observation)
    if request.goal is not None:
        actions = [alias_goal(a, request.goal) for a in actions]
    return actions


def action_scores(
    request: ActRequest,
    scores: np.ndarray,
    kind_bias: Mapping[str, float] | None = None,
    price_bias: Mapping[int | None, Mapping[str, Mapping[str, float]]] | None = None,
    row_choice: Mapping[int | None, Sequence[float]] | None = None,
    code_bias: Mapping[int | None, Mapping[str, float]] | None = None,
) -> np.ndarray:
    """Each valid action's score from the scores of ``scored_candidates(request)``: the search
    template's is the logsumexp of the suggested searches' scores; plus, in a goal-free request, its
    kind's bias, if any, and the buyer's code's own bias for the kind (``code_bias``, rollout
    calibration's), and on a product page the code's bias for the kind on the page's price cell
    (``price_bias``, price_response.py); on a listing, which row its ``open product`` opens is
    the code's row choice (``row_choice``: coefficients of ``ROW_FEATURES``, row_choice.py; the pooled
    fit, key ``POOLED_ROWS``, for a code without its own) in place of the model's, so opening a
    product keeps its probability. The biases are fitted on goal-free rows (calibration.py): they
    carry a free shopper's rates to new stores, while a goal task's buyer has been told what to buy
    (on the demo a validation store's cart abandoners set ``purchase`` to -0.7 and goal tasks exited
    at checkout)."""
    plain = len(request.valid_actions) - (SEARCH_TEMPLATE in request.valid_actions)
    values = iter(scores[:plain])
    searches = float(np.logaddexp.reduce(scores[plain:])) if len(scores) > plain else -np.inf
    out = np.array([searches if a == SEARCH_TEMPLATE else next(values) for a in request.valid_actions])
    own = (code_bias or {}).get(request.persona) or {}
    if (kind_bias or own) and request.goal is None:
        kinds = [action_kind(a) for a in request.valid_actions]
        out += np.array([(kind_bias or {}).get(k, 0.0) + own.get(k, 0.0) for k in kinds])
    cells = (price_bias or {}).get(request.persona)
    response = cells.get(price_cell(request.observation) or "") if cells and request.goal is None else None
    if response:
        out += np.array([response.get(action_kind(a), 0.0) for a in request.valid_actions])
    betas = None
    if row_choice and request.goal is None:
        betas = row_choice.get(request.persona, row_choice.get(POOLED_ROWS))
    if betas is not None:
        index, features = listing_features(request.observation, request.valid_actions)
        if len(index) > 1:
            mass = np.logaddexp.reduce(out[index])
            z = features @ np.asarray(betas)
            out[index] = mass + z - np.logaddexp.reduce(z)
    return out


def listing_features(observation: str, valid_actions: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """The indices of the valid ``open product`` actions of the page's listed rows, and each row's
    ``ROW_FEATURES``: whether it carries the ``bestseller`` badge, the log of its 1-based place among
    the page's rows, and the log of its price over the median of the page's row prices (0 without a
    price), clipped to +-3."""
    rows = listed_products(observation) if "\n- product " in observation else []
    prices = [p for _, p, _ in rows if p]
    median = statistics.median(prices) if prices else 0.0
    place = {pid: (i, p, b) for i, (pid, p, b) in enumerate(rows)}
    index, features = [], []
    for k, action in enumerate(valid_actions):
        found = place.get(action[len(OPEN_PRODUCT) :]) if action.startswith(OPEN_PRODUCT) else None
        if found is None:
            continue
        i, price, badge = found
        relative = math.log(price / median) if price and median else 0.0
        index.append(k)
        features.append((float(badge == BESTSELLER), math.log(i + 1.0), min(max(relative, -3.0), 3.0)))
    return np.array(index, dtype=np.int64), np.array(features, dtype=np.float64).reshape(
        -1, len(ROW_FEATURES)
    )


def pick(
    request: ActRequest,
    candidates: list[str],
    scores: np.ndarray,
    temperature: float,
    kind_bias: Mapping[str, float] | None = None,
    price_bias: Mapping[int | None, Mapping[str, Mapping[str, float]]] | None = None,
    row_choice: Mapping[int | None, Sequence[float]] | None = None,
    code_bias: Mapping[int | None, Mapping[str, float]] | None = None,
) -> tuple[str, float, np.ndarray]:
    """The chosen action (a search with its query filled in; the goal's real id where the agent
    named it ``your goal``), its score, and each valid action's score; ``candidates`` and ``scores``
    are ``scored_candidates(request)`` and their scores (``candidate_scores``), ``kind_bias``,
    ``price_bias``, ``row_choice`` and ``code_bias`` the agent's calibration (calibration.py,
    price_response.py, row_choice.py, engine/rollout_calibration.py)."""
    per_action = action_scores(request, scores, kind_bias, price_bias, row_choice, code_bias)
    k = choose(per_action, temperature, request.seed, request.valid_actions)
    if request.valid_actions[k] != SEARCH_TEMPLATE:
        return request.valid_actions[k], float(per_action[k]), per_action
    plain = len(request.valid_actions) - 1
    j = plain + choose(scores[plain:], temperature, (request.seed, 1), candidates[plain:])
    return unalias_goal(candidates[j], request.goal), float(scores[j]), per_action


def unseen_store_tokens(tokenizer: PreTrainedTokenizerBase, action: str, target: Sequence[int]) -> int:
    """How many trailing tokens of ``action``'s target (prompt.py's ``encode_target``) name an item:
    an item action's continuation after its template prefix (the id or a suggested search's query,
    then EOS), unless it names the goal (``GOAL_ALIAS``). On a store the agent never saw no model can
    predict them, and the rule above only ranks the page's own items by them. 0 for other actions,
    and where the tokenizer merged the prefix into the item (``item_groups`` scores those whole)."""
    template = item_template(action)
    if template is None or action[len(template) :].strip('"') == GOAL_ALIAS:
        return 0
    prefix = _prefix_ids(tokenizer, template)
    k = len(prefix)
    return len(target) - k if k and len(target) > k and list(target[:k]) == prefix else 0


def _prefix_ids(tokenizer: PreTrainedTokenizerBase, template: str) -> list[int]:
    """An item template's text as target tokens, without EOS (`` open product``)."""
    return encode_target(tokenizer, template.rstrip())[:-1]


def item_template(action: str) -> str | None:
    """The item template an action fills (``open product 12`` -> ``"open product "``), else None."""
    for template in ITEM_TEMPLATES:
        if action.startswith(template) and len(action) > len(template):
            return template
    return None


@dataclass(frozen=True)
class ItemGroups:
    """Which scored candidates score in two levels: per item template of the page, its candidates'
    indices and how many leading target tokens spell the template (its prefix)."""

    members: tuple[tuple[int, ...], ...]
    prefix_tokens: tuple[int, ...]


def item_groups(
    tokenizer: PreTrainedTokenizerBase, candidates: Sequence[str], targets: Sequence[Sequence[int]]
) -> ItemGroups:
    """The item groups of ``candidates`` (``scored_candidates``) whose ``targets`` (prompt.py's
    ``encode_target``) all start with their template's prefix ids; a template whose prefix ids are
    not a token-prefix of every item's target (the tokenizer merged across the boundary) is left
    out, so its items score whole."""
    found: dict[str, list[int]] = {}
    for i, candidate in enumerate(candidates):
        template = item_template(candidate)
        if template is not None:
            found.setdefault(template, []).append(i)
    members, prefix_tokens = [], []
    for template, group in found.items():
        prefix = _prefix_ids(tokenizer, template)
        k = len(prefix)
        if k and all(len(targets[i]) > k and list(targets[i][:k]) == prefix for i in group):
            members.append(tuple(group))
            prefix_tokens.append(k)
    return ItemGroups(tuple(members), tuple(prefix_tokens))


def candidate_scores(
    logprobs: np.ndarray, lengths: Sequence[int], groups: ItemGroups, length_normalize: bool = False
) -> np.ndarray:
    """Each candidate's score under ``SCORING_RULE`` from the log-probabilities of its target tokens
    (``logprobs``: every candidate's tokens in order, candidates in order; ``lengths``: tokens per
    candidate): the whole-target sum, or for a grouped item log P(prefix) plus the log-softmax of its
    continuation among its group's; divided by the target length with ``length_normalize``."""
    logprobs = np.asarray(logprobs, dtype=np.float64)
    lengths = np.asarray(lengths, dtype=np.int64)
    owner = np.repeat(np.arange(len(lengths)), lengths)
    scores = np.bincount(owner, weights=logprobs, minlength=len(lengths))
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    for members, k in zip(groups.members, groups.prefix_tokens, strict=True):
        index = np.array(members)
        # The prefix tokens are the same tokens in the same context for every member (shared trie
        # nodes): one member's sum is the template's log-probability.
        first = starts[index[0]]
        prefix = float(logprobs[first : first + k].sum())
        cont = np.array([logprobs[starts[i] + k : starts[i] + lengths[i]].sum() for i in members])
        scores[index] = prefix + cont - np.logaddexp.reduce(cont)
    return scores / lengths if length_normalize else scores


def read_kind_bias(agent_dir: str | Path) -> dict[str, float]:
    """An agent directory's per-kind biases (calibration.py; empty when it was not calibrated)."""
    path = Path(agent_dir) / CALIBRATION_FILE
    if not path.exists():
        return {}
    return {str(k): float(v) for k, v in json.loads(path.read_text(encoding="utf-8"))["bias"].items()}


def read_code_bias(agent_dir: str | Path) -> dict[int | None, dict[str, float]]:
    """An agent directory's per-code biases, on top of the per-kind ones (engine/rollout_calibration.py;
    empty when it was not rollout-calibrated per code)."""
    path = Path(agent_dir) / CALIBRATION_FILE
    if not path.exists():
        return {}
    codes = json.loads(path.read_text(encoding="utf-8")).get("code_bias", {})
    return {
        None if key == "none" else int(key): {str(k): float(v) for k, v in bias.items()}
        for key, bias in codes.items()
    }


def model_request(
    request: ActRequest, price_bias: Mapping[int | None, Mapping[str, Mapping[str, float]]] | None
) -> ActRequest:
    """The request as the model reads it: where the policy serves a price response (``price_bias``
    not empty), a goal-free product page whose price is not regular is read at its regular price
    (envs/render.py's ``at_regular_price``), and ``action_scores`` adds the code's biases for the
    page's real cell, so the type's measured answer to the price stands in for the model's own reading
    (price_response.py). Every other request is read as it is."""
    if not price_bias or request.goal is not None:
        return request
    cell = price_cell(request.observation)
    if cell is None or cell == REGULAR_CELL:
        return request
    return replace(request, observation=at_regular_price(request.observation))


def read_price_bias(agent_dir: str | Path) -> dict[int | None, dict[str, dict[str, float]]]:
    """An agent directory's per-code biases on each price cell's pages (price_response.py; empty when
    none were fitted). Raises ValueError for a fit whose biases were fitted for another reading of the
    pages (``PRICE_PAGES_READ``)."""
    path = Path(agent_dir) / PRICE_RESPONSE_FILE
    if not path.exists():
        return {}
    saved = json.loads(path.read_text(encoding="utf-8"))
    codes = saved["codes"]
    if codes and saved.get("model_reads") != PRICE_PAGES_READ:
        raise ValueError(
            f"{path}: its biases were fitted on product pages as shown, and this version has the model"
            f" read them {PRICE_PAGES_READ} (learners/agent/scoring.py's model_request); train the agent"
            " again with this version, or delete the file to serve the agent without a price response"
        )
    return {
        None if key == "none" else int(key): {
            cell: {str(k): float(v) for k, v in fit["bias"].items()}
            for cell, fit in cells.items()
            if fit["bias"]
        }
        for key, cells in codes.items()
    }


def read_row_choice(agent_dir: str | Path) -> dict[int | None, list[float]]:
    """An agent directory's per-code row-choice coefficients and the pooled ones (key ``POOLED_ROWS``),
    as ``RowChoice.served`` gives them (row_choice.py; empty when none were fitted)."""
    path = Path(agent_dir) / ROW_CHOICE_FILE
    if not path.exists():
        return {}
    saved = json.loads(path.read_text(encoding="utf-8"))
    served = {
        None if key == "none" else int(key): [float(fit["coef"][f]) for f in ROW_FEATURES]
        for key, fit in saved["codes"].items()
    }
    if saved.get("pooled"):
        served[POOLED_ROWS] = [float(saved["pooled"][f]) for f in ROW_FEATURES]
    return served


def check_scoring_rule(agent_dir: str | Path) -> str:
    """The scoring rule an agent directory is served with: ``SCORING_RULE``, for an agent whose
    manifest names it or names none (agents from before the field; the rule needs no retraining).

    Raises ValueError for an agent whose manifest names another rule: this version serves only its own."""
    manifest = Path(agent_dir) / "manifest.json"
    if manifest.exists():
        rule = json.loads(manifest.read_text(encoding="utf-8")).get("scoring", SCORING_RULE)
        if rule != SCORING_RULE:
            raise ValueError(
                f"{manifest}: this agent is to be served with the {rule!r} scoring rule, and this"
                f" version scores with {SCORING_RULE!r} only (learners/agent/scoring.py); serve it"
                f' with the version that wrote it, or set its manifest\'s "scoring" to {SCORING_RULE!r}'
            )
    return SCORING_RULE
