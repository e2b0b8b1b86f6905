"""Chaos: kill an env runner, a policy server replica, or the router mid-run, or lose a task runner's
worker; no buyer lost or repeated."""

from __future__ import annotations

from dataclasses import replace
from functools import partial

import pyarrow.parquet as pq
import pytest
import ray

from engine.episode_player import EpisodePlayer
from engine.simulation import env_spec, simulate
from engine.simulation_config import build_population
from tests.engine.sim_fixtures import CrashOncePolicy, SlowStartPolicy, UniformPolicy, tiny_simulation


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    root = tmp_path_factory.mktemp("chaos")
    return tiny_simulation(
        root,
        out=str(root / "unused"),
        buyers_per_merchant=12,
        seed=5,
        max_steps=5,
        runners=2,
        envs_per_runner=4,
        chunk_size=4,
        call_timeout_s=20,
    )


# A slow policy keeps chunks in flight long enough to be killed in the middle of one.
slow_policy = partial(UniformPolicy, delay_s=0.02)


def rows(out):
    table = pq.read_table(f"{out}/rollouts")
    return table.sort_by([("sim_buyer_id", "ascending"), ("step", "ascending")]).to_pylist()


@pytest.fixture(scope="module")
def reference(base):
    """The same buyers played in this process, without Ray: what an undisturbed run must write."""
    table = EpisodePlayer(env_spec(base), max_envs=base.envs_per_runner, max_steps=base.max_steps).play(
        build_population(base), UniformPolicy().act
    )
    return table.sort_by([("sim_buyer_id", "ascending"), ("step", "ascending")]).to_pylist()


def once(action):
    """A chunk hook that runs ``action`` after the first written chunk only."""
    fired = []

    def hook(sim):
        if not fired:
            fired.append(True)
            action(sim)

    return hook


def kill_runner(sim):
    busy = next(s for s in sim.pool.slots if s.in_flight)
    ray.kill(busy.handle)


def kill_policy_server(sim):
    replicas = ray.get(sim.pool.router.replicas.remote(), timeout=10)
    ray.kill(replicas[0])


def kill_router(sim):
    ray.kill(sim.pool.router)


@pytest.mark.parametrize(
    "action, counter",
    [
        (kill_runner, "runner_restarts"),
        (kill_policy_server, "policy_restarts"),
        (kill_router, "router_restarts"),
    ],
)
def test_run_survives_and_every_buyer_appears_once(ray_local, base, reference, tmp_path, action, counter):
    manifest = simulate(replace(base, out=str(tmp_path)), policy=slow_policy, on_chunk=once(action))
    assert manifest[counter] >= 1
    assert manifest["buyers_completed"] == manifest["buyers_requested"] == 24
    got = rows(tmp_path)
    assert got == reference  # nothing lost, nothing duplicated, nothing changed by the retries


def test_lost_task_runner_worker_is_retried(ray_local, base, reference, tmp_path):
    # The policy inside the runners: a chunk's worker process dies mid-chunk, once.
    crash = partial(CrashOncePolicy, str(tmp_path / "crashed"), delay_s=0.02)
    config = replace(base, out=str(tmp_path / "out"), policy_placement="runner", driver_plays=False)
    manifest = simulate(config, policy=crash)
    assert (tmp_path / "crashed").exists() and manifest["runner_restarts"] == 1
    assert manifest["policy_placement"] == "runner" and manifest["startup_s"] == 0.0
    assert manifest["buyers_completed"] == manifest["buyers_requested"] == 24
    assert rows(tmp_path / "out") == reference


def test_a_policy_server_slower_to_start_than_a_call_timeout_is_waited_for(
    ray_local, base, reference, tmp_path
):
    # Runners that took chunks before the server was up timed out on their first calls, and the
    # recovery replaced the still-loading replica: the run failed with "failed to start".
    config = replace(base, out=str(tmp_path), call_timeout_s=2.0)
    manifest = simulate(config, policy=partial(SlowStartPolicy, start_s=5.0))
    assert manifest["policy_restarts"] == 0 and manifest["buyers_completed"] == 24
    assert rows(tmp_path) == reference
