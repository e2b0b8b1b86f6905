"""Synthetic clickstreams with planted buyer types, written in a raw log format of their own.

``synthesize(config, out)`` writes into ``out``:

- ``logs/events-00000.csv`` (or ``.parquet``), ``logs/events-00001...``: the raw log, ``rows_per_file`` rows per
  part, one header line per CSV part. Columns:

  ============  =====================================================================================
  visitor       user id (text, e.g. ``1000042``); a user who shops at several shops is one visitor
  shop          shop id (text, ``shop-007``); a buyer is visitor x shop
  time          event time, second resolution: ISO 8601 UTC (``2024-03-01 08:15:02Z``) or, with
                ``timestamp_format: unix_ms``, integer milliseconds since 1970 (multiples of 1000)
  action        ``home`` ``search`` ``view`` ``fav`` ``cart`` ``uncart`` ``checkout`` ``buy``
  item          product id (text), empty for home, search and checkout
  category      category id (text) of the item, empty where item is
  price         the item's price at the time (float): its regular price, or lower in a week it is
                marked down; empty where item is
  search_terms  the query of a search event, empty otherwise
  visit         visit (session) id, an integer unique over the whole log
  ============  =====================================================================================

  Rows of one part are in time order within each block of buyers (a block is a few hundred
  thousand events); no order holds across blocks. Sessions never contain a gap of 30 minutes or more
  and visits of one buyer are at least 30 minutes apart, so 30-minute sessionization recovers
  ``visit``.
- ``mapping.yaml``: the generic source mapping (docs: the mapping spec) for
  ``simpersona prepare DIR/logs --mapping DIR/mapping.yaml``.
- ``truth.parquet``: ``merchant_id, buyer_id, type_id (int8), type`` for every buyer in the log.
- ``README.md``: this format, the config used and the planted types.

With ``malformed_share > 0`` extra rows are added, each a copy of a real row with exactly one defect
(unknown action code, empty visitor, negative price, or a time before the valid range); ``prepare``
must quarantine exactly those rows, so the clean events and ``truth.parquet`` are unchanged.

Each planted type is a Markov chain over the raw actions (with an END state), plus its own number of
visits, pauses between events and between visits, product choice (position in the category listing,
latent appeal, price against the category's median, a markdown's draw), price sensitivity when adding to cart (price
against the category's median and, for markdowns, against the product's regular price) and listing
depth (longer listing pages, longer visits); ``behaviour_noise`` mixes every chain with the
population average so types overlap. Merchants draw their type mixture from a Dirichlet, their size
from a Zipf law, and own a catalog (categories of Zipf sizes, log-normal prices marked down in some
weeks, a latent popularity order). The visit model is learners/data/synth_model.py;
learners/data/planted_types.py tabulates each type's sensitivities, and learners/data/synth_truth.py
measures the true effect of a storefront treatment on them (``simpersona synth --treatment FILE``
writes truth-effects.parquet and .md).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import yaml

from learners.config import config_to_dict
from learners.data.planted_types import ACTION_TO_EVENT, BUYER_TYPES, QUERY_FORMS, RAW_ACTIONS, TYPE_NAMES
from learners.data.synth_model import (
    ITEM_STATES,
    MAX_VISIT_EVENTS,
    WEEK_S,
    Chains,
    S,
    World,
    build_chains,
    build_world,
    walk_visits,
)

LOGS_DIR = "logs"
"""Sub-folder of the raw log parts, so `prepare DIR/logs` never picks up truth.parquet."""
UNKNOWN_ACTION = "zoom"
MALFORMED_KINDS: tuple[str, ...] = (
    "unknown_action",
    "missing_visitor",
    "negative_price",
    "time_out_of_range",
)

_MIN_VISIT_GAP_S = 1801
_MAX_EVENT_GAP_S = 1500
_VISIT_ROOM_S = 7200
"""Time a visit's events may take (pauses of the rare longer visit are shortened to fit); a buyer with
more visits than fit a short log's window at this size gets less, down to a second per event."""
_EVENTS_PER_BLOCK = 400_000
_FIRST_VISITOR = 1_000_000


@dataclass
class SynthConfig:
    """What `simpersona synth` generates."""

    buyers: int = 5000
    """Number of buyers (user x merchant pairs) in the log."""
    merchants: int = 12
    """Number of merchants (shops)."""
    seed: int = 0
    """Random seed; the same seed and config give byte-identical files."""
    events_per_buyer: float = 20.0
    """Target mean number of events per buyer (sets the number of visits per buyer)."""
    file_format: str = "csv"
    """Raw file format: csv or parquet."""
    timestamp_format: str = "iso"
    """How the time column is written: iso (text, UTC) or unix_ms (integer milliseconds)."""
    rows_per_file: int = 1_000_000
    """Rows per raw file part (events-00000, events-00001, ...)."""
    malformed_share: float = 0.0
    """Share of extra, deliberately malformed rows (each has one defect that prepare must quarantine)."""
    products_per_merchant: int = 300
    """Typical catalog size; each merchant's size is drawn log-normally around it."""
    categories: int = 40
    """Number of product categories shared by all merchants (each merchant sells a few)."""
    user_overlap: float = 0.3
    """Users are drawn per merchant from a pool of buyers * (1 - user_overlap), so some shop at several."""
    mixture_concentration: float = 1.0
    """Dirichlet concentration of merchants' type mixtures (small: merchants differ more)."""
    behaviour_noise: float = 0.05
    """Weight of the population-average chain mixed into every type's chain (types overlap more)."""
    start_date: str = "2024-03-01"
    """First day of the log (UTC)."""
    days: int = 60
    """Length of the log in days."""

    def __post_init__(self) -> None:
        checks = [
            (self.buyers >= 1, "buyers must be >= 1"),
            (self.merchants >= 1, "merchants must be >= 1"),
            (self.seed >= 0, "seed must be >= 0"),
            (self.events_per_buyer >= 1, "events_per_buyer must be >= 1"),
            (self.file_format in ("csv", "parquet"), "file_format must be csv or parquet"),
            (self.timestamp_format in ("iso", "unix_ms"), "timestamp_format must be iso or unix_ms"),
            (self.rows_per_file >= 1, "rows_per_file must be >= 1"),
            (0.0 <= self.malformed_share < 1.0, "malformed_share must be in [0, 1)"),
            (self.products_per_merchant >= 5, "products_per_merchant must be >= 5"),
            (self.categories >= 1, "categories must be >= 1"),
            (0.0 <= self.user_overlap < 1.0, "user_overlap must be in [0, 1)"),
            (self.mixture_concentration > 0, "mixture_concentration must be > 0"),
            (0.0 <= self.behaviour_noise <= 1.0, "behaviour_noise must be in [0, 1]"),
            (self.days >= 1, "days must be >= 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"SynthConfig: {message}")
        try:
            datetime.fromisoformat(self.start_date)
        except ValueError as err:
            raise ValueError(
                f"SynthConfig: start_date {self.start_date!r} is not an ISO date (YYYY-MM-DD)"
            ) from err


def _segment_starts(counts: np.ndarray) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(counts)[:-1]])


def _block_events(
    cfg: SynthConfig,
    world: World,
    lo: int,
    hi: int,
    visit_base: int,
    seed_parts: tuple[int, int],
    chains: Chains,
    visit_scale: float,
) -> tuple[dict[str, np.ndarray], int]:
    """Events of buyers [lo, hi) as numpy columns (buyer, seconds from start, action, product, visit id,
    price shown); returns them and the number of visits."""
    rng = np.random.default_rng(seed_parts)
    b_type = world.buyer_type[lo:hi].astype(np.int64)
    n_b = hi - lo
    rel_visits = np.array([bt.visits for bt in BUYER_TYPES])[b_type] * visit_scale
    activity = rng.gamma(6.0, 1 / 6, n_b)  # per-buyer spread around the type's mean
    n_visits = 2 + rng.poisson(np.maximum(rel_visits * activity - 2, 0)).clip(0, 98)
    v_buyer = np.repeat(np.arange(n_b), n_visits)
    v_type = b_type[v_buyer]
    v_merchant = world.buyer_merchant[lo:hi][v_buyer]

    # Visits are scheduled before they are walked, so each knows its week's prices: a visit has a
    # room for its events (_VISIT_ROOM_S, less for a buyer whose visits would not fit the log's
    # window), then at least 30 minutes pass before the buyer's next visit.
    pace = rng.lognormal(0.0, 0.3, n_b)
    visit_gap_mean = np.array([bt.visit_gap_h for bt in BUYER_TYPES])[v_type] * 3600 * pace[v_buyer]
    extra = rng.exponential(visit_gap_mean)
    b_first = _segment_starts(n_visits)
    extra[b_first] = 0
    window = cfg.days * 86_400 - 1
    room = np.clip(
        np.floor((window + _MIN_VISIT_GAP_S) / n_visits) - _MIN_VISIT_GAP_S, MAX_VISIT_EVENTS, _VISIT_ROOM_S
    )
    fixed = n_visits * (room + _MIN_VISIT_GAP_S) - _MIN_VISIT_GAP_S
    extra_sum = np.bincount(v_buyer, weights=extra, minlength=n_b)
    squeeze = np.clip((window - fixed) / np.maximum(extra_sum, 1.0), 0.0, 1.0)
    step = np.floor(extra * squeeze[v_buyer]) + room[v_buyer] + _MIN_VISIT_GAP_S
    step[b_first] = 0
    v_start = np.cumsum(step)
    v_start -= np.repeat(v_start[b_first], n_visits)
    span = v_start[b_first + n_visits - 1] + room
    b_start = np.floor(rng.random(n_b) * np.maximum(window - span, 0))
    v_start += b_start[v_buyer]
    v_week = np.minimum(v_start // WEEK_S, world.week_price.shape[1] - 1).astype(np.int64)

    key = int(rng.integers(0, 2**63))  # this block's visits' counter-based draws (synth_model.uniforms)
    e_visit, e_action, e_product = walk_visits(world, world.control, chains, v_type, v_merchant, key, v_week)
    per_visit = np.bincount(e_visit, minlength=len(v_buyer))
    first = _segment_starts(per_visit)

    median_gap = np.array([bt.event_gap_s for bt in BUYER_TYPES])[v_type] * pace[v_buyer]
    gap = np.clip(np.round(rng.lognormal(np.log(median_gap[e_visit]), 0.9)), 1, _MAX_EVENT_GAP_S)
    gap[first] = 0
    # A visit longer than its room has its pauses shortened (each >= 1 s) to fit.
    duration = np.bincount(e_visit, weights=gap, minlength=len(v_buyer))
    shrink = np.minimum(1.0, (room[v_buyer] - MAX_VISIT_EVENTS) / np.maximum(duration, 1.0))
    gap = np.where(gap > 0, np.maximum(1.0, np.floor(gap * shrink[e_visit])), 0.0)
    offset = np.cumsum(gap)
    offset -= np.repeat(offset[first], per_visit)
    ts = v_start[e_visit] + offset
    item = np.where(e_product >= 0, e_product, 0)  # a placeholder where there is none (price unused)

    columns = {
        "buyer": v_buyer[e_visit] + lo,
        "ts": ts.astype(np.int64),
        "action": e_action,
        "product": e_product,
        "visit": e_visit.astype(np.int64) + visit_base,
        "price": world.week_price[item, v_week[e_visit]],
    }
    return columns, len(v_buyer)


def _malformed(rng: np.random.Generator, cols: dict[str, np.ndarray], share: float) -> dict[str, np.ndarray]:
    """Copies of random rows, each with one defect; kind k as in MALFORMED_KINDS."""
    n = len(cols["ts"])
    pick = rng.integers(0, n, rng.binomial(n, share)) if share > 0 else np.zeros(0, dtype=np.int64)
    bad = {k: v[pick] for k, v in cols.items()}
    bad["kind"] = rng.integers(0, len(MALFORMED_KINDS), len(pick)).astype(np.int8)
    return bad


def _table(cfg: SynthConfig, world: World, cols: dict[str, np.ndarray], epoch: int) -> pa.Table:
    """The raw rows of one block, as Arrow, in time order; a 'kind' column (-1 clean) marks defects."""
    kind = cols.get("kind", np.full(len(cols["ts"]), -1, dtype=np.int8))
    order = np.argsort(cols["ts"], kind="stable")
    buyer, action, product = (
        cols["buyer"][order],
        cols["action"][order].astype(np.int64),
        cols["product"][order],
    )
    kind = kind[order]
    ts = cols["ts"][order] + epoch
    has_item = ITEM_STATES[action] & (product >= 0)
    is_search = action == S["search"]
    safe_product = np.where(product >= 0, product, 0)
    category = world.product_category[safe_product]

    action = np.where(kind == 0, len(RAW_ACTIONS), action)
    ts = np.where(kind == 3, ts - 25 * 365 * 86_400, ts)
    price = np.where(kind == 2, -cols["price"][order], cols["price"][order])
    visitor = pa.array(world.buyer_user[buyer] + _FIRST_VISITOR, mask=kind == 1).cast(pa.string())
    if cfg.timestamp_format == "unix_ms":
        time_col = pa.array(ts * 1000, type=pa.int64())
    else:
        time_col = pa.array(ts, type=pa.timestamp("s", tz="UTC"))
        if cfg.file_format == "parquet":
            time_col = time_col.cast(pa.string())
    query_index = (category * len(QUERY_FORMS) + _query_form(buyer, world, ts)).astype(np.int64)
    return pa.table(
        {
            "visitor": visitor,
            "shop": world.merchant_names.take(pa.array(world.buyer_merchant[buyer])),
            "time": time_col,
            "action": pa.array([*RAW_ACTIONS, UNKNOWN_ACTION]).take(pa.array(action)),
            "item": world.product_ids.take(pa.array(safe_product, mask=~has_item)),
            "category": pa.array(category, mask=~has_item).cast(pa.string()),
            "price": pa.array(price, mask=~has_item & (kind != 2)),
            "search_terms": world.queries.take(pa.array(query_index, mask=~is_search)),
            "visit": pa.array(cols["visit"][order]),
        }
    )


def _query_form(buyer: np.ndarray, world: World, ts: np.ndarray) -> np.ndarray:
    """Which query wording a search uses: one of its type's forms, varied by time."""
    forms = [bt.query_forms for bt in BUYER_TYPES]
    table = np.array([[f[i % len(f)] for i in range(2)] for f in forms])
    return table[world.buyer_type[buyer], ts % 2]


class _PartWriter:
    """Streams tables into events-NNNNN parts of exactly rows_per_file rows (the last may be shorter)."""

    def __init__(self, out: Path, cfg: SynthConfig) -> None:
        self.out, self.cfg = out, cfg
        self.files: list[Path] = []
        self._writer: pacsv.CSVWriter | pq.ParquetWriter | None = None
        self._rows = 0

    def write(self, table: pa.Table) -> None:
        while table.num_rows:
            if self._writer is None:
                path = self.out / LOGS_DIR / f"events-{len(self.files):05d}.{self.cfg.file_format}"
                if self.cfg.file_format == "csv":
                    options = pacsv.WriteOptions(quoting_style="needed", batch_size=65_536)
                    self._writer = pacsv.CSVWriter(path, table.schema, write_options=options)
                else:
                    self._writer = pq.ParquetWriter(path, table.schema)
                self.files.append(path)
                self._rows = 0
            take = min(table.num_rows, self.cfg.rows_per_file - self._rows)
            self._writer.write_table(table.slice(0, take))
            self._rows += take
            table = table.slice(take)
            if self._rows == self.cfg.rows_per_file:
                self.close()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def synthesize(config: SynthConfig, out: Path, progress: bool = False) -> dict[str, Any]:
    """Write the raw log parts, mapping.yaml, truth.parquet and README.md into ``out``; return a summary."""
    from tqdm import tqdm

    began = time.perf_counter()
    out = Path(out)
    (out / LOGS_DIR).mkdir(parents=True, exist_ok=True)
    for stale in [*(out / LOGS_DIR).glob("events-*.csv"), *(out / LOGS_DIR).glob("events-*.parquet")]:
        stale.unlink()  # parts of an earlier run would otherwise join this log
    rng = np.random.default_rng(config.seed)
    world = build_world(config, rng)
    chains = build_chains(config.behaviour_noise)
    n_types = len(BUYER_TYPES)
    shares = np.bincount(world.buyer_type, minlength=n_types) / config.buyers
    rel_visits = np.array([bt.visits for bt in BUYER_TYPES])
    visit_scale = config.events_per_buyer / float((shares * rel_visits * chains.lengths).sum())
    block = max(1, int(_EVENTS_PER_BLOCK // config.events_per_buyer))
    epoch = int(datetime.fromisoformat(config.start_date).replace(tzinfo=UTC).timestamp())

    writer = _PartWriter(out, config)
    visits = events = 0
    bad_kinds = np.zeros(len(MALFORMED_KINDS), dtype=np.int64)
    last_ts = 0
    with tqdm(total=config.buyers, unit="buyer", desc="synth", disable=None if progress else True) as bar:
        for i, lo in enumerate(range(0, config.buyers, block)):
            hi = min(config.buyers, lo + block)
            cols, n_visits = _block_events(
                config, world, lo, hi, visits, (config.seed, i), chains, visit_scale
            )
            bad = _malformed(np.random.default_rng((config.seed, i, 1)), cols, config.malformed_share)
            visits += n_visits
            events += len(cols["ts"])
            last_ts = max(last_ts, int(cols["ts"].max()))
            bad_kinds += np.bincount(bad["kind"], minlength=len(MALFORMED_KINDS))
            merged = {k: np.concatenate([v, bad[k]]) for k, v in cols.items()}
            merged["kind"] = np.concatenate([np.full(len(cols["ts"]), -1, dtype=np.int8), bad["kind"]])
            writer.write(_table(config, world, merged, epoch))
            bar.update(hi - lo)
    writer.close()

    truth = pa.table(
        {
            "merchant_id": world.merchant_names.take(pa.array(world.buyer_merchant)),
            "buyer_id": pa.array(world.buyer_user + _FIRST_VISITOR).cast(pa.string()),
            "type_id": pa.array(world.buyer_type, type=pa.int8()),
            "type": pa.array(TYPE_NAMES).take(pa.array(world.buyer_type.astype(np.int64))),
        }
    )
    pq.write_table(truth, out / "truth.parquet")
    start = datetime.fromtimestamp(epoch, UTC)
    last_day = max(start + timedelta(days=config.days - 1), datetime.fromtimestamp(epoch + last_ts, UTC))
    mapping = source_mapping(config, last_day.strftime("%Y-%m-%dT23:59:59"))
    (out / "mapping.yaml").write_text(yaml.safe_dump(mapping, sort_keys=False), encoding="utf-8")
    type_counts = {
        name: int(n)
        for name, n in zip(TYPE_NAMES, np.bincount(world.buyer_type, minlength=n_types), strict=True)
    }
    summary = {
        "out": str(out),
        "files": [str(p.relative_to(out)) for p in writer.files],
        "events": events,
        "malformed_rows": int(bad_kinds.sum()),
        "malformed_by_kind": dict(zip(MALFORMED_KINDS, map(int, bad_kinds), strict=True)),
        "rows": events + int(bad_kinds.sum()),
        "buyers": config.buyers,
        "users": int(len(np.unique(world.buyer_user))),
        "merchants": config.merchants,
        "visits": visits,
        "products": len(world.product_ids),
        "types": type_counts,
        "seconds": round(time.perf_counter() - began, 3),
    }
    (out / "README.md").write_text(_readme(config, summary), encoding="utf-8")
    return summary


def synth_prepared(config: SynthConfig, out: Path) -> tuple[Path, Path]:
    """A synthetic log in ``out/raw`` prepared into ``out/data``, as `simpersona synth` then `simpersona
    prepare RAW/logs --mapping RAW/mapping.yaml` write them: the planted-type input of the benchmarks
    and tests. Returns (raw, data); ``raw / "truth.parquet"`` holds every buyer's planted type."""
    # Imported here: `simpersona synth` alone need not load the prepare pipeline.
    from learners.data.adapters import expand_inputs, get_adapter
    from learners.data.prepare import PrepareConfig, prepare

    raw, data = Path(out) / "raw", Path(out) / "data"
    synthesize(config, raw)
    adapter = get_adapter(mapping=raw / "mapping.yaml")
    prepare(expand_inputs([raw / LOGS_DIR]), adapter, PrepareConfig(), data)
    return raw, data


def source_mapping(config: SynthConfig, max_time: str) -> dict[str, Any]:
    """The generic mapping (the mapping spec's YAML, as a dict) that reads this generator's log."""
    mapping: dict[str, Any] = {"name": "simpersona-synth", "format": config.file_format}
    if config.file_format == "csv":
        mapping["csv"] = {"delimiter": ",", "header": True}
    mapping["fields"] = {
        "merchant_id": "shop",
        "buyer_id": "visitor",
        "ts": "time",
        "session_id": "visit",
        "product_id": "item",
        "category_id": "category",
        "price": "price",
        "query": "search_terms",
    }
    mapping["timestamp"] = {
        "format": config.timestamp_format,
        "timezone": "UTC",
        "resolution": "second",
        "min": config.start_date,
        "max": max_time,
    }
    mapping["event_type"] = {"column": "action", "map": dict(ACTION_TO_EVENT)}
    return mapping


def _readme(config: SynthConfig, summary: dict[str, Any]) -> str:
    types = "\n".join(
        f"- `{bt.name}` (type_id {i}): {summary['types'][bt.name]} buyers" for i, bt in enumerate(BUYER_TYPES)
    )
    return (
        "# Synthetic clickstream (simpersona synth)\n\n"
        f"Read it with `simpersona prepare DIR/{LOGS_DIR} --mapping DIR/mapping.yaml --out PREPARED`.\n"
        "Planted buyer types are in `truth.parquet`; never feed it to a model as a feature.\n\n"
        f"## Format\n{__doc__}\n"
        f"## Planted types\n{types}\n\n"
        f"## Config\n```yaml\n{yaml.safe_dump(config_to_dict(config), sort_keys=False)}```\n\n"
        f"## Counts\n```yaml\n{yaml.safe_dump({k: v for k, v in summary.items() if k not in ('seconds', 'out')}, sort_keys=False)}```\n"
    )
