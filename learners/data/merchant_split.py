"""Merchant-disjoint splits of a prepared directory: pick held-out merchants, write a filtered copy.

The evaluation protocol holds whole merchants out: the codebook, the agent and every fitted baseline
must never see them. ``heldout_merchants`` draws them (seeded) among merchants with enough buyers to
measure; ``filter_prepared`` writes a prepared directory holding only the other merchants' rows, which
any stage that reads a prepared directory (``fit_codebook``, ``build_traces``, ``assign``) then uses
unchanged.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from learners.data.schema import MANIFEST_FILE, TABLE_FILES

MERCHANT_TABLES = ("events", "sessions", "buyers", "catalogs", "merchants")
"""Tables of a prepared directory keyed by ``merchant_id`` (the quarantine is keyed by input line)."""


def eligible_merchants(data_dir: str | Path, min_buyers: int, min_sessions: int = 0) -> list[str]:
    """Merchants of ``DATA/merchants.parquet`` with at least ``min_buyers`` buyers and ``min_sessions``
    sessions, sorted by id. Sessions decide how precisely a merchant's real rates are known."""
    path = Path(data_dir) / TABLE_FILES["merchants"]
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: run `simpersona prepare ... --out {data_dir}` first")
    table = pq.read_table(path, columns=["merchant_id", "buyers", "sessions"])
    keep = pc.and_(
        pc.greater_equal(table.column("buyers"), min_buyers),
        pc.greater_equal(table.column("sessions"), min_sessions),
    )
    return sorted(table.filter(keep).column("merchant_id").to_pylist())


def heldout_merchants(
    data_dir: str | Path, count: int, min_buyers: int, seed: int, min_sessions: int = 0
) -> list[str]:
    """``count`` merchants drawn uniformly (seeded) among the eligible ones (``eligible_merchants``), sorted."""
    eligible = eligible_merchants(data_dir, min_buyers, min_sessions)
    if not 0 < count <= len(eligible):
        raise ValueError(
            f"{data_dir}: cannot hold out {count} merchants; {len(eligible)} have >= {min_buyers} buyers "
            f"and >= {min_sessions} sessions (lower the count or the thresholds)"
        )
    chosen = np.random.default_rng(seed).choice(len(eligible), size=count, replace=False)
    return sorted(eligible[i] for i in chosen)


def filter_prepared(
    data_dir: str | Path, out: str | Path, merchants: Collection[str], keep: bool = False
) -> dict[str, int]:
    """Copy a prepared directory into ``out`` without ``merchants`` (``keep=True``: with only them).

    The quarantine table is copied whole (its rows are input lines, not merchants). The copy's
    manifest is the source's, with its ``counts`` recomputed for the kept rows and a ``merchant_filter``
    entry naming the source, the merchants and the rows removed per table. Returns rows kept per table.
    """
    data_dir, out = Path(data_dir), Path(out)
    source_manifest = data_dir / MANIFEST_FILE
    if not source_manifest.exists():
        raise FileNotFoundError(f"{source_manifest} not found: {data_dir} is not a prepared directory")
    if out.resolve() == data_dir.resolve():
        raise ValueError(f"{out}: the filtered copy must go to another directory than its source")
    out.mkdir(parents=True, exist_ok=True)
    listed = pa.array(sorted(set(merchants)), pa.string())
    kept: dict[str, int] = {}
    removed: dict[str, int] = {}
    for name in MERCHANT_TABLES:
        table = pq.read_table(data_dir / TABLE_FILES[name])
        member = pc.is_in(table.column("merchant_id"), value_set=listed)
        kept_table = table.filter(member if keep else pc.invert(member))
        pq.write_table(kept_table, out / TABLE_FILES[name], compression="zstd")
        kept[name] = kept_table.num_rows
        removed[name] = table.num_rows - kept_table.num_rows
    quarantine = pq.read_table(data_dir / TABLE_FILES["quarantine"])
    pq.write_table(quarantine, out / TABLE_FILES["quarantine"], compression="zstd")

    manifest = json.loads(source_manifest.read_text())
    counts = manifest.setdefault("counts", {})
    counts.update(
        events=kept["events"], sessions=kept["sessions"], buyers=kept["buyers"], merchants=kept["merchants"]
    )
    counts["products"] = kept["catalogs"]
    manifest["merchant_filter"] = {
        "source": str(data_dir.resolve()),
        "mode": "keep" if keep else "drop",
        "merchants": listed.to_pylist(),
        "rows_removed": removed,
    }
    (out / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
    return kept
