"""The simulation driver: population -> chunks -> env runners -> Parquet parts + manifest.

Every chunk of buyers is played by one runner and written as one Parquet part named after the chunk
(atomically: temp file, then rename), so a chunk is in the output exactly once or not at all. A dead
or hung runner is replaced and its chunks retried; a dead policy replica is replaced by the router.

Cheap policies (random, Markov) run inside the runners (``policy_placement``): each chunk is a Ray
task that builds the policy and plays in its worker, ``runners`` at a time, so N runners use N cores
and no actor has to start (Ray reuses its pooled workers; a lost worker costs a retried chunk).
The driver plays chunks too (``driver_plays``), standing in for one of the runners, so a short run
does not wait for workers new to the run to import the engine: queued ones, then copies of ones
already sent, the first copy to finish being the one written (a chunk's rollouts depend on its
buyers' seeds only); between its ticks it collects the runners' chunks and sends them more. LLM
backends sit behind the shared micro-batching policy server, played by runner actors; those actors
and the server start concurrently and chunks go to each runner as soon as it answers. The manifest
reports start-up (until every actor answers; none with the policy in the runners) apart from the
whole run's time.
``resume`` reads the written parts and plays only the missing chunks. Buyer seeds depend only on the
run seed and the buyer's index, so the rollouts do not depend on how many runners play them.
"""

from __future__ import annotations

import collections
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray
from tqdm import tqdm

from engine.env_runner import EnvRunner, EnvSpec, EpisodePlayer, play_chunk
from engine.policy_server import (
    ACTOR_FAILURES,
    PolicyFactory,
    PolicyRouter,
    PolicySpec,
    ServingConfig,
    policy_factory,
)
from engine.population import PopulationSampler, SimBuyer, with_goals
from envs.catalog import PreparedCatalogs
from learners.config import config_to_dict

ROLLOUTS_DIR = "rollouts"
MANIFEST = "manifest.json"
# A custom resource is requested in this amount so that it acts as a placement label, not a quota.
LABEL_AMOUNT = 0.001
# Fields that decide what is simulated; a resumed run must agree with the manifest on all of them.
RESULT_FIELDS = (
    "data",
    "distributions",
    "merchants",
    "buyers_per_merchant",
    "buyers_per_real_session",
    "seed",
    "stratified",
    "smoothing",
    "codebook_size",
    "env_id",
    "max_steps",
    "use_persona",
    "policy",
    "policy_path",
    "temperature",
    "chunk_size",
    "replicates",
    "goal_tasks",
)
PLACEMENTS = ("auto", "runner", "server")
IN_RUNNER_BACKENDS = ("random", "markov")
"""Backends that ``policy_placement="auto"`` runs inside the runners: cheap per request, no weights."""


@dataclass
class SimulationConfig:
    """One simulation run: who is simulated, with which policy, on how many actors, written where."""

    out: str = "sim-out"
    """Output directory: rollouts/part-*.parquet and manifest.json."""
    data: str | None = None
    """Prepared directory the storefront env reads (passed to the env as data=...)."""
    distributions: str | None = None
    """merchant_distributions.parquet (merchant_id, code, p, n) from the VQ-VAE assignment step."""
    merchants: list[str] = field(default_factory=list)
    """Merchants to simulate (comma-separated on the command line); empty means all in distributions."""
    buyers_per_merchant: int = 100
    """Simulated buyers per merchant (the least, when `buyers_per_real_session` sizes them to the data)."""
    buyers_per_real_session: float = 0.0
    """When > 0, a merchant gets at least this many simulated buyers per real session in `data`
    (merchants.parquet), so the simulation's own sampling error stays small next to the real side's;
    0 gives every merchant `buyers_per_merchant`."""
    seed: int = 0
    """Run seed; population, buyer and step seeds all derive from it."""
    replicates: int = 1
    """Copies of the population drawn with run seeds seed, seed+1, ... (the rollouts' `seed` column);
    several give per-seed rates, e.g. goal success with a confidence interval over seeds."""
    goal_tasks: bool = False
    """Goal-oriented shopping: every buyer gets a target product (popularity-weighted from its merchant's
    catalogue in `data`, drawn from the buyer's seed); the env rewards buying it and stops after 20 steps."""
    stratified: bool = True
    """Sample codes by exact largest-remainder quotas (true) or i.i.d. from each merchant's distribution."""
    smoothing: float = 0.0
    """Additive smoothing over all codebook entries, so codes unseen at a merchant can still be drawn."""
    codebook_size: int | None = None
    """Number of codes K (default: largest code in distributions + 1); matters with smoothing."""
    env_id: str = "simpersona/Storefront-v0"
    """Registered Gymnasium id of the storefront env (text or browser)."""
    env_modules: list[str] = field(default_factory=lambda: ["envs"])
    """Modules imported inside each runner so that they register env_id."""
    max_steps: int = 20
    """Steps after which an episode is truncated."""
    use_persona: bool = True
    """Give the policy each buyer's persona code; false is the no-persona baseline."""
    policy: str = "markov"
    """Policy backend: random, markov, transformers or vllm."""
    policy_path: str | None = None
    """Markov chain JSON or save_pretrained agent directory for the policy backend."""
    policy_device: str = "cpu"
    """Torch device of the transformers backend (cuda on GPU nodes)."""
    temperature: float | None = None
    """Sampling temperature of LLM backends over action scores (0 = greedy); none keeps the backend's."""
    policy_placement: str = "auto"
    """Where the policy runs: "runner" (a copy in every env runner, called in process: each runner
    uses its own core), "server" (shared micro-batching replicas behind a router, for LLMs), or "auto":
    runner for the random and markov backends, server for the others and for a custom policy factory.
    A small transformers agent on a CPU-only box is faster as "runner" (benchmarks/RESULTS.md)."""
    driver_plays: bool = True
    """With the policy in the runners, the driver plays chunks too, standing in for one of the runners
    (with a single runner, both play): queued chunks, then copies of ones already sent, the first copy
    to finish being written. A short run does not wait for workers to start, and the driver keeps the
    other runners fed between its ticks. Off whenever runner_resource pins the runners to certain nodes."""
    policy_replicas: int = 1
    """Policy server replicas behind the least-loaded router."""
    policy_num_cpus: float = 1.0
    """CPUs reserved per policy replica."""
    policy_num_gpus: float = 0.0
    """GPUs per policy replica (set 1 for GPU backends on a cluster)."""
    policy_resource: str | None = None
    """Custom Ray resource that marks policy nodes (see cluster.yaml); none places anywhere."""
    max_batch_size: int = 64
    """Most requests a policy replica answers in one batch."""
    max_wait_ms: float = 5.0
    """How long a replica waits for more requests after the first one before running a batch."""
    runners: int = 2
    """Env runners: actors with a policy server, else chunks played at once as tasks."""
    runner_num_cpus: float = 0.5
    """CPUs reserved per env runner (runners mostly wait on the policy, so half a CPU each by default)."""
    runner_resource: str | None = None
    """Custom Ray resource that marks env-runner nodes (see cluster.yaml); none places anywhere."""
    envs_per_runner: int = 256
    """Episodes a runner steps concurrently (its envs)."""
    env_groups: int = 2
    """Groups a runner's envs are split into; each group's observations go in one policy request, and
    the runner steps one group while the policy answers another (1 = lock-step, no overlap)."""
    chunk_size: int = 128
    """Buyers per work chunk (one Parquet part each)."""
    chunks_per_runner: int = 2
    """Chunks queued per runner actor at once (the bounded work queue); a task runner plays one."""
    call_timeout_s: float = 120.0
    """Timeout of every policy call and result fetch."""
    chunk_timeout_s: float = 1800.0
    """A chunk running longer than this is taken as hung: its runner is replaced and the chunk retried."""
    max_retries: int = 3
    """Attempts per chunk beyond the first before the run fails."""
    ray_address: str | None = None
    """Ray cluster address ("auto" inside a cluster job); none starts or reuses a local instance."""
    resume: bool = False
    """Continue a run in `out` from its manifest and written parts."""
    progress: bool = True
    """Show a progress bar and print the per-merchant summary."""


def in_runner(config: SimulationConfig, custom_policy: bool = False) -> bool:
    """Whether the policy runs inside the env runners (see ``policy_placement``)."""
    if config.policy_placement not in PLACEMENTS:
        raise ValueError(f"policy_placement must be one of {PLACEMENTS}, got {config.policy_placement!r}")
    if config.policy_placement == "auto":
        return not custom_policy and config.policy in IN_RUNNER_BACKENDS
    return config.policy_placement == "runner"


def policy_spec(config: SimulationConfig) -> PolicySpec:
    options = {} if config.temperature is None else {"temperature": config.temperature}
    return PolicySpec(
        backend=config.policy, path=config.policy_path, device=config.policy_device, options=options
    )


def env_spec(config: SimulationConfig) -> EnvSpec:
    kwargs = {"data": config.data} if config.data else {}
    return EnvSpec(env_id=config.env_id, kwargs=kwargs, modules=tuple(config.env_modules))


def serving_config(config: SimulationConfig) -> ServingConfig:
    return ServingConfig(
        replicas=config.policy_replicas,
        max_batch_size=config.max_batch_size,
        max_wait_ms=config.max_wait_ms,
        num_cpus=config.policy_num_cpus,
        num_gpus=config.policy_num_gpus,
        resources={config.policy_resource: LABEL_AMOUNT} if config.policy_resource else {},
        call_timeout_s=config.call_timeout_s,
        max_retries=config.max_retries,
    )


def buyers_per_merchant(config: SimulationConfig, merchants: list[str]) -> dict[str, int]:
    """Each merchant's simulated buyers: the fixed count, or sized to its real sessions."""
    if config.buyers_per_real_session <= 0:
        return {m: config.buyers_per_merchant for m in merchants}
    if not config.data:
        raise ValueError("simulation config: buyers_per_real_session needs `data` (the prepared directory)")
    table = pq.read_table(Path(config.data) / "merchants.parquet", columns=["merchant_id", "sessions"])
    sessions = dict(zip(table["merchant_id"].to_pylist(), table["sessions"].to_pylist(), strict=True))
    return {
        m: max(config.buyers_per_merchant, math.ceil(config.buyers_per_real_session * sessions.get(m, 0)))
        for m in merchants
    }


def build_population(config: SimulationConfig) -> list[SimBuyer]:
    if not config.distributions:
        raise ValueError(
            "simulation config: `distributions` is not set; point it at the"
            " merchant_distributions.parquet written by the VQ-VAE assignment step"
        )
    sampler = PopulationSampler.from_parquet(config.distributions, config.smoothing, config.codebook_size)
    merchants = list(config.merchants) or sampler.merchants
    buyers = sampler.population(
        merchants, buyers_per_merchant(config, merchants), config.seed, config.stratified, config.replicates
    )
    if not config.goal_tasks:
        return buyers
    if not config.data:
        raise ValueError(
            "simulation config: goal_tasks needs `data` (the prepared directory whose"
            " catalogs.parquet the goal products are drawn from)"
        )
    catalogs = PreparedCatalogs(config.data, merchants)
    return with_goals(buyers, {m: catalogs.get(m) for m in merchants})


def part_path(out: Path, chunk_id: int) -> Path:
    return out / ROLLOUTS_DIR / f"part-{chunk_id:06d}.parquet"


def write_json_atomic(path: Path, payload: dict[str, Any]) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)


class RunTally:
    """Running totals and per-merchant counts, fed chunk by chunk (also from parts on resume)."""

    def __init__(self) -> None:
        self.buyers = 0
        self.steps = 0
        self.invalid = 0
        self.tokens = 0
        self.merchants: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)

    def add(self, table: pa.Table) -> None:
        self.steps += table.num_rows
        self.invalid += table.num_rows - int(pc.sum(table["valid"]).as_py() or 0)
        self.tokens += int(pc.sum(table["tokens"]).as_py() or 0)
        per_buyer = table.group_by(["merchant_id", "sim_buyer_id"]).aggregate(
            [("converted", "max"), ("valid", "count"), ("valid", "sum")]
        )
        self.buyers += per_buyer.num_rows
        for m, conv, n, ok in zip(
            *(per_buyer[c].to_pylist() for c in ("merchant_id", "converted_max", "valid_count", "valid_sum")),
            strict=True,
        ):
            counts = self.merchants[m]
            counts["buyers"] += 1
            counts["converted"] += int(conv)
            counts["steps"] += n
            counts["invalid_steps"] += n - ok
        kinds = table.group_by(["merchant_id", "action_kind", "sim_buyer_id"]).aggregate([])
        for m, kind in zip(kinds["merchant_id"].to_pylist(), kinds["action_kind"].to_pylist(), strict=True):
            self.merchants[m][f"kind:{kind}"] += 1

    def summary(self) -> dict[str, dict[str, Any]]:
        """Per merchant: buyers, conversion rate, invalid-action rate, share of buyers taking each kind."""
        out = {}
        for m in sorted(self.merchants):
            c = self.merchants[m]
            out[m] = {
                "buyers": c["buyers"],
                "steps": c["steps"],
                "invalid_steps": c["invalid_steps"],
                "conversion_rate": c["converted"] / c["buyers"],
                "invalid_rate": c["invalid_steps"] / max(c["steps"], 1),
                "action_rates": {
                    k[5:]: v / c["buyers"] for k, v in sorted(c.items()) if k.startswith("kind:")
                },
            }
        return out


def format_summary(summary: dict[str, dict[str, Any]], max_kinds: int = 8) -> str:
    """A fixed-width table: one row per merchant, funnel columns = share of buyers taking each action kind."""
    totals: collections.Counter = collections.Counter()
    for s in summary.values():
        for k, rate in s["action_rates"].items():
            totals[k] += rate * s["buyers"]
    kinds = [k for k, _ in totals.most_common(max_kinds)]
    head = ["merchant", "buyers", "conv", "invalid", *kinds]
    lines = [" ".join(f"{h:>12}" for h in head)]
    for m, s in summary.items():
        cells = [
            m[:12],
            str(s["buyers"]),
            f"{s['conversion_rate']:.3f}",
            f"{s['invalid_rate']:.3f}",
            *(f"{s['action_rates'].get(k, 0.0):.3f}" for k in kinds),
        ]
        lines.append(" ".join(f"{c:>12}" for c in cells))
    return "\n".join(lines)


@dataclass
class RunnerSlot:
    """One runner position: its current actor and the chunks queued on it."""

    handle: Any
    in_flight: dict[Any, tuple[int, float]] = field(default_factory=dict)
    ready: bool = False
    """The actor has answered once (chunks are handed only to ready runners)."""


class Simulation:
    """One run of ``simulate``: owns the actors, the work queue, the output and the tally."""

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
        self.out = Path(config.out)
        self.buyers = build_population(config)
        size = config.chunk_size
        if size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {size}")
        self.chunks = [self.buyers[i : i + size] for i in range(0, len(self.buyers), size)]
        self.tally = RunTally()
        self.done: set[int] = set()
        self.attempts: collections.Counter = collections.Counter()
        self.runner_restarts = 0
        self.router_restarts = 0
        self.policy_restarts = 0
        self.driver_chunks = 0
        self.driver_player: EpisodePlayer | None = None
        self.driver_policy: Any = None
        self.slots: list[RunnerSlot] = []
        self.elapsed_before = 0.0
        self.startup_s = 0.0
        self.started = time.monotonic()
        self.router: Any = None

    # ---- output -------------------------------------------------------------------------------
    def prepare_output(self) -> None:
        parts = self.out / ROLLOUTS_DIR
        manifest = self.out / MANIFEST
        existing = sorted(parts.glob("part-*.parquet")) if parts.exists() else []
        if not self.config.resume:
            if existing or manifest.exists():
                raise ValueError(
                    f"{self.out}: already holds a simulation (manifest or parts); pass --resume"
                    " true to continue it, or choose a new --out"
                )
            parts.mkdir(parents=True, exist_ok=True)
            return
        if not manifest.exists():
            raise FileNotFoundError(f"{manifest}: nothing to resume; run without --resume first")
        previous = json.loads(manifest.read_text(encoding="utf-8"))
        mine = config_to_dict(self.config)
        # A field missing from an older manifest had its default then.
        defaults = {f.name: f.default for f in fields(SimulationConfig)}
        changed = [k for k in RESULT_FIELDS if previous["config"].get(k, defaults[k]) != mine[k]]
        if changed:
            raise ValueError(
                f"{manifest}: cannot resume with a different {changed}; the manifest has"
                f" {[previous['config'].get(k) for k in changed]}"
            )
        self.elapsed_before = float(previous.get("elapsed_s", 0.0))
        parts.mkdir(parents=True, exist_ok=True)
        for path in existing:
            chunk_id = int(path.stem.split("-")[1])
            if chunk_id >= len(self.chunks):
                raise ValueError(f"{path}: chunk {chunk_id} is outside this run's {len(self.chunks)} chunks")
            self.tally.add(pq.read_table(path))
            self.done.add(chunk_id)

    def accept(self, chunk_id: int, table: pa.Table) -> None:
        expected = sorted(b.sim_buyer_id for b in self.chunks[chunk_id])
        got = sorted(set(table["sim_buyer_id"].to_pylist()))
        if got != expected:
            raise RuntimeError(
                f"chunk {chunk_id}: rollouts cover buyers {got[:5]}..., expected {expected[:5]}..."
            )
        path = part_path(self.out, chunk_id)
        tmp = path.with_suffix(".parquet.tmp")
        pq.write_table(table, tmp)
        os.replace(tmp, path)
        self.done.add(chunk_id)
        self.tally.add(table)

    def manifest(self, elapsed: float, complete: bool) -> dict[str, Any]:
        t = self.tally
        return {
            "complete": complete,
            "buyers_requested": len(self.buyers),
            "buyers_completed": t.buyers,
            "steps": t.steps,
            "invalid_steps": t.invalid,
            "tokens": t.tokens,
            "seed": self.config.seed,
            "chunks": len(self.chunks),
            "chunks_done": sorted(self.done),
            "runner_restarts": self.runner_restarts,
            "router_restarts": self.router_restarts,
            "policy_restarts": self.policy_restarts,
            "policy_placement": "runner" if self.local else "server",
            "driver_chunks": self.driver_chunks,
            "elapsed_s": elapsed,
            "startup_s": self.startup_s,
            "merchants": t.summary(),
            "config": config_to_dict(self.config),
        }

    # ---- actors -------------------------------------------------------------------------------
    def start_timeout_s(self) -> float:
        return max(self.config.call_timeout_s, 600.0)

    def start_router(self) -> Any:
        return PolicyRouter.remote(self.factory, serving_config(self.config))

    def runner_options(self) -> dict[str, Any]:
        c = self.config
        options: dict[str, Any] = {"num_cpus": c.runner_num_cpus}
        if c.runner_resource:
            options["resources"] = {c.runner_resource: LABEL_AMOUNT}
        return options

    def start_runner(self) -> Any:
        """A runner actor; None with the policy in the runners (chunks are then tasks)."""
        if self.local:
            return None
        c = self.config
        return EnvRunner.options(**self.runner_options()).remote(
            self.env, c.envs_per_runner, c.max_steps, c.use_persona, c.env_groups
        )

    def router_alive(self) -> bool:
        try:
            ray.get(self.router.ready.remote(), timeout=self.config.call_timeout_s)
            return True
        except (*ACTOR_FAILURES, ray.exceptions.GetTimeoutError):
            return False

    def replace_router(self) -> None:
        # The replicas are owned by the router, so Ray ends them with it (actor fate-sharing).
        ray.kill(self.router, no_restart=True)
        self.router = self.start_router()
        ray.get(self.router.ready.remote(), timeout=self.start_timeout_s())
        self.router_restarts += 1

    def replace_runner(self, slot: RunnerSlot, queue: collections.deque) -> None:
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

    def failed(self, chunk_id: int, err: BaseException, queue: collections.deque) -> None:
        self.attempts[chunk_id] += 1
        if self.attempts[chunk_id] > self.config.max_retries:
            raise RuntimeError(
                f"chunk {chunk_id} failed {self.attempts[chunk_id]} times; last error: {err}"
            ) from err
        queue.appendleft(chunk_id)

    # ---- the run ------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        c = self.config
        self.prepare_output()
        started = self.started = time.monotonic()
        queue = collections.deque(i for i in range(len(self.chunks)) if i not in self.done)
        bar = tqdm(
            total=len(self.buyers),
            initial=self.tally.buyers,
            unit="buyer",
            disable=not c.progress,
            dynamic_ncols=True,
            desc="simulate",
        )
        base = (self.tally.steps, self.tally.tokens)
        # Every actor starts at once; each probe answers when its actor is up (None: the policy server).
        slots = self.slots = [
            RunnerSlot(self.start_runner(), ready=self.local) for _ in range(max(1, c.runners))
        ]
        probes: dict[Any, RunnerSlot | None] = {}
        if not self.local:
            probes = {s.handle.ping.remote(): s for s in slots}
            self.router = self.start_router()
            probes[self.router.ready.remote()] = None
        try:
            while len(self.done) < len(self.chunks):
                self.submit(slots, queue)
                chunk_id = self.driver_chunk(slots, queue)
                ready = []
                if chunk_id is not None:  # a run with the policy in the runners: no actor to probe
                    self.play_in_driver(chunk_id, bar, lambda: self.take_finished(slots, queue, bar))
                    self.take_finished(slots, queue, bar)
                else:
                    refs = [*probes, *(r for s in slots for r in s.in_flight)]
                    ready, _ = ray.wait(refs, num_returns=1, timeout=1.0)
                for ref in ready:
                    if ref in probes:
                        self.started_actor(ref, probes)
                    else:
                        self.collect(ref, slots, queue, bar)
                now = time.monotonic()
                if probes and now - started > self.start_timeout_s():
                    raise RuntimeError(
                        f"{len(probes)} actors did not start within {self.start_timeout_s():.0f} s;"
                        " check that the cluster has the CPUs and resources they ask for"
                    )
                for slot in slots:
                    if any(now - t0 > c.chunk_timeout_s for _, t0 in slot.in_flight.values()):
                        self.replace_runner(slot, queue)
                rate_s = max(time.monotonic() - started, 1e-9)
                t = self.tally
                bar.set_postfix_str(
                    f"steps/s={(t.steps - base[0]) / rate_s:.0f} tok/s="
                    f"{(t.tokens - base[1]) / rate_s:.0f} invalid={t.invalid / max(t.steps, 1):.3f}",
                    refresh=False,
                )
            if self.router is not None:
                stats = ray.get(self.router.get_stats.remote(), timeout=c.call_timeout_s)
                self.policy_restarts += stats["restarts"]
        finally:
            bar.close()
            for slot in slots:
                if slot.handle is not None:
                    ray.kill(slot.handle, no_restart=True)
                    continue
                # Copies of chunks the driver played first, or chunks cut short by a failure; the
                # interrupt leaves the pooled worker alive for the next chunk or run.
                for ref in slot.in_flight:
                    ray.cancel(ref)
            if self.router is not None:
                ray.kill(self.router, no_restart=True)
        manifest = self.manifest(self.elapsed_before + time.monotonic() - started, complete=True)
        write_json_atomic(self.out / MANIFEST, manifest)
        if c.progress:
            print(format_summary(manifest["merchants"]))
        return manifest

    def started_actor(self, probe: Any, probes: dict[Any, RunnerSlot | None]) -> None:
        """A start-up probe answered: its runner takes chunks from now on; start-up ends with the last."""
        slot = probes.pop(probe)
        try:
            ray.get(probe, timeout=self.config.call_timeout_s)
        except ray.exceptions.RayError as err:  # a constructor failed: the config is wrong, not the run
            what = "the policy server" if slot is None else "an env runner"
            raise RuntimeError(f"{what} failed to start: {err}") from err
        if slot is not None:
            slot.ready = True
        if not probes:
            self.startup_s = time.monotonic() - self.started

    def driver_playing(self) -> bool:
        """Whether the driver plays chunks (see ``driver_plays``)."""
        c = self.config
        # Runners pinned to labelled nodes mean the work belongs there, not on the driver's node.
        return self.local and c.driver_plays and not c.runner_resource

    def driver_chunk(self, slots: list[RunnerSlot], queue: collections.deque) -> int | None:
        """The chunk the driver plays now, if any: queued, else the newest sent."""
        if not self.driver_playing():
            return None
        if queue:
            return queue.popleft()
        sent = [chunk_id for s in slots for chunk_id, _ in s.in_flight.values() if chunk_id not in self.done]
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
        if chunk_id in self.done:  # a runner's copy came back first
            return
        self.driver_chunks += 1
        self.finish(chunk_id, table, bar)

    def take_finished(self, slots: list[RunnerSlot], queue: collections.deque, bar: tqdm) -> None:
        """Collect the chunks the runners have finished, without waiting, and send them more."""
        refs = [ref for s in slots for ref in s.in_flight]
        if refs:
            ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
            for ref in ready:
                self.collect(ref, slots, queue, bar)
        self.submit(slots, queue)

    def submit(self, slots: list[RunnerSlot], queue: collections.deque) -> None:
        c = self.config
        # A queued task would start at once on a free CPU slot: task runners hold one chunk each.
        depth = 1 if self.local else max(1, c.chunks_per_runner)
        # While the driver plays it stands in for one runner, so runners + driver use `runners` cores
        # (on a laptop with as many runners as cores, one more process would slow them all down).
        active = slots[:-1] if len(slots) > 1 and self.driver_playing() else slots
        for slot in active:
            while slot.ready and queue and len(slot.in_flight) < depth:
                chunk_id = queue.popleft()
                if slot.handle is None:
                    ref = play_chunk.options(**self.runner_options()).remote(
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

    def collect(self, ref: Any, slots: list[RunnerSlot], queue: collections.deque, bar: tqdm) -> None:
        slot = next((s for s in slots if ref in s.in_flight), None)
        if slot is None:  # its runner was replaced meanwhile and the chunk requeued
            return
        chunk_id, _ = slot.in_flight.pop(ref)
        if chunk_id in self.done:  # the driver played it first: this copy is not needed
            return
        try:
            table = ray.get(ref, timeout=self.config.call_timeout_s)
        except ray.exceptions.RayTaskError as err:  # the chunk failed inside a live runner
            if self.router is not None and not self.router_alive():
                self.replace_router()
            self.failed(chunk_id, err, queue)
            return
        except ray.exceptions.RayError as err:  # the runner itself is gone (died, killed, unreachable)
            slot.in_flight[ref] = (chunk_id, 0.0)
            self.replace_runner(slot, queue)
            self.attempts[chunk_id] += 1
            if self.attempts[chunk_id] > self.config.max_retries:
                raise RuntimeError(f"chunk {chunk_id}: runner lost {self.attempts[chunk_id]} times") from err
            return
        self.finish(chunk_id, table, bar)

    def finish(self, chunk_id: int, table: pa.Table, bar: tqdm) -> None:
        """Write a played chunk, count it, update the manifest and call the chunk hook."""
        self.accept(chunk_id, table)
        bar.update(len(self.chunks[chunk_id]))
        elapsed = self.elapsed_before + time.monotonic() - self.started
        write_json_atomic(self.out / MANIFEST, self.manifest(elapsed, complete=False))
        if self.on_chunk is not None:
            self.on_chunk(self)


def check_cpus(config: SimulationConfig, available: float, server: bool = True) -> None:
    """Fail fast when the actors cannot all be placed: Ray would otherwise wait for CPUs forever.
    ``server``: the policy runs on server replicas (else inside the runners, which need no more)."""
    replicas = config.policy_replicas if server else 0
    needed = config.runners * config.runner_num_cpus + replicas * config.policy_num_cpus
    if needed > available + 1e-9:
        raise ValueError(
            f"the simulation reserves {needed:g} CPUs ({config.runners} runners x {config.runner_num_cpus:g} + "
            f"{replicas} policy replicas x {config.policy_num_cpus:g}) but the Ray cluster has "
            f"{available:g}; lower --runners, --runner-num-cpus or --policy-num-cpus, or add nodes"
        )


def simulate(
    config: SimulationConfig,
    env: EnvSpec | None = None,
    policy: PolicyFactory | None = None,
    on_chunk: Callable[[Simulation], None] | None = None,
) -> dict[str, Any]:
    """Run a simulation and return its manifest (also written to ``OUT/manifest.json``).

    ``env`` and ``policy`` override the env and backend named in the config (custom storefronts,
    custom policies; a custom policy is served unless ``policy_placement="runner"``); ``on_chunk`` is called after every written chunk (progress hooks, chaos tests).
    """
    local = in_runner(config, custom_policy=policy is not None)
    factory = policy or policy_factory(policy_spec(config))
    run = Simulation(config, env or env_spec(config), factory, on_chunk, local)
    started_ray = not ray.is_initialized()
    if started_ray:
        ray.init(address=config.ray_address, include_dashboard=False, log_to_driver=False)
    try:
        check_cpus(config, ray.cluster_resources().get("CPU", 0.0), server=not local)
        return run.run()
    finally:
        if started_ray:
            ray.shutdown()
