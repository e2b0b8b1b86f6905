"""Shared pieces of the engine tests: a tiny prepared storefront, code distributions, a simulation of
them, test policies.

Policies here are test doubles only (the package's own live in learners/agent); Ray workers import
this module by name, as the tests run from the repository root.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from engine.episode_player import EnvSpec
from engine.population import PopulationSampler, SimBuyer
from engine.simulation_config import SimulationConfig
from learners.agent.policy import ActRequest, ActResult
from learners.data.schema import CATALOGS, TABLE_FILES

MERCHANTS = ("m1", "m2")


def write_prepared(directory: Path, merchants: Sequence[str] = MERCHANTS, products: int = 6) -> Path:
    """A minimal prepared directory for the real text env: catalogs.parquet with a few products."""
    rows = [
        {
            "merchant_id": m,
            "product_id": f"p{i}",
            "category_id": f"c{i % 2}",
            "price": 10.0 + i,
            "n_views": 10 - i,
            "n_carts": 2,
            "n_purchases": 1,
            "popularity": (products - i) / products,
        }
        for m in merchants
        for i in range(products)
    ]
    directory.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=CATALOGS), directory / TABLE_FILES["catalogs"])
    return directory


def write_distributions(path: Path, merchants: Sequence[str] = MERCHANTS, codes: int = 4) -> Path:
    """merchant_distributions.parquet: each merchant with a different categorical over ``codes`` codes."""
    rows = []
    for j, m in enumerate(merchants):
        weights = np.arange(1, codes + 1, dtype=float)[:: 1 if j % 2 == 0 else -1]
        for c, w in enumerate(weights / weights.sum()):
            rows.append({"merchant_id": m, "code": c, "p": float(w), "n": int(w * 100)})
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def episode_world(root: Path) -> tuple[str, list[SimBuyer]]:
    """A prepared storefront of the two merchants and 12 seeded buyers of each (seed 7)."""
    data = write_prepared(root / "prepared")
    sampler = PopulationSampler.from_parquet(write_distributions(root / "dist.parquet"))
    return str(data), sampler.population(list(MERCHANTS), 12, seed=7)


def text_env_spec(data: str) -> EnvSpec:
    """The registered text storefront on a prepared directory."""
    return EnvSpec(kwargs={"data": data})


def rollout_rows(table: pa.Table) -> list[dict]:
    """A rollouts table's rows by buyer, then step."""
    return table.sort_by([("sim_buyer_id", "ascending"), ("step", "ascending")]).to_pylist()


def tiny_simulation(root: Path, **fields) -> SimulationConfig:
    """A simulation of the tiny storefront (prepared directory and code distributions written under
    ``root``) on half-CPU actors (they mostly wait), printing nothing; ``fields`` set the rest."""
    defaults = {
        "out": str(root / "out"),
        "data": str(write_prepared(root / "prepared")),
        "distributions": str(write_distributions(root / "dist.parquet")),
        "runner_num_cpus": 0.5,
        "policy_num_cpus": 0.5,
        "progress": False,
    }
    return SimulationConfig(**(defaults | fields))


class UniformPolicy:
    """Picks a valid action uniformly with the request's own seed (independent of batch order);
    records the batch sizes it was called with and can sleep per batch like a slow model."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.delay_s = delay_s
        self.batch_sizes: list[int] = []
        self.lock = threading.Lock()

    def act(self, requests: Sequence[ActRequest]) -> list[ActResult]:
        with self.lock:
            self.batch_sizes.append(len(requests))
        if self.delay_s:
            time.sleep(self.delay_s)
        out = []
        for r in requests:
            i = int(np.random.default_rng(r.seed).integers(len(r.valid_actions)))
            out.append(
                ActResult(
                    r.valid_actions[i], float(-np.log(len(r.valid_actions))), len(r.observation.split())
                )
            )
        return out


def uniform_policy() -> UniformPolicy:
    return UniformPolicy()


class SlowStartPolicy(UniformPolicy):
    """A ``UniformPolicy`` that takes ``start_s`` to build, like a model loading on a busy machine."""

    def __init__(self, start_s: float) -> None:
        time.sleep(start_s)
        super().__init__()


class CrashOncePolicy(UniformPolicy):
    """A ``UniformPolicy`` whose process dies (like a lost node) at the first batch of the first
    process to create ``marker``; every later process plays normally."""

    def __init__(self, marker: str, delay_s: float = 0.0) -> None:
        super().__init__(delay_s)
        self.marker = marker

    def act(self, requests: Sequence[ActRequest]) -> list[ActResult]:
        try:
            with open(self.marker, "x"):
                pass
        except FileExistsError:
            return super().act(requests)
        os._exit(1)


def storefront_pages(
    data: Path, merchants: Sequence[str] = MERCHANTS, steps: int = 6, seed: int = 0
) -> list[ActRequest]:
    """Requests built from real pages of the text env (random walks): observations, actions, personas."""
    import gymnasium as gym

    import envs  # noqa: F401  (registers the storefront)

    env = gym.make("simpersona/Storefront-v0", data=str(data))
    rng = np.random.default_rng(seed)
    out = []
    for j, merchant in enumerate(merchants):
        obs, info = env.reset(seed=seed + j, options={"merchant": merchant})
        history: list[str] = []
        for step in range(steps):
            actions = tuple(info["valid_actions"])
            out.append(
                ActRequest(obs, actions, persona=(j + step) % 4, history=tuple(history), seed=seed + step)
            )
            action = actions[int(rng.integers(len(actions)))]
            obs, _, terminated, truncated, info = env.step(action)
            history.append(action)
            if terminated or truncated:
                obs, info = env.reset(seed=seed + 100 + step, options={"merchant": merchant})
                history = []
    return out


def write_tiny_agent(
    directory: Path, data: Path, num_codes: int = 4, seed: int = 0, merchants: Sequence[str] = MERCHANTS
) -> Path:
    """An untrained tiny agent exported like train-agent's (save_pretrained + persona tokens), its
    vocabulary from ``merchants``' pages in ``data``."""
    from learners.agent.base_models import load_base
    from learners.agent.tokens import add_persona_tokens

    corpus = [r.observation for r in storefront_pages(data, merchants, steps=12)]
    corpus += [" ".join(r.valid_actions) for r in storefront_pages(data, merchants)]
    model, tokenizer = load_base("tiny", corpus, seed=seed)
    tokens = add_persona_tokens(model, tokenizer, num_codes, seed=seed)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    tokens.save(directory)
    return directory


class GoalSeekingPolicy:
    """Buys the request's goal product by the shortest path (open it, buy now, place order), except
    that a seeded share ``wander`` of buyers (decided at their first step) only ever goes home."""

    def __init__(self, wander: float = 0.0) -> None:
        self.wander = wander

    def act(self, requests: Sequence[ActRequest]) -> list[ActResult]:
        return [ActResult(self._choose(r)) for r in requests]

    def _choose(self, r: ActRequest) -> str:
        if r.history[:1] == ("home",) or (
            not r.history and np.random.default_rng(r.seed).random() < self.wander
        ):
            return "home"
        target = f"open product {r.goal}"
        for action in ("place order", "buy now" if r.history[-1:] == (target,) else None, target):
            if action in r.valid_actions:
                return action
        return "home"
