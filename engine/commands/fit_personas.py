"""Fit the buyer-type codebook (behaviour-aware VQ-VAE) on a prepared directory with Ray Train.

  simpersona fit-personas data/ --codes 32 --workers 2 --out run/
  simpersona fit-personas data/ --codes 32 --out run/ --resume          # continue a killed run
  simpersona fit-personas synth-data/ --codes 16 --out run/ --truth raw/truth.parquet

Writes into --out: model.safetensors + state.json (the fitted model), history.json, manifest.json,
Ray Train checkpoints under train/, codes.parquet and merchant_distributions.parquet of the
training buyers, and report.md / report.html / metrics.json / plots/ (with the k-means baseline).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from engine.stage_configs import FitPersonasStage
from learners.config import add_config_args, build_config

NAME = "fit-personas"
HELP = "fit K buyer types (VQ-VAE codebook) with Ray Train, assign the buyers, write a report"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="YAML file of VQVAEConfig fields")
    add_config_args(parser, FitPersonasStage)


def run(args: argparse.Namespace) -> int:
    # Imported here so that `simpersona --help` does not import torch and Ray.
    from engine.stages import fit_personas

    config = build_config(FitPersonasStage, args, args.config)
    fitted = fit_personas(config, getattr(args, "verbose", False))
    for line in fitted.lines():
        print(line)
    return 0
