"""Agent benchmark: training throughput on Ray Train with 1 and 2 workers, and action-scoring
throughput of LLMPolicy at batch sizes 1, 8 and 64 (the batching ratio), on storefront traces.

  .venv/bin/python -m benchmarks.agent [--sessions 60] [--base-model tiny] [--skip-train] [--threads N]
      [--markdown FILE]

Scoring is measured twice on the same requests: LLMPolicy's prompt-shared scoring (prompts run once,
candidates packed on their KV cache) and, as the baseline, the per-pair scoring it replaced (every
(prompt, candidate) pair a full left-padded sequence, kept here only), with the largest difference
between their scores. Traces come from seeded random walks through a real storefront
(envs/storefront.py), so pages and actions have the real format and length. Every figure, and each
ratio's baseline, is measured here.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import ray
import torch

from envs.catalog import Catalog, Product
from envs.storefront import Storefront
from learners.agent.base_models import load_base
from learners.agent.examples import build_examples
from learners.agent.llm_policy import LLMPolicy
from learners.agent.offline_eval import requests_for
from learners.agent.policy import ActRequest
from learners.agent.random_policy import RandomPolicy
from learners.agent.tokens import add_persona_tokens
from learners.agent.train import AgentTrainConfig, train_agent


def walk_traces(sessions: int, seed: int = 0, max_steps: int = 8) -> tuple[pa.Table, pa.Table]:
    """Random-walk sessions of 8 buyers per merchant in two 40-product storefronts."""
    policy = RandomPolicy()
    rows: dict[str, list] = {
        k: [] for k in ("merchant_id", "buyer_id", "session_id", "step", "observation", "action", "valid")
    }
    codes: dict[str, list] = {"merchant_id": [], "buyer_id": [], "code": []}
    for merchant in ("m1", "m2"):
        products = tuple(
            Product(f"{merchant}-{i}", f"c{i % 5}", 5.0 + i, f"Item {i}", 1 / (1 + i)) for i in range(40)
        )
        shop = Storefront(Catalog(merchant, products))
        for b in range(8):
            codes["merchant_id"].append(merchant)
            codes["buyer_id"].append(f"b{b}")
            codes["code"].append(b % 4)
        for s in range(sessions // 2):
            state, buyer = shop.initial_state(), f"b{s % 8}"
            for step in range(max_steps):
                actions = tuple(a for a in shop.valid_actions(state) if not a.startswith("search"))
                obs = shop.observe(state)
                action = policy.act([ActRequest(obs, actions, seed=seed * 100003 + s * 101 + step)])[0].action
                for key, value in zip(
                    rows, (merchant, buyer, f"{buyer}-{s}", step, obs, action, True), strict=True
                ):
                    rows[key].append(value)
                state, _ = shop.step(state, action)
                if state.exited:
                    break
    traces = pa.table(rows).cast(
        pa.schema(
            [(k, pa.int32() if k == "step" else pa.bool_() if k == "valid" else pa.string()) for k in rows]
        )
    )
    return traces, pa.table({**codes, "code": pa.array(codes["code"], pa.int32())})


def train_throughput(traces, codes, workers: int, base_model: str, root: Path) -> dict:
    config = AgentTrainConfig(
        base_model=base_model,
        workers=workers,
        stage1_epochs=1,
        stage2_epochs=1,
        batch_size=8,
        max_observation_tokens=256,
        log_every=1000,
    )
    start = time.perf_counter()
    result = train_agent(config, traces, codes, root / f"w{workers}", log=lambda _: None)
    wall = time.perf_counter() - start
    by_stage = {e["stage"]: e for e in result.epochs}
    return {
        "workers": workers,
        "examples": result.examples,
        "wall_s": wall,
        "stage1": by_stage[1]["tokens_per_s"],
        "stage2": by_stage[2]["tokens_per_s"],
    }


@torch.inference_mode()
def per_pair_scores(policy: LLMPolicy, requests: list[ActRequest]) -> list[list[float]]:
    """The replaced baseline: every (prompt, candidate) pair as one full left-padded sequence in one
    forward pass, keeping the logits of the last (longest target + 1) columns."""
    pairs = [(policy.prompt_ids(r), t) for r in requests for t in policy.targets(r.valid_actions)]
    width = max(len(p) + len(t) for p, t in pairs)
    ids = torch.full((len(pairs), width), policy.pad_id, dtype=torch.long)
    mask = torch.zeros((len(pairs), width), dtype=torch.long)
    for i, (p, t) in enumerate(pairs):
        ids[i, width - len(p) - len(t) :] = torch.tensor(p + t)
        mask[i, width - len(p) - len(t) :] = 1
    positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
    keep = max(len(t) for _, t in pairs) + 1
    logits = policy.model(
        input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=keep
    ).logits
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    flat = [
        float(logprobs[row, -(len(t) + 1) : -1].gather(-1, torch.tensor(t)[:, None]).sum())
        for row, (_, t) in enumerate(pairs)
    ]
    out, cursor = [], 0
    for r in requests:
        out.append(flat[cursor : cursor + len(r.valid_actions)])
        cursor += len(r.valid_actions)
    return out


def scoring_throughput(
    policy: LLMPolicy, requests: list[ActRequest], batch: int, baseline_requests: int
) -> dict:
    """Requests/s and candidates/s of prompt-shared scoring and of the per-pair baseline (on the
    first ``baseline_requests`` requests, which it is slow on), and their largest score difference."""

    def timed(score, reqs: list[ActRequest]) -> tuple[float, list]:
        score(reqs[:batch])  # warm-up
        start = time.perf_counter()
        scores = [s for i in range(0, len(reqs), batch) for s in score(reqs[i : i + batch])]
        return time.perf_counter() - start, scores

    shared_s, shared = timed(policy.score, requests)
    old = requests[: max(batch, baseline_requests)]
    pair_s, pairs = timed(lambda reqs: per_pair_scores(policy, reqs), old)
    diff = max(
        abs(a - b)
        for x, y in zip(shared[: len(pairs)], pairs, strict=True)
        for a, b in zip(x, y, strict=True)
    )
    return {
        "batch": batch,
        "requests": len(requests),
        "candidates_per_s": sum(len(r.valid_actions) for r in requests) / shared_s,
        "requests_per_s": len(requests) / shared_s,
        "baseline_requests": len(old),
        "baseline_candidates_per_s": sum(len(r.valid_actions) for r in old) / pair_s,
        "baseline_requests_per_s": len(old) / pair_s,
        "max_abs_diff": diff,
    }


def scoring_policy(traces, codes, base_model: str, n_requests: int) -> tuple[LLMPolicy, list[ActRequest]]:
    examples = build_examples(traces, codes).examples
    model, tok = load_base(base_model, examples.column("observation").to_pylist())
    tokens = add_persona_tokens(model, tok, 4)
    requests = (requests_for(examples, "true") * (1 + n_requests // examples.num_rows))[:n_requests]
    return LLMPolicy(model, tok, tokens, temperature=0.0), requests


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=60, help="random-walk sessions for training")
    parser.add_argument("--base-model", default="tiny")
    parser.add_argument("--score-requests", type=int, default=256)
    parser.add_argument(
        "--baseline-requests", type=int, default=32, help="requests the slow per-pair baseline scores"
    )
    parser.add_argument("--skip-train", action="store_true", help="measure scoring only")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    parser.add_argument("--markdown", type=Path, help="also write the tables to this file")
    args = parser.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if args.threads:
        torch.set_num_threads(args.threads)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    traces, codes = walk_traces(args.sessions)
    policy, requests = scoring_policy(traces, codes, args.base_model, args.score_requests)
    score = [scoring_throughput(policy, requests, b, args.baseline_requests) for b in (1, 8, 64)]
    train = []
    if not args.skip_train:
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
        try:
            with tempfile.TemporaryDirectory() as tmp:
                train = [train_throughput(traces, codes, w, args.base_model, Path(tmp)) for w in (1, 2)]
        finally:
            ray.shutdown()

    lines = [
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads); base model `{args.base_model}`; {traces.num_rows} trace steps; "
        f"{sum(len(r.valid_actions) for r in requests) / len(requests):.1f} candidates per request.",
        "",
    ]
    if train:
        lines += [
            "| Ray Train workers | examples | stage 1 tokens/s | stage 2 tokens/s | wall s (incl. start-up, export) |",
            "|---:|---:|---:|---:|---:|",
            *(
                f"| {t['workers']} | {t['examples']} | {t['stage1']:,.0f} | {t['stage2']:,.0f} | {t['wall_s']:.1f} |"
                for t in train
            ),
            "",
            f"Stage-2 speed-up of 2 workers over 1 (same run): {train[1]['stage2'] / train[0]['stage2']:.2f}x",
            "",
        ]
    lines += [
        "| scoring batch (requests) | prompt-shared requests/s | candidates/s "
        "| per-pair baseline requests/s | candidates/s | speed-up | max abs score diff |",
        "|---:|---:|---:|---:|---:|---:|---:|",
        *(
            f"| {s['batch']} | {s['requests_per_s']:,.1f} | {s['candidates_per_s']:,.0f} "
            f"| {s['baseline_requests_per_s']:,.2f} | {s['baseline_candidates_per_s']:,.0f} "
            f"| {s['requests_per_s'] / s['baseline_requests_per_s']:.1f}x | {s['max_abs_diff']:.1e} |"
            for s in score
        ),
        "",
        f"Batching ratio (batch 64 vs batch 1 requests/s): prompt-shared "
        f"{score[2]['requests_per_s'] / score[0]['requests_per_s']:.1f}x (batch 8: "
        f"{score[1]['requests_per_s'] / score[0]['requests_per_s']:.1f}x); per-pair baseline "
        f"{score[2]['baseline_requests_per_s'] / score[0]['baseline_requests_per_s']:.1f}x. "
        f"Requests: {score[0]['requests']} prompt-shared, {score[0]['baseline_requests']} baseline "
        f"({score[2]['baseline_requests']} at batch 64).",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.markdown:
        args.markdown.write_text(text)


if __name__ == "__main__":
    main()
