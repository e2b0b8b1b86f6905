"""Goal tasks on a finished study's held-out merchants, with popular and with off-home goals.

  .venv/bin/python -m benchmarks.goal_tasks examples/study-tmall-cpu.yaml --study runs/study-tmall-cpu \\
      --systems persona,no-persona,larger-no-persona,markov --per-merchant 20 --seeds 5

A study gives its goal tasks one way (``simulate.goal_draw``, popular by default). This runs every
system the study trained, on the same merchants, buyers and seeds, under each draw of
``engine/population.py``'s ``GOAL_DRAWS``:

- ``popular``: the goal is drawn by popularity, so it is often featured on the home page, marked as
  the buyer's goal; a task then takes three steps, and every agent that learned to open a marked
  product succeeds. This is the baseline the harder draw is read against.
- ``off-home``: the goal is one of the products the home page does not feature; the buyer has to
  search for it (``search "your goal"``) or open its category and find it there.

Per draw and system: goal success with its interval over seeds, the first system minus each other
one paired by seed (the same buyers and goals per seed), the mean steps per task, and the share of
tasks that searched. Runs go to ``STUDY/goal-tasks/<draw>/goals/<system>-goals`` and are reused
when they are there. The larger no-persona agent must be in ``STUDY/agent-larger`` (the CPU recipes
leave it out for time; train it with the study's ``simpersona train-agent`` line and
``--no-persona --base-model tiny-8x``).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from engine.evaluate import rollout_parts, step_quality
from engine.population import GOAL_DRAWS
from engine.study import Study
from engine.study_config import SYSTEMS, StudyConfig
from engine.study_report import goal_lines
from learners.config import config_from_dict, load_yaml


def task_shape(rollouts: Path) -> tuple[float, float]:
    """Mean steps per goal task and the share of tasks with a search."""
    steps = pl.concat([pl.read_parquet(p) for p in rollout_parts(rollouts)], how="diagonal_relaxed")
    tasks = steps.group_by(["sim_buyer_id", "seed"]).agg(
        pl.len().alias("steps"), (pl.col("action_kind") == "search").any().alias("searched")
    )
    return float(tasks["steps"].mean()), float(tasks["searched"].mean())


def run_draw(config: StudyConfig, study: Path, draw: str, systems: list[str]) -> dict[str, Path]:
    """Every system's goal tasks under one draw, in STUDY/goal-tasks/DRAW; none when no held-out
    merchant can give such goals (off-home: every catalogue fits on its home page)."""
    data = Path(config.data) if config.data else study / "data"
    drawn = replace(config.simulate, goal_draw=draw)
    bench = Study(replace(config, out=str(study / "goal-tasks" / draw), data=str(data), simulate=drawn))
    split = json.loads((study / "split.json").read_text())
    merchants = bench.goal_merchants(split)[: config.goal_merchants]
    if not merchants:
        return {}
    own = pq.read_table(study / "distributions" / "own-same-window.parquet")
    dist = bench.out / "goal-distribution.parquet"
    dist.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(own.filter(pc.is_in(own["merchant_id"], value_set=pa.array(merchants, pa.string()))), dist)
    paths = Study(replace(config, out=str(study))).agent_paths()
    missing = [s for s in systems if not paths[SYSTEMS[s].agent].exists()]
    if missing:
        raise SystemExit(
            f"{study}: no trained policy for {', '.join(missing)} ({paths[SYSTEMS[missing[0]].agent]})"
        )
    return {name: bench.simulate(name, "goals", dist, paths, data, goals=True) for name in systems}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("config", help="the study's YAML config")
    parser.add_argument("--study", required=True, help="the finished study's directory (its --out)")
    parser.add_argument("--systems", default="persona,no-persona,larger-no-persona,markov")
    parser.add_argument("--draws", default=",".join(GOAL_DRAWS))
    parser.add_argument("--per-merchant", type=int, default=20, help="goal tasks per merchant and seed")
    parser.add_argument("--seeds", type=int, default=5)
    args = parser.parse_args(argv)
    config = config_from_dict(StudyConfig, load_yaml(args.config))
    config = replace(config, goal_buyers_per_merchant=args.per_merchant, goal_seeds=args.seeds)
    systems = args.systems.split(",")
    study = Path(args.study)
    for draw in args.draws.split(","):
        runs = run_draw(config, study, draw, systems)
        if not runs:
            print(
                f"\n{draw} goals: no held-out merchant of {study} can give them (engine/population.py GOAL_DRAWS)"
            )
            continue
        goals = {name: step_quality(path).get("goal_success") for name, path in runs.items()}
        shape = {name: task_shape(path) for name, path in runs.items()}
        lines = goal_lines(goals, systems[0])
        lines[0] += " steps per task | tasks with a search |"
        lines[1] += "---:|---:|"
        for i, name in enumerate(n for n, g in goals.items() if g is not None):
            lines[2 + i] += f" {shape[name][0]:.1f} | {shape[name][1]:.2f} |"
        head = f"{draw} goals: {args.per_merchant} tasks per merchant and seed, {args.seeds} seeds"
        print("\n".join(["", head, "", *lines]), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
