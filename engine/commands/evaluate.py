"""Compare simulated buyers with real ones and write an HTML report.

  simpersona evaluate --real DATA --sim runs/persona --sim uniform=runs/uniform --out report/

Each --sim is a rollouts directory written by `simpersona simulate`, optionally named NAME=DIR (the
first one is the main system). Metrics: conversion-rate alignment (CRA), stratified action-rate
alignment (ARA), Jensen-Shannon divergence of action kinds and session lengths, invalid-action rate,
goal success and variation across persona types; definitions in DESIGN.md and engine/metrics.py.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from engine.evaluate import UNITS, fidelity, real_stats, sim_stats, step_quality
from engine.report import markdown_table, write_report

NAME = "evaluate"
HELP = "compare simulated buyers with real ones; HTML report with plots"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--real", required=True, type=Path, help="prepared directory of the real buyers")
    parser.add_argument(
        "--sim", required=True, action="append", metavar="[NAME=]DIR", help="rollouts directory (repeatable)"
    )
    parser.add_argument("--out", required=True, type=Path, help="report directory to write")
    parser.add_argument("--merchants", help="comma-separated merchants to compare (default: all simulated)")
    parser.add_argument(
        "--unit",
        choices=UNITS,
        default="session",
        help="a real buyer is one visit (session, like one simulated episode) or a whole history (buyer)",
    )


def run(args: argparse.Namespace) -> int:
    runs = {}
    for spec in args.sim:
        name, _, path = spec.rpartition("=")
        runs[name or Path(path).name] = Path(path)
    merchants = args.merchants.split(",") if args.merchants else None
    real = real_stats(args.real, merchants, unit=args.unit)
    real_kinds = {k for stats in real.values() for k in stats.kind_counts}
    systems = {
        name: fidelity(sim_stats(path, real_kinds), real) | step_quality(path) for name, path in runs.items()
    }
    page = write_report(
        systems, args.out, notes=f"real: {args.real}; {len(real)} merchants; one real buyer = one {args.unit}"
    )
    print(markdown_table(systems))
    print(f"report: {page}")
    return 0
