"""Compare simulated buyers with real ones and write an HTML report.

  simpersona evaluate --real DATA --sim runs/persona --sim uniform=runs/uniform --out report/

Each --sim is a rollouts directory written by `simpersona simulate`, optionally named NAME=DIR (the
first one is the main system). Metrics: conversion-rate alignment (CRA), stratified action-rate
alignment (ARA), Jensen-Shannon divergence of action kinds and session lengths, invalid-action rate,
goal success and variation across persona types; definitions in engine/metrics.py.

Every fidelity metric is shown as value [95% interval] beside the *ceiling* (what a perfect
simulator scores on the same data with the same number of visits, and with unlimited visits) and the
*floor* (a simulator that knows nothing about the merchant: visits drawn from other merchants'
sessions, those of --floor-data when given), with the normalised score (value - floor) / (ceiling -
floor) and paired differences of the first system with each other one (engine/bootstrap.py).
--since, --compare, --goals and --notes are what `simpersona study` sets for each protocol variant.
"""

from __future__ import annotations

import argparse

from engine.stage_configs import EvaluateStage
from learners.config import add_config_args, build_config

NAME = "evaluate"
HELP = "compare simulated buyers with real ones; HTML report with plots"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_args(parser, EvaluateStage)


def run(args: argparse.Namespace) -> int:
    from engine.stages import evaluate

    for line in evaluate(build_config(EvaluateStage, args)).lines():
        print(line)
    return 0
