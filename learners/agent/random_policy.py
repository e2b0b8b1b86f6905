"""``RandomPolicy``: a uniform draw over the page's valid actions (the floor every policy must beat)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from learners.agent.policy import ActRequest, ActResult


class RandomPolicy:
    """Uniform over ``valid_actions``, seeded by ``ActRequest.seed`` (order-independent)."""

    def act(self, requests: Sequence[ActRequest]) -> list[ActResult]:
        results = []
        for i, r in enumerate(requests):
            if not r.valid_actions:
                raise ValueError(
                    f"request {i} has no valid actions: nothing to choose (the episode has ended)"
                )
            k = int(np.random.default_rng(r.seed).integers(len(r.valid_actions)))
            results.append(ActResult(r.valid_actions[k], float(-np.log(len(r.valid_actions)))))
        return results
