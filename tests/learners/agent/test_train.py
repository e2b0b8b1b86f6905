"""Two-stage fine-tuning: stage 1 moves only the persona rows, resume equals an uninterrupted run,
Ray Train with two workers produces a directory transformers' Auto classes load."""

from __future__ import annotations

import json
import pickle

import pyarrow.parquet as pq
import pytest
import ray
import ray.train
import torch
from ray.train import Checkpoint
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from engine.cli import main
from learners.agent.tokens import PersonaTokens
from learners.agent.train import AgentTrainConfig, RayStore, train_agent

from .conftest import make_traces


@pytest.fixture(scope="module")
def small():
    return make_traces(buyers=4, sessions=1, seed=2)


def _config(**overrides) -> AgentTrainConfig:
    base = dict(
        workers=0, stage1_epochs=1, stage2_epochs=1, batch_size=8, max_observation_tokens=96, log_every=100
    )
    return AgentTrainConfig(**{**base, **overrides})


def _weights(directory) -> dict[str, torch.Tensor]:
    return load_file(str(directory / "model.safetensors"))


def test_stage1_changes_only_the_persona_rows(tmp_path, small):
    traces, codes = small
    train_agent(_config(stage2_epochs=0, stage1_lr=0.05), traces, codes, tmp_path, log=lambda _: None)
    before, after = _weights(tmp_path / "init"), _weights(tmp_path)
    assert before.keys() == after.keys()
    ids = list(PersonaTokens.load(tmp_path).token_ids)
    for name, value in before.items():
        if name.endswith("embed_tokens.weight"):
            others = torch.ones(value.shape[0], dtype=torch.bool)
            others[ids] = False
            assert torch.equal(after[name][others], value[others])
            assert not torch.equal(after[name][ids], value[ids]), "persona rows did not train"
        else:
            assert torch.equal(after[name], value), name


def test_resumed_run_matches_uninterrupted(tmp_path, small):
    """A run cut short by a lower epoch cap, resumed with the full cap. Under the linear schedule the
    cap sets the rates, so this holds for the constant one (a crash: test_early_stopping.py)."""
    traces, codes = small
    full = train_agent(
        _config(stage2_epochs=2, schedule="constant"), traces, codes, tmp_path / "full", log=lambda _: None
    )
    train_agent(
        _config(stage2_epochs=1, schedule="constant"), traces, codes, tmp_path / "cut", log=lambda _: None
    )
    with pytest.raises(ValueError, match="--resume"):
        train_agent(
            _config(stage2_epochs=2, schedule="constant"), traces, codes, tmp_path / "cut", log=lambda _: None
        )
    # A run from before the schedule was recorded kept its rate constant: it resumes only as such.
    manifest_path = tmp_path / "cut" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    del manifest["config"]["schedule"]
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="schedule: 'constant' -> 'linear'"):
        train_agent(
            _config(stage2_epochs=2), traces, codes, tmp_path / "cut", resume=True, log=lambda _: None
        )
    resumed = train_agent(
        _config(stage2_epochs=2, schedule="constant"),
        traces,
        codes,
        tmp_path / "cut",
        resume=True,
        log=lambda _: None,
    )
    assert [(e["stage"], e["epoch"]) for e in resumed.epochs] == [(2, 2)]  # only the missing epoch ran
    a, b = _weights(full.out_dir), _weights(resumed.out_dir)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert sorted(p.name for p in (tmp_path / "cut" / "checkpoints").iterdir()) == [
        "stage1-epoch1",
        "stage2-epoch1",
        "stage2-epoch2",
    ]


def test_lora_and_no_persona_export_plain_models(tmp_path, small):
    traces, codes = small
    lora = train_agent(_config(lora=True, lora_rank=4), traces, codes, tmp_path / "lora", log=lambda _: None)
    assert (lora.out_dir / "adapter" / "adapter_config.json").exists()
    model = AutoModelForCausalLM.from_pretrained(lora.out_dir)
    assert not any("lora" in n for n, _ in model.named_parameters())
    stage1 = _weights(lora.out_dir)
    assert stage1.keys() == _weights(tmp_path / "lora" / "init").keys()


def test_cli_no_persona_baseline(tmp_path, small, capsys):
    traces, _ = small
    pq.write_table(traces, tmp_path / "traces.parquet")
    out = tmp_path / "plain"
    argv = [
        "train-agent",
        str(tmp_path),
        "--no-persona",
        "--out",
        str(out),
        "--workers",
        "0",
        "--stage2-epochs",
        "1",
        "--batch-size",
        "8",
        "--max-observation-tokens",
        "96",
    ]
    assert main(argv) == 0
    assert "stage 2 epoch 1: loss" in capsys.readouterr().out
    assert not (out / "persona_tokens.json").exists()
    assert [e["stage"] for e in json.loads((out / "manifest.json").read_text())["epochs"]] == [2]
    AutoModelForCausalLM.from_pretrained(out)
    assert main(argv) == 2  # a second run into a non-empty AGENT without --resume is refused
    assert main(["train-agent", str(tmp_path), "--out", str(tmp_path / "x"), "--workers", "0"]) == 2


def test_each_ray_worker_reads_its_own_copy_of_the_checkpoint(tmp_path, monkeypatch):
    """Ranks on one node resume from copies of their own: a shared download directory is written
    again by a late rank while an early one reads it."""
    saved = tmp_path / "checkpoint"
    saved.mkdir()
    (saved / "optimizer.pt").write_bytes(bytes(range(256)) * 64)
    sent = pickle.dumps(Checkpoint.from_directory(str(saved)))  # as Ray Train sends it to every rank
    monkeypatch.setattr(ray.train, "get_checkpoint", lambda: pickle.loads(sent))
    first, second = RayStore(), RayStore()
    assert len({first.latest(), second.latest(), saved}) == 3
    for store in (first, second):
        assert (store.latest() / "optimizer.pt").read_bytes() == (saved / "optimizer.pt").read_bytes()


@pytest.fixture(scope="module")
def ray_cluster():
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.mark.ray
def test_ray_train_two_workers_and_resume(tmp_path, small, ray_cluster):
    traces, codes = small
    lines: list[str] = []
    # With a validation merchant: both ranks score their half of it and stop alike (DDP over gloo).
    first = train_agent(_config(workers=2, validation_share=0.5), traces, codes, tmp_path, log=lines.append)
    assert [(e["stage"], e["epoch"]) for e in first.epochs] == [(1, 1), (2, 1)]
    assert all(e["tokens_per_s"] > 0 and e["val_loss"] > 0 for e in first.epochs)
    again = train_agent(
        _config(workers=2, stage2_epochs=2, validation_share=0.5),
        traces,
        codes,
        tmp_path,
        resume=True,
        log=lines.append,
    )
    assert [(e["stage"], e["epoch"]) for e in again.epochs][-1] == (2, 2)
    assert [(e["stage"], e["epoch"]) for e in again.history] == [(1, 1), (2, 1), (2, 2)]
    assert again.chosen[2] == min(again.history[1:], key=lambda e: e["val_loss"])["epoch"]
    model = AutoModelForCausalLM.from_pretrained(tmp_path)
    tok = AutoTokenizer.from_pretrained(tmp_path)
    PersonaTokens.load(tmp_path).check(tok)
    assert model.get_input_embeddings().num_embeddings == len(tok)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["finished"] and manifest["rows"]["examples"] == first.examples
    assert [e["val_loss"] for e in manifest["epochs"]] == [e["val_loss"] for e in again.history]
