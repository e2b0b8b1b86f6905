"""Training examples for the agent: real trace steps joined with buyers' persona codes.

One example per kept trace step: the page the buyer saw, the action they took, the actions they had
taken before in that session, their persona code, and a hindsight goal. Every step is an example
without a goal, so goal-free examples keep the real rates (of purchase, above all), and goal-shown
copies are added on top (``goal_copies``): what a buyer who wants product X does.

Hindsight goals (``goal_segments``): each product X a session acts on (opens, carts, buys) is a goal;
its copy is the shortest way to X and to its purchase the session shows, in order: the navigation
the replay inserted to reach X the first time (``real_event`` false: ``search "X"``, ``back``, a
category listing ...; a real search that the replay had to follow with ``search "X"`` counts as the
buyer's search for X), the first view of X, then the first ``add to cart`` and ``buy now`` on its
page, the ``checkout`` (with the inserted ``go to cart``) and the ``place order`` that hold it, up to
its purchase. Steps that wander elsewhere, view X again, favour it or take it out of the cart are
left out: a buyer who wants X does not loop back to its page.

A copy is an episode of its own: its history is what the session did before each of its steps
(the steps left out included: a goal task's buyer who opened the wrong product must still find its
goal, and the pages show what those steps did), its pages are the goal task's
(``envs.render.mark_goal``: the goal line, X's rows and page marked), and it names X as the agent
does (prompt.py's ``alias_goal``: ``open product your goal``, ``search "your goal"``) in its action,
history and valid actions, and it carries a code drawn from all buyers' codes rather than its
buyer's own (``_copy_codes``). Every bought product gets its copy (the way to the purchase is what goal
tasks need most, and purchases are rare); every other product gets one with probability
``goal_share`` (seeded by session and product). Showing the goal on the original rows instead would
leave mostly non-buying sessions goal-free, and a free-shopping agent would then under-buy. The
copies still shift a small model's free shopping (one training run each, demo study, tiny persona
agent): its conversion was 0.11 without copies, 0.37 with every carted product's copy added, 0.20
with carted products drawn like the others (the real sessions': 0.20).

Inserted searches: the replay reaches a product the buyer saw by searching its id when no shorter
route exists (learners/data/traces.py); the buyer never made that search (a source that records
searches has its own real ``search`` events). Shown without a goal, those steps taught free-shopping
agents to search at the rate the replay needs them (on Tmall, which records no search, most steps),
not at the buyers' rate. So an inserted search's goal-free row is quarantined with that reason; the
step is taught only in its product's goal-shown copy (when it is drawn), where searching for the
product one wants is right. Shown goal-free as the page's non-search way on (``back``, ``next
page``, ``home``) instead, they made the Tmall study's simulated visits longer and its ARA worse
(0.737 -> 0.671; benchmarks/RESULTS.md, session 17). Traces without a ``real_event`` column count
every step as real.

Rows that cannot teach the policy are quarantined with a reason, never dropped silently: steps the
page could not perform (``valid`` false), empty observations or actions, inserted searches (above),
and, for persona training, buyers without a code. rows read + goal copies = examples + quarantined
rows.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass

import polars as pl
import pyarrow as pa

from envs.render import mark_goal
from envs.storefront import search_query
from learners.agent.actions import action_kind, action_product, listed_actions
from learners.agent.prompt import alias_goal
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
    """Examples that are goal-shown copies of steps (hindsight goals, ``goal_segments``)."""


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


_PAGE_PRODUCT = re.compile(r"^Product id: (\S+)", re.MULTILINE)
_ROW_PRODUCT = re.compile(r"^- product (\S+) \|", re.MULTILINE)
INSERTED_SEARCH = (
    "inserted search (the replay's route to a product, not the buyer's search): shown only with that"
    " product as the goal"
)


def step_products(action: str, observation: str) -> tuple[str, ...]:
    """The products a step acts on toward buying: the product it opens; the product page's for
    ``add to cart``, ``buy now`` and ``favorite``; the page's rows for ``checkout`` (the cart) and
    ``place order`` (the order). Removals and navigation act on none."""
    action = " ".join(action.split())
    if action.startswith("open product "):
        product = action_product(action)
        return (product,) if product else ()
    if action in ("add to cart", "buy now", "favorite"):
        found = _PAGE_PRODUCT.search(observation)
        return (found.group(1),) if found else ()
    if action in ("checkout", "place order"):
        head = observation.rpartition("\nActions:\n")[0] or observation
        return tuple(dict.fromkeys(_ROW_PRODUCT.findall(head)))
    return ()


def goal_segments(
    actions: Sequence[str], observations: Sequence[str], real: Sequence[bool]
) -> list[tuple[str, list[int], bool]]:
    """A session's hindsight goals (module doc): (product, the indices of its copy's steps, bought),
    in the order the session first reaches each product."""
    acts = [" ".join(a.split()) for a in actions]
    concerns = [step_products(a, o) for a, o in zip(acts, observations, strict=True)]
    first: dict[str, int] = {}
    for i, products in enumerate(concerns):
        for product in products:
            first.setdefault(product, i)
    segments = []
    for product in sorted(first, key=first.__getitem__):
        f = first[product]
        k = f  # the navigation the replay inserted to reach the product
        while k > 0 and not real[k - 1]:
            k -= 1
        steps = list(range(k, f + 1))
        if (
            k == f - 1
            and search_query(acts[k]) == product
            and k > 0
            and real[k - 1]
            and search_query(acts[k - 1]) is not None
        ):
            steps = [k - 1, f]  # the buyer's own search, then the product: a search for it
        done = {acts[f]}  # each kind of step once: no second view, no second add to cart
        bought = False
        for j in range(f + 1, len(acts)):
            if product not in concerns[j] or acts[j] in done or acts[j] == "favorite":
                continue  # wandering, a repeat view, a second add to cart, a favourite
            if acts[j] in ("checkout", "place order"):  # with the inserted way to the checkout
                k = j
                while k > steps[-1] + 1 and not real[k - 1] and acts[k - 1] in ("go to cart", "checkout"):
                    k -= 1
                steps.extend(i for i in range(k, j) if acts[i] not in done)
                done.update(acts[i] for i in range(k, j))
            steps.append(j)
            done.add(acts[j])
            if acts[j] == "place order":
                bought = True
                break
        segments.append((product, steps, bought))
    return segments


def _copy_codes(copies: pl.DataFrame, code_frame: pl.DataFrame, seed: int) -> list[int]:
    """Each goal-shown copy's code: one of the codes the buyers have, drawn uniformly (seeded by
    session and goal). A goal task is the same task for every buyer type; with the buyer's own code,
    the codes of buyers who rarely buy never saw a goal through to its purchase, and on the Tmall
    sample the persona agent then exited from a product page in 67 of 300 goal tasks (the no-persona
    agent in none)."""
    pool = sorted(code_frame["code"].drop_nulls().unique().to_list())
    keys = copies.select(["merchant_id", "buyer_id", "session_id", "goal"]).iter_rows()
    return [pool[int(_stable_unit(seed, "code", *key) * len(pool))] for key in keys]


def _toward(action: str, goal: str) -> str:
    """A step of a goal's copy as the agent names it: every search in it is a search for the goal
    (``search "your goal"``), and actions naming the goal name ``GOAL_ALIAS`` (``alias_goal``)."""
    if search_query(" ".join(action.split())) is not None:
        return alias_goal(f'search "{goal}"', goal)
    return alias_goal(action, goal)


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


def code_key(codes: pa.Table) -> list[str]:
    """The columns a codes table is keyed by: a visit's (``session_id`` too; simpersona assign
    --other-visits, learners/vqvae/other_visits.py) or a buyer's."""
    buyer = ["merchant_id", "buyer_id"]
    return [*buyer, "session_id"] if "session_id" in codes.column_names else buyer


def build_examples(
    traces: pa.Table,
    codes: pa.Table | None,
    goal_share: float = 0.5,
    seed: int = 0,
    source: str = "traces",
) -> ExampleSet:
    """Join traces with codes (``codes=None``: no-persona examples) and add history and goals.

    ``goal_share``: the probability that a product the session did not buy gets its goal-shown copy
    (every bought product gets one); 0 adds no goal-shown copies at all."""
    _check_columns(traces, TRACE_COLUMNS, source)
    frame = pl.from_arrow(traces).with_row_index("_row")
    if codes is not None:
        _check_columns(codes, ("merchant_id", "buyer_id", "code"), "codes")
        key = code_key(codes)
        code_frame = pl.from_arrow(codes.select([*key, "code"])).unique(key, keep="first")
        frame = frame.join(code_frame, on=key, how="left")
    else:
        frame = frame.with_columns(pl.lit(None, dtype=pl.Int32).alias("code"))
    if "valid_actions" not in frame.columns:
        frame = frame.with_columns(
            pl.col("observation")
            .map_elements(lambda text: list(listed_actions(text or "")), return_dtype=pl.List(pl.String))
            .alias("valid_actions")
        )
    frame = frame.sort(["merchant_id", "buyer_id", "session_id", "step"])

    if "real_event" not in frame.columns:
        frame = frame.with_columns(pl.lit(True).alias("real_event"))
    frame = frame.with_columns(pl.col("real_event").fill_null(True).cast(pl.Boolean))

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
    goal_free: list[int] = []  # kept rows shown without a goal: all but inserted searches
    copy_rows: list[int] = []
    copy_goals: list[str] = []
    copy_histories: list[list[str]] = []
    copy_rank: list[int] = []
    start = 0
    for (merchant, buyer, session), group in kept.group_by(
        ["merchant_id", "buyer_id", "session_id"], maintain_order=True
    ):
        actions = group["action"].to_list()
        observations = group["observation"].to_list()
        real = group["real_event"].to_list()
        histories += [actions[:i] for i in range(len(actions))]
        goal_free += [
            start + i for i, a in enumerate(actions) if real[i] or search_query(" ".join(a.split())) is None
        ]
        if goal_share > 0:
            for rank, (product, steps, bought) in enumerate(goal_segments(actions, observations, real), 1):
                if bought or _stable_unit(seed, merchant, buyer, session, product) < goal_share:
                    copy_rows += [start + i for i in steps]
                    copy_goals += [product] * len(steps)
                    named = [alias_goal(a, product) for a in actions]
                    for i in steps:
                        named[i] = _toward(actions[i], product)
                    copy_histories += [named[:i] for i in steps]
                    copy_rank += [rank] * len(steps)
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
        pl.lit(None, dtype=pl.String).alias("goal"),
        pl.col("code").cast(pl.Int32),
        pl.col("valid_actions").cast(pl.List(pl.String)),
    )
    copies = examples.select(pl.all().gather(pl.Series(copy_rows, dtype=pl.UInt32))).with_columns(
        pl.Series("history", copy_histories, dtype=pl.List(pl.String)),
        pl.Series("goal", copy_goals, dtype=pl.String),
        pl.Series("_rank", copy_rank, dtype=pl.Int64),
    )
    goals = copies["goal"].to_list()
    if codes is not None and copies.height:
        copies = copies.with_columns(pl.Series("code", _copy_codes(copies, code_frame, seed), dtype=pl.Int32))
    copies = copies.with_columns(
        pl.Series(
            "observation", [mark_goal(o, g) for o, g in zip(copies["observation"], goals, strict=True)]
        ),
        pl.Series("action", [_toward(a, g) for a, g in zip(copies["action"], goals, strict=True)]),
        pl.Series(
            "valid_actions",
            [[alias_goal(a, g) for a in v] for v, g in zip(copies["valid_actions"], goals, strict=True)],
            dtype=pl.List(pl.String),
        ),
    )
    # Goal-free originals first, then each goal-shown copy (an episode of its own), step by step.
    examples = (
        pl.concat(
            [
                examples.select(pl.all().gather(pl.Series(goal_free, dtype=pl.UInt32))).with_columns(
                    pl.lit(0, dtype=pl.Int64).alias("_rank")
                ),
                copies,
            ]
        )
        .sort(["merchant_id", "buyer_id", "session_id", "_rank", "step"], maintain_order=True)
        .drop("_rank")
    )
    inserted = kept.with_row_index("_kept").filter(~pl.col("_kept").is_in(goal_free)).drop("_kept")
    bad = pl.concat(
        [
            bad,
            inserted.with_columns(
                pl.lit("action", dtype=pl.String).alias("_column"),
                pl.lit(INSERTED_SEARCH, dtype=pl.String).alias("_reason"),
            ),
        ]
    ).sort("_row")
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
