"""PolicyServer micro-batching, PolicyRouter replicas and timeouts, backend construction."""

from __future__ import annotations

import time
from functools import partial

import numpy as np
import pytest
import ray

from engine.policy_server import PolicyRouter, PolicyServer, ReplicaClient, ServingConfig
from learners.agent.policy import ActRequest
from learners.agent.registry import PolicySpec, build_policy, policy_factory
from tests.engine.sim_fixtures import UniformPolicy, storefront_pages, write_prepared, write_tiny_agent


def request(i: int, n_actions: int = 5) -> ActRequest:
    return ActRequest(
        observation=f"page {i}", valid_actions=tuple(f"a{i}-{k}" for k in range(n_actions)), seed=i
    )


def expected_action(r: ActRequest) -> str:
    return r.valid_actions[int(np.random.default_rng(r.seed).integers(len(r.valid_actions)))]


class FailingPolicy:
    def act(self, requests):
        if any(r.observation == "boom" for r in requests):
            raise ValueError("backend exploded")
        return UniformPolicy().act(requests)


def test_concurrent_calls_are_merged_into_micro_batches(ray_local):
    server = PolicyServer.remote(partial(UniformPolicy, delay_s=0.05), max_batch_size=32, max_wait_ms=300)
    calls = [[request(i)] for i in range(40)]
    answers = ray.get([server.act.remote(c) for c in calls], timeout=60)
    for call, answer in zip(calls, answers, strict=True):
        assert [a.action for a in answer] == [expected_action(r) for r in call]  # each caller gets its own
    stats = ray.get(server.get_stats.remote(), timeout=10)
    assert stats["calls"] == 40 and stats["requests"] == 40
    assert stats["max_batch"] <= 32
    assert stats["batches"] <= 10, stats  # 40 single-request calls in at most 10 batches
    assert stats["mean_batch"] >= 4
    ray.kill(server)


def test_batch_size_one_serves_requests_one_by_one_in_order(ray_local):
    server = PolicyServer.remote(UniformPolicy, max_batch_size=1, max_wait_ms=0)
    call = [request(i) for i in range(7)]
    answer = ray.get(server.act.remote(call), timeout=30)
    assert [a.action for a in answer] == [expected_action(r) for r in call]
    stats = ray.get(server.get_stats.remote(), timeout=10)
    assert stats["batches"] == 7 and stats["max_batch"] == 1
    ray.kill(server)


def test_backend_error_reaches_the_caller_and_the_server_keeps_serving(ray_local):
    server = PolicyServer.remote(FailingPolicy, max_batch_size=8, max_wait_ms=0)
    with pytest.raises(ValueError, match="backend exploded"):
        ray.get(server.act.remote([ActRequest("boom", ("x",))]), timeout=30)
    assert ray.get(server.act.remote([request(1)]), timeout=30)[0].action == expected_action(request(1))
    ray.kill(server)


def test_router_spreads_load_over_replicas(ray_local):
    serving = ServingConfig(replicas=2, max_batch_size=4, max_wait_ms=1, num_cpus=0.5, call_timeout_s=30)
    router = PolicyRouter.remote(partial(UniformPolicy, delay_s=0.05), serving)
    assert len(ray.get(router.ready.remote(), timeout=60)) == 2
    calls = [[request(i), request(i + 100)] for i in range(16)]
    answers = ray.get([router.act.remote(c) for c in calls], timeout=60)
    assert [[a.action for a in ans] for ans in answers] == [[expected_action(r) for r in c] for c in calls]
    stats = ray.get(router.get_stats.remote(), timeout=10)
    per_replica = [s["requests"] for s in stats["replicas"]]
    assert sum(per_replica) == 32 and min(per_replica) > 0, per_replica
    ray.kill(router)


def test_router_times_out_a_slow_call_without_replacing_a_live_replica(ray_local):
    serving = ServingConfig(
        replicas=1, max_batch_size=4, max_wait_ms=0, num_cpus=0.5, call_timeout_s=0.5, max_retries=1
    )
    router = PolicyRouter.remote(partial(UniformPolicy, delay_s=3.0), serving)
    ray.get(router.ready.remote(), timeout=60)
    with pytest.raises(RuntimeError, match="failed after 2 attempts"):
        ray.get(router.act.remote([request(0)]), timeout=30)
    assert ray.get(router.get_stats.remote(), timeout=30)["restarts"] == 0
    with pytest.raises(ray.exceptions.GetTimeoutError):
        ray.get(router.act.remote([request(1)]), timeout=0.1)  # every remote call has a bound
    ray.kill(router)


def kill_replica(replica) -> None:
    """Kill a policy server and wait until it is gone (``ray.kill`` returns before, and a call made
    meanwhile may still be answered)."""
    ray.kill(replica)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            ray.get(replica.get_stats.remote(), timeout=30)
        except ray.exceptions.RayActorError:
            return
        time.sleep(0.05)
    raise AssertionError("a killed policy server still answers after 30 s")


def test_router_replaces_a_dead_replica_and_retries(ray_local):
    serving = ServingConfig(replicas=1, max_batch_size=4, max_wait_ms=0, num_cpus=0.5, call_timeout_s=30)
    router = PolicyRouter.remote(UniformPolicy, serving)
    ray.get(router.ready.remote(), timeout=60)
    (replica,) = ray.get(router.replicas.remote(), timeout=10)
    kill_replica(replica)
    assert ray.get(router.act.remote([request(3)]), timeout=60)[0].action == expected_action(request(3))
    assert ray.get(router.get_stats.remote(), timeout=10)["restarts"] == 1
    ray.kill(router)


def test_replica_client_calls_replicas_in_turn_and_recovers_a_dead_one(ray_local):
    serving = ServingConfig(replicas=2, max_batch_size=8, max_wait_ms=0, num_cpus=0.5, call_timeout_s=30)
    router = PolicyRouter.remote(UniformPolicy, serving)
    ray.get(router.ready.remote(), timeout=60)
    client = ReplicaClient(router, call_timeout_s=30, max_retries=2)
    first, second = client.submit([request(0)]), client.submit([request(1), request(2)])
    assert (first.index, second.index) == (0, 1)
    assert [a.action for a in client.fetch(second)] == [expected_action(request(i)) for i in (1, 2)]
    assert [a.action for a in client.fetch(first)] == [expected_action(request(0))]
    doomed = client.servers[0]
    kill_replica(doomed)
    pending = client.submit([request(3)])  # lands on the dead replica
    assert pending.server == doomed
    assert client.fetch(pending)[0].action == expected_action(request(3))
    assert doomed not in client.servers and ray.get(router.get_stats.remote(), timeout=30)["restarts"] == 1
    ray.kill(router)


def test_replica_client_times_out_a_hung_call_and_keeps_a_live_replica(ray_local):
    serving = ServingConfig(replicas=1, max_batch_size=4, max_wait_ms=0, num_cpus=0.5, call_timeout_s=30)
    router = PolicyRouter.remote(partial(UniformPolicy, delay_s=3.0), serving)
    ray.get(router.ready.remote(), timeout=60)
    client = ReplicaClient(router, call_timeout_s=0.5, max_retries=1)
    with pytest.raises(RuntimeError, match="failed after 2 attempts"):
        client.fetch(client.submit([request(0)]))
    assert ray.get(router.get_stats.remote(), timeout=30)["restarts"] == 0  # it answered pings: not replaced
    ray.kill(router)


@pytest.fixture(scope="module")
def tiny_agent(tmp_path_factory):
    root = tmp_path_factory.mktemp("agent")
    data = write_prepared(root / "prepared")
    return write_tiny_agent(root / "agent", data), storefront_pages(data)


def test_transformers_backend_batches_and_matches_in_process_choices(ray_local, tiny_agent):
    path, requests = tiny_agent
    spec = PolicySpec(backend="transformers", path=str(path), options={"temperature": 0.0})
    server = PolicyServer.options(num_cpus=0.5).remote(
        policy_factory(spec), max_batch_size=64, max_wait_ms=300
    )
    answers = ray.get([server.act.remote([r]) for r in requests], timeout=300)
    local = build_policy(spec)
    for r, (answer,) in zip(requests, answers, strict=True):
        (alone,) = local.act([r])  # one request per forward pass: no padding
        assert answer.action == alone.action
        assert answer.logprob == pytest.approx(alone.logprob, abs=1e-4)
        assert answer.tokens > 0
    stats = ray.get(server.get_stats.remote(), timeout=10)
    assert stats["calls"] == len(requests) and stats["batches"] < len(requests) / 3, stats
    ray.kill(server)
