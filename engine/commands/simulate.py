"""Simulate a buyer population on Ray: persona codes per merchant, env runners, a policy server.

  simpersona simulate --config examples/sim.yaml
  simpersona simulate --config examples/sim.yaml --runners 8 --policy-replicas 2 --out runs/big
  simpersona simulate --config examples/sim.yaml --out runs/big --resume true   # after a crash
  simpersona simulate --config examples/sim.yaml --goal-tasks true --replicates 5 --out runs/goals

Writes OUT/rollouts/part-*.parquet (one row per simulated step) and OUT/manifest.json, and prints a
per-merchant summary (simulated conversion and funnel rates). Goal tasks add each buyer's target
product (``goal`` column) and the env's reward (1 on the step that buys it); with several
replicates the ``seed`` column tells the seeds apart, and ``simpersona evaluate`` reports the goal
success rate with a confidence interval over them. Every SimulationConfig field can be
set in the YAML file and overridden by its flag. On a cluster: `ray job submit -- simpersona
simulate --config sim.yaml --ray-address auto`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from engine.simulation_config import SimulationConfig
from learners.config import add_config_args, build_config

NAME = "simulate"
HELP = "simulate buyers of each merchant with persona agents on Ray; rollouts to Parquet"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", type=Path, help="YAML file of SimulationConfig fields (examples/sim.yaml)"
    )
    add_config_args(parser, SimulationConfig)


def run(args: argparse.Namespace) -> int:
    from engine.stages import simulate

    result = simulate(build_config(SimulationConfig, args, args.config), getattr(args, "verbose", False))
    for line in result.lines():
        print(line)
    return 0 if result.complete else 1
