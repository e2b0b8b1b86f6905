"""``SimulationConfig``: one simulation run's settings, and the buyers they name.

Every field is also a ``simpersona simulate`` flag and a key of the YAML file (examples/sim.yaml).
The buyers depend only on the config (run seed, merchants' code distributions, sizing), never on
how many runners play them. Light to import (no Ray): the study plan sizes simulations with it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from engine.population import GOAL_DRAWS, PopulationSampler, SimBuyer, with_goals
from envs.catalog import PreparedCatalogs
from learners.config import mapping_value


@dataclass
class SimulationConfig:
    """One simulation run: who is simulated, with which policy, on how many actors, written where."""

    out: str = "sim-out"
    """Output directory: rollouts/part-*.parquet and manifest.json."""
    data: str | None = None
    """Prepared directory the storefront env reads (passed to the env as data=...)."""
    distributions: str | None = None
    """merchant_distributions.parquet from the VQ-VAE assignment step (``p``: share of visits per code)."""
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
    """Goal-oriented shopping: every buyer gets a target product (drawn as `goal_draw` says from its
    merchant's catalogue in `data`, with the buyer's seed); the env rewards buying it and stops after 20 steps."""
    goal_draw: str = "popular"
    """How goal tasks draw their target: `popular` (popularity-weighted over the catalogue, so often one of
    the products the home page features) or `off-home` (uniform over the products it does not feature:
    the buyer must search or browse for it; needs catalogues of more than 5 products)."""
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
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    """Extra keyword arguments for gymnasium.make besides data, e.g. {"treatment": {"kind": "price",
    "percent": -10}} for a treated storefront (a JSON or YAML mapping on the command line)."""
    max_steps: int = 20
    """Steps after which an episode is truncated."""
    use_persona: bool = True
    """Give the policy each buyer's persona code; false is the no-persona baseline."""
    policy: str = "markov"
    """Policy backend registered in learners/agent/registry.py: random, markov, transformers or vllm."""
    policy_path: str | None = None
    """Markov chain JSON or save_pretrained agent directory for the policy backend."""
    policy_device: str = "cpu"
    """Torch device of the transformers backend (cuda on GPU nodes)."""
    temperature: float | None = None
    """Sampling temperature of LLM backends over action scores (0 = greedy); none keeps the backend's."""
    policy_placement: str = "auto"
    """Where the policy runs: "runner" (a copy in every env runner, called in process: each runner
    uses its own core), "server" (shared micro-batching replicas behind a router, for LLMs), or "auto":
    where the backend's registration puts it (runner for random and markov, server for the LLM
    backends; learners/agent/registry.py), server for a custom policy factory.
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

    def __post_init__(self) -> None:
        self.env_kwargs = mapping_value(self.env_kwargs, "env_kwargs")
        if self.goal_draw not in GOAL_DRAWS:
            raise ValueError(
                f"simulation config: goal_draw {self.goal_draw!r}; expected one of {', '.join(GOAL_DRAWS)}"
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
    """The run's buyers, every replicate's: codes drawn per merchant, a goal product each for goal tasks."""
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
    return with_goals(buyers, {m: catalogs.get(m) for m in merchants}, config.goal_draw)
