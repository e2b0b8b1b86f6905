"""EpisodePlayer: one policy request per env group per tick, order-independent rollouts, invalid
actions recorded."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pyarrow.compute as pc
import pytest

from engine.episode_player import ROLLOUTS, CallClient, EpisodePlayer
from learners.agent.actions import SEARCH_TEMPLATE
from learners.agent.policy import ActResult
from tests.engine.sim_fixtures import (
    UniformPolicy,
    episode_world,
    rollout_rows,
    text_env_spec,
)

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return episode_world(tmp_path_factory.mktemp("world"))


def test_player_one_request_per_tick_and_episode_rows(world):
    data, buyers = world
    policy = UniformPolicy()
    table = EpisodePlayer(text_env_spec(data), max_envs=10, max_steps=6).play(buyers, policy.act)
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
    wide = EpisodePlayer(text_env_spec(data), max_envs=24, max_steps=6).play(buyers, UniformPolicy().act)
    narrow = EpisodePlayer(text_env_spec(data), max_envs=3, max_steps=6).play(buyers, UniformPolicy().act)
    alone = EpisodePlayer(text_env_spec(data), max_envs=1, max_steps=6).play(buyers[5:6], UniformPolicy().act)
    assert rollout_rows(wide) == rollout_rows(narrow)
    assert [r for r in rollout_rows(wide) if r["sim_buyer_id"] == buyers[5].sim_buyer_id] == rollout_rows(
        alone
    )


def test_invalid_actions_are_recorded(world):
    data, buyers = world

    def clumsy(requests):
        if requests[0].history:
            return UniformPolicy().act(requests)
        return [ActResult("fly to the moon") for _ in requests]

    table = EpisodePlayer(text_env_spec(data), max_envs=4, max_steps=3).play(buyers[:4], clumsy)
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
    lockstep = EpisodePlayer(text_env_spec(data), max_envs=10, max_steps=6).play(buyers, UniformPolicy().act)
    client = RecordingClient(UniformPolicy().act)
    grouped = EpisodePlayer(text_env_spec(data), max_envs=10, max_steps=6, groups=2).play(buyers, client)
    assert rollout_rows(grouped) == rollout_rows(lockstep)
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
        EpisodePlayer(text_env_spec(data), max_envs=2, groups=3)


def test_the_in_process_paths_import_no_ray():
    """A GPU machine has no Ray (benchmarks/gpu_check.py): training in process, serving and the episode
    loop must import without it."""
    blocker = (
        "import sys\n"
        "class NoRay:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'ray':\n"
        "            raise ImportError('ray is not installed here')\n"
        "sys.meta_path.insert(0, NoRay())\n"
        "import benchmarks.gpu_check, engine.episode_player, learners.agent.train, learners.agent.llm_policy\n"
        "assert 'ray' not in sys.modules\n"
    )
    done = subprocess.run([sys.executable, "-c", blocker], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
