"""The training loop's batches and loss: packed examples keep their own positions and labels, and the
target-only loss equals the model's own loss and gradients (plain and with LoRA persona rows); the
validation loss leaves out the tokens that name an item."""

from __future__ import annotations

import itertools

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from peft import get_peft_model

from learners.agent.base_models import build_tiny
from learners.agent.prompt import IGNORE_INDEX, PromptFormat, encode_prompt, encode_target
from learners.agent.tokens import add_persona_tokens, persona_lora_config
from learners.agent.train_config import AgentTrainConfig
from learners.agent.train_loop import TargetLoss, collate, encode_validation, learning_rate, validation_loss

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


def test_validation_loss_leaves_out_the_tokens_that_name_an_item(tmp_path):
    model, tokenizer = build_tiny("tiny", CORPUS, seed=1)
    tokens = add_persona_tokens(model, tokenizer, 4)
    fmt = PromptFormat()
    rows = [
        (CORPUS[1], "open product 1", [], None, 0),
        (CORPUS[2], "add to cart", ["home"], None, 1),
        (CORPUS[3], "open product your goal", [], "3", 2),
        (CORPUS[4], 'search "4"', ["home", "open product 4"], None, None),
        (CORPUS[5], "exit", [], None, 3),
    ]
    columns = ("observation", "action", "history", "goal", "code")
    path = tmp_path / "validation.parquet"
    pq.write_table(pa.table({c: [r[i] for r in rows] for i, c in enumerate(columns)}), path)
    data = encode_validation(str(path), tokenizer, tokens, fmt)
    ignored = []
    for (prompt, target, labels), (obs, action, history, goal, code) in zip(data, rows, strict=True):
        assert prompt == encode_prompt(tokenizer, obs, code, goal, history, tokens, fmt)
        assert target == encode_target(tokenizer, action) and len(labels) == len(target)
        ignored.append(labels.count(IGNORE_INDEX))
        kept = [t for t, lab in zip(target, labels, strict=True) if lab != IGNORE_INDEX]
        assert kept and labels[: len(kept)] == kept == target[: len(kept)]  # the ignored tokens end it
    assert [n > 0 for n in ignored] == [True, False, False, True, False]
    # The loss: the model's mean cross-entropy over exactly the labelled target tokens.
    total, count = 0.0, 0
    with torch.no_grad():
        for prompt, target, labels in data:
            logits = model(input_ids=torch.tensor([prompt + target])).logits[0, len(prompt) - 1 : -1]
            ce = torch.nn.functional.cross_entropy(logits.float(), torch.tensor(target), reduction="none")
            picked = torch.tensor(labels) != IGNORE_INDEX
            total += float(ce[picked].sum())
            count += int(picked.sum())
    got = validation_loss(model, data, tokenizer.pad_token_id, 2, 0, 1, torch.device("cpu"))
    assert got == pytest.approx(total / count, rel=1e-5)
    whole = validation_loss(
        model, [(p, t) for p, t, _ in data], tokenizer.pad_token_id, 2, 0, 1, torch.device("cpu")
    )
    assert whole != pytest.approx(got, rel=1e-3)


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
