"""Run the whole evaluation protocol: split -> fit personas -> train agents -> simulate -> evaluate.

  simpersona study examples/study-tmall.yaml
  simpersona study examples/study-tmall.yaml --out runs/tmall-seed1 --seed 1
  simpersona study examples/study-tmall.yaml --systems persona,markov --variants same-window

Held-out merchants are drawn by seed among those with >= min_buyers buyers; the codebook, the agents
and the Markov chain never see them. The strict variant takes their code distribution from an
earlier window and their real rates from a later one; the same-window variant uses one window.
Every system (persona agent; mismatched codes from another merchant or uniform; no persona; the
larger no-persona model; the per-type Markov chain; random) is simulated and evaluated the same
way. Writes OUT/report/<variant>/index.html, OUT/metrics.json and OUT/summary.md; a stage whose
output exists is skipped, so re-running the same command continues an interrupted study.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from engine.report import markdown_table
from engine.study import Study, StudyConfig
from learners.config import add_config_args, build_config

NAME = "study"
HELP = "the evaluation protocol end to end on held-out merchants, against every baseline"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "config", type=Path, nargs="?", metavar="CONFIG", help="YAML file of StudyConfig fields"
    )
    add_config_args(parser, StudyConfig)


def run(args: argparse.Namespace) -> int:
    config = build_config(StudyConfig, args, args.config)
    result = Study(config).run()
    for variant, r in result["variants"].items():
        print(f"\n{variant} ({r['merchants']} merchants)\n{markdown_table(r['systems'])}")
        for name, t in result["targets"][variant].items():
            print(f"  {name}: {'met' if t['met'] else 'missed'} ({t['value']})")
    print(f"\nstudy finished in {result['wall_s']} s; reports under {Path(config.out) / 'report'}")
    return 0
