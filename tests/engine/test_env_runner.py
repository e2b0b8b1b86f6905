"""EnvRunner: many envs per actor, one policy request per tick, order-independent rollouts."""

from __future__ import annotations

import pyarrow.compute as pc
import pytest
import ray

from engine.env_runner import ROLLOUTS, EnvRunner, EnvSpec, EpisodePlayer
from engine.policy_server import PolicyServer
from engine.population import PopulationSampler
from learners.agent.actions import SEARCH_TEMPLATE
from learners.agent.policy import ActResult
from tests.engine.sim_fixtures import UniformPolicy, uniform_policy, write_distributions, write_prepared


@pytest.fixture(scope="module")
def ray_local():
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


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


def test_player_one_request_per_tick_and_episode_rows(world):
    data, buyers = world
    policy = UniformPolicy()
    table = EpisodePlayer(spec(data), max_envs=10, max_steps=6).play(buyers, policy.act)
    assert table.schema == ROLLOUTS
    # Ticks carry every live episode: the first is full, and no call exceeds the env pool.
    assert policy.batch_sizes[0] == 10 and max(policy.batch_sizes) == 10
    assert sum(policy.batch_sizes) == table.num_rows
    assert sorted(set(table["sim_buyer_id"].to_pylist())) == [b.sim_buyer_id for b in buyers]
    for b in buyers:
        rows = table.filter(pc.equal(table["sim_buyer_id"], b.sim_buyer_id))
        steps = rows["step"].to_pylist()
        assert steps == list(range(len(steps))) and 1 <= len(steps) <= 6
        assert set(rows["code"].to_pylist()) == {b.code} and set(rows["merchant_id"].to_pylist()) == {b.merchant_id}
        ended = rows["terminated"][-1].as_py() or rows["truncated"][-1].as_py()
        assert ended and not any(rows["terminated"].to_pylist()[:-1])
    # The uniform policy picks listed actions; only the unfilled search template is not performable.
    for row in table.to_pylist():
        assert row["valid"] == (row["action"] != SEARCH_TEMPLATE), row


def test_rollouts_do_not_depend_on_pool_size_or_neighbours(world):
    data, buyers = world
    wide = EpisodePlayer(spec(data), max_envs=24, max_steps=6).play(buyers, UniformPolicy().act)
    narrow = EpisodePlayer(spec(data), max_envs=3, max_steps=6).play(buyers, UniformPolicy().act)
    alone = EpisodePlayer(spec(data), max_envs=1, max_steps=6).play(buyers[5:6], UniformPolicy().act)
    assert sorted_rows(wide) == sorted_rows(narrow)
    assert [r for r in sorted_rows(wide) if r["sim_buyer_id"] == buyers[5].sim_buyer_id] == sorted_rows(alone)


def test_invalid_actions_are_recorded(world):
    data, buyers = world

    def clumsy(requests):
        if requests[0].history:
            return UniformPolicy().act(requests)
        return [ActResult("fly to the moon") for _ in requests]

    table = EpisodePlayer(spec(data), max_envs=4, max_steps=3).play(buyers[:4], clumsy)
    first = table.filter(pc.equal(table["step"], 0))
    assert first["valid"].to_pylist() == [False] * 4
    assert first["action_kind"].to_pylist() == ["other"] * 4


def test_runner_actor_builds_envs_inside_and_uses_policy_server(ray_local, world):
    data, buyers = world
    server = PolicyServer.remote(uniform_policy, max_batch_size=64, max_wait_ms=1)
    runner = EnvRunner.remote(spec(data), max_envs=16, max_steps=5)
    table = ray.get(runner.run_chunk.remote(buyers, server, 30.0), timeout=60)
    local = EpisodePlayer(spec(data), max_envs=16, max_steps=5).play(buyers, UniformPolicy().act)
    assert sorted_rows(table) == sorted_rows(local)
    stats = ray.get(server.get_stats.remote(), timeout=10)
    ticks = stats["calls"]
    assert stats["requests"] == table.num_rows and ticks <= 5 * 2  # 24 buyers over 16 envs: few ticks
    assert "pid" in ray.get(runner.ping.remote(), timeout=10)
    ray.kill(runner)
    ray.kill(server)
