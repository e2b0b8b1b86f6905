"""A study's agents trained side by side against one at a time (engine/side_by_side.py).

  .venv/bin/python -m benchmarks.agents_side_by_side --study demo-run/study \
      [--config examples/study-demo.yaml] [--markdown FILE]

Runs the training stages of a finished study (its traces, codes and split, linked into a scratch
study directory) twice with the study's own agent settings: one at a time in this process, each
Ray Train worker with the machine's CPUs (``agents_side_by_side: false``), then side by side, each
agent in its own process with an equal share (the default). It prints each mode's wall seconds, their
ratio, and each agent's kept validation loss and rollout-calibration error, so that the two modes
are seen to do the same work: the two can differ in the last digits (one thread or two).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import yaml

from benchmarks.table_output import publish
from engine.study import Study
from engine.study_config import StudyConfig
from learners.config import config_from_dict

LINKED = ("data", "train-data", "codes", "traces", "split.json")
"""What the scratch study takes from the finished one: the inputs of its training stages."""


def agent_figures(agent: Path) -> dict:
    """The kept epoch's validation loss and the last rollout-calibration error of an agent."""
    epochs = json.loads((agent / "manifest.json").read_text()).get("epochs") or []
    losses = [m["val_loss"] for m in epochs if m.get("val_loss") is not None]
    calibration = json.loads((agent / "calibration.json").read_text()).get("rollouts", {})
    errors = calibration.get("code_error") or []
    return {
        "val_loss": f"{min(losses):.4f}" if losses else "–",
        "code_error": f"{errors[-1]:.3f}" if errors else "–",  # no persona: no per-code biases
    }


def run_mode(study: Path, config: StudyConfig, side_by_side: bool, root: Path) -> tuple[float, dict]:
    out = root / ("side-by-side" if side_by_side else "one-at-a-time")
    out.mkdir(parents=True)
    for name in LINKED:
        os.symlink((study / name).resolve(), out / name)
    split = json.loads((study / "split.json").read_text())
    runner = Study(replace(config, out=str(out), agents_side_by_side=side_by_side))
    start = time.perf_counter()
    paths = runner.agents(split)
    seconds = time.perf_counter() - start
    trained = {k: agent_figures(p) for k, p in paths.items() if (p / "calibration.json").exists()}
    return seconds, trained


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--study", type=Path, required=True, help="a finished study's directory")
    parser.add_argument("--config", type=Path, default=Path("examples/study-demo.yaml"))
    parser.add_argument("--markdown", type=Path)
    args = parser.parse_args()
    config = config_from_dict(StudyConfig, yaml.safe_load(args.config.read_text()), source=str(args.config))
    with tempfile.TemporaryDirectory(prefix="agents-side-by-side-") as scratch:
        one, one_agents = run_mode(args.study, config, False, Path(scratch))
        side, side_agents = run_mode(args.study, config, True, Path(scratch))
    lines = [
        f"agents of {args.study} ({args.config}), {os.cpu_count()} CPUs",
        "",
        "| mode | wall s | " + " | ".join(f"{k} val loss, code error" for k in one_agents) + " |",
        "|---|---:|" + "---:|" * len(one_agents),
    ]
    for name, seconds, agents in (("one at a time", one, one_agents), ("side by side", side, side_agents)):
        cells = [f"{a['val_loss']}, {a['code_error']}" for a in agents.values()]
        lines.append(f"| {name} | {seconds:.0f} | " + " | ".join(cells) + " |")
    lines += ["", f"side by side / one at a time: {side / one:.2f}"]
    publish(lines, args.markdown)


if __name__ == "__main__":
    main()
