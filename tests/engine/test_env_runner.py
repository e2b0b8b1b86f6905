"""EnvRunner and play_chunk: the episode loop inside Ray (an actor calling policy replicas directly, a
task building its policy in its worker)."""

from __future__ import annotations

import pytest
import ray

from engine.env_runner import EnvRunner, play_chunk
from engine.episode_player import ROLLOUTS, EpisodePlayer
from engine.policy_server import PolicyRouter, ServingConfig
from tests.engine.sim_fixtures import (
    UniformPolicy,
    episode_world,
    rollout_rows,
    text_env_spec,
    uniform_policy,
)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return episode_world(tmp_path_factory.mktemp("world"))


def test_runner_actor_calls_replicas_directly(ray_local, world):
    data, buyers = world
    serving = ServingConfig(replicas=2, max_batch_size=64, max_wait_ms=1, num_cpus=0.5, call_timeout_s=30)
    router = PolicyRouter.remote(uniform_policy, serving)
    ray.get(router.ready.remote(), timeout=60)
    runner = EnvRunner.remote(text_env_spec(data), max_envs=16, max_steps=5, groups=2)
    table = ray.get(runner.run_chunk.remote(buyers, router, 30.0), timeout=60)
    local = EpisodePlayer(text_env_spec(data), max_envs=16, max_steps=5).play(buyers, UniformPolicy().act)
    assert rollout_rows(table) == rollout_rows(local)
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
    table = ray.get(play_chunk.remote(text_env_spec(data), buyers, uniform_policy, 16, 5), timeout=60)
    local = EpisodePlayer(text_env_spec(data), max_envs=16, max_steps=5).play(buyers, UniformPolicy().act)
    assert table.schema == ROLLOUTS
    assert rollout_rows(table) == rollout_rows(local)
