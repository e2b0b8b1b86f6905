"""The synthetic generator: determinism, truth coverage, planted behaviour, defects, and prepare round trip."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
import pytest
import yaml
from scipy.stats import chi2_contingency

from engine.cli import main as cli_main
from learners.data.planted_types import ACTION_TO_EVENT
from learners.data.synth import SynthConfig, synthesize

SMALL = {"buyers": 1500, "merchants": 6, "seed": 7, "rows_per_file": 12_000}


def read_raw(out: Path) -> pl.DataFrame:
    """All parts of a CSV log, every column as text (as a user's tool would read it)."""
    parts = sorted((out / "logs").glob("events-*.csv"))
    return pl.concat([pl.read_csv(p, infer_schema=False) for p in parts])


@pytest.fixture(scope="module")
def clean_log(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, pl.DataFrame]:
    out = tmp_path_factory.mktemp("synth_clean")
    summary = synthesize(SynthConfig(**SMALL), out)
    return out, summary, read_raw(out)


@pytest.fixture(scope="module")
def buyer_stats(clean_log: tuple[Path, dict, pl.DataFrame]) -> pl.DataFrame:
    """Per-type behaviour computed from the raw log, joined to the truth."""
    out, _, raw = clean_log
    per_buyer = raw.group_by("shop", "visitor").agg(
        n=pl.len(),
        visits=pl.col("visit").n_unique(),
        bought=(pl.col("action") == "buy").any(),
        uncart=(pl.col("action") == "uncart").sum(),
        search=(pl.col("action") == "search").sum(),
        fav=(pl.col("action") == "fav").sum(),
        price=pl.col("price").cast(pl.Float64).mean(),
    )
    truth = pl.read_parquet(out / "truth.parquet")
    joined = per_buyer.join(truth, left_on=["shop", "visitor"], right_on=["merchant_id", "buyer_id"])
    return joined.group_by("type").agg(
        buyers=pl.len(),
        conversion=pl.col("bought").mean(),
        events_per_buyer=pl.col("n").mean(),
        uncart_share=pl.col("uncart").sum() / pl.col("n").sum(),
        search_share=pl.col("search").sum() / pl.col("n").sum(),
        fav_share=pl.col("fav").sum() / pl.col("n").sum(),
        mean_price=pl.col("price").median(),
    )


def stat(stats: pl.DataFrame, type_name: str, column: str) -> float:
    return stats.filter(pl.col("type") == type_name)[column].item()


def argmax_type(stats: pl.DataFrame, column: str) -> str:
    return stats.sort(column, descending=True)["type"][0]


@pytest.mark.parametrize("file_format", ["csv", "parquet"])
def test_same_seed_gives_byte_identical_files(tmp_path: Path, file_format: str) -> None:
    config = SynthConfig(
        buyers=400, merchants=4, seed=3, rows_per_file=3000, file_format=file_format, malformed_share=0.01
    )
    first = synthesize(config, tmp_path / "a")
    synthesize(config, tmp_path / "b")
    names = sorted(str(p.relative_to(tmp_path / "a")) for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert len(first["files"]) > 1, "the test wants several parts"
    assert names == sorted(
        str(p.relative_to(tmp_path / "b")) for p in (tmp_path / "b").rglob("*") if p.is_file()
    )
    for name in names:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    other = SynthConfig(buyers=400, merchants=4, seed=4, rows_per_file=3000, file_format=file_format)
    synthesize(other, tmp_path / "c")
    assert (tmp_path / "a" / first["files"][0]).read_bytes() != (
        tmp_path / "c" / first["files"][0]
    ).read_bytes()


def test_truth_covers_every_buyer_of_the_log(clean_log: tuple[Path, dict, pl.DataFrame]) -> None:
    out, summary, raw = clean_log
    truth = pl.read_parquet(out / "truth.parquet")
    assert truth.height == SMALL["buyers"] == summary["buyers"]
    assert truth.select("merchant_id", "buyer_id").n_unique() == truth.height
    in_log = raw.select("shop", "visitor").unique()
    assert in_log.height == truth.height
    assert (
        in_log.join(truth, left_on=["shop", "visitor"], right_on=["merchant_id", "buyer_id"]).height
        == truth.height
    )
    assert raw.height == summary["events"] == summary["rows"]
    # Some users shop at several merchants; then they are several buyers.
    assert truth.group_by("buyer_id").len()["len"].max() > 1


def test_parts_hold_rows_per_file_rows(clean_log: tuple[Path, dict, pl.DataFrame]) -> None:
    out, summary, _ = clean_log
    sizes = [pl.read_csv(out / name, infer_schema=False).height for name in summary["files"]]
    assert all(s == SMALL["rows_per_file"] for s in sizes[:-1])
    assert 0 < sizes[-1] <= SMALL["rows_per_file"]


def test_planted_types_behave_differently(buyer_stats: pl.DataFrame) -> None:
    s = buyer_stats
    assert s.height == 5
    assert stat(s, "window_shopper", "conversion") < 0.05
    assert argmax_type(s, "conversion") == "decisive_buyer"
    assert stat(s, "decisive_buyer", "conversion") > 0.5
    assert stat(s, "cart_abandoner", "conversion") < stat(s, "deal_hunter", "conversion")
    assert argmax_type(s, "events_per_buyer") == "researcher"
    assert stat(s, "decisive_buyer", "events_per_buyer") < stat(s, "window_shopper", "events_per_buyer")
    assert argmax_type(s, "uncart_share") == "cart_abandoner"
    assert argmax_type(s, "search_share") == "deal_hunter"
    assert argmax_type(s, "fav_share") == "researcher"
    assert s.sort("mean_price")["type"][0] == "deal_hunter"


def test_merchants_have_different_type_mixtures(clean_log: tuple[Path, dict, pl.DataFrame]) -> None:
    out, _, _ = clean_log
    truth = pl.read_parquet(out / "truth.parquet")
    table = truth.pivot(
        on="type", index="merchant_id", values="buyer_id", aggregate_function="len"
    ).fill_null(0)
    counts = table.drop("merchant_id").to_numpy()
    assert counts.shape == (SMALL["merchants"], 5)
    _, p_value, _, _ = chi2_contingency(counts)
    assert p_value < 1e-6


def test_visits_and_time_range(clean_log: tuple[Path, dict, pl.DataFrame]) -> None:
    out, _, raw = clean_log
    mapping = yaml.safe_load((out / "mapping.yaml").read_text())
    t = raw.with_columns(ts=pl.col("time").str.to_datetime(time_zone="UTC")).sort("shop", "visitor", "ts")
    t = t.with_columns(
        gap=pl.col("ts").diff().dt.total_seconds().over("shop", "visitor"),
        same_visit=pl.col("visit") == pl.col("visit").shift().over("shop", "visitor"),
    ).drop_nulls("gap")
    assert t.filter(pl.col("same_visit"))["gap"].max() < 1800
    assert t.filter(~pl.col("same_visit"))["gap"].min() >= 1800
    lo = datetime.fromisoformat(mapping["timestamp"]["min"]).replace(tzinfo=UTC)
    hi = datetime.fromisoformat(mapping["timestamp"]["max"]).replace(tzinfo=UTC)
    assert t["ts"].min() >= lo and t["ts"].max() <= hi


def test_mapping_names_every_raw_column_and_code(clean_log: tuple[Path, dict, pl.DataFrame]) -> None:
    out, _, raw = clean_log
    mapping = yaml.safe_load((out / "mapping.yaml").read_text())
    assert set(mapping["fields"].values()) | {mapping["event_type"]["column"]} == set(raw.columns)
    assert set(raw["action"].unique()) <= set(mapping["event_type"]["map"])
    assert mapping["event_type"]["map"] == ACTION_TO_EVENT


def test_malformed_rows_are_extra_and_each_has_one_defect(tmp_path: Path) -> None:
    config = SynthConfig(buyers=600, merchants=3, seed=1, malformed_share=0.03)
    summary = synthesize(config, tmp_path)
    raw = read_raw(tmp_path)
    known = set(ACTION_TO_EVENT)
    defects = raw.select(
        unknown=~pl.col("action").is_in(known),
        missing=pl.col("visitor").is_null(),
        negative=pl.col("price").cast(pl.Float64) < 0,
        early=pl.col("time").str.to_datetime(time_zone="UTC") < datetime(2024, 3, 1, tzinfo=UTC),
    )
    per_row = defects.select(pl.sum_horizontal(pl.all().cast(pl.Int8)).alias("n"))["n"]
    assert per_row.max() == 1
    assert int(per_row.sum()) == summary["malformed_rows"] > 0
    by_kind = defects.sum().row(0)
    assert list(by_kind) == list(summary["malformed_by_kind"].values())
    assert raw.height == summary["rows"] == summary["events"] + summary["malformed_rows"]


def test_config_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="file_format must be csv or parquet"):
        SynthConfig(file_format="xlsx")
    with pytest.raises(ValueError, match="start_date"):
        SynthConfig(start_date="March")


def test_cli_writes_log_and_reports_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "raw"
    assert cli_main(["synth", "--out", str(out), "--buyers", "150", "--merchants", "2", "--no-progress"]) == 0
    assert {"mapping.yaml", "truth.parquet", "README.md"} <= {p.name for p in out.iterdir()}
    assert (out / "logs" / "events-00000.csv").exists()
    assert "planted types" in capsys.readouterr().out
    assert cli_main(["synth", "--out", str(out), "--file-format", "xml", "--no-progress"]) == 2
    assert "file_format" in capsys.readouterr().err


@pytest.mark.parametrize(("file_format", "malformed_share"), [("parquet", 0.0), ("csv", 0.02)])
def test_prepare_reads_the_log_with_its_mapping(
    tmp_path: Path, file_format: str, malformed_share: float
) -> None:
    raw = tmp_path / "raw"
    config = SynthConfig(
        buyers=800,
        merchants=4,
        seed=5,
        file_format=file_format,
        rows_per_file=7000,
        malformed_share=malformed_share,
        timestamp_format="unix_ms" if file_format == "parquet" else "iso",
    )
    summary = synthesize(config, raw)
    parts = [str(raw / name) for name in summary["files"]]
    prepared = tmp_path / "prepared"
    args = [
        "prepare",
        *parts,
        "--mapping",
        str(raw / "mapping.yaml"),
        "--out",
        str(prepared),
        "--no-progress",
    ]
    assert cli_main(args) == 0
    manifest = json.loads((prepared / "manifest.json").read_text())
    counts = manifest["counts"]
    assert counts["rows_read"] == summary["rows"]
    assert counts["rows_quarantined"] == summary["malformed_rows"]
    assert counts["events"] == summary["events"]
    assert counts["buyers"] == pq.read_metadata(raw / "truth.parquet").num_rows
    assert counts["sessions"] == summary["visits"]
    buyers = pl.read_parquet(prepared / "buyers.parquet", columns=["merchant_id", "buyer_id"])
    truth = pl.read_parquet(raw / "truth.parquet")
    assert buyers.join(truth, on=["merchant_id", "buyer_id"]).height == truth.height


def test_prices_change_weekly_and_deal_hunters_seek_and_buy_markdowns(
    clean_log: tuple[Path, dict, pl.DataFrame],
) -> None:
    out, _, raw = clean_log
    t = raw.with_columns(pl.col("price").cast(pl.Float64), ts=pl.col("time").str.to_datetime(time_zone="UTC"))
    start = pl.col("ts").min().over("visit") - pl.datetime(2024, 3, 1, time_zone="UTC")
    t = t.with_columns(week=start.dt.total_days() // 7, regular=pl.col("price").max().over("item"))
    priced = t.drop_nulls("price")
    # A visit sees its start week's price; prices differ across weeks, and about 30% are markdowns.
    assert priced.group_by("item", "week").agg(n=pl.col("price").n_unique())["n"].max() == 1
    assert (priced.group_by("item").agg(n=pl.col("price").n_unique())["n"] > 1).mean() > 0.3
    assert 0.15 < (priced["price"] < priced["regular"]).mean() < 0.45

    truth = pl.read_parquet(out / "truth.parquet")
    t = t.join(truth, left_on=["shop", "visitor"], right_on=["merchant_id", "buyer_id"]).sort("visit", "ts")
    t = t.with_columns(
        carted=pl.col("action").shift(-1).over("visit") == "cart", marked=pl.col("price") < pl.col("regular")
    )
    views = t.filter(pl.col("action") == "view")
    seen = views.group_by(deal=pl.col("type") == "deal_hunter").agg(pl.col("marked").mean())
    share = dict(zip(seen["deal"], seen["marked"], strict=True))
    assert share[True] > share[False] + 0.15  # deal hunters go for marked-down products
    rate = views.filter(pl.col("type") == "deal_hunter").group_by("marked").agg(pl.col("carted").mean())
    by = dict(zip(rate["marked"], rate["carted"], strict=True))
    assert by[True] > 1.5 * by[False]  # and add them to cart far more often than regular-priced ones


def test_a_short_log_keeps_busy_buyers_inside_its_window(tmp_path: Path) -> None:
    """A day-long log with 100 events per buyer: visits get less room each, never a later day."""
    synthesize(SynthConfig(buyers=300, merchants=3, seed=1, days=1, events_per_buyer=100), tmp_path)
    raw = read_raw(tmp_path).with_columns(ts=pl.col("time").str.to_datetime(time_zone="UTC"))
    assert raw["ts"].max() < datetime(2024, 3, 2, tzinfo=UTC) and raw["ts"].min() >= datetime(
        2024, 3, 1, tzinfo=UTC
    )
    t = raw.sort("shop", "visitor", "ts").with_columns(
        gap=pl.col("ts").diff().dt.total_seconds().over("shop", "visitor"),
        same_visit=pl.col("visit") == pl.col("visit").shift().over("shop", "visitor"),
    )
    assert t.filter(pl.col("same_visit"))["gap"].max() < 1800
    assert t.filter(~pl.col("same_visit"))["gap"].drop_nulls().min() >= 1800
