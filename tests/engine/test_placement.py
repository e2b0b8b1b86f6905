"""Where the policy runs (asked of the backend registry) and what the actors reserve: placement
checks and the fail-fast capacity check, before any actor starts."""

from __future__ import annotations

import pytest

from engine.placement import check_cpus, in_runner, unused_gpus_hint
from engine.simulation_config import SimulationConfig


def test_unplaceable_actors_fail_fast_with_the_fix():
    config = SimulationConfig(runners=2, runner_num_cpus=1.0, policy_replicas=1, policy_num_cpus=1.0)
    check_cpus(config, available=3.0)
    with pytest.raises(ValueError, match=r"reserves 3 CPUs.*has 2.*--runners"):
        check_cpus(config, available=2.0)
    check_cpus(config, available=2.0, server=False)  # a policy inside the runners needs no replica


def test_policy_placement_is_checked():
    assert in_runner(SimulationConfig(policy="markov")) and in_runner(SimulationConfig(policy="random"))
    assert not in_runner(SimulationConfig(policy="transformers"))
    assert not in_runner(SimulationConfig(policy="markov"), custom_policy=True)
    assert in_runner(SimulationConfig(policy="transformers", policy_placement="runner"))
    with pytest.raises(ValueError, match="policy_placement"):
        in_runner(SimulationConfig(policy_placement="gpu"))


def test_placement_follows_the_backend_registration():
    assert not in_runner(SimulationConfig(policy="vllm"))  # auto serves it
    with pytest.raises(ValueError, match="'vllm' runs only behind the policy server"):
        in_runner(SimulationConfig(policy="vllm", policy_placement="runner"))
    with pytest.raises(ValueError, match=r"unknown policy backend 'magic'; registered: random, markov"):
        in_runner(SimulationConfig(policy="magic"))
    assert in_runner(SimulationConfig(policy="magic"), custom_policy=True) is False  # the name is unused


def test_served_gpu_backend_without_gpus_gets_a_hint():
    served = SimulationConfig(policy="vllm")
    assert "--policy-num-gpus 1" in unused_gpus_hint(served, available_gpus=2, served=True)
    assert unused_gpus_hint(served, available_gpus=0, served=True) is None  # a CPU-only cluster
    assert unused_gpus_hint(SimulationConfig(policy="vllm", policy_num_gpus=1), 2, served=True) is None
    assert unused_gpus_hint(SimulationConfig(policy="markov"), 2, served=True) is None  # no GPU backend
    assert unused_gpus_hint(SimulationConfig(policy="transformers"), 2, served=False) is None  # in runners
