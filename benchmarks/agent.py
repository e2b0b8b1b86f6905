"""Agent benchmark: training throughput on Ray Train with 1 and 2 workers, action-scoring
throughput of LLMPolicy at batch sizes 1, 8 and 64 (the batching ratio), on storefront traces, and
the scoring rule: two-level item scoring against the joint rule it replaced.

  .venv/bin/python -m benchmarks.agent [--sessions 60] [--base-model tiny] [--skip-train] [--threads N]
      [--markdown FILE]

Scoring is measured twice on the same requests: LLMPolicy's prompt-shared scoring (prompts run once,
candidates packed on their KV cache) and, as the baseline, the per-pair scoring it replaced (every
(prompt, candidate) pair a full left-padded sequence, kept here only), with the largest difference
between their scores. Traces come from seeded random walks through a real storefront
(envs/storefront.py), so pages and actions have the real format and length. Every figure, and each
ratio's baseline, is measured here.

The scoring rule row scores the same requests (home and search pages of a storefront no agent saw,
4 personas) with learners/agent/scoring.py's two-level rule (``policy.score``) and with the joint rule
it replaced (each item action's whole target log-likelihood; kept here only, ``joint_scores``), from
the same forward passes: requests/s of each (median of timed repeats, rules alternating), and the
share of the valid actions' probability (softmax of their scores) on ``open product`` actions, on home
and on search pages; for the untrained tiny model and, unless ``--skip-train``, the agent trained
by the 1-worker run.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import ray
import torch

from benchmarks.table_output import publish
from envs.catalog import Catalog, Product
from envs.storefront import OPEN_PRODUCT, Storefront
from learners.agent.actions import page_kind
from learners.agent.base_models import load_base
from learners.agent.examples import build_examples
from learners.agent.llm_policy import LLMPolicy
from learners.agent.offline_eval import requests_for
from learners.agent.policy import ActRequest
from learners.agent.random_policy import RandomPolicy, page_queries
from learners.agent.scoring import action_scores, candidate_scores, item_template, scored_candidates
from learners.agent.tokens import add_persona_tokens
from learners.agent.train import AgentTrainConfig, train_agent


def shop_for(merchant: str) -> Storefront:
    """A 40-product storefront whose product ids start with the merchant's (``m1-0``, ...)."""
    products = tuple(
        Product(f"{merchant}-{i}", f"c{i % 5}", 5.0 + i, f"Item {i}", 1 / (1 + i)) for i in range(40)
    )
    return Storefront(Catalog(merchant, products))


def walk_traces(sessions: int, seed: int = 0, max_steps: int = 8) -> tuple[pa.Table, pa.Table]:
    """Random-walk sessions of 8 buyers per merchant in two 40-product storefronts."""
    policy = RandomPolicy()
    rows: dict[str, list] = {
        k: [] for k in ("merchant_id", "buyer_id", "session_id", "step", "observation", "action", "valid")
    }
    codes: dict[str, list] = {"merchant_id": [], "buyer_id": [], "code": []}
    for merchant in ("m1", "m2"):
        shop = shop_for(merchant)
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
    forward pass, keeping the logits of the last (longest target + 1) columns; its token
    log-probabilities read by the same rule as ``policy.score`` (scoring.py: the same candidates,
    ``candidate_scores``, ``action_scores``)."""
    candidates = [scored_candidates(r) for r in requests]
    pairs = [
        (policy.prompt_ids(r), t)
        for r, c in zip(requests, candidates, strict=True)
        for t in policy.targets(c)
    ]
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
        logprobs[row, -(len(t) + 1) : -1].gather(-1, torch.tensor(t)[:, None]).flatten().double().numpy()
        for row, (_, t) in enumerate(pairs)
    ]
    out, cursor = [], 0
    for r, c in zip(requests, candidates, strict=True):
        tokens = flat[cursor : cursor + len(c)]
        groups = policy.item_groups(c)
        values = candidate_scores(
            np.concatenate(tokens), [len(x) for x in tokens], groups, policy.length_normalize
        )
        out.append(action_scores(r, values).tolist())
        cursor += len(c)
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


def joint_scores(policy: LLMPolicy, requests: list[ActRequest]) -> list[np.ndarray]:
    """The replaced rule (the baseline only): every candidate, item actions included, scores its whole
    target log-likelihood; the search template as scoring.py's. Same forward passes as ``score``."""
    prompts = [policy.prompt(r) for r in requests]
    tries = [policy.trie(scored_candidates(r)) for r in requests]
    found = policy.token_logprobs(prompts, tries)
    out = []
    for r, trie, logprobs in zip(requests, tries, found, strict=True):
        owner = np.repeat(np.arange(len(trie.lengths)), trie.lengths)
        out.append(action_scores(r, np.bincount(owner, weights=logprobs, minlength=len(trie.lengths))))
    return out


def grounding_requests(merchant: str = "m9") -> list[ActRequest]:
    """The home page and the search pages (for the queries the home page suggests, with 2+ results) of
    a storefront the agents never saw, each for personas 0..3."""
    shop = shop_for(merchant)
    home = shop.initial_state()
    pages = [(home, ())]
    for query in page_queries(shop.observe(home)):
        action = f'search "{query}"'
        state, _ = shop.step(home, action)
        if len(shop.listing(state.page)) > 1:
            pages.append((state, (action,)))
    return [
        ActRequest(shop.observe(state), tuple(shop.valid_actions(state)), code, None, history, seed=i)
        for i, ((state, history), code) in enumerate((p, c) for p in pages for c in range(4))
    ]


def grounding_comparison(policy: LLMPolicy, requests: list[ActRequest], repeats: int = 7) -> dict:
    """Requests/s (median of ``repeats``, the two rules alternating) and the probability share of
    ``open product`` actions on home and search pages, under the joint and the two-level rules."""
    rules = {"joint": lambda reqs: joint_scores(policy, reqs), "two-level": policy.score}
    times: dict[str, list[float]] = {name: [] for name in rules}
    scores = {name: score(requests) for name, score in rules.items()}  # warm-up, and the figures
    for k in range(repeats):
        for name in list(rules)[:: 1 if k % 2 == 0 else -1]:
            start = time.perf_counter()
            rules[name](requests)
            times[name].append(time.perf_counter() - start)
    out: dict = {"requests": len(requests)}
    kinds = [page_kind(r.observation) for r in requests]
    for name, values in scores.items():
        share, opens = [], []
        for r, v in zip(requests, values, strict=True):
            p = np.exp(v - v.max())
            is_product = np.array([item_template(a) == OPEN_PRODUCT for a in r.valid_actions])
            share.append(float(p[is_product].sum() / p.sum()))
            opens.append(bool(is_product[int(np.argmax(v))]))
        out[name] = {
            "requests_per_s": len(requests) / statistics.median(times[name]),
            "home": float(np.mean([s for s, k in zip(share, kinds, strict=True) if k == "home"])),
            "search": float(np.mean([s for s, k in zip(share, kinds, strict=True) if k == "search"])),
            "greedy_opens": float(np.mean(opens)),
        }
    plain = [
        abs(a[i] - b[i])
        for r, a, b in zip(requests, scores["joint"], scores["two-level"], strict=True)
        for i, action in enumerate(r.valid_actions)
        if item_template(action) is None
    ]
    out["plain_max_abs_diff"] = max(plain)
    out["pages"] = {k: kinds.count(k) for k in ("home", "search")}
    return out


def grounding_lines(rows: list[tuple[str, dict]]) -> list[str]:
    lines = [
        "| model | scoring rule | requests/s | product-opening share, home pages | search pages "
        "| greedy pick opens a product |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for model, g in rows:
        for name in ("joint", "two-level"):
            x = g[name]
            label = "joint (replaced, baseline)" if name == "joint" else "two-level (scoring.py)"
            lines.append(
                f"| {model} | {label} | {x['requests_per_s']:,.1f} | {x['home']:.3g} | {x['search']:.3g} "
                f"| {x['greedy_opens']:.3f} |"
            )
    lines.append("")
    for model, g in rows:
        ratio = g["two-level"]["requests_per_s"] / g["joint"]["requests_per_s"]
        lines.append(
            f"{model}: two-level / joint requests/s {ratio:.2f}x "
            f"over {g['requests']} requests ({g['pages']['home']} home, {g['pages']['search']} search page "
            f"requests); non-item actions' scores differ by at most {g['plain_max_abs_diff']:.1e}."
        )
    return lines


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
    unseen = grounding_requests()
    grounding = [(f"untrained `{args.base_model}`", grounding_comparison(policy, unseen))]
    train = []
    if not args.skip_train:
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
        try:
            with tempfile.TemporaryDirectory() as tmp:
                train = [train_throughput(traces, codes, w, args.base_model, Path(tmp)) for w in (1, 2)]
                trained = LLMPolicy.from_pretrained(Path(tmp) / "w1", temperature=0.0)
                grounding.append(("trained agent (1-worker run)", grounding_comparison(trained, unseen)))
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
        "",
        *grounding_lines(grounding),
    ]
    publish(lines, args.markdown)


if __name__ == "__main__":
    main()
