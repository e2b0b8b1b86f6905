"""vLLM serving of an agent: continuous batching vs one sequence at a time, on the same requests.

Runs in the vLLM venv (no Ray there; on CPU: engine/scripts/install_vllm_cpu.sh -> .venv-vllm).
``python -m benchmarks.engine --sections serving`` calls it on a real simulation's requests next to
the transformers rows; on a GPU node run it directly on an agent and requests written by
``learners.agent.vllm_policy.write_requests``:

  .venv-vllm/bin/python -m benchmarks.vllm_serving AGENT REQUESTS.json --out vllm-serving.json

Every request's candidates go to the engine at once (``VLLMPolicy.act``), as a policy server does
with concurrent calls. Continuous batching: vLLM's default ``max_num_seqs``, over the first ``limit``
requests; one at a time: ``max_num_seqs=1``, over every fourth of them (the transformers rows'
baseline takes every fourth too). A fresh engine each, warmed on one request first. One engine
request is one candidate prefix (learners/agent/vllm_policy.py), so ``max_num_seqs=1`` is a stricter
baseline than the transformers backend's batch size 1, which scores a whole buyer request per pass.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from learners.agent.policy import ActRequest
from learners.agent.vllm_policy import VLLMPolicy, read_requests


def requests_per_second(agent: Path, requests: Sequence[ActRequest], **engine_options: Any) -> float:
    """Requests/s of one ``act`` over all ``requests`` on a fresh engine, after one warm-up request."""
    policy = VLLMPolicy(agent, temperature=1.0, **engine_options)
    try:
        policy.act(requests[:1])
        start = time.perf_counter()
        policy.act(requests)
        return len(requests) / (time.perf_counter() - start)
    finally:
        policy.shutdown()
        del policy  # while the interpreter is whole: AsyncLLM's finaliser fails at exit


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("agent", type=Path, help="save_pretrained agent directory (with persona_tokens.json)")
    parser.add_argument(
        "requests", type=Path, help="JSON list of requests (learners.agent.vllm_policy.write_requests)"
    )
    parser.add_argument("--limit", type=int, default=400, help="requests served with continuous batching")
    parser.add_argument("--dtype", default="float32", help="vLLM model dtype (bfloat16 on GPUs)")
    parser.add_argument("--out", type=Path, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    requests = read_requests(args.requests)[: args.limit]
    single = requests[::4]
    batched_rps = requests_per_second(args.agent, requests, dtype=args.dtype)
    single_rps = requests_per_second(args.agent, single, dtype=args.dtype, max_num_seqs=1)
    figures = {
        "requests": len(requests),
        "single_requests": len(single),
        "batched_rps": batched_rps,
        "single_rps": single_rps,
        "ratio": batched_rps / single_rps,
    }
    print(
        f"vLLM: continuous batching {batched_rps:.1f} req/s ({len(requests)} requests), max_num_seqs=1"
        f" {single_rps:.1f} req/s ({len(single)} requests): {figures['ratio']:.1f}x"
    )
    if args.out:
        args.out.write_text(json.dumps(figures) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
