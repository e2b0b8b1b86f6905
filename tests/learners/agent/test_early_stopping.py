"""Validation merchants and early stopping: a stage stops once its validation loss stops improving,
the exported model is the best epoch's, the manifest records every epoch's losses and the chosen
epochs, and a run interrupted mid-epoch and resumed equals an uninterrupted one."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file, load_model
from transformers import AutoModelForCausalLM

from learners.agent.selection import validation_merchants
from learners.agent.train import AgentTrainConfig, train_agent
from learners.agent.train_loop import BEST_FILE, EarlyStopping

from .conftest import make_traces

VALIDATION = "m3"  # the merchant a validation share of 0.45 of m1, m2, m3 draws with seed 0


@pytest.fixture(scope="module")
def disagreeing():
    """Traces of m1 and m2, plus m3: m1's pages and buyers, where every step's action is "wait", an
    action training never shows. The better the agent learns m1 and m2, the less likely it finds
    "wait": m3's loss rises from stage 2's first epoch on."""
    assert validation_merchants(["m1", "m2", VALIDATION], 0.45, 0) == [VALIDATION]
    traces, codes = make_traces(merchants=("m1", "m2"), buyers=4, sessions=1, seed=2)

    def as_validation(table: pa.Table) -> pa.Table:
        table = table.filter(pc.equal(table["merchant_id"], "m1"))
        return table.set_column(0, "merchant_id", pa.array([VALIDATION] * table.num_rows, pa.string()))

    copy = as_validation(traces)
    copy = copy.set_column(
        copy.column_names.index("action"), "action", pa.array(["wait"] * copy.num_rows, pa.string())
    )
    return pa.concat_tables([traces, copy]), pa.concat_tables([codes, as_validation(codes)])


def _config(**overrides) -> AgentTrainConfig:
    base = dict(
        workers=0,
        stage1_epochs=1,
        stage2_epochs=4,
        stage2_lr=0.01,
        batch_size=4,
        max_observation_tokens=96,
        goal_share=0.0,
        log_every=1,
        validation_share=0.45,  # m3 alone fits in this share of the examples
        patience=1,
    )
    return AgentTrainConfig(**{**base, **overrides})


def _state(model_dir, checkpoint=None) -> dict[str, torch.Tensor]:
    """The weights of an exported model, or of the initial model with a checkpoint's weights loaded."""
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    if checkpoint is not None:
        load_model(model, str(checkpoint))
    return {k: v.clone() for k, v in model.state_dict().items()}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_early_stopping_keeps_the_best_epoch(tmp_path, disagreeing):
    traces, codes = disagreeing
    result = train_agent(_config(), traces, codes, tmp_path, log=lambda _: None)

    # Whole merchants: m3 is the validation set, and not one of its rows is trained on.
    assert set(pq.read_table(tmp_path / "data" / "train.parquet")["merchant_id"].to_pylist()) == {"m1", "m2"}
    assert set(pq.read_table(tmp_path / "data" / "validation.parquet")["merchant_id"].to_pylist()) == {
        VALIDATION
    }

    stage2 = [e for e in result.history if e["stage"] == 2]
    losses = [e["val_loss"] for e in stage2]
    assert losses[1] > losses[0], losses  # the constructed case: validation loss rises after epoch 1
    # Patience 1: stage 2 stops after its first epoch without improvement, well before its cap of 4.
    assert [e["epoch"] for e in stage2] == [1, 2]
    assert [e["stopped"] for e in stage2] == [False, True]
    assert result.chosen == {1: 1, 2: 1}

    # The exported weights are stage 2 epoch 1's, not the last epoch's.
    exported = _state(tmp_path)
    checkpoints = tmp_path / "checkpoints"
    best = _state(tmp_path / "init", checkpoints / "stage2-epoch1" / "model.safetensors")
    last = _state(tmp_path / "init", checkpoints / "stage2-epoch2" / "model.safetensors")
    assert _same(exported, best)
    assert not _same(exported, last)
    # The last checkpoint carries the best epoch's weights itself (Ray Train keeps only the latest).
    assert _same(
        load_file(str(checkpoints / "stage2-epoch2" / BEST_FILE)),
        load_file(str(checkpoints / "stage2-epoch1" / "model.safetensors")),
    )

    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["validation"]["merchants"] == [VALIDATION]
    assert manifest["rows"]["validation"] == manifest["validation"]["examples"] > 0
    assert [(e["stage"], e["epoch"]) for e in manifest["epochs"]] == [(1, 1), (2, 1), (2, 2)]
    summary = manifest["early_stopping"]["stages"]["2"]
    assert summary["chosen_epoch"] == 1 and summary["stopped_early"] and summary["epochs_run"] == 2
    assert summary["val_loss"] == losses
    assert summary["train_loss"] == [e["loss"] for e in stage2]


def test_without_validation_every_epoch_runs_and_the_last_is_kept(tmp_path, disagreeing):
    traces, codes = disagreeing
    result = train_agent(
        _config(validation_share=0.0, stage2_epochs=2), traces, codes, tmp_path, log=lambda _: None
    )
    assert [(e["stage"], e["epoch"]) for e in result.history] == [(1, 1), (2, 1), (2, 2)]
    assert all("val_loss" not in e for e in result.history)
    assert result.chosen == {1: 1, 2: 2} and result.validation_examples == 0
    assert not (tmp_path / "data" / "validation.parquet").exists()
    last = _state(tmp_path / "init", tmp_path / "checkpoints" / "stage2-epoch2" / "model.safetensors")
    assert _same(_state(tmp_path), last)


def test_one_merchant_has_no_validation_and_says_so(tmp_path):
    traces, codes = make_traces(merchants=("m1",), buyers=4, sessions=1, seed=2)
    lines: list[str] = []
    result = train_agent(_config(stage1_epochs=0, stage2_epochs=1), traces, codes, tmp_path, log=lines.append)
    assert result.validation_examples == 0 and result.chosen == {2: 1}
    assert any(line.startswith("no validation: the traces hold one merchant") for line in lines)


class Interrupted(Exception):
    pass


def test_a_resumed_run_equals_an_uninterrupted_one(tmp_path, disagreeing):
    traces, codes = disagreeing
    config = _config(patience=2)  # stage 2: epoch 1 best, 2 and 3 worse, stop after 3
    full = train_agent(config, traces, codes, tmp_path / "full", log=lambda _: None)
    assert [e["epoch"] for e in full.history if e["stage"] == 2] == [1, 2, 3]

    def crash_in_epoch_3(line: str) -> None:
        if line.startswith("[stage 2] epoch 3/4 step 2/"):
            raise Interrupted(line)

    with pytest.raises(Interrupted):
        train_agent(config, traces, codes, tmp_path / "cut", log=crash_in_epoch_3)
    assert not json.loads((tmp_path / "cut" / "manifest.json").read_text())["finished"]
    # The checkpoint it resumes from holds stage 2 epoch 1's weights as the best so far.
    assert (tmp_path / "cut" / "checkpoints" / "stage2-epoch2" / BEST_FILE).exists()
    resumed = train_agent(config, traces, codes, tmp_path / "cut", resume=True, log=lambda _: None)

    assert [(e["stage"], e["epoch"]) for e in resumed.epochs] == [(2, 3)]  # only the missing epoch ran
    assert _same(_state(full.out_dir), _state(resumed.out_dir))
    keys = ("stage", "epoch", "step", "loss", "val_loss", "best_epoch", "stopped", "tokens")
    a, b = (
        [{k: e[k] for k in keys} for e in json.loads((d / "manifest.json").read_text())["epochs"]]
        for d in (tmp_path / "full", tmp_path / "cut")
    )
    assert a == b
    assert full.chosen == resumed.chosen == {1: 1, 2: 1}
    manifest = json.loads((tmp_path / "cut" / "manifest.json").read_text())
    assert manifest["finished"] and manifest["early_stopping"]["stages"]["2"]["chosen_epoch"] == 1

    # A stopped stage stays stopped: resuming the finished run trains nothing more.
    again = train_agent(config, traces, codes, tmp_path / "cut", resume=True, log=lambda _: None)
    assert again.epochs == [] and _same(_state(tmp_path / "cut"), _state(full.out_dir))


def test_early_stopping_state():
    stopping = EarlyStopping(patience=2)
    assert stopping.update(1, 3.0) and stopping.update(2, 2.5)
    assert not stopping.update(3, 2.5)  # equal is no improvement
    assert not stopping.stopped and not stopping.update(4, 2.7) and stopping.stopped
    assert (stopping.best_epoch, stopping.best_loss, stopping.bad_epochs) == (2, 2.5, 2)
    assert EarlyStopping.from_state(stopping.to_state(), 2) == stopping
    assert not EarlyStopping.from_state(stopping.to_state(), 3).stopped  # more patience on resume
    never = EarlyStopping(patience=0)
    for epoch, loss in enumerate([1.0, 2.0, 3.0, 4.0], 1):
        never.update(epoch, loss)
    assert not never.stopped and never.best_epoch == 1
