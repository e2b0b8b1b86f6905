"""What a scoring LLM policy (the transformers and vLLM backends) scores for a request, and how it picks.

A page lists the search template ``search "<query>"``, but the agent can only search for what the
page suggests (random_policy.py's ``search_actions``: the ids the page names, which is what the
storefront's search matches). So a policy scores the page's other valid actions and each suggested
search as whole actions. The template's score is the total probability of those searches (the
logsumexp of their scores); when the template is picked, its query is drawn among them by the same
rule (policy.py's ``choose``, seeded by ``(seed, 1)``). At temperature 1 this is the same as drawing
among all the scored actions at once.

Scoring the template by its prefix ``search "`` would give it the probability of *any* query,
including ids of other storefronts that the agent can never search for. Agents trained on trace
replays, which reach products by searching their ids, put most of their mass there: on a Tmall
study home page the prefix had log-probability -2.0 (0.76 of the valid actions' mass) and the page's
own searches -13.0 together, and that agent searched in 94% of its simulated steps.
"""

from __future__ import annotations

import numpy as np

from learners.agent.actions import SEARCH_TEMPLATE
from learners.agent.policy import ActRequest, choose
from learners.agent.random_policy import search_actions


def scored_candidates(request: ActRequest) -> list[str]:
    """The request's valid actions but the search template, then, when the page offers search, the
    searches it suggests."""
    actions = [a for a in request.valid_actions if a != SEARCH_TEMPLATE]
    if len(actions) < len(request.valid_actions):
        actions += search_actions(request.observation)
    return actions


def action_scores(request: ActRequest, scores: np.ndarray) -> np.ndarray:
    """Each valid action's score from the scores of ``scored_candidates(request)``: the search
    template's is the logsumexp of the suggested searches' scores."""
    plain = len(request.valid_actions) - (SEARCH_TEMPLATE in request.valid_actions)
    values = iter(scores[:plain])
    searches = float(np.logaddexp.reduce(scores[plain:])) if len(scores) > plain else -np.inf
    return np.array([searches if a == SEARCH_TEMPLATE else next(values) for a in request.valid_actions])


def pick(
    request: ActRequest, candidates: list[str], scores: np.ndarray, temperature: float
) -> tuple[str, float, np.ndarray]:
    """The chosen action (a search with its query filled in), its score, and each valid action's
    score; ``candidates`` and ``scores`` are ``scored_candidates(request)`` and their scores."""
    per_action = action_scores(request, scores)
    k = choose(per_action, temperature, request.seed)
    if request.valid_actions[k] != SEARCH_TEMPLATE:
        return request.valid_actions[k], float(per_action[k]), per_action
    plain = len(request.valid_actions) - 1
    j = plain + choose(scores[plain:], temperature, (request.seed, 1))
    return candidates[j], float(scores[j]), per_action
