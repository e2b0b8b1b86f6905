"""Work with source mappings (the YAML that describes a raw log format for `simpersona prepare`).

  simpersona mapping draft logs/events.csv.gz --out my-shop.yaml
  simpersona mapping draft part-0.parquet part-1.parquet --out my-shop.yaml --rows 20000 --name my-shop

`draft` reads the first rows of the inputs (CSV plain or gzip, with or without a header; Parquet;
JSON lines) and writes a commented mapping: the layout, which column feeds each canonical field
(guessed by name and content), how to read the timestamps (format, resolution, a zone hint, a valid
range when a few rows lie on stray days), and every distinct event code with its count, mapped where
the name is obvious. What the sample cannot tell is left as a TODO that keeps the mapping from loading
until it is filled in. Then: simpersona prepare INPUT... --mapping FILE --check
"""

from __future__ import annotations

import argparse
from pathlib import Path

from learners.config import add_config_args, build_config
from learners.data.mapping_draft import Draft, DraftConfig
from learners.data.mapping_draft.column_roles import CONTENT_NOTE

NAME = "mapping"
HELP = "draft a YAML source mapping from a sample of your logs (mapping draft INPUT... --out FILE)"
SHOWN_FIELDS = ("merchant_id", "buyer_id", "ts", "session_id", "product_id", "category_id", "price", "query")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    draft = actions.add_parser(
        "draft",
        help="propose a mapping from the first rows of the inputs",
        description=(__doc__ or "").strip(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    draft.add_argument("inputs", nargs="+", metavar="INPUT", help="log files or directories of them")
    draft.add_argument("--out", type=Path, required=True, help="the mapping YAML file to write")
    draft.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    draft.add_argument("--config", type=Path, help="YAML file of DraftConfig fields")
    add_config_args(draft, DraftConfig)


def summary_lines(draft: Draft, out: Path) -> list[str]:
    """What `mapping draft` prints: the columns chosen, the event codes, what is left to fill in."""
    sample = draft.sample
    lines = [f"wrote {out} from {sample.table.num_rows:,} sampled rows ({sample.format})"]
    for key in SHOWN_FIELDS:
        column = draft.fields.get(key)
        if column is None:
            continue
        shown = f"constant {column[1:]!r}" if column.startswith("=") else f"column {column!r}"
        note = draft.notes.get(key, "")
        why = (
            "  (guessed from the values)" if note.startswith(CONTENT_NOTE) else f"  ({note})" if note else ""
        )
        lines.append(f"  {key:<12} <- {shown}{why}")
    if draft.timestamp is not None:
        ts = draft.timestamp
        lines.append(f"  timestamps   {ts.format} ({ts.resolution} resolution), timezone {ts.timezone}")
        if ts.format_note:
            lines.append(f"  check: timestamp.format is {ts.format_note}")
    if draft.fields.get("event") is not None:
        mapped = sum(c.event is not None for c in draft.codes)
        lines.append(
            f"  event codes  column {draft.fields['event']!r}: {len(draft.codes)} distinct, {mapped} mapped"
        )
    if draft.todo:
        lines.append(f"  TODO in {out}: {'; '.join(draft.todo)}")
    lines.append(f"next: simpersona prepare INPUT... --mapping {out} --check")
    return lines


def run(args: argparse.Namespace) -> int:
    from learners.data.adapters import expand_inputs
    from learners.data.mapping_draft import draft_mapping

    config = build_config(DraftConfig, args, args.config)
    out: Path = args.out
    if out.exists() and not args.force:
        raise ValueError(f"mapping draft: {out} already exists; fix: choose another --out or pass --force")
    inputs = expand_inputs(args.inputs)
    draft = draft_mapping(inputs, config, out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(draft.text, encoding="utf-8")
    for line in summary_lines(draft, out):
        print(line)
    return 0
