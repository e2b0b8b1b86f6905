"""EnvRunner: many envs per actor, one policy request per env group per tick, direct replica calls,
order-independent rollouts."""

from __future__ import annotations

import pyarrow.compute as pc
import pytest
import ray

from engine.env_runner import ROLLOUTS, CallClient, EnvRunner, EnvSpec, EpisodePlayer, play_chunk
from engine.policy_server import PolicyRouter, ServingConfig
from engine.population import PopulationSampler
from learners.agent.actions import SEARCH_TEMPLATE
from learners.agent.policy import ActResult
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
        assert set(rows["code"].to_pylist()) == {b.code} and set(rows["merchant_id"].to_pylist()) == {
            b.merchant_id
        }
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


class RecordingClient(CallClient):
    """Logs submits and fetches, to see how the groups' batches overlap."""

    def __init__(self, act):
        super().__init__(act)
        self.log: list[tuple[str, int]] = []

    def submit(self, requests):
        self.log.append(("submit", len(requests)))
        return super().submit(requests)

    def fetch(self, pending):
        self.log.append(("fetch", len(pending)))
        return super().fetch(pending)


def test_env_groups_overlap_and_do_not_change_rollouts(world):
    data, buyers = world
    lockstep = EpisodePlayer(spec(data), max_envs=10, max_steps=6).play(buyers, UniformPolicy().act)
    client = RecordingClient(UniformPolicy().act)
    grouped = EpisodePlayer(spec(data), max_envs=10, max_steps=6, groups=2).play(buyers, client)
    assert sorted_rows(grouped) == sorted_rows(lockstep)
    # Two groups of 5: both batches are out before the first answers are awaited, and a group's next
    # batch is sent before the other group's answers are fetched.
    assert client.log[:3] == [("submit", 5), ("submit", 5), ("fetch", 5)]
    assert client.log[3][0] == "submit" and client.log[4][0] == "fetch"
    outstanding = 0
    for kind, n in client.log:
        assert n <= 5
        outstanding += 1 if kind == "submit" else -1
        assert 0 <= outstanding <= 2
    assert outstanding == 0 and sum(n for k, n in client.log if k == "fetch") == grouped.num_rows
    with pytest.raises(ValueError, match="groups"):
        EpisodePlayer(spec(data), max_envs=2, groups=3)


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
