"""EnvRunner and play_chunk: the episode loop inside Ray (an actor calling policy replicas directly, a
task building its policy in its worker)."""

from __future__ import annotations

import pytest
import ray

from engine.env_runner import EnvRunner, play_chunk
from engine.episode_player import ROLLOUTS, EnvSpec, EpisodePlayer
from engine.policy_server import PolicyRouter, ServingConfig
from engine.population import PopulationSampler
from tests.engine.sim_fixtures import UniformPolicy, uniform_policy, write_distributions, write_prepared


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    data = write_prepared(root / "prepared")
    sampler = PopulationSampler.from_parquet(write_distributions(root / "dist.parquet"))
    return str(data), sampler.population(["m1", "m2"], 12, seed=7)


def spec(data: str) -> EnvSpec:
    return EnvSpec(kwargs={"data": data})


def sorted_rows(table):
    return table.sort_by([("sim_buyer_id", "ascending"), ("step", "ascending")]).to_pylist()


def test_runner_actor_calls_replicas_directly(ray_local, world):
    data, buyers = world
    serving = ServingConfig(replicas=2, max_batch_size=64, max_wait_ms=1, num_cpus=0.5, call_timeout_s=30)
    router = PolicyRouter.remote(uniform_policy, serving)
    ray.get(router.ready.remote(), timeout=60)
    runner = EnvRunner.remote(spec(data), max_envs=16, max_steps=5, groups=2)
    table = ray.get(runner.run_chunk.remote(buyers, router, 30.0), timeout=60)
    local = EpisodePlayer(spec(data), max_envs=16, max_steps=5).play(buyers, UniformPolicy().act)
    assert sorted_rows(table) == sorted_rows(local)
    per_replica = ray.get(router.get_stats.remote(), timeout=10)["replicas"]
    # Batches went round-robin to both replicas, not through the router's own act.
    assert sum(s["requests"] for s in per_replica) == table.num_rows
    assert all(s["calls"] > 0 for s in per_replica)
    assert sum(s["calls"] for s in per_replica) <= 2 * 5 * 2  # two groups, few ticks for 24 buyers
    assert "pid" in ray.get(runner.ping.remote(), timeout=10)
    ray.kill(runner)
    ray.kill(router)


def test_chunk_task_builds_and_calls_its_policy_in_its_worker(ray_local, world):
    data, buyers = world
    table = ray.get(play_chunk.remote(spec(data), buyers, uniform_policy, 16, 5), timeout=60)
    local = EpisodePlayer(spec(data), max_envs=16, max_steps=5).play(buyers, UniformPolicy().act)
    assert table.schema == ROLLOUTS
    assert sorted_rows(table) == sorted_rows(local)
