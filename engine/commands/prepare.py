"""Turn raw clickstream logs into a prepared directory for `simpersona inspect`, training and evaluation.

  simpersona prepare logs/ --format tmall-ijcai15 --out data/
  simpersona prepare events.csv --mapping mapping.yaml --out data/ --max-seq-len 128
  simpersona prepare events.csv --mapping mapping.yaml --check     # counts only, writes nothing

Writes events, sessions, buyers, catalogs, merchants and quarantine tables (Parquet) and
manifest.json into --out. Rows that cannot be used are quarantined with a reason, never dropped;
rows whose event code the mapping lists under event_type.drop are left out and counted per code.
`simpersona mapping draft INPUT... --out mapping.yaml` proposes a mapping from a sample of your logs.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from contextlib import nullcontext
from pathlib import Path

from learners.config import add_config_args, build_config
from learners.data.prepare import PrepareConfig, RowCheck, check_rows, prepare
from learners.data.schema import event_vocabulary_lines

NAME = "prepare"
MAX_REASONS = 10
HELP = "raw event logs -> events, sessions, buyers, catalogs, merchants (+ quarantine, manifest)"
EPILOG = "\n".join(
    [
        "canonical event types (the values of a mapping's event_type.map), in funnel order:",
        *event_vocabulary_lines("  "),
        "",
        "A mapping may also list codes to leave out on purpose: event_type: {column: C, map: {...},",
        'drop: ["6", click]}. Their rows are counted per code in the manifest (rows_dropped_by_code), and',
        "rows_read = rows_kept + rows_quarantined + rows_dropped.",
    ]
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="input files or directories of them")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--format", help="a built-in source format, e.g. tmall-ijcai15, rees46")
    source.add_argument("--mapping", type=Path, help="a YAML mapping describing the source's columns")
    parser.epilog = EPILOG
    parser.add_argument("--out", type=Path, help="output directory (required unless --check)")
    parser.add_argument(
        "--check",
        action="store_true",
        help="validate the mapping against the data and print what would be kept, dropped and"
        " quarantined (per reason and code); writes nothing",
    )
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
    lines += _by_key_lines(manifest["quarantine_by_reason"], "reasons", "see manifest.json")
    if c.get("rows_dropped"):
        lines.append(f"  dropped on purpose {c['rows_dropped']:,} rows (event_type.drop)")
        lines += _by_key_lines(_code_labels(manifest["rows_dropped_by_code"]), "codes", "see manifest.json")
    return lines


def _code_labels(by_code: dict[str, int]) -> dict[str, int]:
    return {f"code {code!r}": n for code, n in by_code.items()}


def _by_key_lines(counts: dict[str, int], what: str, where: str) -> list[str]:
    items = list(counts.items())
    lines = [f"    {n:>10,}  {key}" for key, n in items[:MAX_REASONS]]
    if len(items) > MAX_REASONS:
        rest = sum(n for _, n in items[MAX_REASONS:])
        lines.append(f"    {rest:>10,}  ... {len(items) - MAX_REASONS} more {what} ({where})")
    return lines


def check_lines(check: RowCheck) -> list[str]:
    """What `prepare --check` prints: the row accounting prepare would write, with examples."""
    c = check.counts
    lines = [
        f"checked {c['rows_read']:,} rows: prepare would keep {c['rows_kept']:,}, quarantine"
        f" {c['rows_quarantined']:,} and drop {c['rows_dropped']:,} (nothing written)",
        f"  kept {c['rows_kept']:,} rows",
        *(f"    {n:>10,}  {event}" for event, n in check.kept_by_event_type.items()),
        f"  quarantined {c['rows_quarantined']:,} rows",
    ]
    for reason, n in list(check.quarantine_by_reason.items())[:MAX_REASONS]:
        lines.append(f"    {n:>10,}  {reason}")
        for row in check.examples.get(reason, []):
            column = f" column '{row['column']}'" if row["column"] else ""
            lines.append(f"                e.g. {row['file']}:{row['line']}{column}: {row['raw']}")
    if len(check.quarantine_by_reason) > MAX_REASONS:
        rest = list(check.quarantine_by_reason.values())[MAX_REASONS:]
        lines.append(f"    {sum(rest):>10,}  ... {len(rest)} more reasons")
    lines.append(f"  dropped on purpose {c['rows_dropped']:,} rows (event_type.drop)")
    lines += _by_key_lines(_code_labels(check.rows_dropped_by_code), "codes", "all dropped on purpose")
    return lines


def run(args: argparse.Namespace) -> int:
    config = build_config(PrepareConfig, args, args.config)
    if args.ray:
        config = dataclasses.replace(config, use_ray=True)
    # Imported here so that `simpersona --help` does not load every reader.
    from learners.data.adapters import expand_inputs, get_adapter

    adapter = get_adapter(args.format, args.mapping)
    inputs = expand_inputs(args.inputs)
    if args.check:
        for line in check_lines(check_rows(inputs, adapter)):
            print(line)
        return 0
    if args.out is None:
        raise ValueError("prepare: --out is missing; fix: pass --out DIR (or --check to only count rows)")
    from engine.console_log import ray_session

    start = time.perf_counter()
    # With --ray, Ray Data's own log lines go to OUT/ray.log, like the other commands'.
    with ray_session(args.out, getattr(args, "verbose", False)) if config.use_ray else nullcontext():
        manifest = prepare(inputs, adapter, config, args.out, progress=not args.no_progress)
    elapsed = time.perf_counter() - start
    for line in summary_lines(manifest, elapsed):
        print(line)
    print(f"  wrote {args.out} (see `simpersona inspect {args.out}`)", file=sys.stdout)
    return 0
