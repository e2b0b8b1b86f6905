"""Assign buyers to the types of a fitted run: one encoder pass per buyer, no retraining.

  simpersona assign run/ data/ --out codes/
  simpersona assign run/ big-data/ --out codes/ --ray        # stream through Ray Data map_batches

Writes codes.parquet (merchant_id, buyer_id, code), merchant_distributions.parquet (merchant_id,
code, p = share of the merchant's visits, n buyers, visits, buyer_share), quarantine.parquet (buyers
that could not be encoded, with the reason) and manifest.json.
"""

from __future__ import annotations

import argparse

from engine.stage_configs import AssignStage
from learners.config import add_config_args, build_config

NAME = "assign"
HELP = "assign buyers of a prepared directory to the persona codes of a fitted run"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_args(parser, AssignStage)


def run(args: argparse.Namespace) -> int:
    from engine.stages import assign

    for line in assign(build_config(AssignStage, args), getattr(args, "verbose", False)).lines():
        print(line)
    return 0
