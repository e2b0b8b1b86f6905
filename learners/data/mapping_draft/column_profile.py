"""What each sampled column looks like: counts and shapes of its values, and the words of its name.

Every guess of the draft (roles, timestamps, event codes) reads these profiles, never the raw values.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from learners.data.canonical import INT_TEXT, NUMBER_TEXT, as_text
from learners.data.readers import MISSING_WORDS

FIT_SHARE = 0.95
"""Share of a column's non-empty sampled values that must fit a reading (a timestamp format, numbers)
for the column to be taken as such: a few stray values do not veto a reading."""
TIME_WORDS = frozenset(
    {"time", "timestamp", "date", "datetime", "ts", "tstamp", "created", "when", "stamp", "day", "days"}
    | {"at", "dt"}
)
"""Words of a column name that say it holds times (bare-digit patterns are only tried on such columns;
such a column is no id)."""
NUMBER_IN_TEXT = r"[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?"
"""A number anywhere in a value (its exponent's e is not a letter of a word)."""


@dataclass
class ColumnProfile:
    """What a column's sampled values look like."""

    name: str
    texts: pa.Array
    """The values as text, empty (and missing tokens) as null."""
    missing_seen: tuple[str, ...]
    """The ``MISSING_WORDS`` found in the column, read as empty."""
    native: pa.DataType
    non_null: int
    distinct: int
    ints: float
    """Share of non-empty values that are integers."""
    numbers: float
    """Share of non-empty values that are numbers."""
    decimals: bool
    """Some values have a non-zero fraction (prices, not ids; 17850.0 is an id pandas wrote as a float)."""
    run_share: float
    """Share of rows whose value repeats the previous row's (logs grouped by that column)."""
    spaces: bool
    """Some values hold spaces (not an id)."""
    lists: bool
    """Some values are lists, bracketed or |-separated (Coveo's clicked_skus_hash ['a1b2'], Trivago's
    impressions 1|2|3): not an id."""
    letters: float
    """Share of non-empty values with a letter outside their numbers: text, not numbers or lists of
    numbers (Coveo's query_vector)."""
    tokens: frozenset[str]
    """The name's words, lower case."""


def name_tokens(name: str) -> frozenset[str]:
    """The words of a column name: split at non-alphanumerics and camelCase, lower case, plus the
    whole name squashed (``userId`` -> user, id, userid)."""
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1 \2", name)
    words = [w.lower() for w in re.split(r"[^A-Za-z0-9]+", spaced) if w]
    return frozenset([*words, "".join(words)])


def profile_column(name: str, values: pa.ChunkedArray | pa.Array, words: str | None = None) -> ColumnProfile:
    """Counts and shapes of one sampled column; its tokens are the words of ``words``, else of its name."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    native = values.type
    texts = as_text(values)
    missing = pc.fill_null(pc.is_in(texts, value_set=pa.array(MISSING_WORDS, pa.string())), False)
    missing_seen: tuple[str, ...] = ()
    if pc.any(missing).as_py():
        missing_seen = tuple(sorted(pc.unique(texts.filter(missing)).to_pylist()))
        texts = pc.if_else(missing, pa.scalar(None, pa.string()), texts)
    present = texts.drop_null()
    non_null = len(present)
    if non_null:
        ints = pc.mean(pc.match_substring_regex(present, INT_TEXT).cast(pa.int8())).as_py()
        numbers = pc.mean(pc.match_substring_regex(present, NUMBER_TEXT).cast(pa.int8())).as_py()
        # "17850.0" is an id pandas wrote as a float (a column with NaN): only a fraction makes
        # decimals, and a short one: GA's client id "1005694.5834348403" has ten digits after its point.
        fraction = pc.match_substring_regex(present, r"^[+-]?[0-9]*\.[0-9]{0,5}[1-9]$")
        decimals = bool(pc.any(fraction).as_py()) and numbers > FIT_SHARE
        spaces = bool(pc.any(pc.match_substring(present, " ")).as_py())
        lists = bool(pc.any(pc.match_substring_regex(present, r"^\[.*\]$|^[^|]+(\|[^|]+)+$")).as_py())
        distinct = pc.count_distinct(present).as_py()
        worded = pc.match_substring_regex(pc.replace_substring_regex(present, NUMBER_IN_TEXT, ""), r"\pL")
        letters = pc.mean(worded.cast(pa.int8())).as_py()
    else:
        ints = numbers = letters = 0.0
        decimals = spaces = lists = False
        distinct = 0
    run_share = 0.0
    if len(texts) > 1:
        same = pc.equal(texts.slice(1), texts.slice(0, len(texts) - 1))
        run_share = pc.mean(pc.fill_null(same, False).cast(pa.int8())).as_py() or 0.0
    return ColumnProfile(
        name=name,
        texts=texts,
        missing_seen=missing_seen,
        native=native,
        non_null=non_null,
        distinct=distinct,
        ints=ints or 0.0,
        numbers=numbers or 0.0,
        decimals=decimals,
        run_share=run_share,
        spaces=spaces,
        lists=lists,
        letters=letters or 0.0,
        tokens=name_tokens(words or name),
    )
