"""Ray Train fit with 2 CPU workers (DDP over gloo): synced codebooks, checkpoints, run directory."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from learners.vqvae.checkpoint import MODEL_FILE, OPTIMIZER_FILE, load_model
from learners.vqvae.fit import VQVAEConfig, fit_codebook
from tests.learners.vqvae.conftest import TINY

pytestmark = pytest.mark.ray


def test_codebooks_are_identical_across_workers_every_epoch(full_run):
    assert [h["epoch"] for h in full_run.history] == [1.0, 2.0, 3.0]
    assert all(h["codebook_divergence"] == 0.0 for h in full_run.history)


def test_progress_metrics_are_reported(full_run):
    last = full_run.history[-1]
    for key in ("recon_loss", "commit_loss", "perplexity", "codes_in_use", "restarts", "buyers_per_s"):
        assert key in last
    assert 1.0 <= last["perplexity"] <= TINY["codes"]
    assert 1 <= last["codes_in_use"] <= TINY["codes"]


def test_checkpoint_loads_safely(full_run):
    weights = load_file(str(full_run.checkpoint / MODEL_FILE))
    assert weights["quantizer.codebook"].shape == (TINY["codes"], TINY["code_dim"])
    optimizer = torch.load(full_run.checkpoint / OPTIMIZER_FILE, weights_only=True)
    assert "state" in optimizer
    model, state = load_model(full_run.run_dir)
    assert state.epochs_done == 3
    assert torch.equal(model.quantizer.codebook, weights["quantizer.codebook"])


def test_run_directory_manifest(full_run, planted_data):
    manifest = json.loads((full_run.run_dir / "manifest.json").read_text())
    assert manifest["buyers_read"] == planted_data[1].num_rows
    assert manifest["buyers_kept"] + sum(manifest["buyers_quarantined"].values()) == manifest["buyers_read"]
    assert len(json.loads((full_run.run_dir / "history.json").read_text())) == 3


def test_refuses_to_overwrite_a_fit_without_resume(full_run, planted_data):
    with pytest.raises(ValueError, match="--resume"):
        fit_codebook(planted_data[0], VQVAEConfig(**TINY), full_run.run_dir)
