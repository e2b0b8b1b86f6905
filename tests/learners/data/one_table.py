"""Prepare's steps on one in-memory table of complete buyers, for the tests of each step.

``prepare`` runs these steps per partition of buyers; the tests feed them one hand-made table.
"""

from __future__ import annotations

import polars as pl
import pyarrow as pa

from learners.data import schema
from learners.data.features import buyer_frame, buyers_table
from learners.data.sessions import events_table, order_frame


def _ordered(events: pa.Table, day_resolution: bool, session_gap_s: int) -> pl.DataFrame:
    frame = pl.from_arrow(events)
    assert isinstance(frame, pl.DataFrame)
    return order_frame(frame, day_resolution=day_resolution, session_gap_s=session_gap_s)


def sessionize(
    events: pa.Table, *, day_resolution: bool, session_gap_s: int = schema.SESSION_GAP_SECONDS
) -> pa.Table:
    """Canonical events of complete buyers (``schema.CANONICAL_EVENTS``) -> ``schema.EVENTS``."""
    return events_table(_ordered(events, day_resolution, session_gap_s))


def build_buyers(
    events: pa.Table,
    *,
    day_resolution: bool,
    max_seq_len: int,
    session_gap_s: int = schema.SESSION_GAP_SECONDS,
) -> pa.Table:
    """Canonical events of complete buyers -> ``schema.BUYERS``."""
    return buyers_table(buyer_frame(_ordered(events, day_resolution, session_gap_s), max_seq_len=max_seq_len))
