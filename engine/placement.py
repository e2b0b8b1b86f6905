"""Where a simulation's work runs: the policy inside the env runners or on servers, and what each actor
reserves from Ray.

The policy backend's registration (learners/agent/registry.py) says where it may run and where
``policy_placement="auto"`` puts it, so nothing here knows a backend by name. A custom Ray resource
is requested in a tiny amount, so that it acts as a placement label (cluster.yaml's node types), not
a quota. Ray waits forever for CPUs a cluster does not have, so the CPUs are checked before any
actor starts.
"""

from __future__ import annotations

from typing import Any

from engine.policy_server import ServingConfig
from engine.simulation_config import SimulationConfig
from learners.agent.registry import RUNNER, SERVER, backend_named

PLACEMENTS = ("auto", RUNNER, SERVER)
LABEL_AMOUNT = 0.001


def in_runner(config: SimulationConfig, custom_policy: bool = False) -> bool:
    """Whether the policy runs inside the env runners (see ``policy_placement``); a custom policy
    factory is served unless the config asks for the runners."""
    if config.policy_placement not in PLACEMENTS:
        raise ValueError(f"policy_placement must be one of {PLACEMENTS}, got {config.policy_placement!r}")
    if custom_policy:
        return config.policy_placement == RUNNER
    return backend_named(config.policy).placement(config.policy_placement) == RUNNER


def serving_config(config: SimulationConfig) -> ServingConfig:
    return ServingConfig(
        replicas=config.policy_replicas,
        max_batch_size=config.max_batch_size,
        max_wait_ms=config.max_wait_ms,
        num_cpus=config.policy_num_cpus,
        num_gpus=config.policy_num_gpus,
        resources={config.policy_resource: LABEL_AMOUNT} if config.policy_resource else {},
        call_timeout_s=config.call_timeout_s,
        max_retries=config.max_retries,
    )


def runner_options(config: SimulationConfig) -> dict[str, Any]:
    """Ray options of a runner: an actor, or a chunk's task with the policy in the runners."""
    options: dict[str, Any] = {"num_cpus": config.runner_num_cpus}
    if config.runner_resource:
        options["resources"] = {config.runner_resource: LABEL_AMOUNT}
    return options


def check_cpus(config: SimulationConfig, available: float, server: bool = True) -> None:
    """Fail fast when the actors cannot all be placed: Ray would otherwise wait for CPUs forever.
    ``server``: the policy runs on server replicas (else inside the runners, which need no more)."""
    replicas = config.policy_replicas if server else 0
    needed = config.runners * config.runner_num_cpus + replicas * config.policy_num_cpus
    if needed > available + 1e-9:
        raise ValueError(
            f"the simulation reserves {needed:g} CPUs ({config.runners} runners x {config.runner_num_cpus:g} + "
            f"{replicas} policy replicas x {config.policy_num_cpus:g}) but the Ray cluster has "
            f"{available:g}; lower --runners, --runner-num-cpus or --policy-num-cpus, or add nodes"
        )


def unused_gpus_hint(config: SimulationConfig, available_gpus: float, served: bool) -> str | None:
    """A hint when the served policy (``served``: a registered backend on server replicas) runs on a
    GPU but reserves none on a cluster that has some: Ray shows an actor only the GPUs it reserves,
    so the replicas would run without one. None when nothing is amiss."""
    if (
        not served
        or config.policy_num_gpus > 0
        or available_gpus <= 0
        or not backend_named(config.policy).gpu
    ):
        return None
    return (
        f"the {config.policy} backend runs on a GPU and the Ray cluster has {available_gpus:g}, but each"
        " policy replica reserves none; pass --policy-num-gpus 1 to serve it on one"
    )
