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
"""

from __future__ import annotations

import argparse
from pathlib import Path

from engine.bootstrap import uncertainty
from engine.evaluate import UNITS, fidelity, real_stats, real_units, sim_stats, sim_units, step_quality
from engine.report import fidelity_text, markdown_table, write_report

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
    parser.add_argument(
        "--floor-data",
        type=Path,
        help="prepared directory whose pooled sessions give the floor (e.g. the training merchants);"
        " default: the other evaluated merchants",
    )
    parser.add_argument("--replicates", type=int, default=1000, help="bootstrap replicates (default 1000)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap (default 0)")


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
    units = real_units(args.real, merchants, unit=args.unit)
    pool = real_units(args.floor_data, actions=units.actions) if args.floor_data else None
    main = next(iter(runs))
    bounded = uncertainty(
        units,
        {name: sim_units(path, units.actions) for name, path in runs.items()},
        main,
        compare=list(runs)[1:],
        pool=pool,
        replicates=args.replicates,
        seed=args.seed,
    )
    page = write_report(
        systems,
        args.out,
        notes=f"real: {args.real}; {len(real)} merchants; one real buyer = one {args.unit}",
        fidelity=bounded,
    )
    print(fidelity_text(bounded))
    print()
    print(markdown_table(systems))
    print(f"report: {page}")
    return 0
