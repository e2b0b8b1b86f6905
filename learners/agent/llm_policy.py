"""``LLMPolicy``: a fine-tuned causal LM acting through the Policy interface (transformers backend).

Scoring mode (default): every (request, valid action) pair becomes prompt ids + the action's target
ids (prompt.py, the training format), all pairs go through the model in ONE batched forward pass,
and a candidate's score is the log-likelihood of its target tokens (optionally divided by their
count). Rows are left-padded with explicit position ids, so every candidate ends at the last column
and only the last columns' logits are computed (``logits_to_keep``): memory grows with the longest
action, not the page. The chosen action is the argmax (``temperature=0``) or a draw from the softmax
of the scores at ``temperature``, seeded by ``ActRequest.seed``.

The page's ``search "<query>"`` entry is scored by the prefix ``search "`` alone (its probability is
that of any search), and when chosen the query is generated up to the closing quote.

Generation mode: the action text is generated and parsed strictly against the valid actions (exact
match after whitespace normalisation; never evaluated); text that matches none is returned as is with
``info["valid"] = False``, which the env counts as an invalid action.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from learners.agent.actions import SEARCH_PREFIX, SEARCH_TEMPLATE, is_offered
from learners.agent.policy import ActRequest, ActResult
from learners.agent.prompt import PromptFormat, encode_prompt, encode_target
from learners.agent.tokens import PERSONA_TOKENS_FILE, PersonaTokens

MAX_QUERY_TOKENS = 16


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
        max_pairs_per_forward: int | None = None,
    ) -> None:
        if mode not in ("score", "generate"):
            raise ValueError(f"LLMPolicy mode must be 'score' or 'generate', got {mode!r}")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.tokens = tokens
        self.fmt = fmt
        self.mode = mode
        self.temperature = temperature
        self.length_normalize = length_normalize
        self.max_new_tokens = max_new_tokens
        self.max_pairs_per_forward = max_pairs_per_forward
        self.device = next(model.parameters()).device
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    @classmethod
    def from_pretrained(cls, agent_dir: str | Path, device: str = "cpu", **kwargs) -> LLMPolicy:
        """Load an exported agent (train.py) or any causal LM directory / hub id (then no persona)."""
        model = AutoModelForCausalLM.from_pretrained(agent_dir).to(device)
        tokenizer = AutoTokenizer.from_pretrained(agent_dir)
        tokens = None
        fmt = kwargs.pop("fmt", None)
        directory = Path(agent_dir)
        if (directory / PERSONA_TOKENS_FILE).exists():
            tokens = PersonaTokens.load(directory)
            tokens.check(tokenizer)
        manifest = directory / "manifest.json"
        if fmt is None and manifest.exists():
            saved = json.loads(manifest.read_text())["config"]
            fmt = PromptFormat(saved["history_len"], saved["max_observation_tokens"])
        return cls(model, tokenizer, tokens, fmt or PromptFormat(), **kwargs)

    def prompt_ids(self, request: ActRequest) -> list[int]:
        return encode_prompt(
            self.tokenizer,
            request.observation,
            request.persona,
            request.goal,
            request.history,
            self.tokens,
            self.fmt,
        )

    def act(self, requests: Sequence[ActRequest]) -> list[ActResult]:
        if not requests:
            return []
        prompts = [self.prompt_ids(r) for r in requests]
        if self.mode == "generate":
            return self._act_generate(requests, prompts)
        return self._act_score(requests, prompts)

    # ---- scoring --------------------------------------------------------------------------------
    def _target(self, candidate: str) -> list[int]:
        if candidate == SEARCH_TEMPLATE:
            return encode_target(self.tokenizer, SEARCH_PREFIX)[:-1]  # no EOS: any query may follow
        return encode_target(self.tokenizer, candidate)

    def score(
        self, requests: Sequence[ActRequest], prompts: list[list[int]] | None = None
    ) -> list[np.ndarray]:
        """Per request, the score of each valid action (sum of target-token log-probs, or their mean)."""
        prompts = prompts if prompts is not None else [self.prompt_ids(r) for r in requests]
        pairs = [
            (i, p, self._target(c))
            for i, (r, p) in enumerate(zip(requests, prompts, strict=True))
            for c in r.valid_actions
        ]
        chunk = self.max_pairs_per_forward or len(pairs) or 1
        flat: list[float] = []
        for start in range(0, len(pairs), chunk):
            flat += self._pair_scores([(p, t) for _, p, t in pairs[start : start + chunk]])
        scores: list[np.ndarray] = [np.empty(len(r.valid_actions)) for r in requests]
        cursor = 0
        for i, r in enumerate(requests):
            scores[i] = np.asarray(flat[cursor : cursor + len(r.valid_actions)], dtype=np.float64)
            cursor += len(r.valid_actions)
        return scores

    @torch.inference_mode()
    def _pair_scores(self, pairs: list[tuple[list[int], list[int]]]) -> list[float]:
        longest_target = max(len(t) for _, t in pairs)
        logits = self._last_logits([p + t for p, t in pairs], longest_target + 1)
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        out = []
        for row, (_, target) in enumerate(pairs):
            n = len(target)
            # Column -1 predicts nothing; target token j sits at column -(n - j) and is predicted by the
            # logits one column earlier.
            picked = logprobs[row, -(n + 1) : -1].gather(
                -1, torch.tensor(target, device=logprobs.device)[:, None]
            )
            total = float(picked.sum())
            out.append(total / n if self.length_normalize else total)
        return out

    def _last_logits(self, sequences: list[list[int]], keep: int) -> torch.Tensor:
        """Logits of the last ``keep`` columns of left-padded ``sequences`` (batch, keep, vocab)."""
        width = max(len(s) for s in sequences)
        ids = torch.full((len(sequences), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(sequences), width), dtype=torch.long)
        for i, seq in enumerate(sequences):
            ids[i, width - len(seq) :] = torch.tensor(seq)
            mask[i, width - len(seq) :] = 1
        positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
        ids, mask, positions = ids.to(self.device), mask.to(self.device), positions.to(self.device)
        return self.model(
            input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=keep
        ).logits

    def _choose(self, scores: np.ndarray, seed: int) -> int:
        if self.temperature <= 0:
            return int(np.argmax(scores))
        z = scores / self.temperature
        p = np.exp(z - z.max())
        return int(np.random.default_rng(seed).choice(len(p), p=p / p.sum()))

    def _act_score(self, requests: Sequence[ActRequest], prompts: list[list[int]]) -> list[ActResult]:
        all_scores = self.score(requests, prompts)
        results: list[ActResult | None] = [None] * len(requests)
        searches = []
        for i, (r, scores) in enumerate(zip(requests, all_scores, strict=True)):
            if not r.valid_actions:
                raise ValueError(
                    f"request {i} has no valid actions: nothing to choose (the episode has ended)"
                )
            k = self._choose(scores, r.seed)
            tokens = sum(len(prompts[i]) + len(self._target(c)) for c in r.valid_actions)
            info = {"scores": scores.tolist(), "candidates": list(r.valid_actions)}
            results[i] = ActResult(r.valid_actions[k], float(scores[k]), tokens, info)
            if r.valid_actions[k] == SEARCH_TEMPLATE:
                searches.append(i)
        if searches:
            queries = self._generate(
                [prompts[i] + self._target(SEARCH_TEMPLATE) for i in searches],
                [requests[i].seed for i in searches],
                MAX_QUERY_TOKENS,
                stop='"',
            )
            for i, (query, n) in zip(searches, queries, strict=True):
                query = query.split('"', 1)[0].strip()
                old = results[i]
                action = f'{SEARCH_PREFIX}{query}"' if query else SEARCH_TEMPLATE
                results[i] = ActResult(action, old.logprob, old.tokens + n, {**old.info, "query_tokens": n})
        return results  # type: ignore[return-value]

    # ---- generation -----------------------------------------------------------------------------
    @torch.inference_mode()
    def _generate(
        self, prompts: list[list[int]], seeds: list[int], max_new: int, stop: str = "\n"
    ) -> list[tuple[str, int]]:
        """Decode each prompt until EOS or ``stop`` appears (argmax or seeded sampling); (text, tokens)."""
        rngs = [np.random.default_rng(s) for s in seeds]
        generated: list[list[int]] = [[] for _ in prompts]
        active = list(range(len(prompts)))
        for _ in range(max_new):
            if not active:
                break
            logits = self._last_logits([prompts[i] + generated[i] for i in active], 1)[:, -1].float()
            still = []
            for row, i in enumerate(active):
                token = self._next_token(logits[row], rngs[i])
                if token == self.tokenizer.eos_token_id:
                    continue
                generated[i].append(token)
                if stop not in self.tokenizer.decode(generated[i], skip_special_tokens=True):
                    still.append(i)
            active = still
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
