"""Persona codes per visit from the buyer's *other* visits, so that a code does not know its visit's outcome.

A buyer's code (assign.py) is read from all of its visits, purchases and carts included, so a code
sorts buyers by what happened in the very visits an agent then learns from. On the truth benchmark's
log (benchmarks/RESULTS.md, session 33; training merchants) the deal hunters of code 12 added 9% of
the products they viewed to cart and bought in 3% of their visits, those of code 6 23% and 27%; the
decisive buyers of code 9 never bought, those of code 15 in 70% of their visits. The planted types
are the same in both codes: the codes had sorted each type's lucky and unlucky visits apart. An agent
trained on such codes replays each code's luck as its behaviour, and a what-if experiment, which asks
what these buyers will do in *new* visits, inherits it: code 12 answered a 30% price cut with +0.04
add to cart per visit where its buyers' types give +0.17, and code 9 bought nothing in either arm.
Read from the other visits, the deal hunters' visits add 17-26% of viewed products to cart and
convert in 17-29% whatever their code, the decisive buyers' 40-54% and 51-59%.

``assign_other_visits(RUN, DATA, OUT)`` writes ``OUT/codes.parquet`` (merchant_id, buyer_id,
session_id, code): each visit of a buyer with two or more visits gets the code of the buyer's other
visits (the buyer's features and event sequence without that visit, encoded by the run), so the code
predicts the visit rather than describing it; a buyer with one visit keeps its own code (counted in
the manifest). Training on these codes (``simpersona train-agent --personas OUT``, or the study's
``agent_codes: other-visits``) fits each code's behaviour in visits its code did not see. The
merchants' mixes stay those of whole buyers (assign.py): a simulated buyer's code is read from
everything it did. The copies hold each buyer's events once per other visit (quadratic in a buyer's
visits), in this process. The price: a code read from fewer visits is less pure (on that log, on average,
74% of a code's training visits are of its main type, against 83%), which costs the types' other
answers.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from learners.data.features import buyer_frame, buyers_table, price_partial, reference_prices
from learners.data.schema import TABLE_FILES
from learners.data.sessions import order_frame
from learners.vqvae.assign import (
    CODES_FILE,
    DISTRIBUTIONS_FILE,
    CodeAssigner,
    buyer_visits,
    merchant_distributions,
)
from learners.vqvae.dataset import buyers_path, read_buyers

SEPARATOR = "\x1f"
"""Joins a buyer id and a left-out visit's id into the id its other visits are encoded under."""
VISIT_CODES = pa.schema(
    [
        pa.field("merchant_id", pa.string(), nullable=False),
        pa.field("buyer_id", pa.string(), nullable=False),
        pa.field("session_id", pa.string(), nullable=False),
        pa.field("code", pa.int32(), nullable=False),
    ]
)


def other_visit_events(events: pl.DataFrame) -> pl.DataFrame:
    """For each visit of each buyer with two or more: the buyer's events outside that visit, under the
    buyer id ``buyer_id + SEPARATOR + session_id`` (canonical columns plus ``src_order``, the event's
    place in the buyer's history, so that ``order_frame`` keeps the prepared order)."""
    frame = events.with_columns(src_order=pl.col("seq").cast(pl.Int64))
    visits = frame.select("merchant_id", "buyer_id", "session_id").unique()
    several = visits.filter(pl.len().over("merchant_id", "buyer_id") > 1).rename({"session_id": "_left_out"})
    return (
        frame.join(several, on=["merchant_id", "buyer_id"])
        .filter(pl.col("session_id") != pl.col("_left_out"))
        .with_columns(buyer_id=pl.col("buyer_id") + SEPARATOR + pl.col("_left_out"))
        .drop("_left_out")
    )


def codes_from_other_visits(
    assigner: CodeAssigner, events: pl.DataFrame, own: pa.Table
) -> tuple[pa.Table, dict]:
    """Every visit's code (``VISIT_CODES``): from the buyer's other visits, or its own code (``own``,
    assign.py's codes of whole buyers) for a buyer with one visit; and the counts."""
    references = reference_prices([price_partial(events)])  # the whole log's, as prepare uses
    copies = other_visit_events(events)
    ordered = order_frame(copies, day_resolution=False)
    table = buyers_table(buyer_frame(ordered, max_seq_len=assigner.max_seq_len, references=references))
    coded, quarantined = assigner.codes_of(table)
    split = pl.from_arrow(coded).with_columns(
        pl.col("buyer_id").str.split_exact(SEPARATOR, 1).struct.rename_fields(["buyer_id", "session_id"])
    )
    other = split.unnest("buyer_id").select("merchant_id", "buyer_id", "session_id", "code")
    visits = events.select("merchant_id", "buyer_id", "session_id").unique()
    single = visits.filter(pl.len().over("merchant_id", "buyer_id") == 1)
    kept = single.join(pl.from_arrow(own), on=["merchant_id", "buyer_id"])
    codes = pl.concat([other, kept.select(other.columns)]).sort("merchant_id", "buyer_id", "session_id")
    counts = {
        "visits": visits.height,
        "visits_from_other_visits": other.height,
        "visits_with_own_code": kept.height,
        "visits_without_code": visits.height - codes.height,
        "left_out_quarantined": quarantined.num_rows,
    }
    return codes.to_arrow().cast(VISIT_CODES), counts


def assign_other_visits(run_dir: str | Path, data_dir: str | Path, out: str | Path) -> dict:
    """Write ``out/codes.parquet`` (``VISIT_CODES``) for the prepared ``data_dir`` with the run in
    ``run_dir``, the merchants' mixes of whole buyers (as assign.py writes them) and a manifest."""
    start = time.perf_counter()
    out = Path(out)
    assigner = CodeAssigner(run_dir)
    whole, _ = assigner.codes_of(read_buyers(buyers_path(data_dir)))
    events = pl.read_parquet(Path(data_dir) / TABLE_FILES["events"])
    odd = events.filter(pl.col("buyer_id").str.contains(SEPARATOR, literal=True))
    if odd.height:
        raise ValueError(
            f"{data_dir}: buyer id {odd['buyer_id'][0]!r} holds the separator \\x1f that other-visit codes"
            " use; rename such buyers in the mapping or leave out --other-visits"
        )
    codes, counts = codes_from_other_visits(assigner, events, whole)
    out.mkdir(parents=True, exist_ok=True)
    pq.write_table(codes, out / CODES_FILE)
    mixes = merchant_distributions(whole, buyer_visits(buyers_path(data_dir)))
    pq.write_table(mixes, out / DISTRIBUTIONS_FILE)
    manifest = {
        "kind": "vqvae-codes-other-visits",
        "run": str(Path(run_dir).resolve()),
        "data": str(Path(data_dir).resolve()),
        "counts": counts,
        "seconds": round(time.perf_counter() - start, 3),
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest
