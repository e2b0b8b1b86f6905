"""``LLMPolicy``: a fine-tuned causal LM acting through the Policy interface (transformers backend).

Scoring mode (default): a candidate's score is the log-likelihood of its target ids (prompt.py, the
training format) after the request's prompt ids, optionally divided by their count. The prompt is
shared by all of a request's candidates, so it runs once. Requests are sorted by prompt length and cut
into groups that waste little on padding (``length_groups``); per group, the prompts but their last
token go through the model in one right-padded forward pass that keeps the KV cache, then each
request's last prompt token and all its candidates' tokens (each but its last, which is only ever
predicted) are packed into one row and run on top of that cache in one more pass. A 4-D additive mask
lets a candidate token see its prompt, the shared last prompt token and the earlier tokens of its own
candidate only, and positions restart after the prompt for every candidate, so each score equals
running prompt + candidate alone. The cache is never copied per candidate: memory grows with the
prompts plus the candidates' tokens, not their product. The chosen action is the argmax
(``temperature=0``) or a draw from the softmax of the scores at ``temperature``, seeded by
``ActRequest.seed``.

The page's ``search "<query>"`` entry is scored by the prefix ``search "`` alone (its probability is
that of any search), and when chosen the query is generated up to the closing quote (an empty query
falls back to an id the page names, random_policy.py, since the env rejects the bare template).

Generation mode: the action text is decoded on top of the prompt's KV cache (one token per forward
pass for the whole batch) and parsed strictly against the valid actions (exact match after whitespace
normalisation; never evaluated); text that matches none is returned as is with ``info["valid"] =
False``, which the env counts as an invalid action.

The packed candidate pass passes its own 4-D mask, which the eager and SDPA attention implementations
(transformers' defaults) honour; flash-attention kernels do not take such masks.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    DynamicCache,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from envs.storefront import MAX_QUERY_CHARS
from learners.agent.actions import SEARCH_PREFIX, SEARCH_TEMPLATE, is_offered
from learners.agent.policy import ActRequest, ActResult
from learners.agent.prompt import PromptFormat, encode_targets, request_prompt_ids, saved_prompt_format
from learners.agent.random_policy import fill_search, page_queries
from learners.agent.tokens import PersonaTokens, agent_persona_tokens

MAX_QUERY_TOKENS = 16
PADDING_SLACK = 1.25
"""A forward pass may hold at most this many padded tokens per real prompt token; requests are sorted
by prompt length and split where the next one would exceed it (padding costs as much as tokens)."""
TARGET_CACHE = 65536
"""Distinct candidate texts whose target ids a policy keeps (pages repeat their actions)."""


class LLMPolicy:
    """A causal LM choosing among valid actions (``mode="score"``) or generating them (``"generate"``)."""

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        tokens: PersonaTokens | None = None,
        fmt: PromptFormat = PromptFormat(),
        mode: str = "score",
        temperature: float = 1.0,
        length_normalize: bool = False,
        max_new_tokens: int = 24,
        max_requests_per_forward: int | None = None,
    ) -> None:
        if mode not in ("score", "generate"):
            raise ValueError(f"LLMPolicy mode must be 'score' or 'generate', got {mode!r}")
        if max_requests_per_forward is not None and max_requests_per_forward < 1:
            raise ValueError(f"max_requests_per_forward must be >= 1 or None, got {max_requests_per_forward}")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.tokens = tokens
        self.fmt = fmt
        self.mode = mode
        self.temperature = temperature
        self.length_normalize = length_normalize
        self.max_new_tokens = max_new_tokens
        self.max_requests_per_forward = max_requests_per_forward
        self.device = next(model.parameters()).device
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self._targets: dict[str, list[int]] = {}
        # transformers renamed ``past_key_values`` to ``cache`` (5.x); the cache is filled in place.
        forward_args = inspect.signature(model.forward).parameters
        self._cache_arg = "cache" if "cache" in forward_args else "past_key_values"

    @classmethod
    def from_pretrained(cls, agent_dir: str | Path, device: str = "cpu", **kwargs) -> LLMPolicy:
        """Load an exported agent (train.py) or any causal LM directory / hub id (then no persona)."""
        model = AutoModelForCausalLM.from_pretrained(agent_dir).to(device)
        tokenizer = AutoTokenizer.from_pretrained(agent_dir)
        fmt = kwargs.pop("fmt", None) or saved_prompt_format(agent_dir)
        tokens = agent_persona_tokens(agent_dir, tokenizer)
        return cls(model, tokenizer, tokens, fmt, **kwargs)

    def prompt_ids(self, request: ActRequest) -> list[int]:
        return request_prompt_ids(self.tokenizer, request, self.tokens, self.fmt)

    def act(self, requests: Sequence[ActRequest]) -> list[ActResult]:
        if not requests:
            return []
        prompts = [self.prompt_ids(r) for r in requests]
        if self.mode == "generate":
            return self._act_generate(requests, prompts)
        return self._act_score(requests, prompts)

    # ---- scoring --------------------------------------------------------------------------------
    def targets(self, candidates: Sequence[str]) -> list[list[int]]:
        """Target ids of each candidate as scored: the action and EOS, or for the search template the
        prefix ``search "`` without EOS (any query may follow). Cached per text."""
        texts = [SEARCH_PREFIX if c == SEARCH_TEMPLATE else c for c in candidates]
        missing = list(dict.fromkeys(t for t in texts if t not in self._targets))
        if missing:
            if len(self._targets) + len(missing) > TARGET_CACHE:
                self._targets.clear()
            for text, ids in zip(missing, encode_targets(self.tokenizer, missing), strict=True):
                self._targets[text] = ids[:-1] if text == SEARCH_PREFIX else ids
        return [self._targets[t] for t in texts]

    def score(
        self, requests: Sequence[ActRequest], prompts: list[list[int]] | None = None
    ) -> list[np.ndarray]:
        """Per request, the score of each valid action (sum of target-token log-probs, or their mean)."""
        prompts = prompts if prompts is not None else [self.prompt_ids(r) for r in requests]
        targets = [self.targets(r.valid_actions) for r in requests]
        scores: list[np.ndarray] = [np.empty(0)] * len(requests)
        for group in length_groups([len(p) for p in prompts], self.max_requests_per_forward):
            found = self._candidate_scores([prompts[i] for i in group], [targets[i] for i in group])
            for i, values in zip(group, found, strict=True):
                scores[i] = values
        return scores

    @torch.inference_mode()
    def _candidate_scores(self, prompts: list[list[int]], targets: list[list[list[int]]]) -> list[np.ndarray]:
        cache, context_mask = self._prefill([p[:-1] for p in prompts])
        packed = _pack_candidates(prompts, targets)
        attend = torch.cat([context_mask[:, None, :].expand(-1, packed.width, -1), packed.attend], dim=2)
        dtype = self.model.dtype
        mask = torch.zeros(attend.shape, dtype=dtype).masked_fill_(~attend, torch.finfo(dtype).min)
        logits = self.model(
            input_ids=packed.ids.to(self.device),
            attention_mask=mask[:, None].to(self.device),
            position_ids=packed.positions.to(self.device),
            use_cache=True,
            **{self._cache_arg: cache},
        ).logits
        rows, cols, ids = (x.to(self.device) for x in packed.picks)
        picked = logits[rows, cols].float()
        logp = (picked.gather(1, ids[:, None])[:, 0] - torch.logsumexp(picked, dim=-1)).double().cpu()
        lengths = [len(t) for ts in targets for t in ts]
        totals = torch.zeros(len(lengths), dtype=torch.float64).index_add_(0, packed.pick_owner, logp)
        if self.length_normalize:
            totals /= torch.tensor(lengths, dtype=torch.float64)
        bounds = np.cumsum([0] + [len(ts) for ts in targets])
        values = totals.numpy()
        return [values[a:b].copy() for a, b in zip(bounds[:-1], bounds[1:], strict=True)]

    def _prefill(self, contexts: list[list[int]]) -> tuple[DynamicCache, torch.Tensor]:
        """Run right-padded ``contexts`` once; (KV cache, which cached columns are real (batch, width)).

        Under causal attention a real token never sees the padding after it, so the pass needs no
        padding mask and keeps the fast causal attention kernel; later passes mask the padding."""
        width = max(len(c) for c in contexts)
        ids = torch.full((len(contexts), width), self.pad_id, dtype=torch.long)
        for i, context in enumerate(contexts):
            ids[i, : len(context)] = torch.tensor(context, dtype=torch.long)
        real = torch.arange(width)[None, :] < torch.tensor([len(c) for c in contexts])[:, None]
        cache = DynamicCache(config=self.model.config)
        if width > 0:
            self.model(
                input_ids=ids.to(self.device),
                attention_mask=torch.ones_like(ids).to(self.device),
                use_cache=True,
                logits_to_keep=1,
                **{self._cache_arg: cache},
            )
        return cache, real

    def _choose(self, scores: np.ndarray, seed: int) -> int:
        if self.temperature <= 0:
            return int(np.argmax(scores))
        z = scores / self.temperature
        p = np.exp(z - z.max())
        return int(np.random.default_rng(seed).choice(len(p), p=p / p.sum()))

    def _act_score(self, requests: Sequence[ActRequest], prompts: list[list[int]]) -> list[ActResult]:
        for i, r in enumerate(requests):
            if not r.valid_actions:
                raise ValueError(
                    f"request {i} has no valid actions: nothing to choose (the episode has ended)"
                )
        all_scores = self.score(requests, prompts)
        results: list[ActResult] = []
        searches = []
        for i, (r, scores) in enumerate(zip(requests, all_scores, strict=True)):
            k = self._choose(scores, r.seed)
            tokens = len(prompts[i]) + sum(len(t) for t in self.targets(r.valid_actions))
            info = {"scores": scores.tolist(), "candidates": list(r.valid_actions)}
            results.append(ActResult(r.valid_actions[k], float(scores[k]), tokens, info))
            if r.valid_actions[k] == SEARCH_TEMPLATE:
                searches.append(i)
        if searches:
            prefix = self.targets([SEARCH_TEMPLATE])[0]
            queries = self._generate(
                [prompts[i] + prefix for i in searches],
                [requests[i].seed for i in searches],
                MAX_QUERY_TOKENS,
                stop='"',
            )
            for i, (query, n) in zip(searches, queries, strict=True):
                query = query.split('"', 1)[0].strip()[:MAX_QUERY_CHARS]
                old = results[i]
                # Trace replay reaches products by searching their ids, so generated queries tend to
                # name products of the training storefronts; only a query the page suggests is kept.
                grounded = query in page_queries(requests[i].observation)
                info = {**old.info, "query_tokens": n, "query_fallback": not grounded}
                if grounded:
                    action = f'{SEARCH_PREFIX}{query}"'
                else:  # search for something the page names (the env rejects the bare template)
                    rng = np.random.default_rng(requests[i].seed)
                    action = fill_search(SEARCH_TEMPLATE, requests[i].observation, rng)
                results[i] = ActResult(action, old.logprob, old.tokens + n, info)
        return results

    # ---- generation -----------------------------------------------------------------------------
    @torch.inference_mode()
    def _generate(
        self, prompts: list[list[int]], seeds: list[int], max_new: int, stop: str = "\n"
    ) -> list[tuple[str, int]]:
        """Decode each prompt until EOS or ``stop`` appears (argmax or seeded sampling); (text, tokens).
        The whole batch steps together on the prompts' KV cache; finished rows feed padding."""
        rngs = [np.random.default_rng(s) for s in seeds]
        generated: list[list[int]] = [[] for _ in prompts]
        active = list(range(len(prompts)))
        cache, mask = self._prefill([p[:-1] for p in prompts])
        mask = mask.long()
        fed = [p[-1] for p in prompts]
        last_position = torch.tensor([len(p) - 1 for p in prompts])
        for step in range(max_new):
            mask = torch.cat([mask, torch.ones((len(prompts), 1), dtype=mask.dtype)], dim=1)
            logits = (
                self.model(
                    input_ids=torch.tensor(fed, device=self.device)[:, None],
                    attention_mask=mask.to(self.device),
                    position_ids=(last_position + step)[:, None].to(self.device),
                    use_cache=True,
                    **{self._cache_arg: cache},
                )
                .logits[:, -1]
                .float()
            )
            fed = [self.pad_id] * len(prompts)
            still = []
            for i in active:
                token = self._next_token(logits[i], rngs[i])
                if token == self.tokenizer.eos_token_id:
                    continue
                generated[i].append(token)
                fed[i] = token
                if stop not in self.tokenizer.decode(generated[i], skip_special_tokens=True):
                    still.append(i)
            active = still
            if not active:
                break
        return [
            (self.tokenizer.decode(g, skip_special_tokens=True), len(p) + len(g))
            for p, g in zip(prompts, generated, strict=True)
        ]

    def _next_token(self, logits: torch.Tensor, rng: np.random.Generator) -> int:
        if self.temperature <= 0:
            return int(torch.argmax(logits))
        p = torch.softmax(logits / self.temperature, dim=-1).double().cpu().numpy()
        return int(rng.choice(len(p), p=p / p.sum()))

    def _act_generate(self, requests: Sequence[ActRequest], prompts: list[list[int]]) -> list[ActResult]:
        texts = self._generate(prompts, [r.seed for r in requests], self.max_new_tokens)
        results = []
        for r, (text, n) in zip(requests, texts, strict=True):
            action = " ".join(text.split("\n", 1)[0].split())
            valid = is_offered(action, r.valid_actions)
            results.append(ActResult(action, None, n, {"valid": valid, "generated": text}))
        return results


def length_groups(lengths: Sequence[int], max_size: int | None = None) -> list[list[int]]:
    """Indices of ``lengths`` sorted by length and cut into groups (of at most ``max_size``) whose
    padded size, group size x longest, stays within ``PADDING_SLACK`` x their total length."""
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    groups: list[list[int]] = []
    total = 0
    for i in order:
        group = groups[-1] if groups else []
        full = max_size is not None and len(group) >= max_size
        padded = (len(group) + 1) * lengths[i]
        if not group or full or padded > PADDING_SLACK * (total + lengths[i]):
            groups.append([i])
            total = lengths[i]
        else:
            group.append(i)
            total += lengths[i]
    return groups


@dataclass(frozen=True)
class PackedCandidates:
    """One row per request: the prompt's last token, then every candidate's tokens but its last."""

    ids: torch.Tensor
    """Token ids (requests, width), padded on the right."""
    positions: torch.Tensor
    """Position ids: the prompt's last token at prompt length - 1, a candidate's token k at prompt
    length + k."""
    attend: torch.Tensor
    """(requests, width, width) bool: every token sees the prompt's last token and the earlier tokens
    of its own candidate (padding sees itself, so no softmax row is empty)."""
    picks: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
    """(row, column predicting it, id) of every candidate token."""
    pick_owner: torch.Tensor
    """Index of the candidate (in request-major order) each pick belongs to."""

    @property
    def width(self) -> int:
        return self.ids.shape[1]


def _pack_candidates(prompts: list[list[int]], targets: list[list[list[int]]]) -> PackedCandidates:
    rows = [
        [prompt[-1]] + [tok for t in ts for tok in t[:-1]]
        for prompt, ts in zip(prompts, targets, strict=True)
    ]
    width = max(len(r) for r in rows)
    ids = torch.zeros((len(rows), width), dtype=torch.long)
    positions = torch.zeros((len(rows), width), dtype=torch.long)
    # Segment -1: padding; 0: the shared last prompt token; c + 1: candidate c.
    segment = torch.full((len(rows), width), -1, dtype=torch.long)
    pick_row, pick_col, pick_id, pick_owner = [], [], [], []
    candidate = 0
    for i, (prompt, ts) in enumerate(zip(prompts, targets, strict=True)):
        ids[i, : len(rows[i])] = torch.tensor(rows[i], dtype=torch.long)
        positions[i, 0] = len(prompt) - 1
        segment[i, 0] = 0
        cursor = 1
        for t in ts:
            n = len(t) - 1
            positions[i, cursor : cursor + n] = torch.arange(len(prompt), len(prompt) + n)
            segment[i, cursor : cursor + n] = candidate + 1
            pick_row += [i] * len(t)
            pick_col += [0, *range(cursor, cursor + n)]
            pick_id += t
            pick_owner += [candidate] * len(t)
            cursor += n
            candidate += 1
    causal = torch.ones((width, width), dtype=torch.bool).tril()
    same = segment[:, :, None] == segment[:, None, :]
    shared = (segment[:, None, :] == 0) & (segment[:, :, None] >= 0)
    attend = ((same | shared) & causal) | torch.eye(width, dtype=torch.bool)
    picks = (
        torch.tensor(pick_row, dtype=torch.long),
        torch.tensor(pick_col, dtype=torch.long),
        torch.tensor(pick_id, dtype=torch.long),
    )
    return PackedCandidates(ids, positions, attend, picks, torch.tensor(pick_owner, dtype=torch.long))
