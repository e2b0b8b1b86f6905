"""The episode loop: plays simulated buyers' visits on storefront envs against a policy, in process.

``EpisodePlayer.play(buyers, policy)`` keeps a pool of envs, starts each buyer's episode (seeded from
the buyer only), asks the policy for one batch of actions per group of live episodes, steps them and
returns every step as a ``ROLLOUTS`` table. The Ray side (engine/env_runner.py: the ``EnvRunner``
actor, the ``play_chunk`` task) wraps this loop; local runs, calibration and a GPU box without Ray call
it directly, which is why this module does not import Ray.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import gymnasium as gym
import pyarrow as pa

from engine.population import SimBuyer, step_seed
from learners.agent.actions import action_kind
from learners.agent.policy import ActRequest, ActResult

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
