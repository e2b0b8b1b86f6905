"""The locally built base-model presets: they build offline, have the documented sizes, and each
``-8x`` twin has about 8x its base's parameters."""

from __future__ import annotations

import pytest
from transformers import AutoModelForCausalLM

from learners.agent.base_models import PRESETS, load_base, parameter_count, preset_parameters

# parameter_count at the full 1,024-token vocabulary (learners/agent/base_models.py's table).
SIZES = {
    "tiny": 164_288,
    "tiny-8x": 1_302_176,
    "small": 2_165_120,
    "small-8x": 17_237_120,
    "base": 25_699_840,
    "base-8x": 202_411_008,
}
CORPUS = [
    f"Page: category c{i % 7}\n- product p{i} | {i * 3.5:.2f}\nActions:\nopen product p{i}"
    for i in range(200)
]


def test_every_preset_has_its_documented_size_and_an_8x_twin():
    assert set(PRESETS) == set(SIZES)
    assert {name: preset_parameters(name) for name in PRESETS} == SIZES
    assert 1.5e6 < SIZES["small"] < 2.5e6 and 2.2e7 < SIZES["base"] < 2.8e7
    for name in ("tiny", "small", "base"):
        assert 7.5 < SIZES[f"{name}-8x"] / SIZES[name] < 8.5


@pytest.mark.parametrize("name", ["tiny", "small", "tiny-8x", "small-8x", "base"])
def test_presets_build_offline_and_reload(name, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model, tokenizer = load_base(name, CORPUS, seed=0)
    # The built model has exactly the size of its config at the tokenizer's (corpus-sized) vocabulary.
    assert parameter_count(model) == preset_parameters(name, len(tokenizer))
    shape = PRESETS[name]
    assert (model.config.hidden_size, model.config.num_hidden_layers) == (shape.hidden_size, shape.num_layers)
    assert model.config.head_dim in (32, 64)  # head sizes vLLM's CPU attention supports
    again, _ = load_base(name, CORPUS, seed=0)  # seeded: the same weights
    assert all(a.equal(b) for a, b in zip(model.parameters(), again.parameters(), strict=True))
    if name == "small":
        model.save_pretrained(tmp_path)
        assert parameter_count(AutoModelForCausalLM.from_pretrained(tmp_path)) == parameter_count(model)
