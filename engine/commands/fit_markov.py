"""Fit the per-type Markov chain baseline: next-action counts per persona type and page, smoothed.

  simpersona fit-markov traces/ --personas codes/ --out markov.json
  simpersona fit-markov traces/ --personas codes/ --agent agent/ --out markov.json   # the agent's examples

The chain is fitted on the examples the agents train on: with --agent, the persona agent's own
training examples (AGENT/data/train.parquet: without its validation merchants, within its token
budget) when it has them, as `simpersona study` does; otherwise every example built from the traces
and codes. `simpersona simulate --policy markov --policy-path markov.json` plays it.
"""

from __future__ import annotations

import argparse

from engine.stage_configs import FitMarkovStage
from learners.config import add_config_args, build_config

NAME = "fit-markov"
HELP = "fit the per-type Markov chain baseline on the agents' training examples"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_args(parser, FitMarkovStage)


def run(args: argparse.Namespace) -> int:
    from engine.stages import fit_markov

    for line in fit_markov(build_config(FitMarkovStage, args)).lines():
        print(line)
    return 0
