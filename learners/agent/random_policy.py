"""``RandomPolicy``: a uniform draw over the page's valid actions (the floor every policy must beat).

A page lists ``search "<query>"`` as a template, which the env rejects as such; a policy without a
query model fills it with ``page_query``: a product or category id the page mentions (the storefront's
search matches ids), drawn with the request's seed.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from envs.storefront import MAX_QUERY_CHARS
from learners.agent.actions import SEARCH_PREFIX, SEARCH_TEMPLATE
from learners.agent.policy import ActRequest, ActResult, choose

_IDS = re.compile(r"\b(?:product|category)(?: id)?:? ([^\s|\"()]+)", re.IGNORECASE)
FALLBACK_QUERY = "product"
"""The query when a page names no product or category (and has no other word)."""


def page_queries(observation: str) -> list[str]:
    """The search queries a page suggests, sorted: the product or category ids it mentions, else its
    words, else ``FALLBACK_QUERY``; never empty, none with a double quote or over ``MAX_QUERY_CHARS``."""
    words = sorted(set(_IDS.findall(observation)))
    if not words:
        # The page lists the template itself among its actions; its placeholder is no query.
        text = observation.replace(SEARCH_TEMPLATE, " ")
        words = sorted({w.replace('"', "") for w in text.split()} - {""})
    return [w[:MAX_QUERY_CHARS] for w in words] or [FALLBACK_QUERY]


def search_actions(observation: str) -> list[str]:
    """The page's search template filled with each of its ``page_queries``."""
    return [f'{SEARCH_PREFIX}{q}"' for q in page_queries(observation)]


def page_query(observation: str, rng: np.random.Generator) -> str:
    """One of ``page_queries``, drawn with ``rng``."""
    words = page_queries(observation)
    return words[int(rng.integers(len(words)))]


def fill_search(action: str, observation: str, rng: np.random.Generator) -> str:
    """``action`` itself, or for the search template a ``search "q"`` with ``page_query``'s q."""
    if action != SEARCH_TEMPLATE:
        return action
    return f'{SEARCH_PREFIX}{page_query(observation, rng)}"'


class RandomPolicy:
    """Uniform over ``valid_actions``, seeded by ``ActRequest.seed`` (order-independent)."""

    def act(self, requests: Sequence[ActRequest]) -> list[ActResult]:
        results = []
        for i, r in enumerate(requests):
            if not r.valid_actions:
                raise ValueError(
                    f"request {i} has no valid actions: nothing to choose (the episode has ended)"
                )
            k = choose(np.zeros(len(r.valid_actions)), 1.0, r.seed, r.valid_actions)
            action = fill_search(r.valid_actions[k], r.observation, np.random.default_rng(r.seed))
            results.append(ActResult(action, float(-np.log(len(r.valid_actions)))))
        return results
