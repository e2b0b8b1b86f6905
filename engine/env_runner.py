"""Env runners: Ray actors that each host many storefront envs and step them in ticks.

A runner splits its envs into groups that take turns: while one group's observations are with the
policy (ONE request per group per tick, sent straight to a policy replica), the runner steps the
group whose answers came back, so the runner and the policy work at the same time. A cheap policy
(random, Markov) is instead played by ``play_chunk``, a Ray task that builds the policy in its worker
and calls it in process: no server round trip, every chunk on its own core, and no actor to start
(Ray reuses its pooled worker processes from chunk to chunk and from run to run). Episodes are
seeded from their buyer's seed only, so a buyer's rollout is the same whichever runner plays it,
in whichever group, next to whichever other buyers. The loop itself is
engine/episode_player.py's ``EpisodePlayer``, which runs without Ray too.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import pyarrow as pa
import ray

from engine.episode_player import EnvSpec, EpisodePlayer
from engine.policy_server import ReplicaClient
from engine.population import SimBuyer
from learners.agent.registry import PolicyFactory


@ray.remote(max_retries=0)  # the driver retries lost chunks itself, counting them
def play_chunk(
    env_spec: EnvSpec,
    buyers: Sequence[SimBuyer],
    policy: PolicyFactory,
    max_envs: int = 256,
    max_steps: int = 20,
    use_persona: bool = True,
) -> pa.Table:
    """Play ``buyers`` in this worker against ``policy()`` built here and called in process (lock-step:
    a policy in the same process answers at once, so env groups would gain nothing)."""
    return EpisodePlayer(env_spec, max_envs, max_steps, use_persona).play(buyers, policy().act)


@ray.remote
class EnvRunner:
    """A Ray actor hosting up to ``max_envs`` envs in ``groups`` groups; plays one chunk of buyers per call."""

    def __init__(
        self,
        env_spec: EnvSpec,
        max_envs: int = 256,
        max_steps: int = 20,
        use_persona: bool = True,
        groups: int = 2,
    ) -> None:
        self.player = EpisodePlayer(env_spec, max_envs, max_steps, use_persona, min(groups, max_envs))
        self.client: ReplicaClient | None = None

    def ping(self) -> dict[str, Any]:
        """Node id and process id, for placement checks and health probes."""
        return {"node_id": ray.get_runtime_context().get_node_id(), "pid": os.getpid()}

    def run_chunk(
        self,
        buyers: Sequence[SimBuyer],
        router: ray.actor.ActorHandle,
        call_timeout_s: float = 120.0,
        max_retries: int = 3,
    ) -> pa.Table:
        """Play ``buyers`` against the replicas of ``router`` (a ``PolicyRouter``), calling them directly;
        every remote call is bounded by ``call_timeout_s``."""
        if self.client is None or self.client.router != router:  # the first chunk, or a new router
            self.client = ReplicaClient(router, call_timeout_s, max_retries)
        return self.player.play(buyers, self.client)
