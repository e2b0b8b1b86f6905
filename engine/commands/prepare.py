"""Turn raw clickstream logs into a prepared directory for `simpersona inspect`, training and evaluation.

  simpersona prepare logs/ --format tmall-ijcai15 --out data/
  simpersona prepare events.csv --mapping mapping.yaml --out data/ --max-seq-len 128

Writes events, sessions, buyers, catalogs, merchants and quarantine tables (Parquet) and
manifest.json into --out. Rows that cannot be used are quarantined with a reason, never dropped.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

from learners.config import add_config_args, build_config
from learners.data.prepare import PrepareConfig, prepare

NAME = "prepare"
MAX_REASONS = 10
HELP = "raw event logs -> events, sessions, buyers, catalogs, merchants (+ quarantine, manifest)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="input files or directories of them")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--format", help="a built-in source format, e.g. tmall-ijcai15, rees46")
    source.add_argument("--mapping", type=Path, help="a YAML mapping describing the source's columns")
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument("--ray", action="store_true", help="distribute with Ray Data (same outputs)")
    parser.add_argument("--config", type=Path, help="YAML file of PrepareConfig fields")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_config_args(parser, PrepareConfig, skip=("use_ray",))


def summary_lines(manifest: dict, elapsed_s: float) -> list[str]:
    """A few lines describing a finished run (counts, speed, quarantine by reason)."""
    c = manifest["counts"]
    rate = c["events"] / elapsed_s if elapsed_s > 0 else float("inf")
    lines = [
        f"prepared {c['events']:,} events of {c['rows_read']:,} rows in {elapsed_s:.1f} s ({rate:,.0f} events/s)",
        f"  buyers {c['buyers']:,}  sessions {c['sessions']:,}  merchants {c['merchants']:,}"
        f"  products {c['products']:,}",
        f"  quarantined {c['rows_quarantined']:,} rows",
    ]
    reasons = list(manifest["quarantine_by_reason"].items())
    lines += [f"    {n:>10,}  {reason}" for reason, n in reasons[:MAX_REASONS]]
    if len(reasons) > MAX_REASONS:
        rest = sum(n for _, n in reasons[MAX_REASONS:])
        lines.append(f"    {rest:>10,}  ... {len(reasons) - MAX_REASONS} more reasons (see manifest.json)")
    return lines


def run(args: argparse.Namespace) -> int:
    config = build_config(PrepareConfig, args, args.config)
    if args.ray:
        config = dataclasses.replace(config, use_ray=True)
    # Imported here so that `simpersona --help` does not load every reader.
    from learners.data.adapters import expand_inputs, get_adapter

    adapter = get_adapter(args.format, args.mapping)
    inputs = expand_inputs(args.inputs)
    start = time.perf_counter()
    manifest = prepare(inputs, adapter, config, args.out, progress=not args.no_progress)
    elapsed = time.perf_counter() - start
    for line in summary_lines(manifest, elapsed):
        print(line)
    print(f"  wrote {args.out} (see `simpersona inspect {args.out}`)", file=sys.stdout)
    return 0
