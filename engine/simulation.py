"""``simulate``: a buyer population played by Ray env runners, written as Parquet parts + a manifest.

The population (engine/simulation_config.py) is cut into chunks of ``chunk_size`` buyers; each chunk
is played by one runner (engine/actor_pool.py) and written as one part (engine/rollout_store.py).
A dead or hung runner is replaced and its chunks retried (engine/fault_recovery.py); a dead policy
replica is replaced by the router.

Cheap policies (random, Markov: the backends the registry places in the runners) run inside the
runners: each chunk is a Ray task that builds the policy and plays in its worker, ``runners`` at a
time, so N runners use N cores and no actor has to start (Ray reuses its pooled workers; a lost
worker costs a retried chunk). The driver plays chunks too (``driver_plays``), standing in for one
of the runners, so a short run does not wait for workers new to the run to import the engine:
queued ones, then copies of ones already sent, the first copy to finish being the one written (a
chunk's rollouts depend on its buyers' seeds only); between its ticks it collects the runners'
chunks and sends them more. LLM backends sit behind the shared micro-batching policy server, played
by runner actors; those actors and the server start concurrently and chunks go to each runner as
soon as it answers. The manifest reports start-up (until every actor answers; none with the policy
in the runners) apart from the whole run's time.
``resume`` reads the written parts and plays only the missing chunks. Buyer seeds depend only on the
run seed and the buyer's index, so the rollouts do not depend on how many runners play them.
"""

from __future__ import annotations

import collections
import sys
import time
from collections.abc import Callable
from typing import Any

import pyarrow as pa
import ray
from tqdm import tqdm

from engine.actor_pool import RunnerPool
from engine.episode_player import EnvSpec, EpisodePlayer
from engine.fault_recovery import FaultRecovery
from engine.placement import check_cpus, in_runner, unused_gpus_hint
from engine.rollout_store import RolloutStore, format_summary
from engine.simulation_config import SimulationConfig, build_population
from learners.agent.registry import PolicyFactory, PolicySpec, policy_factory


def policy_spec(config: SimulationConfig) -> PolicySpec:
    options = {} if config.temperature is None else {"temperature": config.temperature}
    return PolicySpec(
        backend=config.policy, path=config.policy_path, device=config.policy_device, options=options
    )


def env_spec(config: SimulationConfig) -> EnvSpec:
    kwargs = ({"data": config.data} if config.data else {}) | dict(config.env_kwargs)
    return EnvSpec(env_id=config.env_id, kwargs=kwargs, modules=tuple(config.env_modules))


class Simulation:
    """One run of ``simulate``: the work queue and the driver's own play, over the actor pool, the
    fault recovery and the rollout store."""

    def __init__(
        self,
        config: SimulationConfig,
        env: EnvSpec,
        factory: PolicyFactory,
        on_chunk: Callable[[Simulation], None] | None = None,
        local: bool = False,
    ) -> None:
        self.config = config
        self.local = local
        self.on_chunk = on_chunk
        self.env = env
        self.factory = factory
        self.buyers = build_population(config)
        size = config.chunk_size
        if size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {size}")
        self.chunks = [self.buyers[i : i + size] for i in range(0, len(self.buyers), size)]
        self.store = RolloutStore(config, self.chunks)
        self.pool = RunnerPool(config, env, factory, self.chunks, local)
        self.recovery = FaultRecovery(self.pool, config)
        self.policy_restarts = 0
        self.driver_chunks = 0
        self.driver_player: EpisodePlayer | None = None
        self.driver_policy: Any = None
        self.startup_s = 0.0
        self.started = time.monotonic()

    def write_manifest(self, elapsed: float, complete: bool) -> dict[str, Any]:
        return self.store.write_manifest(
            elapsed,
            complete,
            {
                "runner_restarts": self.pool.runner_restarts,
                "router_restarts": self.pool.router_restarts,
                "policy_restarts": self.policy_restarts,
                "policy_placement": "runner" if self.local else "server",
                "driver_chunks": self.driver_chunks,
                "startup_s": self.startup_s,
            },
        )

    def run(self) -> dict[str, Any]:
        c = self.config
        self.store.open()
        done, tally = self.store.done, self.store.tally
        started = self.started = time.monotonic()
        queue = collections.deque(i for i in range(len(self.chunks)) if i not in done)
        bar = tqdm(
            total=len(self.buyers),
            initial=tally.buyers,
            unit="buyer",
            disable=None if c.progress else True,  # None: off where stderr is no terminal
            dynamic_ncols=True,
            desc="simulate",
        )
        base = (tally.steps, tally.tokens)
        self.pool.start()
        try:
            while len(done) < len(self.chunks):
                self.pool.submit(queue, self.driver_playing())
                chunk_id = self.driver_chunk(queue)
                ready = []
                if chunk_id is not None:  # a run with the policy in the runners: no actor to probe
                    self.play_in_driver(chunk_id, bar, lambda: self.take_finished(queue, bar))
                    self.take_finished(queue, bar)
                else:
                    refs = [*self.pool.probes, *self.pool.in_flight()]
                    ready, _ = ray.wait(refs, num_returns=1, timeout=1.0)
                for ref in ready:
                    if ref not in self.pool.probes:
                        self.collect(ref, queue, bar)
                    elif self.pool.actor_started(ref):  # the last actor is up: start-up ends
                        self.startup_s = time.monotonic() - self.started
                now = time.monotonic()
                self.pool.check_started_in_time(now - started)
                self.recovery.replace_hung_runners(queue, now)
                rate_s = max(time.monotonic() - started, 1e-9)
                bar.set_postfix_str(
                    f"steps/s={(tally.steps - base[0]) / rate_s:.0f} tok/s="
                    f"{(tally.tokens - base[1]) / rate_s:.0f}"
                    f" invalid={tally.invalid / max(tally.steps, 1):.3f}",
                    refresh=False,
                )
            self.policy_restarts = self.pool.policy_restarts()
        finally:
            bar.close()
            self.pool.stop()
        manifest = self.write_manifest(self.store.elapsed_before + time.monotonic() - started, complete=True)
        if c.progress:
            print(format_summary(manifest["merchants"]))
        return manifest

    def driver_playing(self) -> bool:
        """Whether the driver plays chunks (see ``driver_plays``)."""
        c = self.config
        # Runners pinned to labelled nodes mean the work belongs there, not on the driver's node.
        return self.local and c.driver_plays and not c.runner_resource

    def driver_chunk(self, queue: collections.deque) -> int | None:
        """The chunk the driver plays now, if any: queued, else the newest sent."""
        if not self.driver_playing():
            return None
        if queue:
            return queue.popleft()
        sent = [
            chunk_id
            for s in self.pool.slots
            for chunk_id, _ in s.in_flight.values()
            if chunk_id not in self.store.done
        ]
        return sent[-1] if sent else None

    def play_in_driver(self, chunk_id: int, bar: tqdm, between_ticks: Callable[[], None]) -> None:
        """Play one chunk in this process with a policy built here, calling ``between_ticks`` before
        each tick (so the runners get new chunks while the driver plays)."""
        if self.driver_player is None:
            c = self.config
            self.driver_player = EpisodePlayer(self.env, c.envs_per_runner, c.max_steps, c.use_persona)
            self.driver_policy = self.factory()
        policy = self.driver_policy

        def act(requests):
            between_ticks()
            return policy.act(requests)

        table = self.driver_player.play(self.chunks[chunk_id], act)
        if chunk_id in self.store.done:  # a runner's copy came back first
            return
        self.driver_chunks += 1
        self.finish(chunk_id, table, bar)

    def take_finished(self, queue: collections.deque, bar: tqdm) -> None:
        """Collect the chunks the runners have finished, without waiting, and send them more."""
        refs = self.pool.in_flight()
        if refs:
            ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
            for ref in ready:
                self.collect(ref, queue, bar)
        self.pool.submit(queue, self.driver_playing())

    def collect(self, ref: Any, queue: collections.deque, bar: tqdm) -> None:
        slot = self.pool.slot_of(ref)
        if slot is None:  # its runner was replaced meanwhile and the chunk requeued
            return
        chunk_id, _ = slot.in_flight.pop(ref)
        if chunk_id in self.store.done:  # the driver played it first: this copy is not needed
            return
        table = self.recovery.result(ref, slot, chunk_id, queue)
        if table is not None:
            self.finish(chunk_id, table, bar)

    def finish(self, chunk_id: int, table: pa.Table, bar: tqdm) -> None:
        """Write a played chunk, count it, update the manifest and call the chunk hook."""
        self.store.write(chunk_id, table)
        bar.update(len(self.chunks[chunk_id]))
        self.write_manifest(self.store.elapsed_before + time.monotonic() - self.started, complete=False)
        if self.on_chunk is not None:
            self.on_chunk(self)


def simulate(
    config: SimulationConfig,
    env: EnvSpec | None = None,
    policy: PolicyFactory | None = None,
    on_chunk: Callable[[Simulation], None] | None = None,
) -> dict[str, Any]:
    """Run a simulation and return its manifest (also written to ``OUT/manifest.json``).

    ``env`` and ``policy`` override the env and backend named in the config (custom storefronts,
    custom policies; a custom policy is served unless ``policy_placement="runner"``); ``on_chunk`` is
    called after every written chunk (progress hooks, chaos tests).
    """
    local = in_runner(config, custom_policy=policy is not None)
    factory = policy or policy_factory(policy_spec(config))
    run = Simulation(config, env or env_spec(config), factory, on_chunk, local)
    started_ray = not ray.is_initialized()
    if started_ray:
        ray.init(address=config.ray_address, include_dashboard=False, log_to_driver=False)
    try:
        resources = ray.cluster_resources()
        check_cpus(config, resources.get("CPU", 0.0), server=not local)
        hint = unused_gpus_hint(config, resources.get("GPU", 0.0), served=policy is None and not local)
        if hint:
            print(f"simulate: {hint}", file=sys.stderr)
        return run.run()
    finally:
        if started_ray:
            ray.shutdown()
