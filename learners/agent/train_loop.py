"""The per-worker training loop of the agent (one Ray Train worker, or the caller's own process).

Stage 1 trains only the persona-token rows of the input embedding: every other parameter is frozen
and the embedding's gradient is masked to those rows; AdamW without weight decay then leaves every
other value bit-identical (a zero gradient gives a zero Adam update). Stage 2 trains the policy with
the tokens in place: all parameters, or LoRA adapters plus the persona rows (tokens.py).

Checkpoints: one per stage and epoch, holding the model (safetensors), the optimizer state and the
position (stage, epoch, step). Resuming loads the latest and continues with the next epoch; each
epoch's shuffle is seeded by (seed, stage, epoch), so a resumed run equals an uninterrupted one.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import pyarrow.parquet as pq
import torch
from peft import get_peft_model
from safetensors.torch import load_model, save_model
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from learners.agent.prompt import IGNORE_INDEX, PromptFormat, encode_prompt, encode_target
from learners.agent.tokens import PERSONA_TOKENS_FILE, PersonaTokens, persona_lora_config

MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.pt"
STATE_FILE = "state.json"


@dataclass(frozen=True, order=True)
class Position:
    """Where a checkpoint was taken: after ``epoch`` (1-based) of ``stage``, ``step`` optimizer steps in."""

    stage: int
    epoch: int
    step: int


class CheckpointStore(Protocol):
    """Where the loop reads its latest checkpoint and writes new ones (Ray Train or a local dir)."""

    def latest(self) -> Path | None: ...

    def save(self, directory: Path | None, metrics: dict) -> None:
        """Persist ``directory`` (None on ranks other than 0) with the epoch's metrics."""
        ...


class LocalStore:
    """Checkpoints under ``root/stage{S}-epoch{E}`` for in-process training (``workers=0``)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.metrics: list[dict] = []

    def latest(self) -> Path | None:
        found = sorted(self.root.glob("stage*-epoch*"), key=lambda p: _read_position(p) or Position(0, 0, 0))
        return found[-1] if found else None

    def save(self, directory: Path | None, metrics: dict) -> None:
        self.metrics.append(metrics)
        if directory is not None:
            target = self.root / f"stage{metrics['stage']}-epoch{metrics['epoch']}"
            target.mkdir(parents=True, exist_ok=True)
            for item in directory.iterdir():
                (target / item.name).write_bytes(item.read_bytes())


def _read_position(directory: Path) -> Position | None:
    path = directory / STATE_FILE
    if not path.exists():
        return None
    state = json.loads(path.read_text())
    return Position(state["stage"], state["epoch"], state["step"])


@dataclass
class Batch:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    tokens: int


def encode_examples(
    table_path: str, tokenizer, tokens: PersonaTokens | None, fmt: PromptFormat
) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, target ids) per example row of a Parquet file (examples.py schema)."""
    table = pq.read_table(table_path, columns=["observation", "action", "history", "goal", "code"])
    rows = zip(*(table.column(c).to_pylist() for c in table.column_names), strict=True)
    return [
        (
            encode_prompt(tokenizer, obs, code, goal, history, tokens, fmt),
            encode_target(tokenizer, action),
        )
        for obs, action, history, goal, code in rows
    ]


def collate(pairs: list[tuple[list[int], list[int]]], pad_id: int) -> Batch:
    """Right-padded ids, attention mask, and labels on the target tokens only."""
    width = max(len(p) + len(t) for p, t in pairs)
    ids = torch.full((len(pairs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(pairs), width), dtype=torch.long)
    labels = torch.full((len(pairs), width), IGNORE_INDEX, dtype=torch.long)
    for i, (prompt, target) in enumerate(pairs):
        n = len(prompt) + len(target)
        ids[i, :n] = torch.tensor(prompt + target)
        mask[i, :n] = 1
        labels[i, len(prompt) : n] = torch.tensor(target)
    return Batch(ids, mask, labels, int(mask.sum()))


def epoch_batches(
    data: list, batch_size: int, seed: int, stage: int, epoch: int, rank: int, world: int
) -> Iterator[list]:
    """This rank's batches of one epoch: a (seed, stage, epoch)-seeded permutation, split evenly across
    ranks (the few examples that do not divide evenly are left out of this epoch on every rank)."""
    order = np.random.default_rng([seed, stage, epoch]).permutation(len(data))
    per_rank = len(order) // world
    mine = order[rank * per_rank : (rank + 1) * per_rank]
    for start in range(0, len(mine), batch_size):
        yield [data[i] for i in mine[start : start + batch_size]]


def load_init(init_dir: str, device: torch.device) -> tuple[PreTrainedModel, object, PersonaTokens | None]:
    model = AutoModelForCausalLM.from_pretrained(init_dir).to(device)
    tokenizer = AutoTokenizer.from_pretrained(init_dir)
    tokens = PersonaTokens.load(init_dir) if (Path(init_dir) / PERSONA_TOKENS_FILE).exists() else None
    return model, tokenizer, tokens


def freeze_for_stage1(model: PreTrainedModel, tokens: PersonaTokens) -> Callable[[], None]:
    """Make only the persona rows of the input embedding trainable; returns the undo function."""
    for p in model.parameters():
        p.requires_grad_(False)
    weight = model.get_input_embeddings().weight
    weight.requires_grad_(True)
    mask = torch.zeros(weight.shape[0], 1, dtype=weight.dtype, device=weight.device)
    mask[list(tokens.token_ids)] = 1
    handle = weight.register_hook(lambda grad: grad * mask)

    def undo() -> None:
        handle.remove()
        for p in model.parameters():
            p.requires_grad_(True)

    return undo


def run_stages(
    cfg: dict,
    init_dir: str,
    train_path: str,
    store: CheckpointStore,
    rank: int,
    world: int,
    device: torch.device,
    log: Callable[[str], None],
) -> None:
    """Both stages from ``init_dir``, continuing after the latest checkpoint in ``store``."""
    torch.manual_seed(cfg["seed"])
    model, tokenizer, tokens = load_init(init_dir, device)
    fmt = PromptFormat(cfg["history_len"], cfg["max_observation_tokens"])
    data = encode_examples(train_path, tokenizer, tokens, fmt)
    if len(data) < world:
        raise ValueError(
            f"{train_path}: {len(data)} training examples for {world} workers; need at least one each"
        )
    latest = store.latest()
    done = _read_position(latest) if latest else None
    stages = [(1, cfg["stage1_epochs"], cfg["stage1_lr"], 0.0)] if tokens is not None else []
    stages.append((2, cfg["stage2_epochs"], cfg["stage2_lr"], cfg["weight_decay"]))
    for stage, epochs, lr, decay in stages:
        if epochs <= 0:
            continue
        if done is not None and done.stage > stage:
            continue  # the checkpoint loaded in a later stage already holds this stage's result
        if stage == 2 and cfg["lora"]:
            model = get_peft_model(
                model, persona_lora_config(model, tokens, cfg["lora_rank"], cfg["lora_alpha"])
            )
        undo = freeze_for_stage1(model, tokens) if stage == 1 else None
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=decay)
        start_epoch, step = 1, 0
        if done is not None:
            load_model(model, str(latest / MODEL_FILE), device=str(device))
            if done.stage == stage:
                optimizer.load_state_dict(
                    torch.load(latest / OPTIMIZER_FILE, weights_only=True, map_location=device)
                )
                start_epoch, step = done.epoch + 1, done.step
            done = None
        wrapped = _distributed(model, device) if world > 1 else model
        for epoch in range(start_epoch, epochs + 1):
            step, metrics = _train_epoch(
                wrapped,
                optimizer,
                data,
                tokenizer.pad_token_id,
                cfg,
                stage,
                epoch,
                epochs,
                step,
                lr,
                rank,
                world,
                device,
                log,
            )
            _save(model, optimizer, Position(stage, epoch, step), metrics, store, rank)
        if undo:
            undo()


def _distributed(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    ids = [device.index] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)


def _train_epoch(
    model, optimizer, data, pad_id, cfg, stage, epoch, epochs, step, lr, rank, world, device, log
):
    model.train()
    n_batches = -(-(len(data) // world) // cfg["batch_size"])
    window_tokens, window_start, losses = 0, time.perf_counter(), []
    total_tokens, epoch_start = 0, time.perf_counter()
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    for i, pairs in enumerate(
        epoch_batches(data, cfg["batch_size"], cfg["seed"], stage, epoch, rank, world), 1
    ):
        batch = collate(pairs, pad_id)
        for group in optimizer.param_groups:
            group["lr"] = lr * min(1.0, (step + 1) / max(1, cfg["warmup_steps"]))
        with autocast:
            out = model(
                input_ids=batch.input_ids.to(device),
                attention_mask=batch.attention_mask.to(device),
                labels=batch.labels.to(device),
            )
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        if cfg["max_grad_norm"] > 0:
            torch.nn.utils.clip_grad_norm_(
                [p for g in optimizer.param_groups for p in g["params"]], cfg["max_grad_norm"]
            )
        optimizer.step()
        step += 1
        losses.append(float(out.loss.detach()))
        window_tokens += batch.tokens
        total_tokens += batch.tokens
        if i % cfg["log_every"] == 0 or i == n_batches:
            rate = _all_ranks_sum(window_tokens, device, world) / max(
                time.perf_counter() - window_start, 1e-9
            )
            log(
                f"[stage {stage}] epoch {epoch}/{epochs} step {i}/{n_batches} "
                f"loss {np.mean(losses[-cfg['log_every'] :]):.4f} tokens/s {rate:,.0f}"
            )
            window_tokens, window_start = 0, time.perf_counter()
    seconds = time.perf_counter() - epoch_start
    tokens = _all_ranks_sum(total_tokens, device, world)
    metrics = {
        "stage": stage,
        "epoch": epoch,
        "step": step,
        "loss": float(np.mean(losses)) if losses else float("nan"),
        "tokens": tokens,
        "seconds": seconds,
        "tokens_per_s": tokens / max(seconds, 1e-9),
    }
    return step, metrics


def _all_ranks_sum(value: int, device: torch.device, world: int) -> int:
    if world == 1:
        return value
    total = torch.tensor([value], dtype=torch.long, device=device)
    torch.distributed.all_reduce(total)
    return int(total.item())


def _save(model, optimizer, position: Position, metrics: dict, store: CheckpointStore, rank: int) -> None:
    if rank != 0:
        store.save(None, metrics)
        return
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        save_model(model, str(directory / MODEL_FILE))
        torch.save(optimizer.state_dict(), directory / OPTIMIZER_FILE)
        (directory / STATE_FILE).write_text(json.dumps(position.__dict__))
        store.save(directory, metrics)
