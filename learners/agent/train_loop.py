"""The per-worker training loop of the agent (one Ray Train worker, or the caller's own process).

Stage 1 trains only the persona-token rows of the input embedding: every other parameter is frozen
and the embedding's gradient is masked to those rows; AdamW without weight decay then leaves every
other value bit-identical (a zero gradient gives a zero Adam update). Stage 2 trains the policy with
the tokens in place: all parameters, or LoRA adapters plus the persona rows (tokens.py). A step
takes a batch of random examples packed into rows (``collate``) and scores only their target tokens
(``TargetLoss``); the learning rate warms up and then follows ``cfg.schedule`` (``learning_rate``).

Validation and early stopping (both stages): with validation examples (whole merchants held out of
training, selection.py), every epoch of either stage ends with the validation loss: the mean
cross-entropy per target token, over all validation examples, no shuffling, leaving out the tokens
that name an item (an item action's id, a suggested search's query: scoring.py's
``unseen_store_tokens``). Those are what a store the agent never saw gives no way to predict, and the
scoring rule only ranks the page's own items by them; counted in, they decided when training stopped.
On the truth benchmark's agent (benchmarks/experiment_truth.py, 1,500 validation examples) the item
tokens' loss went 7.15 -> 8.35 nats from epoch 1 to 2 while the others' went 0.686 -> 0.675, so the
whole loss rose and training kept epoch 1. A stage stops when that loss has not
improved (strictly) for ``patience`` epochs in a row (0: never early; the stage's epoch count is the
cap either way), and the model goes back to the stage's best epoch before the next stage starts (and
before export, after stage 2). Without validation examples every epoch runs and the last one is kept.

Checkpoints: one per stage and epoch, holding the model after that epoch (safetensors), the optimizer
state, the stage's best weights so far when they are not this epoch's (``best.safetensors``) and
``state.json``: the position (stage, epoch, step), the early-stopping state (best epoch and loss,
epochs without improvement) and the metrics of every epoch so far (``history``). Each checkpoint is
self-contained (Ray Train hands back only the latest). Resuming loads the latest and continues with
the next epoch; each epoch's shuffle is seeded by (seed, stage, epoch) and validation draws nothing,
so a resumed run equals an uninterrupted one: same weights, same losses, same chosen epochs.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np
import pyarrow.parquet as pq
import torch
from peft import get_peft_model
from safetensors.torch import load_model, save_model
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from learners.agent.prompt import IGNORE_INDEX, PromptFormat, encode_prompt, encode_target
from learners.agent.scoring import unseen_store_tokens
from learners.agent.tokens import PERSONA_TOKENS_FILE, PersonaTokens, persona_lora_config

if TYPE_CHECKING:
    from learners.agent.train_config import AgentTrainConfig

MODEL_FILE = "model.safetensors"
BEST_FILE = "best.safetensors"
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
    state = read_state(directory)
    return None if state is None else Position(state["stage"], state["epoch"], state["step"])


def read_state(directory: Path) -> dict | None:
    """A checkpoint's ``state.json`` (position, early-stopping state, history), or None."""
    path = directory / STATE_FILE
    return json.loads(path.read_text()) if path.exists() else None


def chosen_weights(directory: Path) -> Path:
    """The weights a checkpoint's stage would keep: its best epoch's, else the epoch's own."""
    best = directory / BEST_FILE
    return best if best.exists() else directory / MODEL_FILE


@dataclass
class EarlyStopping:
    """Early-stopping state of one stage: the best validation loss so far and when it was reached."""

    patience: int
    """Stop after this many epochs in a row without improvement (0: never early)."""
    best_epoch: int | None = None
    best_loss: float | None = None
    bad_epochs: int = 0
    """Epochs since the best one."""

    @property
    def stopped(self) -> bool:
        return self.patience > 0 and self.bad_epochs >= self.patience

    def update(self, epoch: int, loss: float) -> bool:
        """Record an epoch's validation loss; True when it is the best so far."""
        if (
            self.best_loss is None
            or loss < self.best_loss
            or (math.isnan(self.best_loss) and not math.isnan(loss))
        ):
            self.best_epoch, self.best_loss, self.bad_epochs = epoch, loss, 0
            return True
        self.bad_epochs += 1
        return False

    def to_state(self) -> dict:
        return {"best_epoch": self.best_epoch, "best_loss": self.best_loss, "bad_epochs": self.bad_epochs}

    @classmethod
    def from_state(cls, state: dict, patience: int) -> EarlyStopping:
        return cls(patience, state.get("best_epoch"), state.get("best_loss"), state.get("bad_epochs", 0))


@dataclass
class Batch:
    input_ids: torch.Tensor
    position_ids: torch.Tensor
    """Each example's own positions (0, 1, ...): where they restart, a new example begins."""
    labels: torch.Tensor
    tokens: int
    """Real (unpadded) tokens."""


def encode_examples(
    table_path: str, tokenizer, tokens: PersonaTokens | None, fmt: PromptFormat
) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, target ids) per example row of a Parquet file (examples.py schema)."""
    return encode_table(pq.read_table(table_path, columns=list(ENCODED_COLUMNS)), tokenizer, tokens, fmt)


ENCODED_COLUMNS = ("observation", "action", "history", "goal", "code")


def encode_validation(
    table_path: str, tokenizer, tokens: PersonaTokens | None, fmt: PromptFormat
) -> list[tuple[list[int], list[int], list[int]]]:
    """(prompt ids, target ids, labels) per example row: the labels are the target ids but those that
    name an item (``unseen_store_tokens``), which are ``IGNORE_INDEX``."""
    table = pq.read_table(table_path, columns=list(ENCODED_COLUMNS))
    out = []
    for (prompt, target), action in zip(
        encode_table(table, tokenizer, tokens, fmt), table.column("action").to_pylist(), strict=True
    ):
        k = unseen_store_tokens(tokenizer, action, target)
        out.append((prompt, target, target[: len(target) - k] + [IGNORE_INDEX] * k))
    return out


def encode_table(
    table, tokenizer, tokens: PersonaTokens | None, fmt: PromptFormat
) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, target ids) per example row of a table (examples.py schema)."""
    rows = zip(*(table.column(c).to_pylist() for c in ENCODED_COLUMNS), strict=True)
    return [
        (
            encode_prompt(tokenizer, obs, code, goal, history, tokens, fmt),
            encode_target(tokenizer, action),
        )
        for obs, action, history, goal, code in rows
    ]


def collate(pairs: list[tuple[list[int], ...]], pad_id: int) -> Batch:
    """The examples, (prompt ids, target ids) or (prompt ids, target ids, labels), packed into as few
    rows as first-fit decreasing allows, each row as wide as the longest example, with labels on the
    target tokens only (the target ids themselves unless given). Each example keeps its own positions and
    sees only its own tokens (transformers builds a block-causal mask from position ids that restart;
    ``TargetLoss``), so the loss equals that of a right-padded batch: a batch of random examples is
    about half padding when padded, a few percent when packed."""
    lengths = [len(pair[0]) + len(pair[1]) for pair in pairs]
    width = max(lengths)
    rows: list[list[int]] = []
    free: list[int] = []
    for i in sorted(range(len(pairs)), key=lambda i: -lengths[i]):
        row = next((r for r, space in enumerate(free) if space >= lengths[i]), None)
        if row is None:
            rows.append([])
            free.append(width)
            row = len(rows) - 1
        rows[row].append(i)
        free[row] -= lengths[i]
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    positions = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    for r, members in enumerate(rows):
        at = 0
        for i in members:
            prompt, target, *given = pairs[i]
            n = lengths[i]
            ids[r, at : at + n] = torch.tensor(prompt + target)
            positions[r, at : at + n] = torch.arange(n)
            labels[r, at + len(prompt) : at + n] = torch.tensor(given[0] if given else target)
            at += n
        positions[r, at:] = torch.arange(width - at)  # the padding: a sequence of its own
    return Batch(ids, positions, labels, sum(lengths))


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


def _length(pair: tuple[list[int], ...]) -> int:
    return len(pair[0]) + len(pair[1])


class TargetLoss(torch.nn.Module):
    """Mean cross-entropy per target token of a causal LM on a packed ``Batch``, with its output head
    applied only where a label is set: targets are a few tokens per example (about 3% of a demo
    batch), and full-sequence logits cost as much as the rest of a tiny model's forward pass. Equals
    the model's own loss on the same examples right-padded."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, input_ids: torch.Tensor, position_ids: torch.Tensor, labels: torch.Tensor
    ) -> torch.Tensor:
        causal = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        # No attention mask and no cache: transformers then reads packed sequences from position_ids.
        hidden = causal.get_decoder()(
            input_ids=input_ids, position_ids=position_ids, use_cache=False
        ).last_hidden_state
        targets = labels[:, 1:]
        picked = targets != IGNORE_INDEX
        logits = causal.get_output_embeddings()(hidden[:, :-1][picked])
        return torch.nn.functional.cross_entropy(logits.float(), targets[picked])


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
    cfg: AgentTrainConfig,
    init_dir: str,
    train_path: str,
    store: CheckpointStore,
    rank: int,
    world: int,
    device: torch.device,
    log: Callable[[str], None],
    validation_path: str | None = None,
) -> None:
    """Both stages from ``init_dir``, continuing after the latest checkpoint in ``store``; with
    ``validation_path``, early stopping on its examples (module doc)."""
    torch.manual_seed(cfg.seed)
    model, tokenizer, tokens = load_init(init_dir, device)
    fmt = PromptFormat(cfg.history_len, cfg.max_observation_tokens)
    data = encode_examples(train_path, tokenizer, tokens, fmt)
    validation = encode_validation(validation_path, tokenizer, tokens, fmt) if validation_path else []
    if len(data) < world:
        raise ValueError(
            f"{train_path}: {len(data)} training examples for {world} workers; need at least one each"
        )
    patience = cfg.patience
    latest = store.latest()
    state = read_state(latest) if latest else None
    history: list[dict] = list(state.get("history", [])) if state else []
    stages = [(1, cfg.stage1_epochs, cfg.stage1_lr, 0.0)] if tokens is not None else []
    stages.append((2, cfg.stage2_epochs, cfg.stage2_lr, cfg.weight_decay))
    for stage, epochs, lr, decay in stages:
        if epochs <= 0:
            continue
        if state is not None and state["stage"] > stage:
            continue  # the checkpoint loaded in a later stage already holds this stage's result
        if state is not None and state["stage"] < stage:
            # An earlier stage's last checkpoint (that stage did not run here): its kept weights.
            load_model(model, str(chosen_weights(latest)), device=str(device))
            state = None
        if stage == 2 and cfg.lora:
            model = get_peft_model(model, persona_lora_config(model, tokens, cfg.lora_rank, cfg.lora_alpha))
        undo = freeze_for_stage1(model, tokens) if stage == 1 else None
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=decay)
        start_epoch, step, stopping = 1, 0, EarlyStopping(patience)
        best: bytes | None = None  # the stage's best weights when they are not the current ones
        if state is not None:  # a checkpoint of this stage: continue after it
            load_model(model, str(latest / MODEL_FILE), device=str(device))
            optimizer.load_state_dict(
                torch.load(latest / OPTIMIZER_FILE, weights_only=True, map_location=device)
            )
            start_epoch, step = state["epoch"] + 1, state["step"]
            stopping = EarlyStopping.from_state(state, patience)
            if (latest / BEST_FILE).exists():
                best = (latest / BEST_FILE).read_bytes()
            state = None
        wrapped = _distributed(TargetLoss(model), device) if world > 1 else TargetLoss(model)
        last = start_epoch - 1
        for epoch in range(start_epoch, epochs + 1):
            if stopping.stopped:
                break
            if validation and stopping.best_epoch is not None and stopping.best_epoch == last:
                best = _snapshot(model)  # the best weights so far, kept before this epoch moves them
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
            last = epoch
            if validation:
                loss = validation_loss(
                    model, validation, tokenizer.pad_token_id, cfg.batch_size, rank, world, device
                )
                if stopping.update(epoch, loss):
                    best = None  # this epoch's weights are the best: the checkpoint's own
                metrics |= {"val_loss": loss, "best_epoch": stopping.best_epoch, "stopped": stopping.stopped}
                log(
                    f"[stage {stage}] epoch {epoch}/{epochs} validation loss {loss:.4f} (best"
                    f" {stopping.best_loss:.4f} at epoch {stopping.best_epoch}"
                    + (
                        f"; stopping: no improvement for {stopping.bad_epochs} epochs)"
                        if stopping.stopped
                        else ")"
                    )
                )
            history.append(metrics)
            _save(
                model, optimizer, Position(stage, epoch, step), stopping, history, best, metrics, store, rank
            )
        if stopping.best_epoch is not None and stopping.best_epoch != last:
            if best is None:
                raise RuntimeError(
                    f"stage {stage}: the weights of its best epoch {stopping.best_epoch} are missing"
                )
            _restore(model, best, device)
            log(
                f"[stage {stage}] kept epoch {stopping.best_epoch} of {last} (validation loss"
                f" {stopping.best_loss:.4f})"
            )
        if undo:
            undo()


def validation_loss(
    model: torch.nn.Module,
    data: list[tuple[list[int], ...]],
    pad_id: int,
    batch_size: int,
    rank: int,
    world: int,
    device: torch.device,
) -> float:
    """Mean cross-entropy per labelled target token over ``data`` (``collate``'s examples; this rank
    scores every ``world``-th example; the sums are added across ranks), in a fixed order, without
    gradients."""
    was_training = model.training
    model.eval()
    mine = sorted(data[rank::world], key=_length)
    target_loss = TargetLoss(model)
    total, count = 0.0, 0
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    with torch.no_grad():
        for start in range(0, len(mine), batch_size):
            batch = collate(mine[start : start + batch_size], pad_id)
            n = int((batch.labels[:, 1:] != IGNORE_INDEX).sum())
            if n == 0:
                continue
            with autocast:
                loss = target_loss(
                    batch.input_ids.to(device), batch.position_ids.to(device), batch.labels.to(device)
                )
            total += float(loss) * n
            count += n
    model.train(was_training)
    if world > 1:
        sums = torch.tensor([total, float(count)], dtype=torch.float64, device=device)
        torch.distributed.all_reduce(sums)
        total, count = float(sums[0]), int(sums[1])
    return total / count if count else float("nan")


def _snapshot(model: torch.nn.Module) -> bytes:
    """The model's weights as safetensors bytes (shared tensors once, as in checkpoints)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / MODEL_FILE
        save_model(model, str(path))
        return path.read_bytes()


def _restore(model: torch.nn.Module, weights: bytes, device: torch.device) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / MODEL_FILE
        path.write_bytes(weights)
        load_model(model, str(path), device=str(device))


def _distributed(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    ids = [device.index] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)


def _train_epoch(
    model, optimizer, data, pad_id, cfg, stage, epoch, epochs, step, lr, rank, world, device, log
):
    model.train()
    n_batches = -(-(len(data) // world) // cfg.batch_size)
    window_tokens, window_start, losses = 0, time.perf_counter(), []
    total_tokens, epoch_start = 0, time.perf_counter()
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    for i, pairs in enumerate(epoch_batches(data, cfg.batch_size, cfg.seed, stage, epoch, rank, world), 1):
        batch = collate(pairs, pad_id)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(cfg, lr, step, epochs * n_batches)
        with autocast:
            loss = model(batch.input_ids.to(device), batch.position_ids.to(device), batch.labels.to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(
                [p for g in optimizer.param_groups for p in g["params"]], cfg.max_grad_norm
            )
        optimizer.step()
        step += 1
        losses.append(float(loss.detach()))
        window_tokens += batch.tokens
        total_tokens += batch.tokens
        if i % cfg.log_every == 0 or i == n_batches:
            rate = _all_ranks_sum(window_tokens, device, world) / max(
                time.perf_counter() - window_start, 1e-9
            )
            log(
                f"[stage {stage}] epoch {epoch}/{epochs} step {i}/{n_batches} "
                f"loss {np.mean(losses[-cfg.log_every :]):.4f} tokens/s {rate:,.0f}"
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


def learning_rate(cfg: AgentTrainConfig, peak: float, step: int, total_steps: int) -> float:
    """The rate of a stage's optimizer step ``step`` (0-based) of at most ``total_steps``: linear
    warm-up, then ``cfg.schedule``."""
    rate = peak * min(1.0, (step + 1) / max(1, cfg.warmup_steps))
    if cfg.schedule == "linear":
        rate *= max(0.0, 1 - step / max(1, total_steps))
    return rate


def _all_ranks_sum(value: int, device: torch.device, world: int) -> int:
    if world == 1:
        return value
    total = torch.tensor([value], dtype=torch.long, device=device)
    torch.distributed.all_reduce(total)
    return int(total.item())


def _save(
    model,
    optimizer,
    position: Position,
    stopping: EarlyStopping,
    history: list[dict],
    best: bytes | None,
    metrics: dict,
    store: CheckpointStore,
    rank: int,
) -> None:
    if rank != 0:
        store.save(None, metrics)
        return
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        save_model(model, str(directory / MODEL_FILE))
        torch.save(optimizer.state_dict(), directory / OPTIMIZER_FILE)
        if best is not None and stopping.best_epoch != position.epoch:
            (directory / BEST_FILE).write_bytes(best)
        state = position.__dict__ | stopping.to_state() | {"history": history}
        (directory / STATE_FILE).write_text(json.dumps(state))
        store.save(directory, metrics)
