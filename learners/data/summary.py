"""Conversion of a prepared directory: how many sessions and buyers purchased, and which actions buyers took.

A buyer is one user at one merchant. Session conversion is the share of sessions with a purchase,
buyer conversion the share of buyers with one; the action reach of an event type is the share of
buyers who took it at least once. These are plain shares, each of its own total, so they read
independently ("4.7% of buyers favourited"), unlike the funnel depths of the merchant table (the
share of buyers whose deepest event reached a stage, which counts a buyer who carted without ever
favouriting as having passed "favorite").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from learners.data import schema


@dataclass(frozen=True)
class Conversion:
    """Sessions and buyers of one merchant (or of all merchants: ``merchant_id`` None)."""

    merchant_id: str | None
    sessions: int
    converted_sessions: int
    """Sessions with at least one purchase."""
    buyers: int
    converted_buyers: int
    """Buyers with at least one purchase."""
    buyers_by_action: dict[str, int] = field(default_factory=dict)
    """Canonical event type -> buyers who took it at least once (every type, zeros included)."""

    @property
    def session_conversion(self) -> float:
        return self.converted_sessions / self.sessions if self.sessions else 0.0

    @property
    def buyer_conversion(self) -> float:
        return self.converted_buyers / self.buyers if self.buyers else 0.0

    def action_share(self, event_type: str) -> float:
        """Share of the buyers who took ``event_type`` at least once."""
        return self.buyers_by_action.get(event_type, 0) / self.buyers if self.buyers else 0.0


def conversion(data_dir: str | Path) -> tuple[Conversion, dict[str, Conversion]]:
    """(all merchants, per merchant id) from ``sessions.parquet`` and ``buyers.parquet``.

    Which actions a buyer took comes from the buyer features ``log_n_<type>`` (log1p of the buyer's
    count of that event type over the whole history, so > 0 exactly when it occurred); the queries
    are lazy, so only the columns used are read.
    """
    data_dir = Path(data_dir)
    paths = {name: data_dir / schema.TABLE_FILES[name] for name in ("sessions", "buyers")}
    for path in paths.values():
        if not path.exists():
            raise FileNotFoundError(f"{path} is missing; re-run `simpersona prepare ... --out {data_dir}`")
    sessions = (
        pl.scan_parquet(paths["sessions"])
        .group_by("merchant_id")
        .agg(pl.len().alias("sessions"), pl.col("converted").sum().alias("converted_sessions"))
        .collect()
    )
    took = {
        t: (pl.col("features").arr.get(schema.FEATURE_NAMES.index(f"log_n_{t}")) > 0).sum().alias(t)
        for t in schema.EVENT_TYPES
    }
    buyers = (
        pl.scan_parquet(paths["buyers"])
        .group_by("merchant_id")
        .agg(pl.len().alias("buyers"), pl.col("converted").sum().alias("converted_buyers"), *took.values())
        .collect()
    )
    rows = sessions.join(buyers, on="merchant_id", how="full", coalesce=True).fill_null(0)
    per_merchant = {r["merchant_id"]: _conversion(r["merchant_id"], r) for r in rows.iter_rows(named=True)}
    totals = rows.drop("merchant_id").sum().row(0, named=True) if rows.height else {}
    return _conversion(None, totals), per_merchant


def _conversion(merchant_id: str | None, r: dict) -> Conversion:
    return Conversion(
        merchant_id,
        int(r.get("sessions", 0)),
        int(r.get("converted_sessions", 0)),
        int(r.get("buyers", 0)),
        int(r.get("converted_buyers", 0)),
        {t: int(r.get(t, 0)) for t in schema.EVENT_TYPES},
    )
