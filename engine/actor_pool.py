"""The run's Ray actors: env runner slots fed from the work queue, and the policy router.

Every actor starts at once. The policy server's probe answers when every replica has loaded the
policy, and a runner takes chunks once both it and the policy server have answered theirs: a call
sent to a replica still loading would wait there, time out on a busy machine, and have the replica
replaced as hung (the run then failed to start). With the policy in the
runners a slot holds no actor: its chunks are Ray tasks (``play_chunk``) that build the policy in a
pooled worker, so nothing has to start. A runner actor keeps ``chunks_per_runner`` chunks queued (the
bounded work queue); a task slot holds one, since a queued task would start at once on a free CPU.
"""

from __future__ import annotations

import collections
import time
from dataclasses import dataclass, field
from typing import Any

import ray

from engine.env_runner import EnvRunner, play_chunk
from engine.episode_player import EnvSpec
from engine.placement import runner_options, serving_config
from engine.policy_server import PolicyRouter
from engine.population import SimBuyer
from engine.simulation_config import SimulationConfig
from learners.agent.registry import PolicyFactory


@dataclass
class RunnerSlot:
    """One runner position: its current actor and the chunks queued on it."""

    handle: Any
    in_flight: dict[Any, tuple[int, float]] = field(default_factory=dict)
    ready: bool = False
    """The actor has answered once (chunks are handed only to ready runners)."""


class RunnerPool:
    """``config.runners`` runner slots playing ``chunks`` and, with the policy served, its router."""

    def __init__(
        self,
        config: SimulationConfig,
        env: EnvSpec,
        factory: PolicyFactory,
        chunks: list[list[SimBuyer]],
        local: bool,
    ) -> None:
        self.config = config
        self.env = env
        self.factory = factory
        self.chunks = chunks
        self.local = local
        self.slots: list[RunnerSlot] = []
        self.router: Any = None
        self.probes: dict[Any, RunnerSlot | None] = {}
        """Start-up probes not answered yet, each with its runner's slot (None: the policy server)."""
        self.runner_restarts = 0
        self.router_restarts = 0

    # ---- start-up -------------------------------------------------------------------------------
    def start(self) -> None:
        """Start every actor at once, each with a probe that answers when it is up."""
        self.slots = [
            RunnerSlot(self.start_runner(), ready=self.local) for _ in range(max(1, self.config.runners))
        ]
        if not self.local:
            self.probes = {s.handle.ping.remote(): s for s in self.slots}
            self.router = self.start_router()
            self.probes[self.router.ready.remote()] = None

    def start_timeout_s(self) -> float:
        return max(self.config.call_timeout_s, 600.0)

    def start_router(self) -> Any:
        return PolicyRouter.remote(self.factory, serving_config(self.config))

    def start_runner(self) -> Any:
        """A runner actor; None with the policy in the runners (chunks are then tasks)."""
        if self.local:
            return None
        c = self.config
        return EnvRunner.options(**runner_options(c)).remote(
            self.env, c.envs_per_runner, c.max_steps, c.use_persona, c.env_groups
        )

    def actor_started(self, probe: Any) -> bool:
        """A start-up probe answered: its runner takes chunks from now on. Whether every actor is up."""
        slot = self.probes.pop(probe)
        try:
            ray.get(probe, timeout=self.config.call_timeout_s)
        except ray.exceptions.RayError as err:  # a constructor failed: the config is wrong, not the run
            what = "the policy server" if slot is None else "an env runner"
            raise RuntimeError(f"{what} failed to start: {err}") from err
        if slot is not None:
            slot.ready = True
        return not self.probes

    def check_started_in_time(self, elapsed: float) -> None:
        """Fail when actors are still starting after the start timeout: the cluster cannot place them."""
        if self.probes and elapsed > self.start_timeout_s():
            raise RuntimeError(
                f"{len(self.probes)} actors did not start within {self.start_timeout_s():.0f} s;"
                " check that the cluster has the CPUs and resources they ask for"
            )

    # ---- work -----------------------------------------------------------------------------------
    def submit(self, queue: collections.deque, driver_playing: bool) -> None:
        """Hand queued chunks to the ready runners, up to each one's queue depth."""
        if None in self.probes.values():
            return  # the policy server is still loading
        c = self.config
        # A queued task would start at once on a free CPU slot: task runners hold one chunk each.
        depth = 1 if self.local else max(1, c.chunks_per_runner)
        # While the driver plays it stands in for one runner, so runners + driver use `runners` cores
        # (on a laptop with as many runners as cores, one more process would slow them all down).
        active = self.slots[:-1] if len(self.slots) > 1 and driver_playing else self.slots
        for slot in active:
            while slot.ready and queue and len(slot.in_flight) < depth:
                chunk_id = queue.popleft()
                if slot.handle is None:
                    ref = play_chunk.options(**runner_options(c)).remote(
                        self.env,
                        self.chunks[chunk_id],
                        self.factory,
                        c.envs_per_runner,
                        c.max_steps,
                        c.use_persona,
                    )
                else:
                    ref = slot.handle.run_chunk.remote(
                        self.chunks[chunk_id], self.router, c.call_timeout_s, c.max_retries
                    )
                slot.in_flight[ref] = (chunk_id, time.monotonic())

    def in_flight(self) -> list[Any]:
        """The result refs of every chunk sent and not collected yet."""
        return [ref for s in self.slots for ref in s.in_flight]

    def slot_of(self, ref: Any) -> RunnerSlot | None:
        """The slot ``ref``'s chunk was sent to; None once that runner was replaced (the chunk requeued)."""
        return next((s for s in self.slots if ref in s.in_flight), None)

    # ---- replacement and shutdown ---------------------------------------------------------------
    def replace_runner(self, slot: RunnerSlot, queue: collections.deque) -> None:
        """End ``slot``'s runner (or its chunks' tasks), requeue its chunks and start a new runner."""
        for ref, (chunk_id, _) in slot.in_flight.items():
            queue.appendleft(chunk_id)
            if slot.handle is None:  # a task: end its worker
                ray.cancel(ref, force=True)
        slot.in_flight.clear()
        if slot.handle is not None:
            ray.kill(slot.handle, no_restart=True)
        slot.handle = self.start_runner()
        # Chunks queue on the new actor while it starts; a failed start shows as a lost runner.
        slot.ready = True
        self.runner_restarts += 1

    def replace_router(self) -> None:
        # The replicas are owned by the router, so Ray ends them with it (actor fate-sharing).
        ray.kill(self.router, no_restart=True)
        self.router = self.start_router()
        ray.get(self.router.ready.remote(), timeout=self.start_timeout_s())
        self.router_restarts += 1

    def policy_restarts(self) -> int:
        """Replicas the router replaced (0 with the policy in the runners)."""
        if self.router is None:
            return 0
        return ray.get(self.router.get_stats.remote(), timeout=self.config.call_timeout_s)["restarts"]

    def stop(self) -> None:
        for slot in self.slots:
            if slot.handle is not None:
                ray.kill(slot.handle, no_restart=True)
                continue
            # Copies of chunks the driver played first, or chunks cut short by a failure. Their workers
            # are ended, not interrupted: an interrupt inside `import torch` left a half-imported torch
            # that failed every later chunk sent to that pooled worker ("function 'istft' already has a
            # docstring", an experiment's next arm failing four times).
            for ref in slot.in_flight:
                ray.cancel(ref, force=True)
        if self.router is not None:
            ray.kill(self.router, no_restart=True)
