"""Ray's own output goes to RUN/ray.log; the commands print their progress once (`--verbose`: Ray too)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from engine.cli import build_parser
from engine.console_log import LOG_FILE, _route_loggers

# Lines only Ray itself writes: worker/actor prefixes, its loggers' format, its Train internals.
RAY_MARKERS = ("Failed to query", "WARNING", "(RayTrainWorker", "(TrainController", "ray.")


def simpersona(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "engine.cli", *argv], capture_output=True, text=True, check=False, timeout=600
    )


def console(done: subprocess.CompletedProcess[str]) -> list[str]:
    return done.stdout.splitlines() + done.stderr.splitlines()


def ray_lines(lines: list[str], log: Path) -> list[str]:
    """Console lines that came from Ray (the one line naming the log file is the command's own)."""
    own = f"Ray logs: {log}"
    return [line for line in lines if not line.startswith(own) and any(m in line for m in RAY_MARKERS)]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("console")
    done = simpersona(
        "synth", "--out", str(root / "raw"), "--buyers", "60", "--merchants", "2", "--seed", "1"
    )
    assert done.returncode == 0, done.stderr
    raw = root / "raw"
    done = simpersona(
        "prepare",
        str(raw / "logs"),
        "--mapping",
        str(raw / "mapping.yaml"),
        "--out",
        str(root / "data"),
        "--no-progress",
    )
    assert done.returncode == 0, done.stderr
    return root / "data"


FIT = ["--codes", "4", "--epochs", "2", "--warmup-epochs", "1", "--workers", "1", "--no-report"]
# 32 examples in batches of 8, a progress line every 2 steps: steps 2 and 4 of each stage.
TRAIN = [
    "--base-model",
    "tiny",
    "--workers",
    "1",
    "--stage1-epochs",
    "1",
    "--stage2-epochs",
    "1",
    "--max-examples",
    "32",
    "--batch-size",
    "8",
    "--log-every",
    "2",
]


def test_fit_then_train_print_progress_once_and_ray_only_to_its_log(data: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    fit = simpersona("fit-personas", str(data), *FIT, "--out", str(run))
    assert fit.returncode == 0, fit.stderr
    lines = console(fit)
    epochs = Counter(line.split("  ")[0] for line in lines if line.startswith("epoch "))
    assert epochs == {"epoch 1/2": 1, "epoch 2/2": 1}
    assert ray_lines(lines, run / LOG_FILE) == []
    assert [line for line in lines if "ray.log" in line] == [
        f"Ray logs: {run / LOG_FILE}  (simpersona --verbose shows them here too)"
    ]
    log = (run / LOG_FILE).read_text()
    assert "Started a local Ray instance" in log and "(TrainController pid=" in log

    agent = tmp_path / "agent"
    train = simpersona("train-agent", str(data), "--personas", str(run), *TRAIN, "--out", str(agent))
    assert train.returncode == 0, train.stderr
    lines = console(train)
    progress = Counter(line for line in lines if line.startswith("[stage "))
    assert set(progress.values()) == {1}
    assert sorted(" ".join(line.split()[:6]) for line in progress) == [
        "[stage 1] epoch 1/1 step 2/4",
        "[stage 1] epoch 1/1 step 4/4",
        "[stage 2] epoch 1/1 step 2/4",
        "[stage 2] epoch 1/1 step 4/4",
    ]
    assert ray_lines(lines, agent / LOG_FILE) == []
    assert "(RayTrainWorker pid=" in (agent / LOG_FILE).read_text()

    # Where a simulation loads the agent (the driver plays chunks too), no loading bar reaches the
    # console once a stage has quieted model loading; without it the bar is there.
    load = (
        f"from transformers import AutoModelForCausalLM; AutoModelForCausalLM.from_pretrained({str(agent)!r})"
    )
    quiet = "from engine.console_log import quiet_model_loading; quiet_model_loading(); "
    shown = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_DISABLE_PROGRESS_BARS", "TQDM_DISABLE")}
    for code, bar in ((load, True), (quiet + load, False)):
        done = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=shown
        )
        assert done.returncode == 0, done.stderr
        assert ("Loading weights" in done.stderr) is bar


def test_verbose_brings_ray_back_to_the_console(data: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    done = simpersona("--verbose", "fit-personas", str(data), *FIT, "--out", str(run))
    assert done.returncode == 0, done.stderr
    lines = console(done)
    assert any("(TrainController" in line for line in lines)
    assert any("Started a local Ray instance" in line for line in lines)
    epochs = Counter(line.split("  ")[0] for line in lines if line.startswith("epoch "))
    assert epochs == {"epoch 1/2": 1, "epoch 2/2": 1}  # the relay's lines, still once
    assert "(TrainController pid=" in (run / LOG_FILE).read_text()  # and the file has them as well


def test_ray_loggers_write_to_the_file_and_are_restored(tmp_path: Path, capsys) -> None:
    ray_logger = logging.getLogger("ray")
    before = list(ray_logger.handlers)
    with open(tmp_path / LOG_FILE, "w", encoding="utf-8") as file:
        undo = _route_loggers(file, verbose=False)
        logging.getLogger("ray.train").warning("a warning of Ray Train")
        logging.getLogger("ray.data").info("a note of Ray Data")
        undo()
    assert capsys.readouterr().err == ""
    written = (tmp_path / LOG_FILE).read_text()
    assert "WARNING ray.train: a warning of Ray Train" in written
    assert "INFO ray.data: a note of Ray Data" in written
    assert ray_logger.handlers == before


def test_verbose_is_accepted_before_and_after_the_command() -> None:
    parser = build_parser("inspect")
    assert parser.parse_args(["--verbose", "inspect", "data"]).verbose
    assert parser.parse_args(["inspect", "data", "--verbose"]).verbose
    assert not parser.parse_args(["inspect", "data"]).verbose
