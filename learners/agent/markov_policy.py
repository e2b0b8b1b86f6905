"""``MarkovPolicy``: the per-type Markov-chain baseline, fitted on the same examples as the agent.

P(next action kind | previous action kind, page kind, persona code) from counts of the goal-free
examples (the chain reads no goal), smoothed by interpolation with ever shorter contexts:
(previous, page, code) -> (previous, page) -> (page) -> all kinds (add-one). At a step the policy
restricts that distribution to the kinds the page offers, draws a kind (``policy.choose``, seeded by
``ActRequest.seed``), then an action template of that kind (``actions.action_template``) weighted by
how often the training buyers took it in the same (previous kind, page) context, plus one, and then a
concrete action of that template weighted by how often they took it, plus one (popular products
first). The template step matters: navigation is one kind, and after an add-to-cart real buyers go to
the cart where, drawn by global counts, the chain would mostly go back. A search query comes from the page (``fill_search``):
training queries are other storefronts' words and ids, which a held-out storefront does not have.
Saved and loaded as JSON; acting is pure Python and dictionary look-ups, so large engine tests can
run it at scale.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa

from learners.agent.actions import ACTION_KINDS, SEARCH_TEMPLATE, action_kind, action_template, page_kind
from learners.agent.policy import ActRequest, ActResult, choose
from learners.agent.random_policy import fill_search

START = "start"
"""Previous kind at the first step of a session."""
NO_CODE = -1


def _key(*parts: object) -> str:
    return "|".join(map(str, parts))


class MarkovPolicy:
    """Counts of next action kinds per context, with interpolated smoothing (see module doc)."""

    def __init__(
        self,
        counts: dict[str, dict[str, int]],
        action_counts: dict[str, int],
        smoothing: float = 1.0,
        template_counts: dict[str, dict[str, int]] | None = None,
    ) -> None:
        self.counts = counts
        self.action_counts = action_counts
        self.smoothing = smoothing
        self.template_counts = template_counts or {}
        """Templates taken per (previous kind, page) context; empty: the action counts decide alone."""
        totals = Counter()
        for key, kinds in counts.items():
            if key.count("|") == 0:  # the page-only level sums to the global counts
                totals.update(kinds)
        n = sum(totals.values())
        self._base = {k: (totals[k] + 1) / (n + len(ACTION_KINDS)) for k in ACTION_KINDS}

    @classmethod
    def fit(cls, examples: pa.Table, smoothing: float = 1.0) -> MarkovPolicy:
        """Fit on an examples table (examples.py: observation, action, history, code), goal-free rows
        only: the chain does not read goals, and the goal-shown copies (hindsight goals) would count
        the steps toward a wanted product twice."""
        counts: dict[str, Counter] = defaultdict(Counter)
        templates: dict[str, Counter] = defaultdict(Counter)
        actions: Counter = Counter()
        names = ("observation", "action", "history", "code", "goal")
        columns = [
            examples.column(c).to_pylist() if c in examples.column_names else [None] * examples.num_rows
            for c in names
        ]
        for observation, action, history, code, goal in zip(*columns, strict=True):
            if goal is not None:
                continue
            prev = action_kind(history[-1]) if history else START
            page = page_kind(observation)
            kind = action_kind(action)
            code = NO_CODE if code is None else code
            for key in (_key(prev, page, code), _key(prev, page), _key(page)):
                counts[key][kind] += 1
            templates[_key(prev, page)][action_template(action)] += 1
            actions[action] += 1
        return cls(
            {k: dict(v) for k, v in counts.items()},
            dict(actions),
            smoothing,
            {k: dict(v) for k, v in templates.items()},
        )

    def probabilities(self, prev: str, page: str, code: int | None) -> dict[str, float]:
        """P(kind | context) over ACTION_KINDS, smoothed (``smoothing=0``: raw frequencies where seen)."""
        code = NO_CODE if code is None else code
        p = dict(self._base)
        for key in (_key(page), _key(prev, page), _key(prev, page, code)):
            seen = self.counts.get(key, {})
            n = sum(seen.values())
            if n == 0:
                continue
            p = {k: (seen.get(k, 0) + self.smoothing * p[k]) / (n + self.smoothing) for k in ACTION_KINDS}
        return p

    def act(self, requests: Sequence[ActRequest]) -> list[ActResult]:
        return [self._act_one(i, r) for i, r in enumerate(requests)]

    def _act_one(self, i: int, r: ActRequest) -> ActResult:
        if not r.valid_actions:
            raise ValueError(f"request {i} has no valid actions: nothing to choose (the episode has ended)")
        by_kind: dict[str, list[str]] = defaultdict(list)
        for action in r.valid_actions:
            by_kind[action_kind(action)].append(action)
        prev = action_kind(r.history[-1]) if r.history else START
        page = page_kind(r.observation)
        p = self.probabilities(prev, page, r.persona)
        kinds = list(by_kind)
        weights = np.array([p.get(k, 0.0) for k in kinds])
        weights = weights / weights.sum() if weights.sum() > 0 else np.full(len(kinds), 1 / len(kinds))
        j = choose(_log(weights), 1.0, (r.seed, 0), kinds)
        options, template_logp = self._template_of(
            by_kind[kinds[j]], self.template_counts.get(_key(prev, page), {}), r.seed
        )
        if options == [SEARCH_TEMPLATE]:
            options = [fill_search(SEARCH_TEMPLATE, r.observation, np.random.default_rng(r.seed))]
        counts = np.array([self.action_counts.get(a, 0) + 1.0 for a in options])
        k = choose(np.log(counts), 1.0, (r.seed, 2), options)
        logprob = float(np.log(weights[j]) + template_logp + np.log(counts[k] / counts.sum()))
        return ActResult(options[k], logprob, 0, {"kind": kinds[j]})

    @staticmethod
    def _template_of(options: list[str], seen: dict[str, int], seed: int) -> tuple[list[str], float]:
        """The options of one template, drawn by how often it was taken in this context, plus one, and
        the log-probability of that draw."""
        if not seen:
            return options, 0.0
        by_template: dict[str, list[str]] = defaultdict(list)
        for action in options:
            by_template[action_template(action)].append(action)
        if len(by_template) == 1:
            return options, 0.0
        names = list(by_template)
        weights = np.array([seen.get(t, 0) + 1.0 for t in names])
        t = choose(np.log(weights), 1.0, (seed, 1), names)
        return by_template[names[t]], float(np.log(weights[t] / weights.sum()))

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        payload = {
            "smoothing": self.smoothing,
            "counts": self.counts,
            "action_counts": self.action_counts,
            "template_counts": self.template_counts,
        }
        path.write_text(json.dumps(payload, sort_keys=True) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | Path) -> MarkovPolicy:
        payload = json.loads(Path(path).read_text(encoding="utf-8"))
        return cls(
            payload["counts"], payload["action_counts"], payload["smoothing"], payload.get("template_counts")
        )


def _log(weights: np.ndarray) -> np.ndarray:
    """``log(weights)`` with -inf, and no warning, where a weight is 0."""
    return np.log(weights, out=np.full(len(weights), -np.inf), where=weights > 0)
