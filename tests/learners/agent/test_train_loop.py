"""The training loop's batches and loss: packed examples keep their own positions and labels, and the
target-only loss equals the model's own loss and gradients (plain and with LoRA persona rows)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from peft import get_peft_model

from learners.agent.base_models import build_tiny
from learners.agent.prompt import IGNORE_INDEX
from learners.agent.tokens import add_persona_tokens, persona_lora_config
from learners.agent.train_config import AgentTrainConfig
from learners.agent.train_loop import TargetLoss, collate, learning_rate

CORPUS = [
    f"== Product {i} ==\nPrice: {i % 7}.99\nActions:\nopen product {i}\nadd to cart\nexit" for i in range(60)
]


def _pairs(count: int, seed: int) -> list[tuple[list[int], list[int]]]:
    rng = np.random.default_rng(seed)
    return [
        (rng.integers(3, 200, size=rng.integers(5, 120)).tolist(), rng.integers(3, 200, size=3).tolist())
        for _ in range(count)
    ]


def test_collate_packs_examples_that_keep_their_own_positions_and_labels():
    pairs = _pairs(64, seed=0)
    batch = collate(pairs, pad_id=0)
    width = max(len(p) + len(t) for p, t in pairs)
    assert batch.input_ids.shape[1] == width and batch.tokens == sum(len(p) + len(t) for p, t in pairs)
    assert batch.input_ids.numel() < 0.75 * len(pairs) * width  # right-padded: about half padding
    found = []
    for row in range(batch.input_ids.shape[0]):
        starts = (batch.position_ids[row] == 0).nonzero().flatten().tolist() + [width]
        for a, b in itertools.pairwise(starts):
            ids, labels = batch.input_ids[row, a:b].tolist(), batch.labels[row, a:b].tolist()
            assert batch.position_ids[row, a:b].tolist() == list(range(b - a))
            kept = [i for i, lab in enumerate(labels) if lab != IGNORE_INDEX]
            if kept:  # an example: its target is labelled, its prompt is not
                found.append((ids[: kept[0]], ids[kept[0] :]))
                assert [labels[i] for i in kept] == ids[kept[0] :]
    assert sorted(found) == sorted(pairs)


@pytest.mark.parametrize("lora", [False, True])
def test_target_loss_equals_the_models_own_loss_and_gradients(lora):
    model, tokenizer = build_tiny("tiny", CORPUS, seed=1)
    tokens = add_persona_tokens(model, tokenizer, 4)
    if lora:
        model = get_peft_model(model, persona_lora_config(model, tokens, rank=4, alpha=8))
    pairs = [
        (tokenizer.encode(text)[: 6 + 5 * k], tokenizer.encode(" exit")) for k, text in enumerate(CORPUS[:6])
    ]
    # The reference: each example alone, unpadded, through the model's own loss, weighted by its targets.
    targets = sum(len(target) for _, target in pairs)
    own = (
        sum(
            model(
                input_ids=torch.tensor([prompt + target]),
                labels=torch.tensor([[IGNORE_INDEX] * len(prompt) + target]),
            ).loss
            * len(target)
            for prompt, target in pairs
        )
        / targets
    )
    own.backward()
    own_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    batch = collate(pairs, tokenizer.pad_token_id)
    assert batch.input_ids.shape[0] < len(pairs)  # packed: some rows hold two examples
    ours = TargetLoss(model)(batch.input_ids, batch.position_ids, batch.labels)
    ours.backward()
    assert float(ours.detach()) == pytest.approx(float(own.detach()), rel=1e-5)
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert grads.keys() == own_grads.keys() and grads
    for name, grad in grads.items():
        torch.testing.assert_close(grad, own_grads[name], rtol=1e-4, atol=1e-6, msg=name)


def test_learning_rate_warms_up_then_follows_the_schedule():
    linear = AgentTrainConfig(warmup_steps=10, schedule="linear")
    rates = [learning_rate(linear, 1e-3, step, 100) for step in range(100)]
    assert rates[0] == pytest.approx(1e-4) and rates[9] == pytest.approx(1e-3 * 0.91)
    assert all(a > b for a, b in itertools.pairwise(rates[9:]))
    assert rates[-1] == pytest.approx(1e-5)
    constant = AgentTrainConfig(warmup_steps=10, schedule="constant")
    assert [learning_rate(constant, 1e-3, s, 100) for s in (0, 9, 50, 99)] == pytest.approx(
        [1e-4, 1e-3, 1e-3, 1e-3]
    )
    with pytest.raises(ValueError, match="schedule 'cosine'"):
        AgentTrainConfig(schedule="cosine")
