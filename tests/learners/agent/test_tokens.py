"""Persona tokens: added once, atomic, not special, and round-trip through save/load (full and LoRA)."""

from __future__ import annotations

import subprocess
import sys

import torch
from peft import PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from learners.agent.base_models import load_base
from learners.agent.tokens import PersonaTokens, add_persona_tokens, persona_lora_config, persona_token

CORPUS = [f"== Product p{i} ==\nActions:\nadd to cart\nopen product p{i}\nback" for i in range(50)]


def _base():
    return load_base("tiny", CORPUS, seed=3)


def test_tokens_are_added_once_and_are_single_normal_tokens():
    model, tok = _base()
    n = len(tok)
    codebook = torch.randn(4, 6, generator=torch.Generator().manual_seed(0))
    tokens = add_persona_tokens(model, tok, 4, codebook)
    rows = model.get_input_embeddings().weight.detach().clone()
    again = add_persona_tokens(model, tok, 4, codebook, seed=99)
    assert again == tokens and len(tok) == n + 4
    assert torch.equal(model.get_input_embeddings().weight, rows)  # a second call re-initialises nothing
    assert model.get_input_embeddings().num_embeddings == len(tok)
    ids = tok("x" + persona_token(2) + "y", add_special_tokens=False)["input_ids"]
    assert tokens.token_id(2) in ids and len([i for i in ids if i in tokens.token_ids]) == 1
    # Not special: decoding with skip_special_tokens=True (vLLM's default) keeps the token.
    assert persona_token(2) in tok.decode(ids, skip_special_tokens=True)


def test_new_rows_start_near_the_mean_with_distinct_codes():
    model, tok = _base()
    old = model.get_input_embeddings().weight.detach()[: len(tok)].clone()
    codebook = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.1]])
    tokens = add_persona_tokens(model, tok, 3, codebook)
    new = model.get_input_embeddings().weight.detach()[list(tokens.token_ids)]
    mean = old.mean(0)
    spread = (old - mean).norm(dim=1).mean()
    offsets = (new - mean).norm(dim=1)
    assert torch.allclose(offsets.mean(), spread, rtol=1e-4)
    # Codebook geometry survives the projection: codes 0 and 2 are close, 0 and 1 far apart.
    assert (new[0] - new[2]).norm() < (new[0] - new[1]).norm()


def test_full_model_round_trip(tmp_path):
    model, tok = _base()
    tokens = add_persona_tokens(model, tok, 3)
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    tokens.save(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    loaded_tok = AutoTokenizer.from_pretrained(tmp_path)
    again = PersonaTokens.load(tmp_path)
    again.check(loaded_tok)
    assert again == tokens
    assert torch.equal(loaded.get_input_embeddings().weight, model.get_input_embeddings().weight)
    assert loaded_tok(persona_token(1), add_special_tokens=False)["input_ids"] == [tokens.token_id(1)]


def test_lora_adapter_carries_the_persona_rows(tmp_path):
    model, tok = _base()
    tokens = add_persona_tokens(model, tok, 3)
    peft_model = get_peft_model(model, persona_lora_config(model, tokens, rank=4, alpha=8))
    trainable = {n for n, p in peft_model.named_parameters() if p.requires_grad}
    assert any("trainable_tokens" in n for n in trainable) and any("lora_A" in n for n in trainable)
    with torch.no_grad():
        for p in peft_model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
    x = torch.tensor([[5, tokens.token_id(1), 7, 9, tokens.token_id(2)]])
    expected = peft_model(x).logits
    peft_model.save_pretrained(tmp_path)
    # A user's view: the original base model, resized to the saved tokenizer, plus the adapter.
    fresh, _ = _base()
    fresh.resize_token_embeddings(len(tok), mean_resizing=False)
    loaded = PeftModel.from_pretrained(fresh, tmp_path)
    assert torch.allclose(loaded(x).logits, expected, atol=1e-5)


def test_scoring_and_prompt_modules_import_without_peft():
    # The vLLM CPU venv imports these modules and has no peft: a None entry makes `import peft` fail.
    code = (
        "import sys; sys.modules['peft'] = None; "
        "import learners.agent.prompt, learners.agent.tokens, learners.agent.llm_policy"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, timeout=120)
