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
import dataclasses
from pathlib import Path

from learners.config import add_config_args, build_config
from learners.vqvae.fit import VQVAEConfig

NAME = "fit-personas"
HELP = "fit K buyer types (VQ-VAE codebook) with Ray Train, assign the buyers, write a report"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data", type=Path, help="prepared directory (simpersona prepare --out DATA)")
    parser.add_argument("--out", type=Path, required=True, help="run directory")
    parser.add_argument("--workers", type=int, help="Ray Train workers (default: config or 1)")
    parser.add_argument("--use-gpu", action="store_true", help="one GPU per worker")
    parser.add_argument(
        "--resume", action="store_true", help="continue the run in --out from its last checkpoint"
    )
    parser.add_argument(
        "--truth", type=Path, help="planted types (truth.parquet of `simpersona synth`) for NMI"
    )
    parser.add_argument("--config", type=Path, help="YAML file of VQVAEConfig fields")
    parser.add_argument("--no-report", action="store_true", help="skip assignment and report")
    add_config_args(parser, VQVAEConfig, skip=("workers", "use_gpu"))


def run(args: argparse.Namespace) -> int:
    config = build_config(VQVAEConfig, args, args.config)
    if args.workers is not None:
        config = dataclasses.replace(config, workers=args.workers)
    if args.use_gpu:
        config = dataclasses.replace(config, use_gpu=True)
    if args.truth is not None and not args.truth.exists():
        raise FileNotFoundError(
            f"{args.truth} not found (--truth expects truth.parquet of `simpersona synth`)"
        )
    # Imported here so that `simpersona --help` does not import torch and Ray.
    from engine.console_log import ray_session
    from learners.vqvae.assign import assign
    from learners.vqvae.fit import fit_codebook
    from learners.vqvae.report import write_report

    with ray_session(args.out, getattr(args, "verbose", False)) as session:
        result = fit_codebook(args.data, config, args.out, resume=args.resume, progress=session.progress)
    last = result.history[-1] if result.history else {}
    print(
        f"fitted {result.epochs_done} epochs -> {result.run_dir}  "
        f"(codes in use {int(last.get('codes_in_use', 0))}/{config.codes}, "
        f"perplexity {last.get('perplexity', 0.0):.1f})"
    )
    if config.stop_after_epoch and result.epochs_done < config.epochs:
        print(f"stopped after epoch {result.epochs_done}; continue with --resume")
        return 0
    if args.no_report:
        return 0
    assigned = assign(result.run_dir, args.data, result.run_dir)
    print(
        f"assigned {assigned.buyers_assigned:,} buyers ({assigned.buyers_quarantined:,} quarantined) "
        f"-> {result.run_dir / 'codes.parquet'}"
    )
    metrics = write_report(result.run_dir, args.data, truth=args.truth, seed=config.seed)
    km = metrics["kmeans"]
    for key in (
        "codes_in_use",
        "perplexity",
        "calinski_harabasz",
        "coherence",
        "nmi",
        "kruskal_conversion_p",
    ):
        if key in metrics:
            print(f"  {key:22s} VQ-VAE {metrics[key]:.4g}   k-means {km[key]:.4g}")
    print(f"report: {result.run_dir / 'report.html'}")
    return 0
