"""Env runners: Ray actors that each host many storefront envs and step them in ticks.

A runner splits its envs into groups that take turns: while one group's observations are with the
policy (ONE request per group per tick, sent straight to a policy replica), the runner steps the
group whose answers came back, so the runner and the policy work at the same time. A cheap policy
(random, Markov) is instead played by ``play_chunk``, a Ray task that builds the policy in its worker
and calls it in process: no server round trip, every chunk on its own core, and no actor to start
(Ray reuses its pooled worker processes from chunk to chunk and from run to run). Episodes are
seeded from their buyer's seed only, so a buyer's rollout is the same whichever runner plays it,
in whichever group, next to whichever other buyers.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import gymnasium as gym
import pyarrow as pa
import ray

from engine.policy_server import ReplicaClient
from engine.population import SimBuyer, step_seed
from learners.agent.actions import action_kind
from learners.agent.policy import ActRequest, ActResult
from learners.agent.registry import PolicyFactory

ROLLOUTS = pa.schema(
    [
        pa.field("sim_buyer_id", pa.int64(), nullable=False),
        pa.field("seed", pa.int64(), nullable=False),  # the run seed of the buyer's replicate
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
        pa.field("goal", pa.string()),  # target product of a goal task; null when shopping freely
    ]
)
"""One row per simulated step; a buyer's rows are its episode in step order."""

Act = Callable[[list[ActRequest]], Sequence[ActResult]]


class PolicyClient(Protocol):
    """Asynchronous access to a policy: ``submit`` a batch now, ``fetch`` its answers later."""

    def submit(self, requests: list[ActRequest]) -> Any: ...

    def fetch(self, pending: Any) -> Sequence[ActResult]: ...


class CallClient:
    """A plain ``act`` callable as a ``PolicyClient`` (answers at submit time)."""

    def __init__(self, act: Act) -> None:
        self.act = act

    def submit(self, requests: list[ActRequest]) -> Sequence[ActResult]:
        return self.act(requests)

    def fetch(self, pending: Sequence[ActResult]) -> Sequence[ActResult]:
        return pending


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

    def request(self, use_persona: bool) -> ActRequest:
        return ActRequest(
            observation=self.observation,
            valid_actions=tuple(self.info.get("valid_actions", ())),
            persona=self.buyer.code if use_persona else None,
            goal=self.buyer.goal,
            history=tuple(self.history),
            seed=step_seed(self.buyer.seed, len(self.history)),
        )


class EpisodePlayer:
    """Plays buyers' episodes over a reusable pool of envs; the loop shared by actors and local runs."""

    def __init__(
        self,
        env_spec: EnvSpec,
        max_envs: int = 256,
        max_steps: int = 20,
        use_persona: bool = True,
        groups: int = 1,
    ) -> None:
        if max_envs < 1 or max_steps < 1 or not 1 <= groups <= max_envs:
            raise ValueError(
                f"need max_envs >= 1, max_steps >= 1 and 1 <= groups <= max_envs, got {max_envs},"
                f" {max_steps}, {groups}"
            )
        self.env_spec = env_spec
        self.max_envs = max_envs
        self.max_steps = max_steps
        self.use_persona = use_persona
        self.groups = groups
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
        if buyer.goal is not None:
            options["goal"] = buyer.goal
        observation, info = env.reset(seed=buyer.seed, options=options)
        return Episode(buyer, env, observation, dict(info))

    def play(self, buyers: Sequence[SimBuyer], policy: Act | PolicyClient) -> pa.Table:
        """Run every buyer's episode to its end (or ``max_steps``); the steps as a ROLLOUTS table.

        With ``groups`` > 1 the envs form that many groups of ``max_envs // groups``; each group's
        batch is submitted as soon as its previous answers are applied, before the next group's
        answers are awaited.
        """
        client = policy if hasattr(policy, "submit") else CallClient(policy)
        rows: dict[str, list] = {name: [] for name in ROLLOUTS.names}
        queue = list(reversed(buyers))
        size = self.max_envs // self.groups
        live: list[list[Episode]] = [[] for _ in range(self.groups)]
        pending: list[Any] = [None] * self.groups
        while queue or any(p is not None for p in pending):
            for g in range(self.groups):
                if pending[g] is not None:
                    results = client.fetch(pending[g])
                    pending[g] = None
                    live[g] = self._apply(live[g], results, rows)
                while queue and len(live[g]) < size:
                    live[g].append(self._start(queue.pop()))
                if live[g]:
                    pending[g] = client.submit([e.request(self.use_persona) for e in live[g]])
        return pa.table(rows, schema=ROLLOUTS)

    def _apply(
        self, live: list[Episode], results: Sequence[ActResult], rows: dict[str, list]
    ) -> list[Episode]:
        """Step each episode with its answer; the episodes still running (finished ones free their env)."""
        if len(results) != len(live):
            raise RuntimeError(f"policy answered {len(results)} of {len(live)} requests")
        still: list[Episode] = []
        for episode, result in zip(live, results, strict=True):
            if self._step(episode, result, rows):
                still.append(episode)
            else:
                self.free.append(episode.env)
        return still

    def _step(self, episode: Episode, result: ActResult, rows: dict[str, list]) -> bool:
        page = episode.info.get("page")
        step = len(episode.history)
        observation, reward, terminated, truncated, info = episode.env.step(result.action)
        episode.history.append(result.action)
        truncated = bool(truncated) or (not terminated and len(episode.history) >= self.max_steps)
        episode.converted = episode.converted or bool(info.get("converted", False))
        buyer = episode.buyer
        rows["sim_buyer_id"].append(buyer.sim_buyer_id)
        rows["seed"].append(buyer.run_seed)
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
        rows["goal"].append(buyer.goal)
        episode.observation, episode.info = observation, dict(info)
        return not (terminated or truncated)


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
