"""Training examples for the agent: real trace steps joined with buyers' persona codes.

One example per kept trace step: the page the buyer saw, the action they took, the actions they had
taken before in that session, their persona code, and a hindsight goal. Every step is an example
without a goal, so goal-free examples keep the real rates (of purchase, above all); a seeded share of
the sessions that end in a purchase is added once more with the purchased product as the goal of
every step (the agent learns what a buyer who wants product X does). Showing the goal on the original
rows instead would leave mostly non-buying sessions goal-free, and a free-shopping agent would then
under-buy.

Rows that cannot teach the policy are quarantined with a reason, never dropped silently: steps the
page could not perform (``valid`` false), empty observations or actions, and, for persona training,
buyers without a code. rows read + goal copies = examples + quarantined rows.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import polars as pl
import pyarrow as pa

from learners.agent.actions import action_kind, action_product, listed_actions
from learners.data.schema import QUARANTINE

TRACE_COLUMNS = ("merchant_id", "buyer_id", "session_id", "step", "observation", "action", "valid")
"""Columns a traces table must have (learners/data/traces.py writes them)."""

EXAMPLES = pa.schema(
    [
        pa.field("merchant_id", pa.string(), nullable=False),
        pa.field("buyer_id", pa.string(), nullable=False),
        pa.field("session_id", pa.string(), nullable=False),
        pa.field("step", pa.int32(), nullable=False),
        pa.field("observation", pa.string(), nullable=False),
        pa.field("action", pa.string(), nullable=False),
        pa.field("kind", pa.string(), nullable=False),  # learners/agent/action_kinds.py
        pa.field("history", pa.list_(pa.string()), nullable=False),  # earlier kept actions of the session
        pa.field("goal", pa.string()),  # hindsight target product, or null
        pa.field("code", pa.int32()),  # persona code, null for no-persona training
        pa.field(
            "valid_actions", pa.list_(pa.string())
        ),  # the traces' column, else the page's "Actions:" list
    ]
)


@dataclass
class ExampleSet:
    """Examples plus what was quarantined: ``rows_read + goal_copies == examples + quarantine`` rows."""

    examples: pa.Table
    """Rows in the EXAMPLES schema, ordered by merchant, buyer, session, step."""
    quarantine: pa.Table
    """Rows in the QUARANTINE schema (``line`` = 0-based row of the traces table)."""
    rows_read: int
    """Trace rows read."""
    goal_copies: int = 0
    """Examples that are goal-shown copies of steps of purchase sessions."""


def _stable_unit(*parts: object) -> float:
    """A number in [0, 1) fixed by ``parts`` (independent of PYTHONHASHSEED and row order)."""
    digest = hashlib.sha1("\x1f".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def _check_columns(table: pa.Table, needed: tuple[str, ...], source: str) -> None:
    missing = [c for c in needed if c not in table.column_names]
    if missing:
        raise ValueError(
            f"{source}: missing column(s) {missing}; expected {list(needed)} "
            "(build traces with `simpersona traces DATA --out DIR`)"
        )


def session_goal(actions: list[str]) -> str | None:
    """The product a session bought: named by the purchase action, else the last product put in the
    cart (named by the add-to-cart action, else the product page it was clicked on)."""
    viewed: str | None = None
    carted: str | None = None
    goal: str | None = None
    for action in actions:
        kind = action_kind(action)
        product = action_product(action)
        if kind == "product_view" and product:
            viewed = product
        elif kind in ("add_to_cart", "checkout") and action.strip() != "checkout":
            carted = product or viewed  # add to cart / buy now on a product page
        elif kind == "purchase":
            goal = product or carted or goal
    return goal


def _problem(row: dict, needs_code: bool) -> tuple[str | None, str | None]:
    """(column, reason) when a trace row cannot be an example, else (None, None)."""
    if not row["action"] or not str(row["action"]).strip():
        return "action", "empty action"
    if not row["observation"]:
        return "observation", "empty observation"
    if row["valid"] is not True:
        return "valid", "action invalid on its page (valid=false): the agent must not learn it"
    if needs_code and row["code"] is None:
        return "code", "buyer has no persona code: assign codes for this data (simpersona assign)"
    return None, None


def build_examples(
    traces: pa.Table,
    codes: pa.Table | None,
    goal_share: float = 0.5,
    seed: int = 0,
    source: str = "traces",
) -> ExampleSet:
    """Join traces with codes (``codes=None``: no-persona examples) and add history and goals."""
    _check_columns(traces, TRACE_COLUMNS, source)
    frame = pl.from_arrow(traces).with_row_index("_row")
    if codes is not None:
        _check_columns(codes, ("merchant_id", "buyer_id", "code"), "codes")
        code_frame = pl.from_arrow(codes.select(["merchant_id", "buyer_id", "code"])).unique(
            ["merchant_id", "buyer_id"], keep="first"
        )
        frame = frame.join(code_frame, on=["merchant_id", "buyer_id"], how="left")
    else:
        frame = frame.with_columns(pl.lit(None, dtype=pl.Int32).alias("code"))
    if "valid_actions" not in frame.columns:
        frame = frame.with_columns(
            pl.col("observation")
            .map_elements(lambda text: list(listed_actions(text or "")), return_dtype=pl.List(pl.String))
            .alias("valid_actions")
        )
    frame = frame.sort(["merchant_id", "buyer_id", "session_id", "step"])

    blamed: list[str | None] = []
    reasons: list[str | None] = []
    for row in frame.select(["observation", "action", "valid", "code"]).iter_rows(named=True):
        column, reason = _problem(row, needs_code=codes is not None)
        blamed.append(column)
        reasons.append(reason)
    frame = frame.with_columns(
        pl.Series("_column", blamed, dtype=pl.String), pl.Series("_reason", reasons, dtype=pl.String)
    )
    kept = frame.filter(pl.col("_reason").is_null())
    bad = frame.filter(pl.col("_reason").is_not_null())

    histories: list[list[str]] = []
    goals: list[str | None] = []
    copied: list[int] = []
    start = 0
    for (merchant, buyer, session), group in kept.group_by(
        ["merchant_id", "buyer_id", "session_id"], maintain_order=True
    ):
        actions = group["action"].to_list()
        histories += [actions[:i] for i in range(len(actions))]
        goal = session_goal(actions)
        if goal is not None and _stable_unit(seed, merchant, buyer, session) < goal_share:
            copied += range(start, start + len(actions))
            goals += [goal] * len(actions)
        else:
            goals += [None] * len(actions)
        start += len(actions)

    examples = kept.select(
        pl.col("merchant_id").cast(pl.String),
        pl.col("buyer_id").cast(pl.String),
        pl.col("session_id").cast(pl.String),
        pl.col("step").cast(pl.Int32),
        pl.col("observation").cast(pl.String),
        pl.col("action").cast(pl.String),
        pl.col("action").map_elements(action_kind, return_dtype=pl.String).alias("kind")
        if kept.height
        else pl.lit(None, dtype=pl.String).alias("kind"),
        pl.Series("history", histories, dtype=pl.List(pl.String)),
        pl.Series("goal", goals, dtype=pl.String),
        pl.col("code").cast(pl.Int32),
        pl.col("valid_actions").cast(pl.List(pl.String)),
    )
    # Goal-free originals of every step, then the goal-shown copies, each right after its original.
    copies = examples[copied]
    examples = (
        pl.concat([examples.with_columns(pl.lit(None, dtype=pl.String).alias("goal")), copies])
        .with_columns(pl.col("goal").is_not_null().alias("_copy"))
        .sort(["merchant_id", "buyer_id", "session_id", "_copy", "step"], maintain_order=True)
        .drop("_copy")
    )
    quarantine = pa.table(
        {
            "file": pa.array([source] * bad.height, pa.string()),
            "line": pa.array(bad["_row"].cast(pl.Int64).to_list(), pa.int64()),
            "column": pa.array(bad["_column"].to_list(), pa.string()),
            "reason": pa.array(bad["_reason"].to_list(), pa.string()),
            "raw": pa.array(
                [
                    f"merchant {m} buyer {b} session {s} step {t}: {a!r}"
                    for m, b, s, t, a in bad.select(
                        ["merchant_id", "buyer_id", "session_id", "step", "action"]
                    ).iter_rows()
                ],
                pa.string(),
            ),
        },
        schema=QUARANTINE,
    )
    return ExampleSet(examples.to_arrow().cast(EXAMPLES), quarantine, traces.num_rows, copies.height)


def split_examples(
    examples: pa.Table, heldout_merchant_share: float, heldout_buyer_share: float, seed: int = 0
) -> dict[str, pa.Table]:
    """Merchant-disjoint split: ``heldout_merchants`` (whole merchants), then ``heldout_buyers`` (buyers
    of the remaining merchants) and ``train``. Membership is a seeded hash, stable across runs."""
    frame = pl.from_arrow(examples)
    merchants = frame["merchant_id"].unique().to_list()
    held_m = {m for m in merchants if _stable_unit(seed, "merchant", m) < heldout_merchant_share}
    in_held_m = frame["merchant_id"].is_in(list(held_m))
    buyer_draw = [
        _stable_unit(seed, "buyer", m, b) < heldout_buyer_share
        for m, b in frame.select(["merchant_id", "buyer_id"]).iter_rows()
    ]
    in_held_b = pl.Series(buyer_draw, dtype=pl.Boolean) & ~in_held_m
    return {
        "train": frame.filter(~in_held_m & ~in_held_b).to_arrow().cast(examples.schema),
        "heldout_buyers": frame.filter(in_held_b).to_arrow().cast(examples.schema),
        "heldout_merchants": frame.filter(in_held_m).to_arrow().cast(examples.schema),
    }
