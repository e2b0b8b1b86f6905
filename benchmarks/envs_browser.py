"""Browser env benchmark: steps/s in real Chromium (one env, and several envs sharing one browser),
against the text env on the same catalog and actions (the baseline ratio), and the memory each
browser context costs (PSS and RSS of the Chromium processes, read from /proc).

The browser section of ``benchmarks/envs.py``: ``.venv/bin/python benchmarks/envs.py --sections browser``.
"""

from __future__ import annotations

import os
import random
import threading
import time
from pathlib import Path

from envs import storefront as sf
from envs.browser_env import BrowserStorefrontEnv
from envs.browser_pool import BrowserPool, BrowserPoolConfig
from envs.catalog import Catalog
from envs.text_env import StorefrontEnv
from envs.web.server import StorefrontServer

MERCHANT = "bench"


def bench_catalog(n_products: int = 500, n_categories: int = 40) -> Catalog:
    records = [
        {
            "product_id": f"p{i}",
            "category_id": f"c{i % n_categories}",
            "price": 1.0 + i % 97,
            "popularity": 1 / (i + 1),
        }
        for i in range(n_products)
    ]
    return Catalog.from_records(MERCHANT, records)


def chromium_pids() -> list[int]:
    """Chromium processes descended from this process (the Playwright driver launches them)."""
    parents: dict[int, int] = {}
    names: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            names[int(entry.name)] = (entry / "cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
        except OSError:
            continue
        parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    me = os.getpid()

    def descends(pid: int) -> bool:
        while pid > 1:
            pid = parents.get(pid, 0)
            if pid == me:
                return True
        return False

    return [pid for pid, name in names.items() if "chrom" in os.path.basename(name) and descends(pid)]


def memory_mib(pids: list[int]) -> dict[str, float]:
    """Summed PSS and RSS (MiB) of processes, from /proc/PID/smaps_rollup."""
    pss = rss = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    pss += int(line.split()[1])
                elif line.startswith("Rss:"):
                    rss += int(line.split()[1])
        except OSError:
            continue
    return {"pss_mib": pss / 1024, "rss_mib": rss / 1024, "processes": len(pids)}


def policy_run(env, steps: int, seed: int) -> tuple[int, float]:
    """Seeded random valid actions (no exit) for ``steps`` steps; returns (steps, seconds)."""
    rng = random.Random(seed)
    _, info = env.reset(seed=seed)
    start = time.perf_counter()
    for _ in range(steps):
        actions = [a for a in info["valid_actions"] if a != sf.EXIT]
        action = rng.choice(actions)
        if action == sf.SEARCH_TEMPLATE:
            action = f'search "p{rng.randrange(50)}"'
        _, _, terminated, truncated, info = env.step(action)
        if terminated or truncated:
            _, info = env.reset()
    return steps, time.perf_counter() - start


def run_browser_bench(steps: int = 60, envs: int = 4, contexts: int = 8) -> dict:
    """Measure and return the figures (see the module docstring)."""
    catalog = bench_catalog()
    out: dict = {"steps": steps, "envs": envs, "contexts": contexts, "cpus": os.cpu_count()}
    text_env = StorefrontEnv(catalog=catalog, max_steps=10**6)
    n, secs = policy_run(text_env, steps * 20, seed=0)
    out["text_env_steps_per_s"] = n / secs
    with (
        StorefrontServer.from_catalogs(catalog) as server,
        BrowserPool(BrowserPoolConfig(max_contexts=max(envs, contexts) + 1, recycle_every=10**6)) as pool,
    ):
        out["browser_idle"] = memory_mib(chromium_pids())
        env = BrowserStorefrontEnv(server=server, pool=pool, max_steps=10**6)
        n, secs = policy_run(env, steps, seed=0)
        out["browser_env_steps_per_s"] = n / secs
        out["browser_over_text_ratio"] = out["browser_env_steps_per_s"] / out["text_env_steps_per_s"]
        out["one_context"] = memory_mib(chromium_pids())
        env.close()

        many = [BrowserStorefrontEnv(server=server, pool=pool, max_steps=10**6) for _ in range(envs)]
        results: list[tuple[int, float]] = [(0, 0.0)] * envs

        def work(i: int) -> None:
            results[i] = policy_run(many[i], steps, seed=i + 1)

        start = time.perf_counter()
        threads = [threading.Thread(target=work, args=(i,)) for i in range(envs)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - start
        out["concurrent_steps_per_s"] = sum(n for n, _ in results) / wall
        out["concurrent_over_single_ratio"] = out["concurrent_steps_per_s"] / out["browser_env_steps_per_s"]
        for e in many:
            e.close()

        holders = [BrowserStorefrontEnv(server=server, pool=pool) for _ in range(contexts)]
        for e in holders[:1]:
            e.reset(seed=0)
        first = memory_mib(chromium_pids())
        for e in holders[1:]:
            e.reset(seed=0)
        full = memory_mib(chromium_pids())
        out["contexts_open"] = {"1": first, str(contexts): full}
        out["pss_per_extra_context_mib"] = (full["pss_mib"] - first["pss_mib"]) / max(1, contexts - 1)
        out["rss_per_extra_context_mib"] = (full["rss_mib"] - first["rss_mib"]) / max(1, contexts - 1)
        lease = holders[0]._lease
        start = time.perf_counter()
        for _ in range(5):
            lease.mark_broken()
            pool.run(lease.new_episode())
        out["context_replace_s"] = (time.perf_counter() - start) / 5
        start = time.perf_counter()
        for _ in range(5):
            pool.run(lease.new_episode())
        out["context_reuse_s"] = (time.perf_counter() - start) / 5
        for e in holders:
            e.close()
    return out


def describe(figures: dict) -> str:
    """One line of the headline figures."""
    return (
        f"browser env {figures['browser_env_steps_per_s']:.1f} steps/s vs text env "
        f"{figures['text_env_steps_per_s']:.0f} steps/s (ratio {figures['browser_over_text_ratio']:.5f}); "
        f"{figures['envs']} concurrent envs {figures['concurrent_steps_per_s']:.1f} steps/s "
        f"({figures['concurrent_over_single_ratio']:.2f}x one env); "
        f"per extra context {figures['pss_per_extra_context_mib']:.1f} MiB PSS, "
        f"{figures['rss_per_extra_context_mib']:.1f} MiB RSS"
    )
