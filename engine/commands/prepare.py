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
from pathlib import Path

from engine.stage_configs import PrepareStage
from engine.stage_results import (
    MAX_REASONS,
    code_labels,
    count_lines,
    day_month_lines,
    one_type_lines,
    time_range_lines,
)
from learners.config import add_config_args, build_config
from learners.data.row_check import RowCheck
from learners.data.schema import event_vocabulary_lines

NAME = "prepare"
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
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--format",
        dest="cfg__format",
        metavar="NAME",
        help="a built-in source format, e.g. tmall-ijcai15, rees46",
    )
    source.add_argument(
        "--mapping",
        dest="cfg__mapping",
        metavar="FILE",
        help="a YAML mapping describing the source's columns",
    )
    parser.epilog = EPILOG
    parser.add_argument(
        "--check",
        action="store_true",
        help="validate the mapping against the data and print what would be kept, dropped and"
        " quarantined (per reason and code); writes nothing",
    )
    parser.add_argument("--config", type=Path, help="YAML file of PrepareConfig fields")
    add_config_args(parser, PrepareStage, skip=("format", "mapping"))


RAW_SHOWN = 300
"""Characters of a quarantined row shown as an example (a JSON line may be a whole visit, 30 kB)."""


def check_lines(check: RowCheck) -> list[str]:
    """What `prepare --check` prints: the row accounting prepare would write, with examples."""
    c = check.counts
    lines = [
        f"checked {c['rows_read']:,} rows: prepare would keep {c['rows_kept']:,}, quarantine"
        f" {c['rows_quarantined']:,} and drop {c['rows_dropped']:,} (nothing written)",
        f"  kept {c['rows_kept']:,} rows",
        *(f"    {n:>10,}  {event}" for event, n in check.kept_by_event_type.items()),
        *time_range_lines(check.time_range),
        *one_type_lines({"events_by_type": check.kept_by_event_type}),
        *day_month_lines({"day_month_open": check.day_month_open}),
        f"  quarantined {c['rows_quarantined']:,} rows",
    ]
    for reason, n in list(check.quarantine_by_reason.items())[:MAX_REASONS]:
        lines.append(f"    {n:>10,}  {reason}")
        for row in check.examples.get(reason, []):
            column = f" column '{row['column']}'" if row["column"] else ""
            raw = row["raw"] if len(row["raw"] or "") <= RAW_SHOWN else row["raw"][:RAW_SHOWN] + " ..."
            lines.append(f"                e.g. {row['file']}:{row['line']}{column}: {raw}")
    if len(check.quarantine_by_reason) > MAX_REASONS:
        rest = list(check.quarantine_by_reason.values())[MAX_REASONS:]
        lines.append(f"    {sum(rest):>10,}  ... {len(rest)} more reasons")
    lines.append(f"  dropped on purpose {c['rows_dropped']:,} rows (event_type.drop, drop_rows)")
    lines += count_lines(code_labels(check.rows_dropped_by_code), "codes", "all dropped on purpose")
    return lines


def run(args: argparse.Namespace) -> int:
    config = build_config(PrepareStage, args, args.config)
    if args.check:
        # Imported here so that `simpersona --help` does not load every reader.
        from learners.data.adapters import expand_inputs, get_adapter
        from learners.data.row_check import check_rows

        adapter = get_adapter(config.format, config.mapping)
        for line in check_lines(check_rows(expand_inputs(config.inputs), adapter)):
            print(line)
        return 0
    from engine.stages import prepare

    for line in prepare(config, getattr(args, "verbose", False)).lines():
        print(line)
    return 0
