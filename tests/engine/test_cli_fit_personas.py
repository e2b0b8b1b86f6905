"""`simpersona fit-personas`: too few buyers refused before training with nothing in --out; thin codes
warned about; the summary line counts the codes the report counts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from engine.cli import main
from tests.learners.vqvae.conftest import make_buyers, write_prepared

SMALL = ["--code-dim", "6", "--hidden", "16", "--event-dim", "8", "--max-seq-len", "16", "--batch-size", "64"]


def test_too_few_buyers_are_refused_before_training_and_nothing_is_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = write_prepared(tmp_path / "data", make_buyers(2, seed=0)[0])
    out = tmp_path / "personas"
    assert main(["fit-personas", str(data), "--codes", "4", "--epochs", "3", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "2 buyers kept, fewer than --codes 4: fix: --codes 2 or fewer, or more data" in err
    assert not out.exists()


@pytest.mark.ray
@pytest.mark.slow
def test_thin_codes_warn_and_the_summary_matches_metrics_json(tmp_path: Path) -> None:
    data = write_prepared(tmp_path / "data", make_buyers(24, seed=3)[0])
    out = tmp_path / "personas"
    argv = ["fit-personas", str(data), "--codes", "4", "--epochs", "2", "--warmup-epochs", "1"]
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "engine.cli",
            *argv,
            "--workers",
            "1",
            "--seed",
            "3",
            *SMALL,
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    warnings = [line for line in lines if line.startswith("warning: ")]
    assert warnings == [
        "warning: 24 buyers kept for --codes 4: 6.0 buyers per code (fewer than 10), so the codes will be"
        " thin; fewer --codes or more data give each more buyers"
    ]
    epochs = [line for line in lines if line.startswith("epoch ")]
    assert len(epochs) == 2 and all("codes hit this epoch " in line for line in epochs)
    metrics = json.loads((out / "metrics.json").read_text())
    (summary,) = [line for line in lines if line.startswith("fitted 2 epochs")]
    assert (
        f"(codes in use {int(metrics['codes_in_use'])}/4, perplexity {metrics['perplexity']:.1f})" in summary
    )
    (row,) = [line for line in lines if line.strip().startswith("codes_in_use")]
    assert f"VQ-VAE {metrics['codes_in_use']:.4g} " in row
