"""The time column and how to read it, checked with the same parser ``prepare`` uses.

Formats tried: ``iso``, a strptime pattern, ``unix_s``, ``unix_ms``, ``unix_us``, ``unix_ns``; day resolution for date-only
values such as ``MMDD`` or ``M-D`` (the year then comes from the file path, or is left as a TODO).
A zone hint comes from the hour of least activity, and a valid range is proposed when a few rows lie
on stray days far from the rest.
"""

from __future__ import annotations

import datetime as dt
import re
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from learners.data.canonical import INT_TEXT, ISO_TEXT, UNIX_UNITS, parse_timestamps
from learners.data.mapping import TimestampSpec
from learners.data.mapping_draft.column_profile import FIT_SHARE, TIME_WORDS, ColumnProfile
from learners.data.mapping_draft.sample import Sample

TROUGH_LOCAL_HOUR = 4
"""Local hour around which shoppers are least active (the zone hint puts the quietest hours here)."""
STRAY_DENSITY = 0.01
"""A tail of days is stray when its rows per day are below this share of the bulk's."""
STRAY_MAX_SHARE = 0.02
"""At most this share of the sampled rows may lie outside a proposed valid range."""

# Timestamp patterns tried on text values, most specific first: (strptime pattern, resolution).
PATTERNS: tuple[tuple[str, str], ...] = (
    ("%Y-%m-%d %H:%M:%S UTC", "second"),
    ("%Y-%m-%d %H:%M:%S%z", "second"),
    ("%Y-%m-%d %H:%M:%S %z", "second"),  # Shopify's "2022-01-11 04:32:30 -0500"
    ("%Y-%m-%d %H:%M:%S", "second"),
    ("%Y-%m-%d %H:%M", "second"),
    ("%Y/%m/%d %H:%M:%S", "second"),
    ("%Y/%m/%d %H:%M", "second"),
    ("%d/%m/%Y %H:%M:%S", "second"),
    ("%m/%d/%Y %H:%M:%S", "second"),
    ("%d/%m/%Y %H:%M", "second"),
    ("%m/%d/%Y %H:%M", "second"),
    ("%d.%m.%Y %H:%M:%S", "second"),
    ("%d-%m-%Y %H:%M:%S", "second"),
    ("%m-%d-%Y %H:%M:%S", "second"),
    ("%d-%m-%Y %H:%M", "second"),
    ("%m-%d-%Y %H:%M", "second"),
    ("%d/%m/%y %H:%M", "second"),
    ("%m/%d/%y %H:%M", "second"),
    ("%Y%m%d%H%M%S", "second"),
    ("%Y/%m/%d", "day"),
    ("%d/%m/%Y", "day"),
    ("%m/%d/%Y", "day"),
    ("%d.%m.%Y", "day"),
    ("%d-%m-%Y", "day"),
    ("%m-%d-%Y", "day"),
    ("%d/%m/%y", "day"),
    ("%m/%d/%y", "day"),
    ("%Y%m%d", "day"),
    ("%m%d", "day"),
    ("%m-%d", "day"),
    ("%m/%d", "day"),
)
NAME_ONLY_PATTERNS = frozenset({"%Y%m%d", "%m%d", "%Y%m%d%H%M%S"})
"""Patterns of bare digits, which ids can match too: proposed only for a column named like a time."""
YEARLESS_PROBE = 2000  # a leap year, so that Feb 29 reads while a yearless pattern is probed
UNIX_S_RANGE = (946_684_800, 4_102_444_800)  # 2000-01-01 .. 2100-01-01
SECONDARY_TIME_WORDS = frozenset(
    {"client", "device", "server", "upload", "uploaded", "received", "processed", "previous", "first"}
    | {"last", "updated", "modified", "paid", "fulfilled", "cancelled", "canceled", "closed", "offset"}
    | {"dvce", "etl", "collector", "sent"}
)
"""Words of a time column that is not when the event happened: Amplitude's client_event_time beside
event_time, GA4's user_first_touch_timestamp, Shopify's Paid at beside Created at, Snowplow's
dvce_created_tstamp and collector_tstamp beside derived_tstamp."""
ZONE_BY_OFFSET: dict[int, str] = {
    -10: "Pacific/Honolulu",
    -8: "America/Los_Angeles",
    -7: "America/Denver",
    -6: "America/Chicago",
    -5: "America/New_York",
    -3: "America/Sao_Paulo",
    0: "Europe/London",
    1: "Europe/Berlin",
    2: "Europe/Athens",
    3: "Europe/Moscow",
    4: "Asia/Dubai",
    5: "Asia/Karachi",
    7: "Asia/Bangkok",
    8: "Asia/Shanghai",
    9: "Asia/Tokyo",
    10: "Australia/Sydney",
}


YEAR_IN_PATH = re.compile(r"(?<![0-9])(19[9][0-9]|20[0-9]{2})(?![0-9])")


@dataclass
class TimestampGuess:
    """How the chosen time column reads."""

    column: str
    format: str
    resolution: str
    read: int
    total: int
    example: str
    year: int | None = None
    year_note: str = ""
    timezone: str = "UTC"
    zone_note: str = ""
    min: dt.date | None = None
    max: dt.date | None = None
    range_note: str = ""
    format_note: str = ""
    instants: pa.Array | None = None
    """The sampled rows' times under this guess (UTC instants, null where unread), for later checks."""


def _read_share(values: pa.Array, spec: TimestampSpec) -> tuple[int, pa.Array]:
    try:
        parsed = parse_timestamps(values, spec)
    except (pa.ArrowException, ValueError):
        return 0, pa.nulls(len(values), pa.timestamp("ms", "UTC"))
    return len(values) - parsed.null_count, parsed


def _next_year_s() -> int:
    """Unix seconds of the first of January of next year."""
    return int(dt.datetime(dt.date.today().year + 1, 1, 1, tzinfo=dt.UTC).timestamp())


def timestamp_candidates(p: ColumnProfile) -> list[tuple[str, str, int]]:
    """(format, resolution, values read) of each format that reads at least FIT_SHARE of the column."""
    if p.non_null == 0:
        return []
    need = FIT_SHARE * p.non_null
    if pa.types.is_timestamp(p.native):
        return [("iso", "second", p.non_null)]
    found: list[tuple[str, str, int]] = []
    texts = p.texts.drop_null()
    if p.ints >= FIT_SHARE:
        numbers = pc.cast(texts.filter(pc.match_substring_regex(texts, INT_TEXT)), pa.int64())
        # A column not named as a time reads as one only up to next year: Shopify's order Id read as
        # unix_ms put its orders in 2036-2098.
        last = UNIX_S_RANGE[1] if p.tokens & TIME_WORDS else _next_year_s()
        for fmt, scale in (("unix_s", 1), ("unix_ms", 1000), ("unix_us", 10**6), ("unix_ns", 10**9)):
            low, high = UNIX_S_RANGE[0] * scale, last * scale
            inside = pc.sum(pc.and_(pc.greater_equal(numbers, low), pc.less(numbers, high)).cast(pa.int64()))
            if (inside.as_py() or 0) >= need:
                found.append((fmt, "second", int(inside.as_py())))
    iso = pc.sum(pc.match_substring_regex(texts, ISO_TEXT).cast(pa.int64())).as_py() or 0
    if iso >= need:
        day = pc.all(pc.equal(pc.utf8_length(texts), 10)).as_py()
        read, _ = _read_share(texts, TimestampSpec(format="iso"))
        if read >= need:
            found.append(("iso", "day" if day else "second", read))
    if found:
        return found
    for pattern, resolution in PATTERNS:
        if pattern in NAME_ONLY_PATTERNS and not (p.tokens & TIME_WORDS):
            continue
        shaped = pc.sum(pc.match_substring_regex(texts, pattern_shape(pattern)).cast(pa.int64())).as_py()
        if (shaped or 0) < need:  # the parser only runs on columns of the right shape
            continue
        yearless = "%Y" not in pattern and "%y" not in pattern
        spec = TimestampSpec(format=pattern, year=YEARLESS_PROBE if yearless else None, resolution=resolution)
        read, _ = _read_share(texts, spec)
        if read >= need:
            found.append((pattern, resolution, read))
            break
    return found


def pattern_shape(pattern: str) -> str:
    """A regex that every value a strptime pattern reads matches (a cheap filter before parsing)."""
    pieces = {
        "Y": "[0-9]{4}",
        "y": "[0-9]{2}",
        "m": "[0-9]{1,2}",
        "d": "[0-9]{1,2}",
        "H": "[0-9]{1,2}",
        "M": "[0-9]{1,2}",
        "S": "[0-9]{1,2}",
        "z": "(Z|[+-][0-9]{2}:?[0-9]{2})",
    }
    parts = re.split(r"%(.)", pattern)
    regex = "".join(re.escape(part) if i % 2 == 0 else pieces[part] for i, part in enumerate(parts))
    return f"^{regex}$"


def _example(p: ColumnProfile) -> str:
    values = p.texts.drop_null()
    return str(values[0].as_py()) if len(values) else ""


def _zone_hint(instants: pa.Array) -> tuple[str, str]:
    """(IANA zone, note) from the UTC hour of least activity; ("UTC", why not) when unclear."""
    hours = pc.hour(instants.drop_null()).to_numpy(zero_copy_only=False)
    days = len(set(pc.floor_temporal(instants.drop_null(), unit="day").to_pylist()))
    if len(hours) < 500 or days < 2:
        return "UTC", "too few rows over too few days to hint at a zone; give the store's IANA zone"
    counts = np.bincount(hours, minlength=24).astype(float)
    window = counts + np.roll(counts, 1) + np.roll(counts, -1)
    quiet = int(np.argmin(window))
    if window[quiet] > 0.5 * window.mean():
        return "UTC", "activity is flat over the day, no zone hint; give the store's IANA zone"
    offset = (TROUGH_LOCAL_HOUR - quiet + 12) % 24 - 12
    zone = ZONE_BY_OFFSET.get(offset, f"Etc/GMT{-offset:+d}" if offset else "UTC")
    sign = f"UTC{offset:+d}" if offset else "UTC"
    return zone, (
        f"hint: activity is lowest around {quiet:02d}:00 UTC, about {TROUGH_LOCAL_HOUR:02d}:00 at {sign};"
        " check, and use the store's own zone"
    )


def _local_days(instants: pa.Array, zone: str) -> np.ndarray:
    local = pc.local_timestamp(instants.drop_null().cast(pa.timestamp("ms", zone)))
    ms = local.cast(pa.int64()).to_numpy(zero_copy_only=False)
    return ms // 86_400_000


def stray_range(days: np.ndarray) -> tuple[int | None, int | None, str]:
    """A valid range of day numbers when a few rows lie on stray days far from the bulk: (first, last,
    note); (None, None, "") when the days look continuous."""
    if len(days) == 0:
        return None, None, ""
    values, counts = np.unique(days, return_counts=True)
    if len(values) < 3:
        return None, None, ""
    floor = 0.05 * statistics.median(counts.tolist())
    core = values[counts >= floor]
    a, b = int(core.min()), int(core.max())
    inside = (values >= a) & (values <= b)
    density = counts[inside].sum() / (b - a + 1)
    low = high = None
    left, right = values < a, values > b
    if left.any() and counts[left].sum() / (a - int(values.min())) < STRAY_DENSITY * density:
        low = a
    if right.any() and counts[right].sum() / (int(values.max()) - b) < STRAY_DENSITY * density:
        high = b
    mask = np.zeros(len(values), bool)
    if low is not None:
        mask |= left
    if high is not None:
        mask |= right
    outside = int(counts[mask].sum())
    if outside == 0 or outside > STRAY_MAX_SHARE * len(days):
        return None, None, ""
    stray = values[mask]
    first, last = (dt.date(1970, 1, 1) + dt.timedelta(days=int(d)) for d in (stray.min(), stray.max()))
    where = f"on {first}" if first == last else f"on {len(stray)} days between {first} and {last}"
    note = (
        f"{outside:,} of {len(days):,} sampled rows {'lies' if outside == 1 else 'lie'} {where}, far from"
        " the bulk: quarantined as outside the valid range; delete min/max to keep such rows"
    )
    return low, high, note


def _year_from_paths(paths: Sequence[Path]) -> tuple[int | None, str]:
    for path in paths:
        found = YEAR_IN_PATH.findall(str(path))
        if found:
            return int(found[-1]), f"from the file path ({path}): check"
    return None, ""


def guess_timestamp(
    profiles: dict[str, ColumnProfile], sample: Sample, taken: set[str]
) -> TimestampGuess | None:
    """The time column and how to read it (name hints first, finer resolution first)."""
    best: tuple[tuple[int, ...], str, tuple[str, str, int]] | None = None
    for order, (name, p) in enumerate(profiles.items()):
        if name in taken:
            continue
        for candidate in timestamp_candidates(p):
            score = (
                bool(p.tokens & TIME_WORDS),
                not p.tokens & SECONDARY_TIME_WORDS,
                bool(p.tokens & {"gmt", "utc"}),  # Adobe's hit_time_gmt over its local date_time
                candidate[1] == "second",
                candidate[2],
                -order,
            )
            if best is None or score > best[0]:
                best = (score, name, candidate)
    if best is None:
        return None
    _, name, (fmt, resolution, read) = best
    p = profiles[name]
    guess = TimestampGuess(name, fmt, resolution, read, p.non_null, _example(p))
    if "%d" in fmt and "%m" in fmt and not fmt.startswith("%Y"):  # d/m or m/d: same when days <= 12
        swapped = fmt.replace("%d", "%D").replace("%m", "%d").replace("%D", "%m")
        yearless_probe = YEARLESS_PROBE if "%Y" not in fmt and "%y" not in fmt else None
        also, _ = _read_share(p.texts.drop_null(), TimestampSpec(format=swapped, year=yearless_probe))
        if also >= FIT_SHARE * p.non_null:
            guess.format_note = f"ambiguous: {swapped!r} reads these values too; check which is meant"
    yearless = "%" in fmt and "%Y" not in fmt and "%y" not in fmt
    if yearless:
        guess.year, guess.year_note = _year_from_paths(sample.files)
    spec = TimestampSpec(
        format=fmt, year=guess.year or (YEARLESS_PROBE if yearless else None), resolution=resolution
    )
    instants = parse_timestamps(sample.table.column(name).combine_chunks(), spec)
    guess.instants = instants
    aware = fmt in UNIX_UNITS or "%z" in fmt or (pa.types.is_timestamp(p.native) and p.native.tz)
    if resolution == "day":
        guess.zone_note = "dates only: a day stamp is midnight UTC of its date whatever the zone"
    elif fmt.endswith(" UTC"):
        guess.zone_note = "the values say UTC"
    elif fmt == "iso" and bool(
        pc.any(pc.match_substring_regex(p.texts.drop_null(), r"(Z|[+-][0-9]{2}(:?[0-9]{2})?)$")).as_py()
    ):
        guess.zone_note = "values with a zone suffix keep it; this zone reads the others"
    elif aware:
        guess.timezone, guess.zone_note = _zone_hint(instants)
    else:
        guess.zone_note = "the values carry no zone: give the zone they were logged in"
    if yearless and guess.year is None:
        return guess  # no valid range without the year
    days = (
        _local_days(instants, guess.timezone)
        if resolution == "second"
        else instants.drop_null().cast(pa.int64()).to_numpy(zero_copy_only=False) // 86_400_000
    )
    low, high, guess.range_note = stray_range(days)
    epoch = dt.date(1970, 1, 1)
    guess.min = epoch + dt.timedelta(days=low) if low is not None else None
    guess.max = epoch + dt.timedelta(days=high) if high is not None else None
    return guess
