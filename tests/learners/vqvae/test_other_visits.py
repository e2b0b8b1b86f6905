"""Codes per visit from the buyer's other visits: a visit's code does not know what happened in it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
import pytest

from engine.cli import main
from learners.data.features import buyer_frame, buyers_table, price_partial, reference_prices
from learners.data.sessions import order_frame
from learners.data.synth import SynthConfig, synth_prepared
from learners.vqvae.assign import CodeAssigner
from learners.vqvae.dataset import read_buyers
from learners.vqvae.fit import VQVAEConfig, fit_codebook
from learners.vqvae.other_visits import (
    SEPARATOR,
    assign_other_visits,
    codes_from_other_visits,
    other_visit_events,
)

from .conftest import TINY

KEY = ["merchant_id", "buyer_id", "session_id"]


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> tuple:
    """A prepared synthetic log (every buyer has two visits or more) and its events."""
    _, data = synth_prepared(SynthConfig(buyers=90, merchants=3, seed=4), tmp_path_factory.mktemp("synth"))
    return data, pl.read_parquet(data / "events.parquet")


@pytest.fixture(scope="module")
def synthetic_run(ray_local, synthetic, tmp_path_factory) -> Path:
    """A tiny VQ-VAE fitted on that log (one Ray Train worker), so its buyers spread over the codes."""
    data, _ = synthetic
    config = VQVAEConfig(**(TINY | {"workers": 1}))
    return fit_codebook(data, config, tmp_path_factory.mktemp("synth-run") / "run").run_dir


def test_each_visit_has_a_copy_of_the_buyers_other_events(synthetic):
    _, events = synthetic
    copies = other_visit_events(events)
    visits = events.select(KEY).unique().sort(KEY)
    counts = events.group_by("merchant_id", "buyer_id").len("events")
    expected = (
        visits.join(events.group_by(KEY).len("own"), on=KEY)
        .join(counts, on=["merchant_id", "buyer_id"])
        .select((pl.col("events") - pl.col("own")).sum())
        .item()
    )
    assert copies.height == expected
    one = visits.row(0, named=True)
    copy = copies.filter(pl.col("buyer_id") == one["buyer_id"] + SEPARATOR + one["session_id"])
    assert one["session_id"] not in copy["session_id"].to_list()
    mine = events.filter(
        (pl.col("merchant_id") == one["merchant_id"])
        & (pl.col("buyer_id") == one["buyer_id"])
        & (pl.col("session_id") != one["session_id"])
    )
    assert sorted(copy["seq"].to_list()) == sorted(mine["seq"].to_list())


def whole_buyer_code(assigner: CodeAssigner, events: pl.DataFrame, merchant: str, buyer: str) -> int:
    """The code of one buyer read from all of its visits, as prepare and assign read it."""
    mine = events.filter((pl.col("merchant_id") == merchant) & (pl.col("buyer_id") == buyer))
    ordered = order_frame(mine.with_columns(src_order=pl.col("seq").cast(pl.Int64)), day_resolution=False)
    references = reference_prices([price_partial(events)])
    table = buyers_table(buyer_frame(ordered, max_seq_len=assigner.max_seq_len, references=references))
    return assigner.codes_of(table)[0].column("code")[0].as_py()


def test_a_visits_code_does_not_change_with_what_happened_in_it(synthetic_run, synthetic):
    data, events = synthetic
    assigner = CodeAssigner(synthetic_run)
    own, _ = assigner.codes_of(read_buyers(data / "buyers.parquet"))
    codes, counts = codes_from_other_visits(assigner, events, own)
    assert counts["visits"] == codes.num_rows == events.select(KEY).unique().height
    # Every event of a visit made a purchase: the first visit where that moves its whole buyer's code.
    for target in events.select(KEY).unique().sort(KEY).iter_rows(named=True):
        in_target = pl.all_horizontal(pl.col(k) == target[k] for k in KEY)
        changed = events.with_columns(
            event_type=pl.when(in_target).then(pl.lit("purchase")).otherwise(pl.col("event_type"))
        )
        buyer = target["merchant_id"], target["buyer_id"]
        if whole_buyer_code(assigner, events, *buyer) != whole_buyer_code(assigner, changed, *buyer):
            break
    else:
        pytest.fail("no visit's purchases moved its buyer's code: the check below would prove nothing")
    after, _ = codes_from_other_visits(assigner, changed, own)
    visit = pl.all_horizontal(pl.col(k) == target[k] for k in KEY)
    before_row = pl.from_arrow(codes).filter(visit)
    assert before_row.height == 1 and before_row.equals(pl.from_arrow(after).filter(visit))


def test_a_one_visit_buyer_keeps_its_own_code_and_every_visit_is_counted(synthetic_run, synthetic):
    data, events = synthetic
    assigner = CodeAssigner(synthetic_run)
    own, _ = assigner.codes_of(read_buyers(data / "buyers.parquet"))
    first = events.select("merchant_id", "buyer_id", "session_id").unique().sort(KEY).row(0, named=True)
    # The buyer's other visits gone: one visit left.
    alone = events.filter(
        (pl.col("buyer_id") != first["buyer_id"])
        | (pl.col("merchant_id") != first["merchant_id"])
        | (pl.col("session_id") == first["session_id"])
    )
    codes, counts = codes_from_other_visits(assigner, alone, own)
    frame = pl.from_arrow(codes)
    mine = frame.filter(
        (pl.col("merchant_id") == first["merchant_id"]) & (pl.col("buyer_id") == first["buyer_id"])
    )
    whole = pl.from_arrow(own).filter(
        (pl.col("merchant_id") == first["merchant_id"]) & (pl.col("buyer_id") == first["buyer_id"])
    )
    assert mine["code"].to_list() == whole["code"].to_list()
    assert counts["visits_with_own_code"] == 1
    assert (
        counts["visits"]
        == counts["visits_from_other_visits"] + counts["visits_with_own_code"] + counts["visits_without_code"]
    )


def test_cli_assign_other_visits(synthetic_run, synthetic, tmp_path, capsys):
    data, events = synthetic
    out = tmp_path / "codes"
    assert main(["assign", str(synthetic_run), str(data), "--out", str(out), "--other-visits"]) == 0
    visits = events.select(KEY).unique().height
    assert f"coded {visits:,} visits" in capsys.readouterr().out
    codes = pq.read_table(out / "codes.parquet")
    assert codes.column_names == [*KEY, "code"] and codes.num_rows == visits
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["run"] == str(synthetic_run.resolve())  # train-agent finds the codebook by it
    mixes = pq.read_table(out / "merchant_distributions.parquet").to_pandas()
    assert mixes.groupby("merchant_id")["p"].sum().round(9).eq(1.0).all()
    assert main(["assign", str(synthetic_run), str(data), "--out", str(out), "--other-visits", "--ray"]) == 2


def test_a_buyer_id_holding_the_separator_is_refused_with_the_fix(synthetic_run, synthetic, tmp_path):
    data, events = synthetic
    copy = tmp_path / "data"
    shutil.copytree(data, copy)
    first = events["buyer_id"][0]
    renamed = events.with_columns(
        buyer_id=pl.when(pl.col("buyer_id") == first)
        .then(pl.lit(first + SEPARATOR + "x"))
        .otherwise("buyer_id")
    )
    renamed.write_parquet(copy / "events.parquet")
    with pytest.raises(ValueError, match="holds the separator .* rename such buyers"):
        assign_other_visits(synthetic_run, copy, tmp_path / "codes")
    assert not (tmp_path / "codes").exists()  # nothing half-written
