"""Assign buyers to the types of a fitted run: one encoder pass per buyer, no retraining.

  simpersona assign run/ data/ --out codes/
  simpersona assign run/ big-data/ --out codes/ --ray        # stream through Ray Data map_batches

Writes codes.parquet (merchant_id, buyer_id, code), merchant_distributions.parquet (merchant_id,
code, p, n), quarantine.parquet (buyers that could not be encoded, with the reason) and manifest.json.
"""

from __future__ import annotations

import argparse
from contextlib import nullcontext
from pathlib import Path

NAME = "assign"
HELP = "assign buyers of a prepared directory to the persona codes of a fitted run"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "run_dir", type=Path, metavar="RUN", help="run directory of `simpersona fit-personas`"
    )
    parser.add_argument("data", type=Path, metavar="DATA", help="prepared directory (simpersona prepare)")
    parser.add_argument("--out", type=Path, required=True, help="output directory for the codes")
    parser.add_argument("--ray", action="store_true", help="stream the buyers through Ray Data map_batches")
    parser.add_argument(
        "--concurrency", type=int, default=2, help="Ray Data actors holding the model (--ray)"
    )


def run(args: argparse.Namespace) -> int:
    from engine.console_log import ray_session
    from learners.vqvae.assign import assign

    # Without --ray the buyers are encoded in this process: no Ray, nothing of its to route.
    with ray_session(args.out, getattr(args, "verbose", False)) if args.ray else nullcontext():
        result = assign(args.run_dir, args.data, args.out, use_ray=args.ray, concurrency=args.concurrency)
    print(
        f"assigned {result.buyers_assigned:,} of {result.buyers_read:,} buyers "
        f"({result.buyers_quarantined:,} quarantined) in {result.seconds:.2f} s "
        f"({result.buyers_per_s:,.0f} buyers/s) -> {result.out}"
    )
    return 0
