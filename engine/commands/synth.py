"""Generate a synthetic clickstream with planted buyer types, in a raw format with its own mapping.

  simpersona synth --out raw/ --buyers 5000 --merchants 12 --seed 0
  simpersona synth --out raw/ --buyers 500000 --file-format parquet --timestamp-format unix_ms
  simpersona prepare raw/logs --mapping raw/mapping.yaml --out data/
  simpersona synth --out raw/ --treatment treatments.yaml   # + the treatments' true effects

Writes raw/events-NNNNN.csv (or .parquet), raw/mapping.yaml, raw/truth.parquet (the planted type of
every buyer) and raw/README.md (the format). The same seed and config give byte-identical files.
With --treatment (a YAML mapping name -> treatment of envs/treatments.py, a list of treatments, or
an experiment config's arms) it also writes raw/truth-effects.parquet and raw/truth-effects.md: each
treatment's true effect per planted type and metric (learners/data/synth_truth.py).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from learners.config import add_config_args, build_config
from learners.data.synth import SynthConfig, synthesize
from learners.data.synth_truth import TRUTH_REPORT, load_treatments, truth_summary, write_truth

NAME = "synth"
HELP = "generate a synthetic raw clickstream with planted buyer types (+ mapping.yaml, truth.parquet)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument("--config", type=Path, help="YAML file of SynthConfig fields")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--treatment",
        type=Path,
        help="YAML of storefront treatments (name -> treatment, a list, or an experiment's arms): also "
        "write their true effects on the planted types (truth-effects.parquet, truth-effects.md)",
    )
    parser.add_argument(
        "--truth-visits",
        type=int,
        default=20_000,
        help="visits per planted type for the true effects (default 20000; the seed is --seed)",
    )
    add_config_args(parser, SynthConfig)


def run(args: argparse.Namespace) -> int:
    config = build_config(SynthConfig, args, args.config)
    # Read the treatments first: a mistake in the file should not cost a whole log's generation.
    treatments = load_treatments(args.treatment) if args.treatment else None
    summary = synthesize(config, args.out, progress=not args.no_progress)
    rate = summary["rows"] / summary["seconds"] if summary["seconds"] > 0 else float("inf")
    print(
        f"wrote {summary['rows']:,} rows ({summary['events']:,} events, {summary['malformed_rows']:,} malformed)"
        f" in {len(summary['files'])} file(s) to {args.out} in {summary['seconds']:.1f} s ({rate:,.0f} rows/s)"
    )
    print(
        f"  buyers {summary['buyers']:,}  users {summary['users']:,}  merchants {summary['merchants']:,}"
        f"  visits {summary['visits']:,}  products {summary['products']:,}"
    )
    print("  planted types: " + ", ".join(f"{k} {v:,}" for k, v in summary["types"].items()))
    if treatments:
        table = write_truth(config, treatments, args.out, args.truth_visits, config.seed)
        print(f"  true effects, per visit ({args.truth_visits:,} visits per type):")
        for line in truth_summary(table):
            print("    " + line)
        print(f"  truth tables: {args.out}/{TRUTH_REPORT} and .parquet")
    print(f"  next: simpersona prepare {args.out}/logs --mapping {args.out}/mapping.yaml --out DIR")
    return 0
