"""``draft_mapping``: sample the inputs, guess the timestamps, the columns' roles and the event codes,
and write the YAML (the package docstring says what each step proposes).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl
import pyarrow as pa
import yaml

from learners.data.canonical import as_text
from learners.data.mapping import mapping_from_dict
from learners.data.mapping_draft.column_profile import name_tokens, profile_column
from learners.data.mapping_draft.column_roles import CONTENT_NOTE, assign_roles
from learners.data.mapping_draft.event_codes import EventCode, code_counts, drop_word, event_word
from learners.data.mapping_draft.sample import Sample, sample_inputs
from learners.data.mapping_draft.timestamps import TimestampGuess, guess_timestamp
from learners.data.mapping_draft.yaml_text import ORDER_WORDS, render_yaml
from learners.data.schema import SESSION_GAP_SECONDS

CODE_MAX_DISTINCT = 50
"""An event column has at most this many distinct values in the sample."""


@dataclass
class DraftConfig:
    """How `simpersona mapping draft` samples the inputs and names the mapping."""

    rows: int = 10_000
    """Rows read from the inputs (in order, from the first file on) to draft the mapping."""
    name: str | None = None
    """The mapping's name, and the merchant_id constant of a single-store log (default: the output file's stem, else the first input's)."""
    max_codes: int = CODE_MAX_DISTINCT
    """Most distinct event codes listed; a column with more is not taken for the event column."""


@dataclass
class Draft:
    """A drafted mapping: its YAML text and what the user still has to fill in."""

    text: str
    fields: dict[str, str | None]
    """Canonical field (and "event") -> source column as the YAML names it, or None; merchant_id may
    be "=CONSTANT"."""
    timestamp: TimestampGuess | None
    codes: list[EventCode]
    todo: list[str]
    """Keys left for the user (the mapping does not load until they are filled in)."""
    sample: Sample
    notes: dict[str, str] = field(default_factory=dict)


def _default_name(inputs: Sequence[Path], out: Path | None) -> str:
    stem = (out or Path(inputs[0])).name.split(".")[0]
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", stem).strip("-")
    return name or "my-shop"


LONG_SESSION_SHARE = 0.1
"""A session column of which this share of sampled sessions (of two events or more) last over a day
is a user's id, not a visit's: a visit lasts minutes to hours."""


def _long_sessions(sample: Sample, ts: TimestampGuess, column: str) -> float | None:
    """The share of the sampled sessions of two events or more that last over a day, when it is at
    least ``LONG_SESSION_SHARE``; else None."""
    if ts.resolution == "day" or ts.instants is None:
        return None
    frame = pl.DataFrame({"s": as_text(sample.table.column(column)), "t": ts.instants.cast(pa.int64())})
    spans = (
        frame.drop_nulls()
        .group_by("s")
        .agg(pl.len().alias("n"), (pl.col("t").max() - pl.col("t").min()).alias("span"))
        .filter(pl.col("n") >= 2)
    )
    if spans.height == 0:
        return None
    share = float((spans["span"] > 86_400_000).mean())
    return share if share >= LONG_SESSION_SHARE else None


def draft_mapping(inputs: Sequence[Path], config: DraftConfig, out: Path | None = None) -> Draft:
    """Sample the inputs and draft a mapping (see the package docstring)."""
    inputs = [Path(p) for p in inputs]
    sample = sample_inputs(inputs, config.rows)
    if sample.table.num_rows == 0:
        raise ValueError(
            f"mapping draft: no readable rows in {', '.join(map(str, inputs))} ({sample.unreadable} unreadable"
            f"{': ' + sample.unreadable_example if sample.unreadable_example else ''}); fix: check the files"
        )
    name = config.name or _default_name(inputs, out)
    profiles = {
        n: profile_column(n, sample.table.column(n), sample.words.get(n)) for n in sample.table.column_names
    }
    taken: set[str] = set()
    ts = guess_timestamp(profiles, sample, taken)
    if ts is not None:
        taken.add(ts.column)
    roles, notes = assign_roles(profiles, taken, config.max_codes)
    guessed_event = notes.get("event", "").startswith(CONTENT_NOTE)
    if guessed_event and any(name_tokens(f.stem) & ORDER_WORDS for f in sample.files):
        # An orders export's status (Shopify's Financial Status: paid, pending) is no event code: the
        # YAML proposes a log of purchases instead.
        roles["event"] = None
        del notes["event"]
    if ts is not None and roles["session_id"] is not None:
        share = _long_sessions(sample, ts, roles["session_id"])
        if share is not None:
            # OTTO's "session" is a user over four weeks: as session_id it would make one visit of them.
            notes["session_id"] = (
                f"{share:.0%} of the sampled '{roles['session_id']}' last over a day: a user, not a visit;"
                f" sessions split after {SESSION_GAP_SECONDS // 60} minutes without events"
            )
            roles["session_id"] = None
    fields: dict[str, str | None] = {
        "merchant_id": roles["merchant_id"] or f"={name}",
        "buyer_id": roles["buyer_id"],
        "ts": ts.column if ts else None,
        **{k: roles[k] for k in ("session_id", "product_id", "category_id", "price", "query")},
        "event": roles["event"],
    }
    codes: list[EventCode] = []
    if roles["event"] is not None:
        codes = [
            EventCode(c, n, event_word(c), drop_word(c)) for c, n in code_counts(profiles[roles["event"]])
        ]
    header_less = sample.csv is not None and not sample.csv.header
    rename: dict[str, str] = {}
    if header_less:
        for role, column in fields.items():
            if column is not None and not column.startswith("="):
                rename[column] = {"ts": "ts", "event": "event_type"}.get(role, role)
    text, todo = render_yaml(name, inputs, sample, fields, ts, codes, notes, profiles, rename)
    named = {k: rename.get(v, v) if v is not None else None for k, v in fields.items()}
    draft = Draft(text, named, ts, codes, todo, sample, notes)
    if not todo:
        mapping_from_dict(yaml.safe_load(text), source="mapping draft")  # a complete draft must load
    return draft
