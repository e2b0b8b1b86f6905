"""Rollout calibration under unseen ids against the replayed stores as they are (engine/unseen_stores.py).

  .venv/bin/python -m benchmarks.unseen_calibration --study demo-run/study \
      [--config examples/study-demo.yaml] [--seeds 0,1,2] [--visits 1600] [--markdown FILE]

Takes a finished study's persona agent back to its per-step biases and refines them twice with the
study's settings (``--visits`` where its recipe leaves rollout calibration off): on the replayed
stores as they are (the baseline) and under ids it never saw. Then, for each draw seed, simulates
the held-out merchants' same-window buyers with the study's own agent and with each of the two (the
study's simulate section, 200 visits per merchant for the demo) and prints CRA, ARA and simulated
minus real conversion, each draw's and their mean, and the calibration's seconds both ways (a
ratio). The same seed draws the same buyers for every agent.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import yaml

from benchmarks.table_output import publish
from engine.evaluate import fidelity, real_stats, sim_stats
from engine.rollout_calibration import calibrate_rollouts, prepared_of
from engine.study import Study
from engine.study_config import StudyConfig
from learners.agent.llm_policy import LLMPolicy
from learners.agent.scoring import CALIBRATION_FILE
from learners.config import config_from_dict

MODES = {"the study's own": None, "as they are": False, "unseen ids": True}
"""Each agent simulated: the study's, unchanged, and its rollout calibration redone each way."""
SKIPPED = ("checkpoints", "ray", "data", "init")
"""Parts of an agent directory the simulation does not read."""


def calibrated_copy(
    study: Path, config: StudyConfig, out: Path, unseen: bool, agent_dir: str = "agent", visits: int = 0
) -> float:
    """The study's agent (its persona agent, or ``agent_dir``) copied to ``out`` and rollout-calibrated
    anew from its per-step biases; returns the calibration's seconds."""
    shutil.copytree(study / agent_dir, out, ignore=shutil.ignore_patterns(*SKIPPED))
    record = json.loads((out / CALIBRATION_FILE).read_text())
    fresh = {"bias": record.get("step_bias", record["bias"])} | {
        k: v for k, v in record.items() if k not in ("bias", "step_bias", "code_bias", "rollouts")
    }
    (out / CALIBRATION_FILE).write_text(json.dumps(fresh))
    agent = config.agent
    policy = LLMPolicy.from_pretrained(out, temperature=1.0)
    start = time.perf_counter()
    result = calibrate_rollouts(
        policy,
        prepared_of(study / "traces"),
        pq.read_table(study / "traces" / "traces.parquet"),
        pq.read_table(study / "codes" / "codes.parquet") if (out / "persona_tokens.json").exists() else None,
        visits=visits or agent.calibration_visits,
        rounds=agent.calibration_rounds,
        max_steps=config.simulate.max_steps,
        seed=config.seed,  # the study trains and calibrates its agents with its own seed
        per_code=agent.calibration_per_code,
        unseen_ids=unseen,
    )
    seconds = time.perf_counter() - start
    result.save(out)
    print(result.line(), flush=True)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--study", type=Path, required=True, help="a finished study's directory")
    parser.add_argument("--config", type=Path, default=Path("examples/study-demo.yaml"))
    parser.add_argument("--seeds", default="0,1,2", help="draw seeds of the held-out simulations")
    parser.add_argument(
        "--visits", type=int, default=1600, help="calibration visits where the recipe has none"
    )
    parser.add_argument("--markdown", type=Path)
    args = parser.parse_args()
    config = config_from_dict(StudyConfig, yaml.safe_load(args.config.read_text()), source=str(args.config))
    seeds = [int(s) for s in args.seeds.split(",")]
    split = json.loads((args.study / "split.json").read_text())
    config = replace(config, seed=split["seed"])
    real = real_stats(args.study / "data", split["heldout"])
    kinds = {k for stats in real.values() for k in stats.took}
    real_conversion = sum(s.converted for s in real.values()) / sum(s.buyers for s in real.values())
    seconds, figures = {}, {}
    with tempfile.TemporaryDirectory(prefix="unseen-calibration-") as scratch:
        for mode, unseen in MODES.items():
            root = Path(scratch) / mode.replace(" ", "-").replace("'", "")
            if unseen is None:
                root.mkdir(parents=True)
                os.symlink((args.study / "agent").resolve(), root / "agent")
            else:
                visits = config.agent.calibration_visits or args.visits
                seconds[mode] = calibrated_copy(args.study, config, root / "agent", unseen, visits=visits)
            for seed in seeds:
                runner = Study(replace(config, out=str(root / f"draw-{seed}"), seed=seed))
                sim = runner.simulate(
                    "persona",
                    "same-window",
                    args.study / "distributions" / "own-same-window.parquet",
                    {"persona": root / "agent"},
                    args.study / "data",
                    goals=False,
                )
                simulated = sim_stats(sim, kinds)
                f = fidelity(simulated, real)
                conversion = sum(s.converted for s in simulated.values()) / sum(
                    s.buyers for s in simulated.values()
                )
                figures[mode, seed] = (f["cra"], f["ara"], conversion - real_conversion)
    lines = [
        f"persona agent of {args.study} ({args.config}), same window, draw seeds {args.seeds}, {os.cpu_count()} CPUs",
        "",
        "| agent (rollout calibration walked on) | calibration s | "
        + " | ".join(f"draw {s}: CRA / ARA / conv − real" for s in seeds)
        + " | mean CRA / ARA / conv − real |",
        "|---|---:|" + "---:|" * (len(seeds) + 1),
    ]
    for mode in MODES:
        rows = np.array([figures[mode, s] for s in seeds])
        cells = [f"{c:.3f} / {a:.3f} / {d:+.3f}" for c, a, d in rows]
        mean = rows.mean(axis=0)
        took = f"{seconds[mode]:.0f}" if mode in seconds else "–"
        lines.append(
            f"| {mode} | {took} | "
            + " | ".join(cells)
            + f" | {mean[0]:.3f} / {mean[1]:.3f} / {mean[2]:+.3f} |"
        )
    lines += [
        "",
        f"calibration seconds, unseen ids / as they are: {seconds['unseen ids'] / seconds['as they are']:.2f}",
    ]
    publish(lines, args.markdown)


if __name__ == "__main__":
    main()
