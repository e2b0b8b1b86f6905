"""Env runners: Ray actors that each host many storefront envs and step them in lock-step ticks.

Per tick a runner sends the pending observation of every live episode in ONE request to the policy
(a ``PolicyRouter`` or ``PolicyServer`` handle), applies the answers, and records one row per step.
Episodes are seeded from their buyer's seed only, so a buyer's rollout is the same whichever runner
plays it, next to whichever other buyers.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import pyarrow as pa
import ray

from engine.population import SimBuyer, step_seed
from learners.agent.actions import action_kind
from learners.agent.policy import ActRequest, ActResult

ROLLOUTS = pa.schema(
    [
        pa.field("sim_buyer_id", pa.int64(), nullable=False),
        pa.field("merchant_id", pa.string(), nullable=False),
        pa.field("code", pa.int32(), nullable=False),
        pa.field("step", pa.int32(), nullable=False),
        pa.field("page", pa.string()),  # the page the action was taken on
        pa.field("action", pa.string(), nullable=False),
        pa.field("action_kind", pa.string()),
        pa.field("valid", pa.bool_(), nullable=False),
        pa.field("reward", pa.float64(), nullable=False),
        pa.field("converted", pa.bool_(), nullable=False),  # the buyer has purchased by this step
        pa.field("terminated", pa.bool_(), nullable=False),
        pa.field("truncated", pa.bool_(), nullable=False),
        pa.field("logprob", pa.float64()),
        pa.field("tokens", pa.int32(), nullable=False),
    ]
)
"""One row per simulated step; a buyer's rows are its episode in step order."""

Act = Callable[[list[ActRequest]], Sequence[ActResult]]


@dataclass(frozen=True)
class EnvSpec:
    """How a runner builds its envs; built inside the actor (the gym registry does not travel)."""

    env_id: str = "simpersona/Storefront-v0"
    """Registered Gymnasium id."""
    kwargs: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments for ``gymnasium.make`` (e.g. data=PREPARED_DIR)."""
    modules: tuple[str, ...] = ("envs",)
    """Modules imported first so that they register ``env_id``."""
    factory: Callable[[], gym.Env] | None = None
    """A picklable env constructor used instead of ``env_id`` (custom storefronts, tests)."""

    def make(self) -> gym.Env:
        if self.factory is not None:
            return self.factory()
        for module in self.modules:
            importlib.import_module(module)
        return gym.make(self.env_id, **self.kwargs)


@dataclass
class Episode:
    """A live episode: its buyer, env slot, last observation and what has happened so far."""

    buyer: SimBuyer
    env: gym.Env
    observation: str
    info: dict[str, Any]
    history: list[str] = field(default_factory=list)
    converted: bool = False

    def request(self, use_persona: bool, goal: str | None) -> ActRequest:
        return ActRequest(
            observation=self.observation,
            valid_actions=tuple(self.info.get("valid_actions", ())),
            persona=self.buyer.code if use_persona else None,
            goal=goal,
            history=tuple(self.history),
            seed=step_seed(self.buyer.seed, len(self.history)),
        )


class EpisodePlayer:
    """Plays buyers' episodes over a reusable pool of envs; the loop shared by actors and local runs."""

    def __init__(self, env_spec: EnvSpec, max_envs: int = 256, max_steps: int = 20,
                 use_persona: bool = True, goal: str | None = None) -> None:
        if max_envs < 1 or max_steps < 1:
            raise ValueError(f"max_envs and max_steps must be >= 1, got {max_envs}, {max_steps}")
        self.env_spec = env_spec
        self.max_envs = max_envs
        self.max_steps = max_steps
        self.use_persona = use_persona
        self.goal = goal
        self.free: list[gym.Env] = []
        self.envs_built = 0

    def _env(self) -> gym.Env:
        if self.free:
            return self.free.pop()
        self.envs_built += 1
        return self.env_spec.make()

    def _start(self, buyer: SimBuyer) -> Episode:
        env = self._env()
        options: dict[str, Any] = {"merchant": buyer.merchant_id, "persona": buyer.code}
        if self.goal is not None:
            options["goal"] = self.goal
        observation, info = env.reset(seed=buyer.seed, options=options)
        return Episode(buyer, env, observation, dict(info))

    def play(self, buyers: Sequence[SimBuyer], act: Act) -> pa.Table:
        """Run every buyer's episode to its end (or ``max_steps``); the steps as a ROLLOUTS table."""
        rows: dict[str, list] = {name: [] for name in ROLLOUTS.names}
        queue = list(reversed(buyers))
        live: list[Episode] = []
        while queue or live:
            while queue and len(live) < self.max_envs:
                live.append(self._start(queue.pop()))
            results = act([e.request(self.use_persona, self.goal) for e in live])
            if len(results) != len(live):
                raise RuntimeError(f"policy answered {len(results)} of {len(live)} requests")
            still: list[Episode] = []
            for episode, result in zip(live, results, strict=True):
                if self._step(episode, result, rows):
                    still.append(episode)
                else:
                    self.free.append(episode.env)
            live = still
        return pa.table(rows, schema=ROLLOUTS)

    def _step(self, episode: Episode, result: ActResult, rows: dict[str, list]) -> bool:
        page = episode.info.get("page")
        step = len(episode.history)
        observation, reward, terminated, truncated, info = episode.env.step(result.action)
        episode.history.append(result.action)
        truncated = bool(truncated) or (not terminated and len(episode.history) >= self.max_steps)
        episode.converted = episode.converted or bool(info.get("converted", False))
        buyer = episode.buyer
        rows["sim_buyer_id"].append(buyer.sim_buyer_id)
        rows["merchant_id"].append(buyer.merchant_id)
        rows["code"].append(buyer.code)
        rows["step"].append(step)
        rows["page"].append(None if page is None else str(page))
        rows["action"].append(result.action)
        rows["action_kind"].append(info.get("action_kind") or action_kind(result.action))
        rows["valid"].append(bool(info.get("valid", True)))
        rows["reward"].append(float(reward))
        rows["converted"].append(episode.converted)
        rows["terminated"].append(bool(terminated))
        rows["truncated"].append(truncated)
        rows["logprob"].append(result.logprob)
        rows["tokens"].append(int(result.tokens))
        episode.observation, episode.info = observation, dict(info)
        return not (terminated or truncated)


@ray.remote
class EnvRunner:
    """A Ray actor hosting up to ``max_envs`` envs; plays one chunk of buyers per call."""

    def __init__(self, env_spec: EnvSpec, max_envs: int = 256, max_steps: int = 20,
                 use_persona: bool = True, goal: str | None = None) -> None:
        self.player = EpisodePlayer(env_spec, max_envs, max_steps, use_persona, goal)

    def ping(self) -> dict[str, Any]:
        """Node id and process id, for placement checks and health probes."""
        return {"node_id": ray.get_runtime_context().get_node_id(), "pid": os.getpid()}

    def run_chunk(self, buyers: Sequence[SimBuyer], policy: ray.actor.ActorHandle,
                  call_timeout_s: float = 120.0) -> pa.Table:
        """Play ``buyers`` against ``policy`` (anything with a remote ``act``); every remote call is bounded."""

        def act(requests: list[ActRequest]) -> list[ActResult]:
            return ray.get(policy.act.remote(requests), timeout=call_timeout_s)

        return self.player.play(buyers, act)
