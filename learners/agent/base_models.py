"""Base language models for the agent: any Hugging Face id or directory, or a local preset.

The presets (``PRESETS``) are built here, offline, with random weights: a Qwen3 architecture and a
byte-level BPE tokenizer trained on the trace texts (so prompts tokenise compactly). Each size comes
with its ``-8x`` twin, about 8x the parameters, for the paper's "larger no-persona baseline":

    preset    parameters (1,024-token vocabulary, EOS and pad included; tied embeddings)
    tiny          164,288   tests, the laptop demo, CPU studies
    tiny-8x     1,302,176
    small       2,165,120   a CPU study with a larger budget, or a GPU
    small-8x   17,237,120
    base       25,699,840   a GPU (bf16 autocast)
    base-8x   202,411,008

(``parameter_count`` of the built model, without persona tokens: each persona token adds
``hidden_size`` parameters.) They are what tests, the laptop demo and studies use when no pretrained
weights can be downloaded. Every other name goes to ``from_pretrained`` unchanged, so users with
internet pass ``Qwen/Qwen3-0.6B`` and the like.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
    Qwen3Config,
    Qwen3ForCausalLM,
)

EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"


@dataclass(frozen=True)
class TinyPreset:
    """Shape of a locally built Qwen3 model (any of ``PRESETS``, not only ``tiny``)."""

    hidden_size: int
    """Width of the residual stream (and of each token embedding)."""
    num_layers: int
    """Decoder layers."""
    num_heads: int
    """Query heads; head_dim = hidden_size / num_heads."""
    num_kv_heads: int
    """Key/value heads (grouped-query attention)."""
    intermediate_size: int
    """Width of the SwiGLU feed-forward block."""
    vocab_size: int = 1024
    """Target size of the BPE vocabulary trained on the corpus (smaller when the corpus is small)."""
    max_positions: int = 2048
    """Longest sequence the rotary embedding is configured for."""


PRESETS: dict[str, TinyPreset] = {
    # Head sizes 32 and 64 only: vLLM's CPU attention supports head sizes 32, 64, 80, ... only.
    # Parameter counts at the full 1,024-token vocabulary, measured with parameter_count
    # (preset_parameters; tests/learners/agent/test_presets.py checks them).
    # 164,288 parameters: trains in seconds on one CPU core.
    "tiny": TinyPreset(hidden_size=64, num_layers=2, num_heads=2, num_kv_heads=1, intermediate_size=192),
    # 1,302,176 parameters, 7.9x "tiny": the larger no-persona baseline.
    "tiny-8x": TinyPreset(hidden_size=160, num_layers=4, num_heads=5, num_kv_heads=1, intermediate_size=464),
    # 2,165,120 parameters (13x "tiny").
    "small": TinyPreset(hidden_size=192, num_layers=5, num_heads=6, num_kv_heads=2, intermediate_size=512),
    # 17,237,120 parameters, 8.0x "small".
    "small-8x": TinyPreset(
        hidden_size=384, num_layers=10, num_heads=6, num_kv_heads=2, intermediate_size=1120
    ),
    # 25,699,840 parameters (head size 64); with a persona codebook's tokens, the 25.7M model measured on
    # an H200 (shared/ENVIRONMENT.md).
    "base": TinyPreset(hidden_size=512, num_layers=8, num_heads=8, num_kv_heads=4, intermediate_size=1536),
    # 202,411,008 parameters, 7.9x "base".
    "base-8x": TinyPreset(
        hidden_size=1024, num_layers=16, num_heads=16, num_kv_heads=8, intermediate_size=3072
    ),
}


def train_bpe_tokenizer(
    corpus: Iterable[str], vocab_size: int, split_digits: bool = False
) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer (GPT-2 style: every byte representable) trained on ``corpus``;
    ``split_digits``: every digit its own token, so no merge spans two digits."""
    tokenizer = Tokenizer(models.BPE())
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.pre_tokenizer = (
        pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
        if split_digits
        else byte_level
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS_TOKEN, PAD_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token=EOS_TOKEN, pad_token=PAD_TOKEN)


def build_tiny(
    preset: str, corpus: Iterable[str], seed: int = 0, split_digits: bool = False
) -> tuple[PreTrainedModel, PreTrainedTokenizerFast]:
    """A randomly initialised Qwen3 model of a named preset and a tokenizer trained on ``corpus``."""
    shape = PRESETS[preset]
    tokenizer = train_bpe_tokenizer(corpus, shape.vocab_size, split_digits)
    config = preset_config(preset, len(tokenizer), tokenizer.eos_token_id, tokenizer.pad_token_id)
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = Qwen3ForCausalLM(config)
    finally:
        torch.random.set_rng_state(generator_state)
    return model, tokenizer


def preset_config(preset: str, vocab_size: int, eos_token_id: int = 0, pad_token_id: int = 1) -> Qwen3Config:
    """The Qwen3 config of a named preset at a given vocabulary size."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; presets: {', '.join(PRESETS)}")
    shape = PRESETS[preset]
    return Qwen3Config(
        vocab_size=vocab_size,
        hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.num_layers,
        num_attention_heads=shape.num_heads,
        num_key_value_heads=shape.num_kv_heads,
        head_dim=shape.hidden_size // shape.num_heads,
        max_position_embeddings=shape.max_positions,
        tie_word_embeddings=True,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
        bos_token_id=None,
    )


def preset_parameters(preset: str, vocab_size: int | None = None) -> int:
    """``parameter_count`` of a preset's model (default: its full vocabulary, EOS and pad included), counted
    on the meta device: nothing is allocated, so the largest preset costs nothing to size."""
    vocab = PRESETS[preset].vocab_size if vocab_size is None else vocab_size
    with torch.device("meta"):
        return parameter_count(Qwen3ForCausalLM(preset_config(preset, vocab)))


def load_base(
    model: str,
    corpus: Iterable[str] = (),
    seed: int = 0,
    dtype: torch.dtype | None = None,
    split_digits: bool = False,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The base model and tokenizer for ``model``: a preset name (``PRESETS``: ``tiny``, ``small``,
    ``base`` and their ``-8x`` twins), a Hugging Face hub id, or a local ``save_pretrained``
    directory. ``corpus`` trains a preset's tokenizer (``split_digits``: see train_bpe_tokenizer).

    Loaded tokenizers without a pad token get their EOS as pad (batched scoring needs one).
    """
    if model in PRESETS:
        return build_tiny(model, corpus, seed=seed, split_digits=split_digits)
    tokenizer = AutoTokenizer.from_pretrained(model)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    lm = (
        AutoModelForCausalLM.from_pretrained(model, dtype=dtype)
        if dtype
        else AutoModelForCausalLM.from_pretrained(model)
    )
    return lm, tokenizer


def parameter_count(model: torch.nn.Module) -> int:
    """Distinct parameters (tied embedding and LM head counted once)."""
    return sum(p.numel() for p in model.parameters())
