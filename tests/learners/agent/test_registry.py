"""The policy backend registry: construction from a spec, clear errors, where each backend may run."""

from __future__ import annotations

import importlib
import pickle

import pytest

from learners.agent.markov_policy import MarkovPolicy
from learners.agent.random_policy import RandomPolicy
from learners.agent.registry import (
    BACKENDS,
    RUNNER,
    SERVER,
    Backend,
    PolicySpec,
    backend_named,
    build_policy,
    policy_factory,
)


def test_build_policy_errors_name_the_fix():
    with pytest.raises(ValueError, match="unknown policy backend"):
        build_policy(PolicySpec(backend="magic"))
    with pytest.raises(ValueError, match="needs a path"):
        build_policy(PolicySpec(backend="markov"))


def test_unknown_backend_lists_the_registered_ones():
    with pytest.raises(ValueError, match=r"'magic'; registered: random, markov, transformers, vllm"):
        backend_named("magic")


def test_cheap_backends_are_built_from_their_spec(tmp_path):
    assert isinstance(build_policy(PolicySpec("random", path="ignored")), RandomPolicy)
    path = MarkovPolicy({"home": {"exit": 1}}, {}).save(tmp_path / "markov.json")
    factory = pickle.loads(pickle.dumps(policy_factory(PolicySpec("markov", str(path)))))  # it travels
    assert isinstance(factory(), MarkovPolicy)
    with pytest.raises(ValueError, match="takes no options"):
        build_policy(PolicySpec("markov", str(path), options={"temperature": 0.0}))


def test_every_registered_constructor_exists():
    for backend in BACKENDS:
        module, _, attribute = backend.constructor.partition(":")
        target = importlib.import_module(module)
        for name in attribute.split("."):
            target = getattr(target, name)
        assert callable(target), backend.name
    assert len({b.name for b in BACKENDS}) == len(BACKENDS)


def test_placement_of_each_kind_of_backend():
    cheap, model, served = backend_named("random"), backend_named("transformers"), backend_named("vllm")
    assert [cheap.placement(p) for p in ("auto", RUNNER, SERVER)] == [RUNNER, RUNNER, SERVER]
    assert [model.placement(p) for p in ("auto", RUNNER, SERVER)] == [SERVER, RUNNER, SERVER]
    assert served.placement("auto") == SERVER and served.gpu and not cheap.gpu
    with pytest.raises(ValueError, match="runs only behind the policy server"):
        served.placement(RUNNER)
    with pytest.raises(ValueError, match="cheap .* and server_only"):
        Backend("odd", "learners.agent.random_policy:RandomPolicy", cheap=True, server_only=True)
