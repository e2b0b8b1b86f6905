"""A run stopped after epoch 1 and resumed ends with the same codebook as an uninterrupted run."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from learners.vqvae.checkpoint import MODEL_FILE
from learners.vqvae.fit import VQVAEConfig, fit_codebook
from tests.learners.vqvae.conftest import TINY

pytestmark = pytest.mark.ray


def test_resume_reaches_the_uninterrupted_codebook(full_run, planted_data, tmp_path):
    run = tmp_path / "run"
    stopped = fit_codebook(planted_data[0], VQVAEConfig(**TINY, stop_after_epoch=1), run)
    assert stopped.epochs_done == 1
    resumed = fit_codebook(planted_data[0], VQVAEConfig(**TINY), run, resume=True)
    assert resumed.epochs_done == 3
    a = load_file(str(full_run.run_dir / MODEL_FILE))
    b = load_file(str(run / MODEL_FILE))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert [h["recon_loss"] for h in resumed.history] == [h["recon_loss"] for h in full_run.history]


def test_resume_without_a_previous_run_is_a_clear_error(planted_data, tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        fit_codebook(planted_data[0], VQVAEConfig(**TINY), tmp_path / "none", resume=True)
