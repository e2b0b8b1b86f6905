"""Run the whole evaluation protocol: split -> fit personas -> train agents -> simulate -> evaluate.

  simpersona study examples/study-tmall.yaml
  simpersona study examples/study-tmall.yaml --out runs/tmall-seed1 --seed 1
  simpersona study examples/study-tmall.yaml --systems persona,markov --variants same-window
  simpersona study examples/study-tmall.yaml --agent.stage2-epochs 6 --simulate.runners 4

Held-out merchants are drawn by seed among those with >= min_sessions real sessions; the codebook,
the agents and the Markov chain never see them (the split is printed; one that leaves too few
training merchants is refused). The strict variant takes their code distribution from an
earlier window and their real rates from a later one; the same-window variant uses one window.
Every system (persona agent; mismatched codes from another merchant or uniform; no persona; the
larger no-persona model; the per-type Markov chain; random) is simulated and evaluated the same
way, and every figure is shown as value [95% interval] beside the ceiling (a perfect simulator on the
same data) and the floor (one that knows nothing about the merchant). Writes OUT/index.html,
OUT/report/<variant>/index.html, OUT/metrics.json and OUT/summary.md; a stage whose output exists is
skipped, so re-running the same command continues an interrupted study. Each stage prints the
`simpersona` command that re-runs it by hand. Each stage's settings are a section of the config
(prepare, personas, traces, agent, simulate: a mapping in YAML, dotted flags here). ``--plan`` sizes
the study first (counts and estimated time per stage, OUT/plan.json) without training or simulating.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from engine.report import fidelity_text, markdown_table
from engine.study import Study
from engine.study_config import SET_BY_STUDY_FLAGS, StudyConfig
from engine.study_report import explain, target_value
from learners.config import add_config_args, build_config

NAME = "study"
HELP = "the evaluation protocol end to end on held-out merchants, against every baseline"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "config", type=Path, nargs="?", metavar="CONFIG", help="YAML file of StudyConfig fields"
    )
    parser.add_argument(
        "--plan",
        action="store_true",
        help="size the study without running it: prepare and split (as the study does), count merchants, "
        "sessions, replayed steps, training examples and tokens, simulated visits, and estimate each stage's "
        "time from a short calibration on this machine; prints a table and writes OUT/plan.json",
    )
    add_config_args(parser, StudyConfig, skip=SET_BY_STUDY_FLAGS)


def run(args: argparse.Namespace) -> int:
    config = build_config(StudyConfig, args, args.config)
    if args.plan:
        from engine.plan_report import format_plan, write_plan
        from engine.study_plan import plan_study

        plan = plan_study(config)
        print("\n" + format_plan(plan))
        print(f"\nplan written to {write_plan(plan, Path(config.out))}; nothing was trained or simulated")
        return 0
    result = Study(config, getattr(args, "verbose", False)).run()
    for variant, r in result["variants"].items():
        print(f"\n{explain(variant, r['fidelity'], config.systems[0])}")
    for variant, r in result["variants"].items():
        print(f"\n{variant} ({r['merchants']} merchants)\n{fidelity_text(r['fidelity'])}")
        print(f"\n{markdown_table(r['systems'])}")
        for name, t in result["targets"][variant].items():
            perfect = (
                ""
                if t.get("perfect") is None
                else f"; a perfect simulator meets it in {t['perfect']:.0%} of draws"
            )
            print(f"  {name}: {'met' if t['met'] else 'missed'} ({target_value(t)}{perfect})")
    print(f"\nstudy finished in {result['wall_s']} s; reports under {Path(config.out) / 'report'}")
    return 0
