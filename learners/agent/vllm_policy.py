"""``VLLMPolicy``, the vllm backend: the agent's action scoring on vLLM's async engine (continuous batching).

Same contract and numbers as the transformers backend (learners/agent/llm_policy.py): a candidate's
score is learners/agent/scoring.py's rule (``candidate_scores``: item actions in two levels) on the
log-probabilities of its target ids (the action and EOS) after the prompt's token ids
(learners/agent/prompt.py, the training format), or its mean. Every distinct prefix of a
request's targets (the candidate trie's nodes, the empty one included) is one engine request: the
prompt and that prefix, one decoding step, asking for the log-probabilities of exactly the ids the
candidates continue with (``logprob_token_ids``). Those requests share the prompt through vLLM's
prefix cache, with every other in-flight request on the same page too (the page-first prompt), and
vLLM batches them all; scoring the whole candidate through ``prompt_logprobs`` instead would run the
whole prompt again for every candidate, since vLLM skips reading the prefix cache for such requests.
Persona tokens are normal added tokens (special=False) and prompts go in as token ids, so vLLM's
special-token skipping never touches them. What is scored (the valid actions and the searches the page
suggests), the rule that reads the token log-probabilities, and how the action is picked are
learners/agent/scoring.py's, as in the transformers backend; an agent whose manifest names another
scoring rule is refused.

On CPU, vLLM lives in its own venv (engine/scripts/install_vllm_cpu.sh -> .venv-vllm); on GPU nodes
install the ``vllm`` extra. ``python -m learners.agent.vllm_policy`` scores a JSON file of requests
(the cross-backend test uses it); vLLM's engine core is a spawned process, hence the ``__main__`` guard.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import itertools
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from learners.agent.packing import CandidateTrie
from learners.agent.policy import ActRequest, ActResult
from learners.agent.prompt import encode_target, request_prompt_ids, saved_prompt_format
from learners.agent.scoring import (
    candidate_scores,
    check_scoring_rule,
    item_groups,
    model_request,
    pick,
    read_code_bias,
    read_kind_bias,
    read_price_bias,
    read_row_choice,
    scored_candidates,
)
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
        ids_per_request: int | None = None,
        kind_bias: Mapping[str, float] | None = None,
        price_bias: Mapping[int | None, Mapping[str, Mapping[str, float]]] | None = None,
        row_choice: Mapping[int | None, Sequence[float]] | None = None,
        code_bias: Mapping[int | None, Mapping[str, float]] | None = None,
        **engine_options: Any,
    ) -> None:
        """``ids_per_request``: most next-token ids scored by one engine request (default and upper
        bound: vLLM's ``MAX_LOGPROB_TOKEN_IDS``); ``kind_bias``: the agent's calibration
        (calibration.py), ``code_bias`` its per-code biases on top (engine/rollout_calibration.py),
        ``price_bias`` its per-code biases on each price cell's pages (price_response.py) and
        ``row_choice`` its per-code choice among a listing's rows (row_choice.py), each read from its
        directory when not given; ``engine_options`` go to ``AsyncEngineArgs``."""
        from transformers import AutoTokenizer
        from vllm import AsyncEngineArgs
        from vllm.platforms import current_platform
        from vllm.sampling_params import MAX_LOGPROB_TOKEN_IDS
        from vllm.v1.engine.async_llm import AsyncLLM

        ids_per_request = MAX_LOGPROB_TOKEN_IDS if ids_per_request is None else ids_per_request
        if not 1 <= ids_per_request <= MAX_LOGPROB_TOKEN_IDS:
            raise ValueError(f"ids_per_request must be in 1..{MAX_LOGPROB_TOKEN_IDS}, got {ids_per_request}")
        self.ids_per_request = ids_per_request
        directory = Path(agent_dir)
        self.scoring_rule = check_scoring_rule(directory)
        self.kind_bias = dict(read_kind_bias(directory) if kind_bias is None else kind_bias)
        self.price_bias = read_price_bias(directory) if price_bias is None else dict(price_bias)
        self.row_choice = read_row_choice(directory) if row_choice is None else dict(row_choice)
        self.code_bias = read_code_bias(directory) if code_bias is None else dict(code_bias)
        self.tokenizer = AutoTokenizer.from_pretrained(directory)
        self.tokens = agent_persona_tokens(directory, self.tokenizer)
        self.fmt = saved_prompt_format(directory)
        self.temperature = temperature
        self.length_normalize = length_normalize
        # The CPU build reserves this much KV cache (GiB); its default does not fit small boxes.
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        if current_platform.is_cpu():
            # The prefix cache shares whole blocks only; the CPU build's default (128 tokens) would
            # leave most of a short page's prompt unshared. 32 is the smallest its attention takes.
            engine_options.setdefault("block_size", 32)
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

    @property
    def biases(self) -> tuple:
        """What ``pick`` and ``action_scores`` add to the model's scores, in their argument order:
        kind, price-cell, row-choice and per-code biases."""
        return self.kind_bias, self.price_bias, self.row_choice, self.code_bias

    def prompt_ids(self, request: ActRequest) -> list[int]:
        """The request's prompt ids, of the page as the model reads it (scoring.py's ``model_request``)."""
        return request_prompt_ids(
            self.tokenizer, model_request(request, self.price_bias), self.tokens, self.fmt
        )

    async def _run(self, token_ids: list[int], params: Any) -> Any:
        from vllm.inputs import TokensPrompt

        final = None
        async for output in self.engine.generate(
            TokensPrompt(prompt_token_ids=token_ids), params, f"simpersona-{next(self._ids)}"
        ):
            final = output
        return final

    async def _next_logprobs(self, context: list[int], ids: list[int]) -> dict[int, float]:
        """Log-probabilities of ``ids`` as the token after ``context``: one decoding step per
        ``ids_per_request`` of them, all in flight at once."""
        from vllm import SamplingParams

        step = self.ids_per_request
        parts = [ids[lo : lo + step] for lo in range(0, len(ids), step)]
        outputs = await asyncio.gather(
            *(
                self._run(context, SamplingParams(max_tokens=1, temperature=0.0, logprob_token_ids=part))
                for part in parts
            )
        )
        return {
            token: output.outputs[0].logprobs[0][token].logprob
            for part, output in zip(parts, outputs, strict=True)
            for token in part
        }

    async def _token_logprobs(self, prompt: list[int], targets: list[list[int]]) -> np.ndarray:
        """The log-probability of each target token after ``prompt`` (targets in order, each one's
        tokens in order): one engine request per node of the targets' trie
        (learners/agent/packing.py; the root is the prompt), all at once."""
        trie = CandidateTrie.build(targets)
        following: dict[int, set[int]] = {}
        for node, token in zip(trie.pick_node, trie.pick_id, strict=True):
            following.setdefault(node, set()).add(token)

        def context(node: int) -> list[int]:
            if node < 0:
                return prompt
            # Parents are numbered before their children, so index order is the path's order.
            return prompt + [trie.ids[j] for j in trie.ancestors[node].nonzero().flatten().tolist()]

        nodes = list(following)
        steps = await asyncio.gather(*(self._next_logprobs(context(n), sorted(following[n])) for n in nodes))
        found = dict(zip(nodes, steps, strict=True))
        return np.array(
            [found[node][token] for node, token in zip(trie.pick_node, trie.pick_id, strict=True)],
            dtype=np.float64,
        )

    async def _act_one(self, index: int, request: ActRequest) -> ActResult:
        if not request.valid_actions:
            raise ValueError(
                f"request {index} has no valid actions: nothing to choose (the episode has ended)"
            )
        prompt = self.prompt_ids(request)
        candidates = scored_candidates(request)
        targets = [encode_target(self.tokenizer, c) for c in candidates]
        logprobs = await self._token_logprobs(prompt, targets)
        groups = item_groups(self.tokenizer, candidates, targets)
        scores = candidate_scores(logprobs, [len(t) for t in targets], groups, self.length_normalize)
        action, score, per_action = pick(request, candidates, scores, self.temperature, *self.biases)
        tokens = len(prompt) + sum(map(len, targets))
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
        """Stop the engine, and end ``act``'s private loop with the engine's tasks still on it."""
        self.engine.shutdown()
        if self._loop is not None:
            pending = asyncio.all_tasks(self._loop)
            for task in pending:
                task.cancel()
            self._loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            self._loop.close()
            self._loop = None


def write_requests(path: Path, requests: Sequence[ActRequest]) -> None:
    """Requests as a JSON list of their fields: how they cross into the vLLM venv's process."""
    path.write_text(json.dumps([dataclasses.asdict(r) for r in requests]), encoding="utf-8")


def read_requests(path: Path) -> list[ActRequest]:
    """The requests ``write_requests`` wrote (unknown fields are an error, not silently dropped)."""
    fields = {f.name for f in dataclasses.fields(ActRequest)}
    requests = []
    for i, item in enumerate(json.loads(path.read_text(encoding="utf-8"))):
        unknown = set(item) - fields
        if unknown:
            raise ValueError(f"{path}: request {i} has unknown field(s) {sorted(unknown)}")
        requests.append(
            ActRequest(
                **{
                    **item,
                    "valid_actions": tuple(item["valid_actions"]),
                    "history": tuple(item.get("history", ())),
                }
            )
        )
    return requests


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Score shopping requests with an exported agent on vLLM.")
    parser.add_argument("agent", type=Path, help="save_pretrained agent directory (with persona_tokens.json)")
    parser.add_argument("requests", type=Path, help="JSON list of ActRequest fields")
    parser.add_argument(
        "out", type=Path, help="JSON file to write: one {action, logprob, scores, scoring} per request"
    )
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    parser.add_argument(
        "--ids-per-request",
        type=int,
        help="most next-token ids one engine request scores (default: vLLM's bound)",
    )
    args = parser.parse_args(argv)
    try:
        requests = read_requests(args.requests)
    except ValueError as err:
        raise SystemExit(str(err)) from err
    policy = VLLMPolicy(args.agent, temperature=args.temperature, ids_per_request=args.ids_per_request)
    rule = policy.scoring_rule
    try:
        results = policy.act(requests)
    finally:
        policy.shutdown()
        del policy  # while the interpreter is whole: AsyncLLM's finaliser fails at exit
    payload = [
        {
            "action": r.action,
            "logprob": r.logprob,
            "scores": r.info["scores"],
            "tokens": r.tokens,
            "scoring": rule,
        }
        for r in results
    ]
    args.out.write_text(json.dumps(payload) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
