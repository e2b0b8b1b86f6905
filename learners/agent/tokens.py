"""Persona tokens: one vocabulary entry ``<persona_k>`` per codebook entry k.

How they are added, and the traps this avoids:

* Tokens are added as **normal (non-special) added tokens** with ``normalized=False``. Added tokens
  are matched before the BPE model, so ``<persona_3>`` is always one id, yet they are not "special":
  vLLM detokenizes with ``skip_special_tokens=True`` by default and would silently drop special
  tokens from any echoed prompt or output. With normal tokens a vLLM user sets nothing; servers
  should still pass prompt token ids (learners/agent/prompt.py) rather than text.
* Adding is idempotent: tokens already in the tokenizer keep their ids and trained rows.
* The embedding matrix is resized only when the new ids do not fit (hub models such as Qwen3 pad
  the matrix beyond the tokenizer; those padding rows are reused and re-initialised).
* LoRA adapters must carry the persona rows, because a base model from the hub does not have them:
  ``persona_lora_config`` marks the rows with peft's ``trainable_token_indices`` (input embedding,
  plus the LM head when it is not tied), which saves exactly those rows inside the adapter.

Initialisation of a new row k: the mean of the existing input-embedding rows plus a fixed random
projection of codebook vector k, scaled so the projected vectors have the same mean norm as the
existing rows' distance from their mean. The mean keeps each token in-distribution (Hewitt 2021:
new rows at the mean leave the model's outputs almost unchanged); the random projection keeps the
codebook's geometry (distances are roughly preserved, Johnson-Lindenstrauss), so similar personas
start close and stage 1 starts from distinguishable tokens instead of K identical ones. Untied LM-head
rows start at the mean output row: persona tokens are never prediction targets.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from tokenizers import AddedToken
from transformers import PreTrainedModel, PreTrainedTokenizerBase

if TYPE_CHECKING:
    from peft import LoraConfig

PERSONA_TOKENS_FILE = "persona_tokens.json"


def persona_token(code: int) -> str:
    """The token string of persona code ``code``."""
    return f"<persona_{code}>"


@dataclass(frozen=True)
class PersonaTokens:
    """The persona tokens of one agent: token id per code (index = code)."""

    token_ids: tuple[int, ...]
    """Vocabulary id of ``<persona_k>`` at position k."""

    @property
    def num_codes(self) -> int:
        return len(self.token_ids)

    def token_id(self, code: int) -> int:
        """The id of a code's token; a clear error for codes outside the codebook."""
        if not 0 <= code < self.num_codes:
            raise ValueError(
                f"persona code {code} is outside this agent's codebook (0..{self.num_codes - 1})"
            )
        return self.token_ids[code]

    def save(self, directory: str | Path) -> Path:
        """Write ``persona_tokens.json`` (code -> token string and id) into ``directory``."""
        path = Path(directory) / PERSONA_TOKENS_FILE
        payload = {
            "num_codes": self.num_codes,
            "tokens": [{"code": k, "token": persona_token(k), "id": i} for k, i in enumerate(self.token_ids)],
            "added_as": "normal added tokens (special=False, normalized=False): vLLM needs no setting",
        }
        path.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, directory: str | Path) -> PersonaTokens:
        path = Path(directory) / PERSONA_TOKENS_FILE
        payload = json.loads(path.read_text(encoding="utf-8"))
        entries = sorted(payload["tokens"], key=lambda e: e["code"])
        if [e["code"] for e in entries] != list(range(len(entries))):
            raise ValueError(f"{path}: codes must be 0..K-1 without gaps; re-run train-agent to rewrite it")
        return cls(tuple(int(e["id"]) for e in entries))

    def check(self, tokenizer: PreTrainedTokenizerBase) -> None:
        """Fail loudly when the tokenizer maps a persona token to another id (wrong tokenizer)."""
        for code, token_id in enumerate(self.token_ids):
            got = tokenizer.convert_tokens_to_ids(persona_token(code))
            if got != token_id:
                raise ValueError(
                    f"tokenizer maps {persona_token(code)} to {got}, persona_tokens.json says {token_id}: "
                    "load the tokenizer saved next to the model"
                )


def agent_persona_tokens(directory: str | Path, tokenizer: PreTrainedTokenizerBase) -> PersonaTokens | None:
    """The persona tokens saved with an agent, checked against its tokenizer; None for a no-persona model."""
    if not (Path(directory) / PERSONA_TOKENS_FILE).exists():
        return None
    tokens = PersonaTokens.load(directory)
    tokens.check(tokenizer)
    return tokens


def add_persona_tokens(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    num_codes: int,
    codebook: torch.Tensor | None = None,
    seed: int = 0,
) -> PersonaTokens:
    """Add ``<persona_0>..<persona_{K-1}>`` (only those missing), resize and initialise their rows."""
    if codebook is not None and codebook.shape[0] != num_codes:
        raise ValueError(
            f"codebook has {codebook.shape[0]} entries but {num_codes} persona codes were asked for"
        )
    missing = [
        k
        for k in range(num_codes)
        if tokenizer.convert_tokens_to_ids(persona_token(k)) in (None, tokenizer.unk_token_id)
    ]
    if missing:
        tokenizer.add_tokens(
            [
                AddedToken(persona_token(k), special=False, normalized=False, single_word=False)
                for k in missing
            ]
        )
    tokens = PersonaTokens(tuple(tokenizer.convert_tokens_to_ids(persona_token(k)) for k in range(num_codes)))
    if not missing:
        return tokens
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    new_ids = [tokens.token_ids[k] for k in missing]
    vectors = None if codebook is None else codebook[missing]
    _init_rows(model, new_ids, min(new_ids), vectors, seed)
    return tokens


@torch.no_grad()
def _init_rows(
    model: PreTrainedModel, new_ids: list[int], n_old: int, codebook: torch.Tensor | None, seed: int
) -> None:
    embed = model.get_input_embeddings().weight
    old = embed[:n_old].float()
    mean = old.mean(dim=0)
    spread = (old - mean).norm(dim=1).mean()
    generator = torch.Generator().manual_seed(seed)
    if codebook is None:
        offsets = torch.randn(len(new_ids), embed.shape[1], generator=generator)
    else:
        codebook = codebook.detach().float().cpu()
        projection = torch.randn(codebook.shape[1], embed.shape[1], generator=generator)
        offsets = (codebook - codebook.mean(dim=0)) @ projection
    norm = offsets.norm(dim=1).mean()
    offsets = offsets * (spread / norm) if norm > 0 else offsets
    embed[new_ids] = (mean + offsets).to(embed.dtype)
    head = model.get_output_embeddings()
    if head is not None and head.weight.data_ptr() != embed.data_ptr():
        head.weight[new_ids] = head.weight[:n_old].float().mean(dim=0).to(head.weight.dtype)


def module_name(model: torch.nn.Module, module: torch.nn.Module) -> str:
    """The attribute name (last path component) of ``module`` inside ``model``."""
    for name, candidate in model.named_modules():
        if candidate is module:
            return name.rsplit(".", 1)[-1]
    raise ValueError(f"{type(module).__name__} is not a submodule of {type(model).__name__}")


def persona_lora_config(
    model: PreTrainedModel, tokens: PersonaTokens | None, rank: int, alpha: int, dropout: float = 0.0
) -> LoraConfig:
    """LoRA on every linear layer; the persona rows are trainable and saved inside the adapter."""
    from peft import LoraConfig  # training only: scoring and serving a merged agent need no peft

    indices: dict[str, list[int]] | None = None
    if tokens is not None:
        ids = list(tokens.token_ids)
        indices = {module_name(model, model.get_input_embeddings()): ids}
        head = model.get_output_embeddings()
        if head is not None and not model.config.tie_word_embeddings:
            indices[module_name(model, head)] = ids
    return LoraConfig(
        r=rank,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules="all-linear",
        trainable_token_indices=indices,
        task_type="CAUSAL_LM",
    )
