"""``LLMPolicy``: a fine-tuned causal LM acting through the Policy interface (transformers backend).

Scoring mode (default): a candidate's score is the log-likelihood of its target ids (prompt.py, the
training format) after the request's prompt ids, read by scoring.py's rule (``SCORING_RULE``: item
actions in two levels, template then the page's items), optionally divided by their count. Requests are
sorted by prompt length and cut into groups that waste little on padding; per group, two forward
passes (packing.py): the group's distinct pages, each once, whose KV cache rows are copied to every
buyer on that page; then one packed row per request on that cache: the buyer's own prompt tokens and
the trie of its candidates' tokens, under a 4-D mask that gives each score exactly the value of
running prompt + candidate alone. The vocabulary projection runs only where a candidate token is
predicted. Memory grows with the pages, the buyers' own tokens and the tries, not with candidates x
prompt. What is scored, and how the action is picked, is scoring.py's: the valid actions and the
searches the page suggests; an item action (``open product P``) as its template's log-probability plus
its id's log-softmax among the page's items of that template, which the trie's per-token
log-probabilities give with no extra pass; the search template scores as the total probability of
those searches; the pick is policy.py's ``choose``, the argmax (``temperature=0``) or a draw from the
softmax of the scores at ``temperature``, seeded by ``ActRequest.seed``. So the model picks its query
among the grounded ones instead of decoding free text that may name a product of another storefront.

Generation mode: the action text is decoded on top of the prompt's KV cache (one token per forward
pass for the whole batch) and parsed strictly against the valid actions (exact match after whitespace
normalisation; never evaluated); text that matches none is returned as is with ``info["valid"] =
False``, which the env counts as an invalid action.

The packed pass passes its own 4-D mask, which the eager and SDPA attention implementations
(transformers' defaults) honour; flash-attention kernels do not take such masks. It reads hidden
states from the model's decoder and applies its output embeddings, which is the whole logit
computation for Llama/Qwen-style models (not for ones that post-process logits, e.g. soft-capping).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
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

from learners.agent.actions import is_offered
from learners.agent.packing import NO_CANDIDATES, CandidateTrie, PackedSuffixes, length_groups, pack_suffixes
from learners.agent.policy import ActRequest, ActResult
from learners.agent.prompt import PromptFormat, encode_buyer, encode_page, encode_targets, saved_prompt_format
from learners.agent.scoring import (
    SCORING_RULE,
    ItemGroups,
    action_scores,
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
from learners.agent.tokens import PersonaTokens, agent_persona_tokens

TARGET_CACHE = 65536
"""Distinct candidate texts whose target ids a policy keeps (pages repeat their actions)."""
PAGE_CACHE = 4096
"""Distinct pages whose prompt ids, and candidate sets whose tries, a policy keeps (buyers of a
storefront see the same pages)."""

Prompt = tuple[list[int], list[int]]
"""A request's prompt ids in two parts: the page's (shared by buyers on that page), the buyer's own."""


@dataclass
class PrefillStats:
    """Prompt tokens a policy was asked to run, and those it ran (fewer when buyers share a page)."""

    requested: int = 0
    run: int = 0


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
        kind_bias: Mapping[str, float] | None = None,
        price_bias: Mapping[int | None, Mapping[str, Mapping[str, float]]] | None = None,
        row_choice: Mapping[int | None, Sequence[float]] | None = None,
        code_bias: Mapping[int | None, Mapping[str, float]] | None = None,
    ) -> None:
        """``kind_bias``: the agent's calibration (calibration.py), added to each action kind's scores;
        ``code_bias``: its per-code biases on top (engine/rollout_calibration.py);
        ``price_bias``: its per-code biases on each price cell's pages (price_response.py);
        ``row_choice``: its per-code choice among a listing's rows (row_choice.py)."""
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
        self.kind_bias = dict(kind_bias or {})
        self.price_bias = {k: {c: dict(b) for c, b in v.items()} for k, v in (price_bias or {}).items()}
        self.row_choice = {k: list(v) for k, v in (row_choice or {}).items()}
        self.code_bias = {k: dict(v) for k, v in (code_bias or {}).items()}
        self.device = next(model.parameters()).device
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self._targets: dict[str, list[int]] = {}
        self._pages: dict[str, list[int]] = {}
        self._tries: dict[tuple[str, ...], CandidateTrie] = {}
        self._groups: dict[tuple[str, ...], ItemGroups] = {}
        self.scoring_rule = SCORING_RULE
        self.prefill = PrefillStats()
        # transformers renamed ``past_key_values`` to ``cache`` (5.x); the cache is filled in place.
        forward_args = inspect.signature(model.forward).parameters
        self._cache_arg = "cache" if "cache" in forward_args else "past_key_values"

    @classmethod
    def from_pretrained(cls, agent_dir: str | Path, device: str = "cpu", **kwargs) -> LLMPolicy:
        """Load an exported agent (train.py) or any causal LM directory / hub id (then no persona),
        with its calibration (``kind_bias``, ``code_bias``, ``price_bias`` and ``row_choice``, each read
        from the directory unless given). Raises ValueError for an agent whose manifest names another scoring rule (scoring.py)."""
        check_scoring_rule(agent_dir)
        model = AutoModelForCausalLM.from_pretrained(agent_dir).to(device)
        tokenizer = AutoTokenizer.from_pretrained(agent_dir)
        fmt = kwargs.pop("fmt", None) or saved_prompt_format(agent_dir)
        tokens = agent_persona_tokens(agent_dir, tokenizer)
        readers = {
            "kind_bias": read_kind_bias,
            "code_bias": read_code_bias,
            "price_bias": read_price_bias,
            "row_choice": read_row_choice,
        }
        for name, read in readers.items():
            if name not in kwargs:  # a refit passes its own, and the file on disk may be refused
                kwargs[name] = read(agent_dir)
        return cls(model, tokenizer, tokens, fmt, **kwargs)

    @property
    def biases(self) -> tuple:
        """What ``pick`` and ``action_scores`` add to the model's scores, in their argument order:
        kind, price-cell, row-choice and per-code biases."""
        return self.kind_bias, self.price_bias, self.row_choice, self.code_bias

    def prompt(self, request: ActRequest) -> Prompt:
        """The request's prompt ids (prompt.py's ``encode_prompt``) as (page part, buyer part), of the
        page as the model reads it (scoring.py's ``model_request``)."""
        request = model_request(request, self.price_bias)
        page = self._pages.get(request.observation)
        if page is None:
            if len(self._pages) >= PAGE_CACHE:
                self._pages.clear()
            page = self._pages[request.observation] = encode_page(
                self.tokenizer, request.observation, self.fmt
            )
        own = encode_buyer(
            self.tokenizer, request.persona, request.goal, request.history, self.tokens, self.fmt
        )
        return page, own

    def prompt_ids(self, request: ActRequest) -> list[int]:
        page, own = self.prompt(request)
        return page + own

    def act(self, requests: Sequence[ActRequest]) -> list[ActResult]:
        if not requests:
            return []
        prompts = [self.prompt(r) for r in requests]
        if self.mode == "generate":
            return self._act_generate(requests, prompts)
        return self._act_score(requests, prompts)

    # ---- scoring --------------------------------------------------------------------------------
    def targets(self, candidates: Sequence[str]) -> list[list[int]]:
        """Target ids of each candidate as scored (the action and EOS), cached per text."""
        missing = list(dict.fromkeys(c for c in candidates if c not in self._targets))
        if missing:
            if len(self._targets) + len(missing) > TARGET_CACHE:
                self._targets.clear()
            for text, ids in zip(missing, encode_targets(self.tokenizer, missing), strict=True):
                self._targets[text] = ids
        return [self._targets[c] for c in candidates]

    def trie(self, candidates: Sequence[str]) -> CandidateTrie:
        """The candidates' target ids as a trie (packing.py); cached per candidate set."""
        key = tuple(candidates)
        trie = self._tries.get(key)
        if trie is None:
            if len(self._tries) >= PAGE_CACHE:
                self._tries.clear()
            trie = self._tries[key] = CandidateTrie.build(self.targets(candidates))
        return trie

    def item_groups(self, candidates: Sequence[str]) -> ItemGroups:
        """The candidates' item groups (scoring.py's two-level rule); cached per candidate set."""
        key = tuple(candidates)
        groups = self._groups.get(key)
        if groups is None:
            if len(self._groups) >= PAGE_CACHE:
                self._groups.clear()
            groups = self._groups[key] = item_groups(self.tokenizer, candidates, self.targets(candidates))
        return groups

    def score(self, requests: Sequence[ActRequest], prompts: list[Prompt] | None = None) -> list[np.ndarray]:
        """Per request, the score of each valid action (scoring.py's rule on the target-token
        log-probs, or its mean; the search template's from the page's searches)."""
        prompts = prompts if prompts is not None else [self.prompt(r) for r in requests]
        found = self._scores(prompts, [scored_candidates(r) for r in requests])
        return [action_scores(r, values, *self.biases) for r, values in zip(requests, found, strict=True)]

    def _scores(self, prompts: list[Prompt], candidates: list[list[str]]) -> list[np.ndarray]:
        """Per request, each candidate's score under scoring.py's rule."""
        tries = [self.trie(c) for c in candidates]
        found = self.token_logprobs(prompts, tries)
        return [
            candidate_scores(values, trie.lengths, self.item_groups(c), self.length_normalize)
            for values, trie, c in zip(found, tries, candidates, strict=True)
        ]

    def token_logprobs(self, prompts: list[Prompt], tries: list[CandidateTrie]) -> list[np.ndarray]:
        """Per request, the log-probability of each target token of its trie's candidates (candidates
        in order, each one's tokens in order): what a scoring rule reads."""
        out: list[np.ndarray] = [np.empty(0)] * len(prompts)
        lengths = [len(page) + len(own) for page, own in prompts]
        for group in length_groups(lengths, self.max_requests_per_forward):
            found = self._token_logprobs([prompts[i] for i in group], [tries[i] for i in group])
            for i, values in zip(group, found, strict=True):
                out[i] = values
        return out

    @torch.inference_mode()
    def _token_logprobs(self, prompts: list[Prompt], tries: list[CandidateTrie]) -> list[np.ndarray]:
        cache, page_real = self._page_cache(prompts)
        packed = pack_suffixes([len(page) for page, _ in prompts], [own for _, own in prompts], tries)
        hidden = self._run_suffixes(packed, cache, page_real, self.model.get_decoder()).last_hidden_state
        rows, cols, ids = (x.to(self.device) for x in packed.picks)
        # The vocabulary projection runs only where a candidate token is predicted.
        where, inverse = torch.unique(rows * packed.width + cols, return_inverse=True)
        logits = self.model.get_output_embeddings()(hidden.reshape(-1, hidden.shape[-1])[where]).float()
        logp = (logits[inverse, ids] - torch.logsumexp(logits, dim=-1)[inverse]).double().cpu().numpy()
        # Picks are packed request by request, each trie's in candidate-then-token order.
        bounds = np.cumsum([0] + [len(trie.pick_id) for trie in tries])
        return [logp[a:b].copy() for a, b in zip(bounds[:-1], bounds[1:], strict=True)]

    def _page_cache(self, prompts: list[Prompt]) -> tuple[DynamicCache, torch.Tensor]:
        """The pages' KV cache, one row per prompt, and which cached columns are real (batch, width).

        A page that several prompts share runs once; its cache rows are copied to each of them."""
        pages = [tuple(page) for page, _ in prompts]
        distinct = list(dict.fromkeys(pages))
        self.prefill.requested += sum(len(page) + len(own) for page, own in prompts)
        self.prefill.run += sum(map(len, distinct)) + sum(len(own) for _, own in prompts)
        cache, page_real = self._run_rows([list(page) for page in distinct])
        if len(distinct) < len(prompts):
            index = {page: i for i, page in enumerate(distinct)}
            rows = torch.tensor([index[page] for page in pages])
            cache.batch_select_indices(rows.to(self.device))
            page_real = page_real[rows]
        return cache, page_real

    def _run_suffixes(self, packed: PackedSuffixes, cache: DynamicCache, page_real: torch.Tensor, module):
        """``packed`` on top of the pages' ``cache`` (which it extends) through ``module`` (the model,
        or its decoder for hidden states); a 4-D mask hides the pages' padding and other branches."""
        attend = torch.cat([page_real[:, None, :].expand(-1, packed.width, -1), packed.attend], dim=2)
        dtype = self.model.dtype
        mask = torch.zeros(attend.shape, dtype=dtype).masked_fill_(~attend, torch.finfo(dtype).min)
        return module(
            input_ids=packed.ids.to(self.device),
            attention_mask=mask[:, None].to(self.device),
            position_ids=packed.positions.to(self.device),
            use_cache=True,
            **{self._cache_arg: cache},
        )

    def _prefill(self, prompts: list[Prompt]) -> tuple[DynamicCache, torch.Tensor]:
        """Run every prompt but its last token; (KV cache, which cached columns are real (batch, width))."""
        cache, page_real = self._page_cache(prompts)
        chains = [own[:-1] for _, own in prompts]
        packed = pack_suffixes([len(page) for page, _ in prompts], chains, [NO_CANDIDATES] * len(prompts))
        if packed.width == 0:
            return cache, page_real
        self._run_suffixes(packed, cache, page_real, self.model)
        return cache, torch.cat([page_real, packed.real], dim=1)

    def _run_rows(self, contexts: list[list[int]]) -> tuple[DynamicCache, torch.Tensor]:
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

    def _act_score(self, requests: Sequence[ActRequest], prompts: list[Prompt]) -> list[ActResult]:
        for i, r in enumerate(requests):
            if not r.valid_actions:
                raise ValueError(
                    f"request {i} has no valid actions: nothing to choose (the episode has ended)"
                )
        candidates = [scored_candidates(r) for r in requests]
        tries = [self.trie(c) for c in candidates]
        all_scores = self._scores(prompts, candidates)
        results: list[ActResult] = []
        for r, prompt, trie, scores, choices in zip(
            requests, prompts, tries, all_scores, candidates, strict=True
        ):
            action, score, per_action = pick(r, choices, scores, self.temperature, *self.biases)
            tokens = sum(map(len, prompt)) + sum(trie.lengths)
            info = {"scores": per_action.tolist(), "candidates": list(r.valid_actions)}
            results.append(ActResult(action, score, tokens, info))
        return results

    # ---- generation -----------------------------------------------------------------------------
    @torch.inference_mode()
    def _generate(self, prompts: list[Prompt], seeds: list[int], max_new: int) -> list[tuple[str, int]]:
        """Decode each prompt until EOS or a line break (argmax or seeded sampling); (text, tokens).
        The whole batch steps together on the prompts' KV cache; finished rows feed padding."""
        rngs = [np.random.default_rng(s) for s in seeds]
        generated: list[list[int]] = [[] for _ in prompts]
        active = list(range(len(prompts)))
        cache, mask = self._prefill(prompts)
        mask = mask.long()
        fed = [own[-1] for _, own in prompts]
        last_position = torch.tensor([len(page) + len(own) - 1 for page, own in prompts])
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
                if "\n" not in self.tokenizer.decode(generated[i], skip_special_tokens=True):
                    still.append(i)
            active = still
            if not active:
                break
        return [
            (self.tokenizer.decode(g, skip_special_tokens=True), len(page) + len(own) + len(g))
            for (page, own), g in zip(prompts, generated, strict=True)
        ]

    def _next_token(self, logits: torch.Tensor, rng: np.random.Generator) -> int:
        if self.temperature <= 0:
            return int(torch.argmax(logits))
        p = torch.softmax(logits / self.temperature, dim=-1).double().cpu().numpy()
        return int(rng.choice(len(p), p=p / p.sum()))

    def _act_generate(self, requests: Sequence[ActRequest], prompts: list[Prompt]) -> list[ActResult]:
        texts = self._generate(prompts, [r.seed for r in requests], self.max_new_tokens)
        results = []
        for r, (text, n) in zip(requests, texts, strict=True):
            action = " ".join(text.split("\n", 1)[0].split())
            valid = is_offered(action, r.valid_actions)
            results.append(ActResult(action, None, n, {"valid": valid, "generated": text}))
        return results
