"""`simpersona study`: the protocol end to end on a small synthetic log, with the Markov baselines."""

from __future__ import annotations

import json
import shlex
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from engine.cli import main as simpersona
from engine.study import Study, other_merchants
from engine.study_config import StudyConfig
from engine.study_report import explain, goal_effects, goal_lines, targets
from learners.config import config_from_dict


@pytest.fixture(scope="module")
def study(ray_local, tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    argv = ["synth", "--out", str(root / "raw"), "--buyers", "600", "--merchants", "6", "--seed", "3"]
    assert simpersona(argv) == 0
    config = config_from_dict(
        StudyConfig,
        {
            "out": str(root / "study"),
            "inputs": [str(root / "raw" / "logs")],
            "mapping": str(root / "raw" / "mapping.yaml"),
            "heldout": 2,
            "systems": ["markov", "markov-mismatched-merchant", "random"],
            "agent_codes": "other-visits",
            "min_sessions": 10,
            "bootstrap": 200,
            "goal_systems": ["markov"],
            "goal_merchants": 2,
            "goal_buyers_per_merchant": 4,
            "goal_seeds": 2,
            "personas": {"codes": 4, "epochs": 2, "warmup_epochs": 1},
            "traces": {"max_sessions": 4},
            "simulate": {"buyers_per_merchant": 12, "buyers_per_real_session": 0, "envs_per_runner": 16},
        },
    )
    return config, Study(config).run()


def test_held_out_merchants_are_never_seen_in_training(study):
    config, result = study
    out = config.out
    held = set(result["split"]["heldout"])
    assert len(held) == 2
    for table in ("events", "buyers"):
        trained = set(pl.read_parquet(f"{out}/train-data/{table}.parquet")["merchant_id"].unique())
        assert trained and not trained & held
    traced = set(pl.read_parquet(f"{out}/traces/traces.parquet")["merchant_id"].unique())
    assert traced and not traced & held


def test_the_chain_trains_on_each_visits_code_from_the_buyers_other_visits(study):
    config, result = study
    stages = [entry["stage"] for entry in result["log"]]
    assert "assign (each training visit from the buyer's other visits)" in stages
    per_visit = pl.read_parquet(f"{config.out}/codes-other-visits/codes.parquet")
    visits = pl.read_parquet(f"{config.out}/train-data/sessions.parquet", columns=["session_id"])
    assert per_visit.columns == ["merchant_id", "buyer_id", "session_id", "code"]
    assert per_visit.height == visits.height
    fitted = next(e for e in result["log"] if e["stage"] == "fit Markov chain")
    assert "codes-other-visits" in fitted["command"]
    # The held-out buyers are simulated with the codes of all their visits.
    whole = pl.read_parquet(f"{config.out}/codes/merchant_distributions.parquet")
    drawn = pl.read_parquet(f"{config.out}/distributions/own-same-window.parquet")
    held = whole.filter(pl.col("merchant_id").is_in(result["split"]["heldout"]))
    assert drawn.height and drawn.sort("merchant_id", "code").equals(held.sort("merchant_id", "code"))


def test_strict_variant_codes_come_from_the_earlier_window(study):
    config, result = study
    cutoff = datetime.fromisoformat(result["window"]["cutoff"])
    early = pl.read_parquet(f"{config.out}/early-data/events.parquet")
    assert early.height > 0 and (early["ts"] < cutoff).all()
    assert set(early["merchant_id"].unique()) <= set(result["split"]["heldout"])
    full = pl.read_parquet(f"{config.out}/codes/merchant_distributions.parquet")
    strict = pl.read_parquet(f"{config.out}/distributions/own-strict.parquet")
    counts = strict.group_by("merchant_id").agg(pl.col("n").sum()).sort("merchant_id")
    full_counts = (
        full.filter(pl.col("merchant_id").is_in(counts["merchant_id"].to_list()))
        .group_by("merchant_id")
        .agg(pl.col("n").sum())
        .sort("merchant_id")
    )
    # Fewer buyers are seen in the earlier window than over the whole log.
    assert (counts["n"] <= full_counts["n"]).all() and counts["n"].sum() < full_counts["n"].sum()


def test_every_system_is_reported_per_variant(study):
    config, result = study
    assert set(result["variants"]) == {"strict", "same-window"}
    for variant, r in result["variants"].items():
        assert list(r["systems"]) == config.systems
        for metrics in r["systems"].values():
            assert 0.0 <= metrics["cra"] <= 1.0 and 0.0 <= metrics["ara"] <= 1.0
            assert metrics["invalid_rate"] == 0.0  # Markov and random only choose offered actions
        assert r["systems"]["markov"]["goal_success"] is not None
        assert r["systems"]["random"]["goal_success"] is None
        report = json.loads(Path(config.out, "report", variant, "metrics.json").read_text())
        assert set(report["systems"]) == set(config.systems)
    index = Path(config.out, "index.html").read_text()
    assert all(f"report/{v}/index.html" in index for v in result["variants"])
    assert "<h2>Goal tasks (popular goals, same window)</h2>" in index and "<td>markov</td>" in index
    summary = Path(config.out, "summary.md").read_text()
    assert "## strict" in summary and "## same-window" in summary and "simpersona fit-personas" in summary
    assert "*ceiling* (perfect simulator, 12 visits per merchant)" in summary and "*floor*" in summary
    assert "markov − markov-mismatched-merchant" not in summary  # only the main system's baselines
    assert "## Goal tasks (popular goals, same window)" in summary and "| markov | " in summary
    assert "same-window: " in summary and "perfect simulator's" in summary
    for variant, r in result["variants"].items():
        bounded = r["fidelity"]
        assert bounded["visits"]["median"] == 12 and bounded["floor_pool"] == "training merchants"
        for metric, row in bounded["systems"]["markov"].items():
            if row["value"] is not None and row["low"] is not None:
                assert row["low"] <= row["value"] <= row["high"], (variant, metric)
        assert Path(config.out, f"fidelity-{variant}.png").stat().st_size > 10_000
        assert f'src="fidelity-{variant}.png"' in index


def test_the_split_is_printed_and_a_greedy_one_refused(study, tmp_path, capsys):
    config, result = study
    split = result["split"]
    assert split["min_sessions"] == 10 and split["eligible"] >= len(split["heldout"]) + 1
    greedy = replace(config, out=str(tmp_path / "greedy"), data=f"{config.out}/data", heldout=5)
    with pytest.raises(ValueError, match=r"cannot hold out 5 merchants: \d+ of 6 .* Fix: --heldout 2"):
        Study(greedy).run()
    # Too few merchants for any split (a one-store log): the stages to run instead, not a split.
    few = replace(greedy, out=str(tmp_path / "few"), heldout=1, min_training_merchants=6)
    with pytest.raises(ValueError, match=r"no split of this log works: .* Fix: .*'One store'"):
        Study(few).run()
    # Refused at the split, the study continues in the same OUT with the settings the message names.
    retry = Study(replace(few, min_training_merchants=4))
    retry.check_settings()
    assert retry.split(Path(config.out, "data"))["heldout"]
    with pytest.raises(ValueError, match="holds a study run with other settings"):
        Study(replace(few, min_training_merchants=3)).check_settings()  # split drawn: settings bind
    Study(replace(config, simulate=replace(config.simulate, runners=1))).split(Path(config.out, "data"))
    line = capsys.readouterr().out
    assert "split: 6 merchants" in line and "2 held out, 4 training" in line


def test_rerun_skips_every_finished_stage(study):
    config, result = study
    # Settings of how a study runs, not of what it finds, may change between runs.
    faster = replace(config.simulate, runners=1, policy_placement="runner")
    again = Study(replace(config, simulate=faster)).run()
    assert again["log"] and all(entry.get("skipped") for entry in again["log"])
    assert again["variants"] == result["variants"]


def test_each_logged_command_reruns_its_stage_by_hand(study, tmp_path):
    config, result = study
    commands = {entry["stage"]: shlex.split(entry["command"]) for entry in result["log"]}
    assert all(argv[0] == "simpersona" for argv in commands.values())
    for stage, artifact in (("traces (training merchants)", "traces.parquet"), ("fit Markov chain", None)):
        argv = commands[stage][1:]
        at = argv.index("--out") + 1
        theirs = Path(argv[at])
        argv[at] = str(tmp_path / theirs.name)
        assert simpersona(argv) == 0, stage
        if artifact:
            assert pq.read_table(tmp_path / theirs.name / artifact).equals(pq.read_table(theirs / artifact))
        else:
            assert json.loads((tmp_path / theirs.name).read_text()) == json.loads(theirs.read_text())


def test_a_study_with_other_settings_is_not_continued(study):
    config, _ = study
    with pytest.raises(ValueError, match="other settings \\(seed\\)"):
        Study(replace(config, seed=1)).run()


def test_other_merchants_is_a_derangement():
    merchants = [f"m{i}" for i in range(5)]
    table = pa.table(
        {
            "merchant_id": np.repeat(merchants, 3),
            "code": np.tile(np.arange(3), 5),
            "p": np.random.default_rng(0).dirichlet(np.ones(3), 5).ravel(),
            "n": np.arange(15),
        }
    )
    mixed = other_merchants(table, seed=1)
    own = {m: table.filter(pa.compute.equal(table["merchant_id"], m))["p"].to_pylist() for m in merchants}
    donors = set()
    for m in merchants:
        p = mixed.filter(pa.compute.equal(mixed["merchant_id"], m))["p"].to_pylist()
        donor = [d for d, q in own.items() if q == p]
        assert donor and donor[0] != m
        donors.add(donor[0])
    assert donors == set(merchants)  # every distribution is used exactly once


def test_targets_are_stated_against_the_ceiling_and_paired_effects():
    systems = {"persona": {"goal_success": 0.5}, "larger-no-persona": {"goal_success": 0.6}}

    def row(normalised):
        return {"normalised": normalised}

    def effect(low, high):
        return {"diff": (low + high) / 2, "low": low, "high": high, "claimed": low > 0 or high < 0}

    bounded = {
        "systems": {"persona": {"cra": row(0.97), "ara": row(0.5)}},
        "effects": {
            "main": "persona",
            "vs": {
                "mismatched-merchant": {k: effect(0.05, 0.2) for k in ("cra", "ara", "cr_corr")},
                "mismatched-uniform": {k: effect(-0.05, 0.2) for k in ("cra", "ara", "cr_corr")},
                "markov": {k: effect(-0.3, -0.1) for k in ("cra", "ara", "cr_corr")},
            },
        },
    }
    t = targets(systems, "persona", bounded)
    assert t["cra normalised >= 0.95"]["met"] and not t["ara normalised >= 0.95"]["met"]
    assert t["cra: persona - mismatched-merchant > 0 (paired 95% low)"] == {"value": 0.05, "met": True}
    assert not t["cr_corr: persona - mismatched-uniform > 0 (paired 95% low)"]["met"]
    assert not t["cra: persona not below markov (paired 95% high >= 0)"]["met"]
    assert t["goal_success > larger-no-persona"]["met"] is False
    # With the ceiling's share and the effect ceiling, the normalised scores and the effects over another
    # merchant's codes say how often a perfect simulator would meet them; no other target has such a share.
    ceiling = {
        k: {"mean": 0.1, "low": -0.01, "high": 0.2, "power": p} for k, p in (("cra", 1.0), ("ara", 0.45))
    }
    bounds = {"cra": {"ceiling": {"meets_target": 0.6}}, "ara": {"ceiling": {"meets_target": 0.5}}}
    t = targets(systems, "persona", bounded | {"effect_ceiling": ceiling, "bounds": bounds})
    assert t["ara normalised >= 0.95"] == {"value": 0.5, "met": False, "perfect": 0.5}
    assert t["ara: persona - mismatched-merchant > 0 (paired 95% low)"] == {
        "value": 0.05,
        "met": True,
        "perfect": 0.45,
    }
    assert t["cra: persona - mismatched-merchant > 0 (paired 95% low)"]["perfect"] == 1.0
    assert [name for name, check in t.items() if "perfect" in check] == [
        "cra normalised >= 0.95",
        "ara normalised >= 0.95",
    ] + [f"{k}: persona - mismatched-merchant > 0 (paired 95% low)" for k in ("cra", "ara")]


def test_goal_success_is_compared_seed_by_seed():
    goals = {
        "persona": {"mean": 0.8, "low": 0.7, "high": 0.9, "n": 3, "seeds": {"0": 0.9, "1": 0.8, "2": 0.7}},
        "larger-no-persona": {
            "mean": 0.6,
            "low": 0.4,
            "high": 0.8,
            "n": 3,
            "seeds": {"2": 0.7, "0": 0.5, "1": 0.6},
        },
        "markov": {"mean": 0.1, "low": 0.1, "high": 0.1, "n": 1, "seeds": {}},
    }
    effects = goal_effects(goals, "persona")
    assert set(effects) == {"larger-no-persona"}  # markov has no per-seed rates to pair
    assert effects["larger-no-persona"]["diff"] == pytest.approx(0.2)  # seeds matched by key, not order
    assert effects["larger-no-persona"]["low"] < 0  # differences 0.4, 0.2, 0.0: not above 0
    bounded = {
        "systems": {"persona": {"cra": {"normalised": 1.0}, "ara": {"normalised": 1.0}}},
        "effects": {"vs": {}},
    }
    systems = {name: {"goal_success": g["mean"]} for name, g in goals.items()}
    checks = targets(systems, "persona", bounded, effects)
    assert checks["goal_success: persona - larger-no-persona > 0 (paired 95% low)"]["met"] is False
    assert "goal_success > larger-no-persona" not in checks  # the means alone (0.8 > 0.6) do not count
    steady = goal_effects(
        goals | {"persona": goals["persona"] | {"seeds": {"0": 0.8, "1": 0.9, "2": 0.95}}}, "persona"
    )
    assert targets(systems, "persona", bounded, steady)[
        "goal_success: persona - larger-no-persona > 0 (paired 95% low)"
    ]["met"]
    table = "\n".join(goal_lines(goals, "persona"))
    assert "| larger-no-persona | 0.600 [0.400, 0.800] | +0.200 [" in table and "| markov | 0.100" in table


def test_off_home_goal_tasks_come_from_merchants_with_a_product_beyond_the_home_page(tmp_path):
    products = [("big", f"b{i}") for i in range(8)] + [("small", f"s{i}") for i in range(3)]
    pq.write_table(
        pa.table({"merchant_id": [m for m, _ in products], "product_id": [p for _, p in products]}),
        tmp_path / "catalogs.parquet",
    )
    config = StudyConfig(data=str(tmp_path))
    split = {"heldout": ["small", "big"]}
    assert Study(config).goal_merchants(split) == ["small", "big"]
    off_home = replace(config, simulate=replace(config.simulate, goal_draw="off-home"))
    assert Study(off_home).goal_merchants(split) == ["big"]


def test_the_headline_paragraph_says_what_the_numbers_mean():
    def row(value, normalised):
        return {"value": value, "low": value - 0.05, "high": value + 0.05, "normalised": normalised}

    def effect(low, high):
        return {"diff": (low + high) / 2, "low": low, "high": high, "claimed": low > 0 or high < 0}

    fidelity = {
        "systems": {
            "persona": {"cra": row(0.70, 0.9), "ara": row(0.80, 0.9)},
            "mismatched-merchant": {"cra": row(0.5, 0.1), "ara": row(0.6, 0.1)},
        },
        "bounds": {
            "cra": {
                "ceiling": {"mean": 0.72, "low": 0.66, "high": 0.78},
                "ceiling_unlimited": {"mean": 0.75},
                "floor": {"mean": 0.5},
            }
        },
        "effects": {"main": "persona", "vs": {"mismatched-merchant": {"cra": effect(0.1, 0.3)}}},
    }
    text = explain("same-window", fidelity, "persona")
    assert "closest to real buyers is persona" in text
    assert "inside the ceiling's interval" in text and "the persona codes matter" in text
    fidelity["effects"]["vs"]["mismatched-merchant"]["cra"] = effect(-0.1, 0.3)
    fidelity["systems"]["persona"]["cra"] = row(0.5, -0.1)
    fidelity["systems"]["persona"]["ara"] = row(0.5, -0.1)
    fidelity["systems"]["mismatched-merchant"]["cra"] = row(0.5, -0.2)
    text = explain("same-window", fidelity, "persona")
    assert "no system is closer to real buyers than one that knows nothing" in text
    assert "below the ceiling's interval" in text and "no difference the data can show" in text


def test_unknown_system_is_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown system"):
        Study(StudyConfig(out=str(tmp_path), data=str(tmp_path), systems=["gpt"]))
