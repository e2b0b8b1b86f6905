"""vLLM backend: the agent's action scoring on vLLM's async engine (continuous batching).

Same contract and numbers as the transformers backend (learners/agent/llm_policy.py): every (request,
valid action) pair is the prompt's token ids (learners/agent/prompt.py, the training format) followed
by the action's target ids, and a candidate's score is the sum (or mean) of its target tokens' log-
probabilities, read from vLLM's prompt logprobs. Pairs are submitted as separate engine requests, so
vLLM batches them with every other in-flight request (and shares the prompt prefix through its prefix
cache, which with the page-first prompt also holds every page that other buyers saw). Persona tokens
are normal added tokens (special=False) and prompts go in as token ids, so vLLM's special-token
skipping never touches them. What is scored (the valid actions and the searches the page suggests)
and how the action is picked is learners/agent/scoring.py's, as in the transformers backend.

On CPU, vLLM lives in its own venv (engine/scripts/install_vllm_cpu.sh -> .venv-vllm); on GPU nodes
install the ``vllm`` extra. ``python -m engine.vllm_backend`` scores a JSON file of requests (the
cross-backend test uses it); vLLM's engine core is a spawned process, hence the ``__main__`` guard.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import itertools
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from learners.agent.policy import ActRequest, ActResult
from learners.agent.prompt import encode_target, request_prompt_ids, saved_prompt_format
from learners.agent.scoring import pick, scored_candidates
from learners.agent.tokens import agent_persona_tokens


class VLLMPolicy:
    """An exported agent served by ``vllm``'s ``AsyncLLM``; ``act_async`` for servers, ``act`` for scripts."""

    def __init__(
        self,
        agent_dir: str | Path,
        temperature: float = 1.0,
        length_normalize: bool = False,
        max_model_len: int = 2048,
        dtype: str = "float32",
        **engine_options: Any,
    ) -> None:
        from transformers import AutoTokenizer
        from vllm import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        directory = Path(agent_dir)
        self.tokenizer = AutoTokenizer.from_pretrained(directory)
        self.tokens = agent_persona_tokens(directory, self.tokenizer)
        self.fmt = saved_prompt_format(directory)
        self.temperature = temperature
        self.length_normalize = length_normalize
        # The CPU build reserves this much KV cache (GiB); its default does not fit small boxes.
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        args = AsyncEngineArgs(
            model=str(directory),
            dtype=dtype,
            max_model_len=max_model_len,
            enforce_eager=True,
            **engine_options,
        )
        self.engine = AsyncLLM.from_engine_args(args)
        self._ids = itertools.count()
        self._loop: asyncio.AbstractEventLoop | None = None

    def prompt_ids(self, request: ActRequest) -> list[int]:
        return request_prompt_ids(self.tokenizer, request, self.tokens, self.fmt)

    async def _run(self, token_ids: list[int], params: Any) -> Any:
        from vllm.inputs import TokensPrompt

        final = None
        async for output in self.engine.generate(
            TokensPrompt(prompt_token_ids=token_ids), params, f"simpersona-{next(self._ids)}"
        ):
            final = output
        return final

    async def _score_pair(self, prompt: list[int], target: list[int]) -> float:
        from vllm import SamplingParams

        ids = prompt + target
        output = await self._run(ids, SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=1))
        # prompt_logprobs[j] holds the log-probability of token j given tokens < j (None for j = 0).
        picked = [output.prompt_logprobs[j][ids[j]].logprob for j in range(len(prompt), len(ids))]
        total = float(sum(picked))
        return total / len(target) if self.length_normalize else total

    async def _act_one(self, index: int, request: ActRequest) -> ActResult:
        if not request.valid_actions:
            raise ValueError(
                f"request {index} has no valid actions: nothing to choose (the episode has ended)"
            )
        prompt = self.prompt_ids(request)
        candidates = scored_candidates(request)
        targets = [encode_target(self.tokenizer, c) for c in candidates]
        scores = np.asarray(await asyncio.gather(*(self._score_pair(prompt, t) for t in targets)))
        action, score, per_action = pick(request, candidates, scores, self.temperature)
        tokens = sum(len(prompt) + len(t) for t in targets)
        info: dict[str, Any] = {"scores": per_action.tolist(), "candidates": list(request.valid_actions)}
        return ActResult(action, score, tokens, info)

    async def act_async(self, requests: Sequence[ActRequest]) -> list[ActResult]:
        """Answer all requests concurrently; vLLM batches their candidates with other callers'."""
        return list(await asyncio.gather(*(self._act_one(i, r) for i, r in enumerate(requests))))

    def act(self, requests: Sequence[ActRequest]) -> list[ActResult]:
        """Synchronous ``act`` for scripts (one private event loop, reused across calls)."""
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
        return self._loop.run_until_complete(self.act_async(requests))

    def shutdown(self) -> None:
        self.engine.shutdown()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Score shopping requests with an exported agent on vLLM.")
    parser.add_argument("agent", type=Path, help="save_pretrained agent directory (with persona_tokens.json)")
    parser.add_argument("requests", type=Path, help="JSON list of ActRequest fields")
    parser.add_argument(
        "out", type=Path, help="JSON file to write: one {action, logprob, scores} per request"
    )
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    args = parser.parse_args(argv)
    fields = {f.name for f in dataclasses.fields(ActRequest)}
    raw = json.loads(args.requests.read_text(encoding="utf-8"))
    requests = []
    for i, item in enumerate(raw):
        unknown = set(item) - fields
        if unknown:
            raise SystemExit(f"{args.requests}: request {i} has unknown field(s) {sorted(unknown)}")
        requests.append(
            ActRequest(
                **{
                    **item,
                    "valid_actions": tuple(item["valid_actions"]),
                    "history": tuple(item.get("history", ())),
                }
            )
        )
    policy = VLLMPolicy(args.agent, temperature=args.temperature)
    try:
        results = policy.act(requests)
    finally:
        policy.shutdown()
        del policy  # while the interpreter is whole: AsyncLLM's finaliser fails at exit
    payload = [
        {"action": r.action, "logprob": r.logprob, "scores": r.info["scores"], "tokens": r.tokens}
        for r in results
    ]
    args.out.write_text(json.dumps(payload) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
