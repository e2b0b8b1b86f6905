"""How many CPUs each Ray Train worker takes, and so how many threads torch trains on.

Ray gives an actor that asks for n CPUs ``OMP_NUM_THREADS=n``, which torch reads. Ray Train's default
of one CPU per worker leaves the rest of a laptop idle while one worker trains: on a 2-core box the
demo's agent trained at 33k tokens/s with one CPU and 41k with two (benchmarks/RESULTS.md,
session 27). So a worker takes, by default, as many CPUs as the cluster can give every worker.
"""

from __future__ import annotations

import os


def spread_cpus(node_cpus: list[int], workers: int) -> int:
    """The most CPUs each of ``workers`` workers can take with all of them placed on nodes that have
    ``node_cpus`` CPUs (a worker lives on one node); at least 1."""
    best = 1
    for each in range(2, max(node_cpus, default=1) + 1):
        if sum(n // each for n in node_cpus) >= workers:
            best = each
    return best


def worker_cpus(workers: int, requested: int = 0) -> int:
    """``requested`` when > 0; else ``spread_cpus`` over the Ray cluster's alive nodes (Ray is started
    here when it is not running, as ``TorchTrainer.fit`` would)."""
    if requested > 0:
        return requested
    import ray

    if not ray.is_initialized():
        ray.init(address=os.environ.get("RAY_ADDRESS", "local"), include_dashboard=False)
    nodes = [int(n["Resources"].get("CPU", 0)) for n in ray.nodes() if n.get("Alive")]
    return spread_cpus(nodes, max(workers, 1))


def scaling_config(workers: int, use_gpu: bool, cpus_per_worker: int = 0):
    """Ray Train's ``ScalingConfig``: ``workers`` workers with ``worker_cpus`` CPUs each, and a GPU
    each with ``use_gpu``."""
    from ray.train import ScalingConfig

    cpus = worker_cpus(workers, cpus_per_worker)
    return ScalingConfig(num_workers=workers, use_gpu=use_gpu, resources_per_worker={"CPU": cpus})
