"""Source adapters: the generic YAML-mapping adapter and four dedicated ones for the public releases.

A dedicated adapter carries its source layout in code and parses timestamps with its own arithmetic
(e.g. Tmall's MMDD dates); on the real files it produces exactly the tables the generic adapter
produces with the matching ``examples/mappings/*.yaml``.
"""

from __future__ import annotations

import datetime as dt
import fnmatch
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from learners.data.adapter import Adapter, CanonicalChunk
from learners.data.canonical import TimestampParser, as_text, canonicalize, drop_declared
from learners.data.mapping import (
    CsvOptions,
    EventTypeSpec,
    FieldSource,
    SourceMapping,
    TimestampSpec,
    load_mappings,
)
from learners.data.readers import file_format, read_raw
from learners.data.schema import MANIFEST_FILE, TS_TYPE

MS_PER_DAY = 86_400_000


class MappingAdapter:
    """Reads any source described by a SourceMapping (YAML or built in code)."""

    def __init__(self, mapping: SourceMapping, parse_ts: TimestampParser | None = None):
        self.mapping = mapping
        self.name = mapping.name
        self.day_resolution = mapping.day_resolution
        self.parse_ts = parse_ts

    def read(self, inputs: Sequence[Path]) -> Iterator[CanonicalChunk]:
        """Canonical chunks of each input file in order; file i's src_order carries i in its high bits."""
        for file_index, path in enumerate(inputs):
            yield from read_mapped(Path(path), file_index, self.mapping, self.parse_ts)


def read_mapped(
    path: Path, file_index: int, mapping: SourceMapping, parse_ts: TimestampParser | None = None
) -> Iterator[CanonicalChunk]:
    """One input file's canonical chunks, read as ``mapping`` describes it."""
    for raw in read_raw(path, file_index, mapping):
        kept, dropped = drop_declared(raw, mapping)
        events, quarantine = canonicalize(kept, mapping, parse_ts)
        yield CanonicalChunk(events=events, quarantine=quarantine, rows_read=raw.rows_read, dropped=dropped)


class SourcesAdapter:
    """Reads a log shipped as files of several layouts (a mapping's ``sources``): each file by the
    first layout whose ``match`` glob fits its name, so every row is read by exactly one."""

    def __init__(self, mappings: Sequence[SourceMapping]):
        self.mappings = list(mappings)
        self.name = self.mappings[0].name
        self.day_resolution = self.mappings[0].day_resolution

    def mapping_of(self, path: Path) -> SourceMapping:
        """The layout of ``path``; a file no layout matches is an error that lists the globs."""
        for mapping in self.mappings:
            if fnmatch.fnmatch(path.name, mapping.match or ""):
                return mapping
        globs = ", ".join(repr(m.match) for m in self.mappings)
        raise ValueError(
            f"{path}: its name matches no source of mapping {self.mappings[0].source} ({globs});"
            " fix: widen a source's match or leave the file out"
        )

    def read(self, inputs: Sequence[Path]) -> Iterator[CanonicalChunk]:
        layouts = [self.mapping_of(Path(p)) for p in inputs]  # every file's layout before any row
        for file_index, (path, mapping) in enumerate(zip(inputs, layouts, strict=True)):
            yield from read_mapped(Path(path), file_index, mapping)


def _month_day_ms(year: int, month: pa.Array, day: pa.Array) -> pa.Array:
    """Midnight UTC of (year, month, day) as timestamp[ms, UTC]; null where the date does not exist."""
    starts = [dt.date(year, m, 1) for m in range(1, 13)] + [dt.date(year + 1, 1, 1)]
    first_day = np.array([(d - dt.date(1970, 1, 1)).days for d in starts], np.int64)
    lengths = np.diff(first_day)
    m = pc.fill_null(month, 0).to_numpy(zero_copy_only=False).astype(np.int64)
    d = pc.fill_null(day, 0).to_numpy(zero_copy_only=False).astype(np.int64)
    month_ok = (m >= 1) & (m <= 12)
    m0 = np.where(month_ok, m - 1, 0)
    valid = month_ok & (d >= 1) & (d <= lengths[m0])
    ms = (first_day[m0] + d - 1) * MS_PER_DAY
    return pa.array(ms, pa.int64(), mask=~valid).cast(TS_TYPE)


def parse_tmall_mmdd(values: pa.Array) -> pa.Array:
    """Tmall IJCAI-15 `time_stamp`: four digits MMDD of 2014 -> midnight UTC."""
    texts = as_text(values)
    ok = pc.fill_null(pc.match_substring_regex(texts, r"^[0-9]{4}$"), False)
    number = pc.if_else(ok, texts, pa.scalar(None, pa.string())).cast(pa.int32())
    return _month_day_ms(
        2014, pc.divide(number, 100), pc.subtract(number, pc.multiply(pc.divide(number, 100), 100))
    )


def parse_tmall_brand_date(values: pa.Array) -> pa.Array:
    """Tmall 2014 brand log `visit_datetime`: M-D (no zero padding) of 2014 -> midnight UTC."""
    parts = pc.extract_regex(as_text(values), r"^(?P<m>[0-9]{1,2})-(?P<d>[0-9]{1,2})$")
    month = pc.struct_field(parts, "m").cast(pa.int32())
    day = pc.struct_field(parts, "d").cast(pa.int32())
    return _month_day_ms(2014, month, day)


def parse_rees46_time(values: pa.Array) -> pa.Array:
    """REES46 `event_time`: 'YYYY-MM-DD hh:mm:ss UTC' -> instant; impossible dates are null."""
    texts = as_text(values)
    ok = pc.fill_null(
        pc.match_substring_regex(texts, r"^[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2} UTC$"), False
    )
    stamp = pc.utf8_slice_codeunits(pc.if_else(ok, texts, pa.scalar(None, pa.string())), 0, 19)
    parsed = pc.strptime(stamp, format="%Y-%m-%d %H:%M:%S", unit="ms", error_is_null=True)
    # Arrow's strptime rolls impossible dates over (Feb 30 -> Mar 2); a round trip rejects them.
    seconds = parsed.cast(pa.timestamp("s"), safe=False)
    exact = pc.fill_null(pc.equal(pc.strftime(seconds, format="%Y-%m-%d %H:%M:%S"), stamp), False)
    return pc.if_else(exact, parsed, pa.scalar(None, parsed.type)).cast(TS_TYPE)


def parse_unix_seconds(values: pa.Array) -> pa.Array:
    """Taobao `timestamp`: unix seconds as decimal text -> instant."""
    texts = as_text(values)
    ok = pc.fill_null(pc.match_substring_regex(texts, r"^-?[0-9]{1,15}$"), False)
    seconds = pc.if_else(ok, texts, pa.scalar(None, pa.string())).cast(pa.int64())
    return pc.multiply(seconds, 1000).cast(TS_TYPE)


def _columns(**names: str) -> dict[str, FieldSource]:
    return {
        field: FieldSource(constant=value[1:]) if value.startswith("=") else FieldSource(column=value)
        for field, value in names.items()
    }


def tmall_ijcai15_adapter() -> MappingAdapter:
    """Tmall IJCAI-15 Repeat Buyers `user_log_format1.csv` (merchant = seller)."""
    mapping = SourceMapping(
        name="tmall-ijcai15",
        format="csv",
        csv=CsvOptions(delimiter=",", header=True),
        fields=_columns(
            merchant_id="seller_id",
            buyer_id="user_id",
            ts="time_stamp",
            product_id="item_id",
            category_id="cat_id",
        ),
        timestamp=TimestampSpec(format="%m%d", year=2014, timezone="Asia/Shanghai", resolution="day"),
        event_type=EventTypeSpec(
            column="action_type",
            map={"0": "product_view", "1": "add_to_cart", "2": "purchase", "3": "favorite"},
        ),
        source="tmall-ijcai15 (built in)",
    )
    return MappingAdapter(mapping, parse_tmall_mmdd)


def tmall_brand_adapter() -> MappingAdapter:
    """Tmall 2014 brand-recommendation `t_alibaba_data.csv` (merchant = brand; no item, no price)."""
    mapping = SourceMapping(
        name="tmall-brand",
        format="csv",
        csv=CsvOptions(delimiter=",", header=True),
        fields=_columns(merchant_id="brand_id", buyer_id="user_id", ts="visit_datetime"),
        timestamp=TimestampSpec(format="%m-%d", year=2014, timezone="Asia/Shanghai", resolution="day"),
        event_type=EventTypeSpec(
            column="type", map={"0": "product_view", "1": "purchase", "2": "favorite", "3": "add_to_cart"}
        ),
        source="tmall-brand (built in)",
    )
    return MappingAdapter(mapping, parse_tmall_brand_date)


def rees46_adapter() -> MappingAdapter:
    """REES46 multi-category store (one merchant, real session ids, prices)."""
    mapping = SourceMapping(
        name="rees46",
        format="csv",
        csv=CsvOptions(delimiter=",", header=True),
        fields=_columns(
            merchant_id="=rees46",
            buyer_id="user_id",
            ts="event_time",
            session_id="user_session",
            product_id="product_id",
            category_id="category_id",
            price="price",
        ),
        timestamp=TimestampSpec(format="%Y-%m-%d %H:%M:%S UTC", timezone="UTC", resolution="second"),
        event_type=EventTypeSpec(
            column="event_type",
            map={
                "view": "product_view",
                "cart": "add_to_cart",
                "remove_from_cart": "remove_from_cart",
                "purchase": "purchase",
            },
        ),
        source="rees46 (built in)",
    )
    return MappingAdapter(mapping, parse_rees46_time)


def taobao_adapter() -> MappingAdapter:
    """Taobao UserBehavior (no header, one merchant, unix seconds, release window Nov 25 - Dec 3 2017)."""
    mapping = SourceMapping(
        name="taobao",
        format="csv",
        csv=CsvOptions(
            delimiter=",",
            header=False,
            columns=("user_id", "item_id", "category_id", "behavior_type", "timestamp"),
        ),
        fields=_columns(
            merchant_id="=taobao",
            buyer_id="user_id",
            ts="timestamp",
            product_id="item_id",
            category_id="category_id",
        ),
        timestamp=TimestampSpec(
            format="unix_s",
            timezone="Asia/Shanghai",
            resolution="second",
            min=dt.datetime(2017, 11, 25),
            max=dt.datetime(2017, 12, 3, 23, 59, 59, 999000),
        ),
        event_type=EventTypeSpec(
            column="behavior_type",
            map={"pv": "product_view", "cart": "add_to_cart", "fav": "favorite", "buy": "purchase"},
        ),
        source="taobao (built in)",
    )
    return MappingAdapter(mapping, parse_unix_seconds)


FORMATS: dict[str, Callable[[], MappingAdapter]] = {
    "tmall-ijcai15": tmall_ijcai15_adapter,
    "tmall-brand": tmall_brand_adapter,
    "rees46": rees46_adapter,
    "taobao": taobao_adapter,
}


def get_adapter(format: str | None = None, mapping: str | Path | None = None) -> Adapter:
    """A dedicated adapter by format name, or the generic adapter for a mapping YAML file (exactly one)."""
    if (format is None) == (mapping is None):
        raise ValueError(
            "give exactly one of a format name or a mapping file; fix: pass --format NAME or --mapping FILE"
        )
    if mapping is not None:
        mappings = load_mappings(mapping)
        return MappingAdapter(mappings[0]) if len(mappings) == 1 else SourcesAdapter(mappings)
    if format not in FORMATS:
        raise ValueError(
            f"unknown format {format!r}; fix: use one of {', '.join(FORMATS)} or describe the source with --mapping FILE"
        )
    return FORMATS[format]()


def _own_output(path: Path, root: Path) -> bool:
    """Whether ``path`` lies in a hidden folder (a run's staging folder, .git) or in a folder that a
    simpersona command wrote (it holds a manifest.json) below ``root``: a re-run in the logs' folder
    must not read an earlier --out as logs."""
    return any(
        part.name.startswith(".") or (part / MANIFEST_FILE).is_file()
        for part in path.parents
        if part != root and part.is_relative_to(root)
    )


def expand_inputs(paths: Sequence[str | Path]) -> list[Path]:
    """Input files in order: files as given, directories expanded recursively (sorted, known
    extensions; earlier outputs and hidden folders below them left out)."""
    files: list[Path] = []
    for item in paths:
        path = Path(item)
        if not path.exists():
            raise FileNotFoundError(f"input {path} does not exist; fix: check the path")
        if path.is_dir():
            found = sorted(
                p
                for p in path.rglob("*")
                if p.is_file() and file_format(p) is not None and not _own_output(p, path)
            )
            if not found:
                others = sorted({p.suffix for p in path.rglob("*") if p.is_file() and p.suffix})
                named = f" (it holds {', '.join(others[:5])} files)" if others else ""
                raise ValueError(
                    f"input directory {path} holds no .csv/.tsv/.parquet/.jsonl/.ndjson/.json(.gz) files{named};"
                    " fix: name the log files themselves (e.g. logs/clicks.dat), with the mapping's format: csv"
                )
            files.extend(found)
        else:
            files.append(path)
    return files
