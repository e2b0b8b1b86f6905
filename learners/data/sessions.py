"""Ordering and sessionization of canonical events, for a table that holds complete buyers.

The rules (docs/architecture.md, "Data contracts"):

* **Order.** A buyer is ``(merchant_id, buyer_id)``. Second-resolution sources order a buyer's
  events by ``(ts, src_order)``. Day-resolution sources (``Adapter.day_resolution``: only the date is
  known, every ``ts`` is midnight UTC) order by day, and within a day: events are grouped by product,
  groups in order of the product's first appearance that day (in source order); events without a
  product are groups of their own and keep their source position; inside a product group events go
  by funnel rank (``schema.EVENT_CODE``, which is monotone in ``schema.FUNNEL_DEPTH``), then by
  ``src_order``. So a same-day view, cart and purchase of one product read as a funnel even when the
  source lists the purchase first. ``seq`` is the event's position in its buyer's ordered history.
* **Sessions.** The source's own session id wherever the row carries one. Otherwise a generated id
  ``s0, s1, ...`` per buyer: second resolution starts a new session when the gap to the buyer's
  previous event is *more than* ``session_gap_s`` (a gap of exactly 30 minutes stays in the
  session; 30 minutes and 1 second starts a new one); day resolution makes each of the buyer's
  days one session.

Buyers are ordered by a 64-bit hash of their ids (``buyer_hash``; hash buckets in prepare.py are
ranges of it, so this also orders by bucket), which keeps the sorts to integer keys: a stable
lexsort, then one gather of the full rows. Should two buyers of one frame share a
hash, the sort is redone with their ids as tie-break. All work is columnar (polars, numpy).
"""

from __future__ import annotations

import numpy as np
import polars as pl
import pyarrow as pa

from learners.data import schema

BUYER_KEY = "_buyer"
"""Integer id of a buyer within one frame (0..n_buyers-1, in output order)."""
BUYER_HASH = "_hash"
"""The buyer's u64 hash (``buyer_hash``); buyers are ordered by it."""
CODE = "_code"
"""The event's ``EVENT_CODE`` (int8)."""
SESSION_RUN = "_session_run"
"""Index of the run of consecutive rows with one buyer and session id (a session, unless the
source's sessions interleave)."""
HASH_SEED = 0x5EED

_CODE_DTYPE = pl.Int8
_RANKS = 8  # event codes are 0..7


def buyer_hash() -> pl.Expr:
    """A u64 hash of ``(merchant_id, buyer_id)``: polars' seeded hash, equal in every process of one
    polars version (unlike Python's ``hash``)."""
    return pl.struct("merchant_id", "buyer_id").hash(HASH_SEED)


def event_codes() -> pl.Expr:
    """``EVENT_CODE`` of the ``event_type`` column (int8)."""
    return pl.col("event_type").replace_strict(schema.EVENT_CODE, return_dtype=_CODE_DTYPE)


def _buyer_starts(df: pl.DataFrame) -> pl.Series:
    """True on the first row of each buyer in a frame sorted by buyer."""
    m, b = df["merchant_id"], df["buyer_id"]
    starts = (m != m.shift(1)) | (b != b.shift(1))
    return starts.fill_null(True)


def _first_in_run(values: pl.Expr, starts: pl.Expr) -> pl.Expr:
    """The value ``values`` had on the most recent row where ``starts`` is true."""
    return pl.when(starts).then(values).otherwise(None).forward_fill()


def _buyer_permutation(keys: pl.DataFrame, exact: bool) -> tuple[np.ndarray, np.ndarray]:
    """Row order by (buyer hash, ts, src_order): one stable lexsort (cheaper than chained argsorts).

    Returns the order and a per-row buyer key: the hash, or with ``exact`` the rank of the buyer's
    ids, which also breaks ties between buyers whose hashes collide.
    """
    hashes = keys[BUYER_HASH].to_numpy()
    sort_keys = [keys["src_order"].to_numpy(), keys["ts"].dt.epoch("ms").to_numpy()]
    buyer = hashes
    if exact:
        buyer = keys.select(pl.struct("merchant_id", "buyer_id").rank("dense")).to_series().to_numpy()
        sort_keys.append(buyer)
    return np.lexsort([*sort_keys, hashes]), buyer


def _day_permutation(keys: pl.DataFrame, perm: np.ndarray, buyer: np.ndarray) -> np.ndarray:
    """Within each buyer-day of rows in ``perm`` order: product groups by first appearance, then rank."""
    ordered = pl.DataFrame(
        {
            "_buyer": buyer[perm],
            "ts": keys["ts"].gather(perm),
            "_code": keys["_code"].gather(perm),
            "_product": keys["product_id"].hash(HASH_SEED).gather(perm),
            "_has_product": keys["product_id"].is_not_null().gather(perm),
        }
    ).with_row_index("_row")
    row = pl.col("_row").cast(pl.Int64)
    has_product = pl.col("_has_product")
    # A group's first row lies inside its buyer-day's block of rows, so blocks keep their place.
    group = pl.when(has_product).then(row.min().over(["_buyer", "ts", "_product"])).otherwise(row)
    rank = pl.when(has_product).then(pl.col("_code").cast(pl.Int64)).otherwise(0)
    composite = ordered.select(group * _RANKS + rank).to_series().to_numpy()
    return perm[np.argsort(composite, kind="stable")]


def _generated_session_ids(day_resolution: bool, session_gap_s: int) -> pl.Expr:
    """``s0, s1, ...`` per buyer, by the module's rules, over rows in buyer order with ``_start``."""
    if day_resolution:
        boundary = pl.col("_start") | (pl.col("ts") != pl.col("ts").shift(1))
    else:
        gap_ms = (pl.col("ts") - pl.col("ts").shift(1)).dt.total_milliseconds()
        boundary = pl.col("_start") | (gap_ms > session_gap_s * 1000)
    runs = boundary.fill_null(True).cum_sum()
    return pl.lit("s") + (runs - _first_in_run(runs, pl.col("_start"))).cast(pl.String)


def order_frame(
    events: pl.DataFrame, *, day_resolution: bool, session_gap_s: int = schema.SESSION_GAP_SECONDS
) -> pl.DataFrame:
    """Sort canonical events into buyer order and fill ``seq``, ``session_id`` and helper columns.

    Buyers are ordered by ``buyer_hash`` (so by hash bucket first, see partitions.py), a buyer's
    events by the module's rules. ``events`` may carry ``_code`` and ``_hash`` already (the spill
    schema of partitions.py, whose ``event_type`` may then be absent). Returns the canonical columns
    except ``src_order`` plus ``seq`` (int32), ``_code`` (EVENT_CODE, int8), ``_hash``, ``_buyer``
    (int64 buyer index, in output order) and ``_session_run``; other extra input columns are dropped.
    """
    computed = {CODE: event_codes(), BUYER_HASH: buyer_hash()}
    df = events.with_columns(
        expr.alias(name) for name, expr in computed.items() if name not in events.columns
    )
    key_columns = ["merchant_id", "buyer_id", "ts", "src_order", BUYER_HASH, CODE, "product_id"]
    keys = df.select(key_columns)
    # Gathering strings dominates the cost: carry the event code, not the name, through the sort.
    carried = [c for c in schema.CANONICAL_EVENTS.names if c not in ("event_type", "src_order")]
    # One chunk per column: gathering from a many-chunked frame costs several times more.
    df = df.select(*carried, CODE, BUYER_HASH).rechunk()
    for exact in (False, True):
        perm, buyer = _buyer_permutation(keys, exact)
        if day_resolution:
            perm = _day_permutation(keys, perm, buyer)
        ordered = df[perm]
        starts = _buyer_starts(ordered)
        hashes = ordered[BUYER_HASH]
        # Two buyers with one hash would interleave; then sort again with their ids as tie-break.
        if exact or (starts == (hashes != hashes.shift(1)).fill_null(True)).all():
            break
    df = ordered.with_columns(
        (starts.cum_sum() - 1).cast(pl.Int64).alias(BUYER_KEY),
        starts.alias("_start"),
        pl.col("_code")
        .replace_strict(dict(enumerate(schema.EVENT_TYPES)), return_dtype=pl.String)
        .alias("event_type"),
    )
    row = pl.int_range(0, df.height, dtype=pl.Int64)
    seq = (row - _first_in_run(row, pl.col("_start"))).cast(pl.Int32)
    session_id = pl.col("session_id")
    if df["session_id"].null_count():
        # Formatting generated ids costs as much as the rest of the ordering: only when some are needed.
        session_id = pl.coalesce(session_id, _generated_session_ids(day_resolution, session_gap_s))
    df = df.with_columns(seq.alias("seq"), session_id.alias("session_id"))
    run_start = pl.col("_start") | (pl.col("session_id") != pl.col("session_id").shift(1))
    return df.with_columns((run_start.fill_null(True).cum_sum() - 1).alias(SESSION_RUN)).drop("_start")


def events_table(ordered: pl.DataFrame) -> pa.Table:
    """The ``schema.EVENTS`` table of an ordered frame (helper columns dropped)."""
    return ordered.select(schema.EVENTS.names).to_arrow().cast(schema.EVENTS)


def session_frame(ordered: pl.DataFrame) -> pl.DataFrame:
    """One row per session of an ordered frame (``schema.SESSIONS`` columns plus ``_buyer``).

    A run's rows are consecutive and in time order, so its first row carries its ids, start and
    first ``seq``, its last row its end; event counts and depth come from one bincount of (run,
    code), cheaper than a group-by with an aggregation per column.
    """
    run = ordered[SESSION_RUN].to_numpy().astype(np.int64, copy=False)
    n_runs = int(run[-1]) + 1 if len(run) else 0
    firsts = np.flatnonzero(np.diff(run, prepend=-1))
    lasts = np.append(firsts[1:], len(run))[:n_runs] - 1
    counts = np.bincount(run * _RANKS + ordered[CODE].to_numpy(), minlength=n_runs * _RANKS).reshape(
        n_runs, _RANKS
    )
    depth_of_code = np.array([schema.FUNNEL_DEPTH[t] for t in schema.EVENT_TYPES], np.int8)
    runs = ordered.select(
        BUYER_KEY,
        "session_id",
        "merchant_id",
        "buyer_id",
        pl.col("seq").alias("_first_seq"),
        pl.col("ts").alias("start"),
    )[firsts].with_columns(
        pl.Series("end", ordered["ts"].gather(lasts)),
        pl.Series("n_events", counts.sum(axis=1).astype(np.int32)),
        *(
            pl.Series(name, counts[:, schema.EVENT_CODE[t]].astype(np.int32))
            for name, t in (
                ("n_product_views", "product_view"),
                ("n_carts", "add_to_cart"),
                ("n_purchases", "purchase"),
            )
        ),
        pl.Series("depth", np.where(counts > 0, depth_of_code, 0).max(axis=1, initial=0).astype(np.int8)),
    )
    if runs.select(pl.struct(BUYER_KEY, "session_id").is_duplicated().any()).item():
        # Interleaved source sessions: merge a session's runs.
        runs = (
            runs.group_by([BUYER_KEY, "session_id"])
            .agg(
                pl.col("merchant_id").first(),
                pl.col("buyer_id").first(),
                pl.col("_first_seq").min(),
                pl.col("start").min(),
                pl.col("end").max(),
                *(pl.col(c).sum() for c in ("n_events", "n_product_views", "n_carts", "n_purchases")),
                pl.col("depth").max(),
            )
            .sort([BUYER_KEY, "_first_seq"])
        )
    # Otherwise runs are sessions, already in buyer then first-event order.
    return runs.with_columns((pl.col("n_purchases") > 0).alias("converted")).drop("_first_seq")


def sessions_table(ordered: pl.DataFrame) -> pa.Table:
    """The ``schema.SESSIONS`` table of an ordered frame, sessions in buyer order then start order."""
    return session_frame(ordered).select(schema.SESSIONS.names).to_arrow().cast(schema.SESSIONS)
