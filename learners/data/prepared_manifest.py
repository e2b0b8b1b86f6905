"""The prepared directory's manifest: where its rows came from and that every row is accounted for.

``build_manifest`` records each input's size and sha256, the adapter, the settings and the library
versions, and refuses a directory whose row counts do not add up: rows_read = rows_kept +
rows_quarantined + rows_dropped (a bug, never bad input). ``simpersona prepare --check`` runs the
same accounting without writing anything (prepare.py's ``check_rows``).
"""

from __future__ import annotations

import hashlib
import platform
from collections import Counter
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa

from learners.data import schema
from learners.data.adapter import Adapter


def file_digest(path: Path) -> dict[str, Any]:
    """Path, size and sha256 of an input file, for the manifest."""
    sha = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            sha.update(block)
    return {"path": str(path), "bytes": path.stat().st_size, "sha256": sha.hexdigest()}


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def build_manifest(
    inputs: Sequence[dict[str, Any]],
    adapter: Adapter,
    config: dict[str, Any],
    counts: dict[str, int],
    quarantine_reasons: Counter[str],
    dropped_codes: Counter[str] | None = None,
) -> dict[str, Any]:
    """The prepared directory's manifest (``inputs``: file_digest of each input, ``config``: the
    prepare settings as a dict); raises when
    rows_read != rows_kept + rows_quarantined + rows_dropped."""
    dropped_codes = dropped_codes or Counter()
    counts.setdefault("rows_dropped", sum(dropped_codes.values()))
    check_accounting(counts)
    if counts["rows_dropped"] != sum(dropped_codes.values()):
        raise RuntimeError(
            f"row accounting broken: rows_dropped {counts['rows_dropped']} != the sum by code"
            f" {sum(dropped_codes.values())}"
        )
    if counts["events"] != counts["rows_kept"]:
        raise RuntimeError(f"events written {counts['events']} != rows kept {counts['rows_kept']}")
    return {
        "adapter": adapter.name,
        "ts_resolution": "day" if adapter.day_resolution else "second",
        "inputs": list(inputs),
        "config": config,
        "versions": {
            "python": platform.python_version(),
            "pyarrow": pa.__version__,
            "polars": pl.__version__,
            "simpersona": _version("simpersona"),
        },
        "counts": counts,
        "quarantine_by_reason": by_count(quarantine_reasons),
        "rows_dropped_by_code": by_count(dropped_codes),
        "tables": dict(schema.TABLE_FILES),
    }


def by_count(counter: Counter[str]) -> dict[str, int]:
    """A counter as a dict, most frequent first (ties by key), as the manifest lists them."""
    return dict(sorted(counter.items(), key=lambda kv: (-kv[1], kv[0])))


def check_accounting(counts: dict[str, int]) -> None:
    """Raise unless rows_read == rows_kept + rows_quarantined + rows_dropped (a bug, never bad input)."""
    if counts["rows_read"] != counts["rows_kept"] + counts["rows_quarantined"] + counts["rows_dropped"]:
        raise RuntimeError(
            f"row accounting broken: rows_read {counts['rows_read']} != kept {counts['rows_kept']}"
            f" + quarantined {counts['rows_quarantined']} + dropped {counts['rows_dropped']}"
        )
