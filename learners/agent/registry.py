"""The policy backends, each registered once: its name, its constructor, and where it may run.

The simulation engine never branches on a backend's name: it builds a policy with ``build_policy``
(which imports only the chosen backend's module, so a CPU box without vLLM can still run the others)
and asks ``backend_named`` where the policy may run: inside every env runner (``RUNNER``: a copy
called in process) or behind the shared micro-batching policy server (``SERVER``). A backend
registered as ``cheap`` (cheap per request, no weights to load) runs in the runners under
``policy_placement="auto"``, any other on the server; ``server_only`` forbids the runners; ``gpu``
marks a backend that runs on a GPU when its replicas reserve one, so the engine can tell when a
cluster's GPUs go unused.

Adding a backend is one file and one line. The file, e.g. learners/agent/first_policy.py::

    from collections.abc import Sequence

    from learners.agent.policy import ActRequest, ActResult


    class FirstPolicy:
        '''Always the page's first valid action (a deterministic floor).'''

        def act(self, requests: Sequence[ActRequest]) -> list[ActResult]:
            return [ActResult(r.valid_actions[0]) for r in requests]

and its line in ``BACKENDS`` below::

    Backend("first", "learners.agent.first_policy:FirstPolicy", needs_path=False, cheap=True),

after which ``simpersona simulate --policy first`` plays it inside the env runners (``auto``), and
``--policy-placement server`` behind the policy server.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from learners.agent.policy import Policy

RUNNER = "runner"
SERVER = "server"
PolicyFactory = Callable[[], Policy]
"""A picklable zero-argument constructor: it travels to the process that will run the policy."""


@dataclass(frozen=True)
class Backend:
    """A policy backend: how ``build_policy`` constructs it from a ``PolicySpec``, and where it may run."""

    name: str
    """What ``PolicySpec.backend`` (the simulation config's ``policy``) calls it."""
    constructor: str
    """``module:attribute`` of the class or classmethod that builds the policy, imported only when used."""
    needs_path: bool = True
    """The constructor takes ``PolicySpec.path`` (weights, a fitted chain) as its first argument."""
    takes_device: bool = False
    """The constructor takes ``device=PolicySpec.device``."""
    takes_options: bool = True
    """The constructor takes ``PolicySpec.options`` as keyword arguments."""
    cheap: bool = False
    """Cheap per request, no weights to load: ``policy_placement="auto"`` runs it in the runners."""
    server_only: bool = False
    """Runs only behind the policy server, never inside the runners."""
    gpu: bool = False
    """Runs on a GPU when its replicas reserve one (``policy_num_gpus``)."""

    def __post_init__(self) -> None:
        if self.cheap and self.server_only:
            raise ValueError(
                f"policy backend {self.name!r}: cheap (runs in the runners) and server_only at once"
            )

    def placement(self, requested: str) -> str:
        """Where the policy runs when the simulation asks for ``requested`` ("auto", RUNNER or SERVER)."""
        if requested == "auto":
            return RUNNER if self.cheap else SERVER
        if requested == RUNNER and self.server_only:
            raise ValueError(
                f"policy backend {self.name!r} runs only behind the policy server; set policy_placement"
                " to auto or server"
            )
        return requested


BACKENDS = (
    Backend("random", "learners.agent.random_policy:RandomPolicy", needs_path=False, cheap=True),
    Backend("markov", "learners.agent.markov_policy:MarkovPolicy.load", takes_options=False, cheap=True),
    Backend(
        "transformers", "learners.agent.llm_policy:LLMPolicy.from_pretrained", takes_device=True, gpu=True
    ),
    # Served for vLLM's continuous batching; a copy per runner would start an engine in each.
    Backend("vllm", "learners.agent.vllm_policy:VLLMPolicy", server_only=True, gpu=True),
)
"""Every policy backend, by the name ``PolicySpec.backend`` (the simulation's ``policy``) gives it."""


def backend_named(name: str) -> Backend:
    """The registered backend ``name``; a ValueError listing the registered ones otherwise."""
    backend = next((b for b in BACKENDS if b.name == name), None)
    if backend is None:
        registered = ", ".join(b.name for b in BACKENDS)
        raise ValueError(
            f"unknown policy backend {name!r}; registered: {registered} (learners/agent/registry.py)"
        )
    return backend


@dataclass(frozen=True)
class PolicySpec:
    """Which policy backend to load, and from where."""

    backend: str = "random"
    """The name of a backend in ``BACKENDS``: random, markov, transformers, vllm."""
    path: str | None = None
    """Fitted Markov chain JSON (markov) or a save_pretrained agent directory (transformers, vllm)."""
    device: str = "cpu"
    """Torch device for the backends that take one ("cuda" on GPU nodes)."""
    options: dict[str, Any] = field(default_factory=dict)
    """Extra keyword arguments for the backend's constructor."""


def build_policy(spec: PolicySpec) -> Policy:
    """Construct the backend named by ``spec`` (only that backend's module is imported)."""
    backend = backend_named(spec.backend)
    if backend.needs_path and not spec.path:
        raise ValueError(
            f"policy backend {spec.backend!r} needs a path (policy_path in the simulation config)"
        )
    if spec.options and not backend.takes_options:
        raise ValueError(f"the {spec.backend} backend takes no options, got {sorted(spec.options)}")
    module, _, attribute = backend.constructor.partition(":")
    constructor: Any = importlib.import_module(module)
    for name in attribute.split("."):
        constructor = getattr(constructor, name)
    args = (spec.path,) if backend.needs_path else ()
    device = {"device": spec.device} if backend.takes_device else {}
    return constructor(*args, **device, **spec.options)


def policy_factory(spec: PolicySpec) -> PolicyFactory:
    """A picklable zero-argument constructor of ``spec``'s policy (weights never travel, only the spec)."""
    return partial(build_policy, spec)
