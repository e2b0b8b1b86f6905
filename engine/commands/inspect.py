"""Summarize a prepared directory: what went in, what was quarantined and why, merchants, conversion,
the actions buyers took, buyer features.

  simpersona inspect data/ --top 10

Session conversion is the share of sessions with a purchase, buyer conversion the share of buyers
(one user at one merchant) with one, and each action's column the share of buyers who took it at
least once; each is shown for all merchants and per merchant. Reads only the manifest, the
quarantine, the merchant table and a few columns of the sessions and buyers tables (the buyers'
features in batches), so it stays fast and small on large directories.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.parquet as pq

from engine.stage_results import day_month_lines, one_type_lines, session_span_lines, time_range_lines
from learners.data import schema
from learners.data.summary import conversion

NAME = "inspect"
HELP = "print a readable summary of a prepared directory (counts, quarantine, merchants, features)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dir", type=Path, metavar="DIR", help="a directory written by `simpersona prepare`")
    parser.add_argument(
        "--top", type=int, default=10, help="merchants and quarantine reasons to list (default: 10)"
    )


def _table(dir: Path, name: str) -> Path:
    path = dir / schema.TABLE_FILES[name]
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing; re-run `simpersona prepare ... --out {dir}`")
    return path


def manifest_lines(manifest: dict) -> list[str]:
    lines = [f"adapter {manifest['adapter']} ({manifest['ts_resolution']} resolution)", "inputs:"]
    lines += [f"  {i['path']}  {i['bytes']:,} bytes  sha256 {i['sha256'][:16]}" for i in manifest["inputs"]]
    lines.append("counts:")
    lines += [f"  {k:<17}{v:>14,}" for k, v in manifest["counts"].items()]
    lines += time_range_lines(manifest.get("time_range"))
    lines += session_span_lines(manifest)
    lines += one_type_lines(manifest)
    lines += day_month_lines(manifest)
    return lines


def quarantine_lines(dir: Path, top: int) -> list[str]:
    rows = pl.read_parquet(_table(dir, "quarantine"))
    if rows.height == 0:
        return ["quarantine: empty"]
    grouped = (
        rows.group_by("reason", maintain_order=True)
        .agg(pl.len().alias("n"), pl.all().first())
        .sort(["n", "reason"], descending=[True, False])
    )
    lines = [f"quarantine: {rows.height:,} rows, {grouped.height:,} distinct reasons"]
    for r in grouped.head(top).iter_rows(named=True):
        column = f" column {r['column']}" if r["column"] else ""
        lines.append(f"  {r['n']:>10,}  {r['reason']}")
        lines.append(f"              e.g. {r['file']}:{r['line']}{column}: {r['raw']!r}")
    return lines


ALL_MERCHANTS = "all merchants"


def merchant_lines(dir: Path, top: int) -> list[list[str]]:
    """Two sections: counts and conversion per merchant, then the share of buyers taking each action.

    Every rate is a share of its own total, named in the section's legend; the merchant table's
    funnel depths (buyers whose deepest event reached a stage) are not shown, as they read as
    contradictions ("favorite 26.5%" when 4.7% of buyers favourited, because carting counts as
    having passed it).
    """
    merchants = pl.read_parquet(_table(dir, "merchants"))
    overall, per_merchant = conversion(dir)
    head = merchants.sort(["buyers", "merchant_id"], descending=[True, False]).head(top)
    # Wide enough for the ids shown (a 32-character seller hash cut short names another seller).
    w = max(16, *(len(m) + 1 for m in head["merchant_id"])) if head.height else 16
    counts = [
        f"merchants: {merchants.height:,} (top {head.height} by buyers; a buyer is one user at one merchant)",
        f"  {'merchant':<{w}}{'buyers':>9}{'sessions':>10}{'events':>11}{'products':>10}"
        f"{'session conv.':>15}{'buyer conv.':>13}",
    ]
    totals = {k: int(merchants[k].sum()) for k in ("events", "products")}
    for name, c, r in [
        (ALL_MERCHANTS, overall, totals),
        *((m["merchant_id"], per_merchant[m["merchant_id"]], m) for m in head.iter_rows(named=True)),
    ]:
        counts.append(
            f"  {name:<{w}}{c.buyers:>9,}{c.sessions:>10,}{r['events']:>11,}{r['products']:>10,}"
            f"{c.session_conversion:>15.1%}{c.buyer_conversion:>13.1%}"
        )
    counts += [
        "  session conv. = share of sessions with a purchase"
        f" ({overall.converted_sessions:,} of {overall.sessions:,} overall)",
        "  buyer conv.   = share of buyers with a purchase"
        f" ({overall.converted_buyers:,} of {overall.buyers:,} overall)",
    ]
    widths = {t: max(len(t), 6) + 2 for t in schema.EVENT_TYPES}
    actions = [
        "buyers who took each action at least once (share of the merchant's buyers):",
        f"  {'merchant':<{w}}" + "".join(f"{t:>{widths[t]}}" for t in schema.EVENT_TYPES),
    ]
    for name, c in [(ALL_MERCHANTS, overall), *((m, per_merchant[m]) for m in head["merchant_id"])]:
        shares = "".join(f"{c.action_share(t):>{widths[t]}.1%}" for t in schema.EVENT_TYPES)
        actions.append(f"  {name:<{w}}{shares}")
    return [counts, actions]


def feature_lines(dir: Path) -> list[str]:
    """min / mean / max of each buyer feature, streamed over the buyers file's batches."""
    file = pq.ParquetFile(_table(dir, "buyers"))
    lo = np.full(schema.N_FEATURES, np.inf)
    hi = np.full(schema.N_FEATURES, -np.inf)
    total = np.zeros(schema.N_FEATURES)
    n = 0
    for batch in file.iter_batches(columns=["features"], batch_size=1 << 16):
        values = batch.column(0).values.to_numpy(zero_copy_only=False).reshape(-1, schema.N_FEATURES)
        if len(values):
            lo = np.minimum(lo, values.min(axis=0))
            hi = np.maximum(hi, values.max(axis=0))
            total += values.sum(axis=0, dtype=np.float64)
            n += len(values)
    if n == 0:
        return ["buyer features: no buyers"]
    lines = [f"buyer features ({n:,} buyers):  {'min':>9}{'mean':>9}{'max':>9}"]
    for i, name in enumerate(schema.FEATURE_NAMES):
        lines.append(f"  {name:<28}{lo[i]:>9.3f}{total[i] / n:>9.3f}{hi[i]:>9.3f}")
    return lines


def run(args: argparse.Namespace) -> int:
    path = args.dir / schema.MANIFEST_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: {args.dir} is not a complete `simpersona prepare` output")
    manifest = json.loads(path.read_text(encoding="utf-8"))
    sections = [
        manifest_lines(manifest),
        quarantine_lines(args.dir, args.top),
        *merchant_lines(args.dir, args.top),
        feature_lines(args.dir),
    ]
    print("\n\n".join("\n".join(s) for s in sections))
    return 0
