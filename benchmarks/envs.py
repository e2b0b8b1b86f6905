"""Env throughput: steps per second of a random valid-action buyer, one process pinned to one core.

  .venv/bin/python -m benchmarks.envs                        # in-memory catalogue
  .venv/bin/python -m benchmarks.envs --data /tmp/prepared   # a prepared directory's busiest merchant
  .venv/bin/python -m benchmarks.envs --sections text

Sections (run in order, each prints its figures and a baseline ratio measured in the same run):
- text: ``simpersona/Storefront-v0`` through ``gymnasium.make`` (target >= 20,000 steps/s). Baselines:
  the bare storefront model (``Storefront.step`` + ``observe``, no Gymnasium) and Gymnasium's
  ``CartPole-v1`` with random actions (Gymnasium's own per-step cost on this machine).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
from collections.abc import Callable
from pathlib import Path

import gymnasium as gym
import pyarrow.parquet as pq

import envs
from envs.catalog import Catalog
from envs.storefront import SEARCH_TEMPLATE, Storefront

TEXT_TARGET = 20_000


def demo_catalog(n: int = 2000) -> Catalog:
    rng = random.Random(0)
    return Catalog.from_records(
        "bench",
        [
            {
                "product_id": str(10_000 + i),
                "category_id": str(i % 40),
                "price": rng.uniform(1, 99),
                "popularity": rng.random(),
            }
            for i in range(n)
        ],
    )


def pick(actions: list[str], rng: random.Random) -> str:
    action = rng.choice(actions)
    return f'search "{rng.randrange(100)}"' if action == SEARCH_TEMPLATE else action


def rate(fn: Callable[[int], None], steps: int) -> float:
    fn(min(1000, steps))  # warm caches and lazy imports
    start = time.perf_counter()
    fn(steps)
    return steps / (time.perf_counter() - start)


def busiest_merchant(data: Path) -> str:
    """The merchant with the most events (an env runner simulates one merchant's population)."""
    table = pq.read_table(data / "merchants.parquet", columns=["merchant_id", "events"])
    return table.sort_by([("events", "descending"), ("merchant_id", "ascending")]).column(0)[0].as_py()


def bench_text(args: argparse.Namespace) -> None:
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # one core, as one env-runner process
    if args.data:
        merchant = args.merchant or busiest_merchant(args.data)
        kwargs = {"data": args.data, "merchant": merchant}
    else:
        kwargs = {"catalog": demo_catalog()}
    env = gym.make(envs.STOREFRONT_ID, **kwargs)
    rng = random.Random(0)
    state = {"info": env.reset(seed=0)[1]}

    def run_env(n: int) -> None:
        info = state["info"]
        for _ in range(n):
            _, _, terminated, truncated, info = env.step(pick(info["valid_actions"], rng))
            if terminated or truncated:
                info = env.reset()[1]
        state["info"] = info

    sf: Storefront = env.unwrapped.storefront
    model = {"s": sf.initial_state()}

    def run_model(n: int) -> None:
        s = model["s"]
        for _ in range(n):
            actions = sf.valid_actions(s)
            s, _ = sf.step(s, pick(actions, rng), actions)
            sf.observe(s)
            if s.exited or s.page.kind == "confirmation":
                s = sf.initial_state()
        model["s"] = s

    cartpole = gym.make("CartPole-v1")
    cartpole.reset(seed=0)
    cartpole.action_space.seed(0)

    def run_cartpole(n: int) -> None:
        for _ in range(n):
            if any(cartpole.step(cartpole.action_space.sample())[2:4]):
                cartpole.reset()

    env_rate = rate(run_env, args.steps)
    model_rate = rate(run_model, args.steps)
    cart_rate = rate(run_cartpole, args.steps)
    sf_products = len(sf.catalog.products)
    where = f"{args.data}, merchant {kwargs['merchant']}" if args.data else "in-memory catalogue"
    where += f", {sf_products:,} products"
    print(
        f"[text] simpersona/Storefront-v0 ({where}): {env_rate:,.0f} steps/s "
        f"(target {TEXT_TARGET:,}: {'met' if env_rate >= TEXT_TARGET else 'NOT met'})"
    )
    print(
        f"[text]   bare storefront model: {model_rate:,.0f} steps/s (env / model = {env_rate / model_rate:.2f})"
    )
    print(
        f"[text]   baseline CartPole-v1 via gymnasium.make: {cart_rate:,.0f} steps/s "
        f"(env / CartPole = {env_rate / cart_rate:.2f})"
    )


def bench_browser(args: argparse.Namespace) -> None:
    from benchmarks.envs_browser import describe, run_browser_bench

    figures = run_browser_bench(
        steps=args.browser_steps, envs=args.browser_envs, contexts=args.browser_contexts
    )
    print("[browser]", json.dumps(figures))
    print("[browser]", describe(figures))


SECTIONS: dict[str, Callable[[argparse.Namespace], None]] = {"text": bench_text, "browser": bench_browser}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, help="a prepared directory (default: an in-memory catalogue)")
    parser.add_argument(
        "--merchant", help="with --data: the merchant (default: the one with the most events)"
    )
    parser.add_argument("--steps", type=int, default=50_000, help="timed steps per measurement")
    parser.add_argument(
        "--sections", default=",".join(SECTIONS), help=f"comma-separated, of {list(SECTIONS)}"
    )
    parser.add_argument("--browser-steps", type=int, default=60, help="browser steps per env")
    parser.add_argument("--browser-envs", type=int, default=4, help="browser envs stepped concurrently")
    parser.add_argument(
        "--browser-contexts", type=int, default=8, help="contexts opened for the memory figure"
    )
    args = parser.parse_args()
    for name in args.sections.split(","):
        if name not in SECTIONS:
            parser.error(f"unknown section {name!r}; choose from {list(SECTIONS)}")
        SECTIONS[name](args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
