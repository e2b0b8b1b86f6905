"""What each sampled column looks like: counts and shapes of its values, and the words of its name.

Every guess of the draft (roles, timestamps, event codes) reads these profiles, never the raw values.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from learners.data.canonical import INT_TEXT, NUMBER_TEXT, as_text

FIT_SHARE = 0.95
"""Share of a column's non-empty sampled values that must fit a reading (a timestamp format, numbers)
for the column to be taken as such: a few stray values do not veto a reading."""


@dataclass
class ColumnProfile:
    """What a column's sampled values look like."""

    name: str
    texts: pa.Array
    """The values as text, empty as null."""
    native: pa.DataType
    non_null: int
    distinct: int
    ints: float
    """Share of non-empty values that are integers."""
    numbers: float
    """Share of non-empty values that are numbers."""
    decimals: bool
    """Some values have a decimal point (prices, not ids)."""
    run_share: float
    """Share of rows whose value repeats the previous row's (logs grouped by that column)."""
    spaces: bool
    """Some values hold spaces (not an id)."""
    tokens: frozenset[str]
    """The name's words, lower case."""


def name_tokens(name: str) -> frozenset[str]:
    """The words of a column name: split at non-alphanumerics and camelCase, lower case, plus the
    whole name squashed (``userId`` -> user, id, userid)."""
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1 \2", name)
    words = [w.lower() for w in re.split(r"[^A-Za-z0-9]+", spaced) if w]
    return frozenset([*words, "".join(words)])


def profile_column(name: str, values: pa.ChunkedArray | pa.Array) -> ColumnProfile:
    """Counts and shapes of one sampled column."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    native = values.type
    texts = as_text(values)
    present = texts.drop_null()
    non_null = len(present)
    if non_null:
        ints = pc.mean(pc.match_substring_regex(present, INT_TEXT).cast(pa.int8())).as_py()
        numbers = pc.mean(pc.match_substring_regex(present, NUMBER_TEXT).cast(pa.int8())).as_py()
        decimals = bool(pc.any(pc.match_substring(present, ".")).as_py()) and numbers > FIT_SHARE
        spaces = bool(pc.any(pc.match_substring(present, " ")).as_py())
        distinct = pc.count_distinct(present).as_py()
    else:
        ints = numbers = 0.0
        decimals = spaces = False
        distinct = 0
    run_share = 0.0
    if len(texts) > 1:
        same = pc.equal(texts.slice(1), texts.slice(0, len(texts) - 1))
        run_share = pc.mean(pc.fill_null(same, False).cast(pa.int8())).as_py() or 0.0
    return ColumnProfile(
        name=name,
        texts=texts,
        native=native,
        non_null=non_null,
        distinct=distinct,
        ints=ints or 0.0,
        numbers=numbers or 0.0,
        decimals=decimals,
        run_share=run_share,
        spaces=spaces,
        tokens=name_tokens(name),
    )
