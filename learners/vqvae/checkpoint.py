"""Checkpoint and run-directory files of the VQ-VAE: safetensors weights plus JSON, nothing pickled.

A directory written by ``save_state`` holds
  model.safetensors      every parameter and buffer (codebook, EMA counts and sums, idle steps, ...)
  optimizer.pt           the Adam state, read back with ``torch.load(weights_only=True)``
  rng.safetensors        torch's global RNG state and the quantizer's generator state
  state.json             the config, feature statistics, epochs done and the per-epoch history
A finished run directory (``simpersona fit-personas --out RUN``) holds model.safetensors and
state.json, enough to rebuild the model for assignment with ``load_model``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from learners.vqvae.dataset import FeatureStats
from learners.vqvae.model import BuyerVQVAE, ModelShape

MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.pt"
RNG_FILE = "rng.safetensors"
STATE_FILE = "state.json"


@dataclass
class TrainingState:
    """What a checkpoint says besides tensors."""

    config: dict[str, Any]
    """The VQVAEConfig fields of the run."""
    stats: FeatureStats
    epochs_done: int
    history: list[dict[str, float]]
    """One dict of metrics per finished epoch."""


def build_model(config: dict[str, Any]) -> BuyerVQVAE:
    """A fresh model with the shapes and quantizer settings of a VQVAEConfig dict."""
    shape = ModelShape(
        codes=int(config["codes"]),
        code_dim=int(config["code_dim"]),
        hidden=int(config["hidden"]),
        event_dim=int(config["event_dim"]),
        encoder=str(config["encoder"]),
        max_seq_len=int(config["max_seq_len"]),
    )
    return BuyerVQVAE(
        shape,
        decay=float(config["decay"]),
        beta=float(config["beta"]),
        dead_after=int(config["dead_after"]),
        seed=int(config["seed"]),
    )


def _write_state(directory: Path, state: TrainingState) -> None:
    payload = {
        "config": state.config,
        "feature_stats": {"mean": state.stats.mean, "std": state.stats.std},
        "epochs_done": state.epochs_done,
        "history": state.history,
    }
    (directory / STATE_FILE).write_text(json.dumps(payload, indent=1))


def read_state(directory: str | Path) -> TrainingState:
    """The JSON part of a checkpoint or run directory."""
    path = Path(directory) / STATE_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: not a VQ-VAE run or checkpoint directory")
    data = json.loads(path.read_text())
    stats = FeatureStats(mean=data["feature_stats"]["mean"], std=data["feature_stats"]["std"])
    return TrainingState(data["config"], stats, int(data["epochs_done"]), list(data["history"]))


def save_model(directory: Path, model: BuyerVQVAE, state: TrainingState) -> None:
    """Weights and state.json: what assignment needs."""
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, str(directory / MODEL_FILE))
    _write_state(directory, state)


def save_state(
    directory: Path, model: BuyerVQVAE, optimizer: torch.optim.Optimizer, state: TrainingState
) -> None:
    """A full training checkpoint (model, optimizer, RNG states, JSON state)."""
    save_model(directory, model, state)
    torch.save(optimizer.state_dict(), directory / OPTIMIZER_FILE)
    save_file(
        {"torch": torch.get_rng_state(), "quantizer": model.quantizer.generator_state()},
        str(directory / RNG_FILE),
    )


def load_weights(directory: str | Path, model: BuyerVQVAE, device: torch.device | str = "cpu") -> None:
    model.load_state_dict(load_file(str(Path(directory) / MODEL_FILE), device=str(device)))


def load_state(
    directory: str | Path,
    model: BuyerVQVAE,
    optimizer: torch.optim.Optimizer,
    device: torch.device | str = "cpu",
) -> TrainingState:
    """Restore model, optimizer and RNG states saved by ``save_state``; returns the JSON state."""
    directory = Path(directory)
    load_weights(directory, model, device)
    optimizer.load_state_dict(torch.load(directory / OPTIMIZER_FILE, map_location=device, weights_only=True))
    rng = load_file(str(directory / RNG_FILE))
    torch.set_rng_state(rng["torch"])
    model.quantizer.set_generator_state(rng["quantizer"])
    return read_state(directory)


def load_model(run_dir: str | Path) -> tuple[BuyerVQVAE, TrainingState]:
    """The fitted model of a run (or checkpoint) directory in eval mode, with its state."""
    state = read_state(run_dir)
    model = build_model(state.config)
    load_weights(run_dir, model)
    model.eval()
    return model, state
