"""Stages run side by side, each in a process of its own.

A study trains two or three agents. One at a time, each leaves most of a small machine idle for part
of its run: one Ray Train worker's threads scale poorly past one core, and an agent's data
preparation and calibration run in its own driver. So the study can run each agent's training stage
in its own process (``python -m engine.side_by_side JOB``: the stage function on the config saved in
JOB, as ``simpersona train-agent`` would run it), with an equal share of the machine's CPUs: its
Ray Train workers' CPUs and its driver's torch threads. Each process starts its own Ray, or joins
the cluster ``RAY_ADDRESS`` names, as any driver does. Its console output goes to a log file and is
printed once, when it ends, so no two stages' lines are interleaved.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import engine
from engine import stage_configs, stages
from engine.stage_configs import command_line
from learners.config import config_from_dict, config_to_dict
from learners.worker_cpus import spread_cpus

TAIL_LINES = 30
"""Lines of a failed stage's output repeated in its error."""


@dataclass
class SideStage:
    """One stage to run side by side: its heading, the ``engine.stages`` function that runs it (its
    process finds it there by name), and its stage config (with an ``out`` directory)."""

    what: str
    function: Callable[[Any, bool], Any]
    config: object


def shared_cpus(stages_at_once: int, workers: int, requested: int = 0) -> tuple[int, int | None]:
    """Each stage's Ray Train worker CPUs and its process's torch threads, for ``stages_at_once``
    stages of ``workers`` workers (0: training in the driver) on this machine: an equal share of its
    CPUs, or ``requested`` per worker. On a cluster (``RAY_ADDRESS``) each process sizes its workers
    itself."""
    if os.environ.get("RAY_ADDRESS"):
        return requested, None
    cpus = requested or spread_cpus([os.cpu_count() or 1], stages_at_once * max(workers, 1))
    return cpus, cpus


def run_side_by_side(
    side: Sequence[SideStage], folder: str | Path, threads: int | None, verbose: bool = False
) -> dict[str, float]:
    """Run the stages ``side`` at once, each in its own process with ``threads`` torch threads (None:
    the default); print each one's command now and its output when it ends. In ``folder``, per
    stage (by its ``out``'s name), the job its process runs (NAME.json) and its output (NAME.log).
    Returns each stage's seconds by heading; raises when one fails, after stopping the others."""
    env = dict(os.environ)
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    # The processes import this very code, wherever it was imported from here.
    root = str(Path(engine.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    for stage in side:
        print(f"\n== {stage.what}: {command_line(stage.config)}", flush=True)
    print(f"   ({len(side)} side by side; each one's lines follow when it ends)", flush=True)
    running: dict[str, tuple[subprocess.Popen, Path, float]] = {}
    seconds: dict[str, float] = {}
    try:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        for stage in side:
            name = Path(stage.config.out).name  # type: ignore[attr-defined]
            job = {
                "function": stage.function.__name__,
                "config_type": type(stage.config).__name__,
                "config": config_to_dict(stage.config),
                "verbose": verbose,
            }
            (folder / f"{name}.json").write_text(json.dumps(job, indent=1) + "\n", encoding="utf-8")
            with open(folder / f"{name}.log", "w", encoding="utf-8") as log:
                command = [sys.executable, "-m", "engine.side_by_side", str(folder / f"{name}.json")]
                process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
            running[stage.what] = (process, folder / f"{name}.log", time.perf_counter())
        while running:
            for what, (process, log_path, start) in list(running.items()):
                code = process.poll()
                if code is None:
                    continue
                del running[what]
                seconds[what] = round(time.perf_counter() - start, 1)
                lines = log_path.read_text(encoding="utf-8", errors="replace").splitlines()
                if code != 0:
                    tail = "\n".join(lines[-TAIL_LINES:])
                    raise RuntimeError(f"{what} failed (exit {code}); its output is in {log_path}:\n{tail}")
                print(f"\n== {what}: ended in {seconds[what]:.0f} s (its output, also in {log_path})")
                print("\n".join(lines), flush=True)
            time.sleep(0.2)
    finally:
        for process, _, _ in running.values():
            process.terminate()
        for process, _, _ in running.values():
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
    return seconds


def run_job(path: str | Path) -> None:
    """Run the stage saved in the job file ``path`` and print its lines, as its command would."""
    job = json.loads(Path(path).read_text(encoding="utf-8"))
    config = config_from_dict(getattr(stage_configs, job["config_type"]), job["config"], source=str(path))
    for line in getattr(stages, job["function"])(config, job["verbose"]).lines():
        print(line, flush=True)


if __name__ == "__main__":
    run_job(sys.argv[1])
