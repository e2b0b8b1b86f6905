"""`simpersona study CONFIG --plan`: sizes a study on a small synthetic log without training anything."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from datetime import datetime

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from engine.cli import main as simpersona
from learners.agent.train import AgentTrainConfig, train_agent

CONFIG = {
    "heldout": 2,
    "min_sessions": 10,
    "variants": ["strict", "same-window"],
    "systems": ["persona", "mismatched-uniform", "no-persona", "markov", "random"],
    "goal_systems": ["markov"],
    "goal_merchants": 2,
    "goal_buyers_per_merchant": 4,
    "goal_seeds": 2,
    "personas": {"codes": 4, "epochs": 2, "warmup_epochs": 1},
    "traces": {"max_sessions": 2},
    "agent": {"calibration_visits": 30, "calibration_rounds": 2, "max_tokens": 12_000},
    "simulate": {
        "buyers_per_merchant": 12,
        "buyers_per_real_session": 0.5,
        "max_steps": 20,
        "envs_per_runner": 16,
    },
}


@pytest.fixture(scope="module")
def planned(tmp_path_factory):
    root = tmp_path_factory.mktemp("plan")
    argv = ["synth", "--out", str(root / "raw"), "--buyers", "600", "--merchants", "6", "--seed", "3"]
    assert simpersona(argv) == 0
    out = root / "study"
    config = CONFIG | {
        "out": str(out),
        "inputs": [str(root / "raw" / "logs")],
        "mapping": str(root / "raw" / "mapping.yaml"),
    }
    path = root / "study.yaml"
    path.write_text(yaml.safe_dump(config))
    done = subprocess.run(
        [sys.executable, "-m", "engine.cli", "study", str(path), "--plan"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return config, out, done.stdout, json.loads((out / "plan.json").read_text())


def test_the_plan_prints_a_table_and_trains_nothing(planned):
    config, out, stdout, plan = planned
    assert "stage" in stdout and "estimated time" in stdout and "\ntotal " in stdout
    assert "nothing was trained or simulated" in stdout
    for stage in ("fit VQ-VAE", "train persona agent", "train no-persona agent", "simulate random (shared)"):
        assert stage in stdout, stage
    # Prepared and split as the study would (so a study in OUT continues from them), nothing else.
    assert (out / "data" / "manifest.json").exists() and (out / "split.json").exists()
    for trained in ("personas", "codes", "traces", "agent", "agent-no-persona", "markov.json", "sim"):
        assert not (out / trained).exists(), trained
    written = {"data", "train-data", "split.json", "window.json", "study-config.json", "plan.json"}
    assert {p.name for p in out.iterdir()} == written
    split = json.loads((out / "split.json").read_text())
    assert plan["split"]["heldout"] == len(split["heldout"]) == 2
    assert plan["split"]["traced"] == len(split["traced"])
    # Every estimate names what it was measured from; the total adds up the stages still to run.
    assert all(row["basis"] for row in plan["stages"])
    estimated = [r["seconds"] for r in plan["stages"] if r["seconds"] is not None and not r["done"]]
    assert {r["stage"] for r in plan["stages"] if r["done"]} == {"prepare", "split"}
    assert plan["total_seconds"] == pytest.approx(sum(estimated), abs=0.2) and plan["total_seconds"] > 0
    names = {rate["name"] for rate in plan["calibration"]}
    assert {
        "VQ-VAE epoch",
        "train tiny",
        "simulate tiny",
        "simulate markov",
        "simulate random",
        "Ray command",
    } <= names
    assert all(rate["per_s"] > 0 for rate in plan["calibration"])
    # Each LLM agent's rollout calibration: one visit per replayed session up to the cap, in each of
    # its 2 rounds (round_sizes), at the agent's measured simulation rate.
    visits = min(30, plan["split"]["replayed_sessions"]) * 2
    for key in ("persona", "no-persona"):
        row = next(r for r in plan["stages"] if r["stage"] == f"rollout-calibrate {key} agent")
        assert row["work"].startswith(f"{visits:,} visits (2 rounds)") and row["seconds"] > 0, row
        assert row["basis"].startswith("simulate tiny, in process")


def test_replayed_steps_and_tokens_are_what_the_study_then_produces(planned, tmp_path):
    config, out, _, plan = planned
    split = json.loads((out / "split.json").read_text())
    # The traces stage as Study.agents runs it.
    traces_config = tmp_path / "traces.yaml"
    traces_config.write_text(
        yaml.safe_dump({"merchants": split["traced"], "max_sessions": config["traces"]["max_sessions"]})
    )
    argv = [
        "traces",
        str(out / "train-data"),
        "--out",
        str(tmp_path / "traces"),
        "--config",
        str(traces_config),
    ]
    assert simpersona(argv) == 0
    counts = json.loads((tmp_path / "traces" / "manifest.json").read_text())["counts"]
    assert plan["split"]["replayed_steps"] == counts["steps"] > 0
    assert plan["split"]["replayed_sessions"] == counts["sessions"]
    # The no-persona agent's first epoch trains on exactly the planned examples and tokens.
    traces = pq.read_table(tmp_path / "traces" / "traces.parquet")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in a Ray Train worker; two threads on a busy 2-core box are slower
    try:
        trained = train_agent(
            AgentTrainConfig(no_persona=True, workers=0, stage2_epochs=1, seed=0),
            traces,
            None,
            tmp_path / "agent",
            log=lambda line: None,
        )
    finally:
        torch.set_num_threads(threads)
    agent = next(a for a in plan["agents"] if a["key"] == "no-persona")
    assert agent["examples"] == trained.examples
    # Counted exactly, and each epoch capped by the study's token budget.
    budget = config["agent"]["max_tokens"]
    assert budget < trained.epochs[0]["tokens"] and agent["tokens_per_epoch"] == budget
    row = next(r for r in plan["stages"] if r["stage"] == "train no-persona agent")
    assert f"{trained.epochs[0]['tokens']:,} tokens, {budget:,} per epoch (max_tokens)" in row["work"]
    assert agent["epochs"] == 2  # stage2_epochs of the study (default); the persona agent adds stage 1
    assert next(a for a in plan["agents"] if a["key"] == "persona")["epochs"] == 3
    assert "larger" not in {a["key"] for a in plan["agents"]}  # no chosen system uses it


def test_visits_per_system_follow_the_sizing_rule(planned):
    config, out, _, plan = planned
    data = out / "data"
    held = json.loads((out / "split.json").read_text())["heldout"]
    table = pq.read_table(data / "merchants.parquet", columns=["merchant_id", "sessions"])
    sessions = dict(zip(table["merchant_id"].to_pylist(), table["sessions"].to_pylist(), strict=True))

    def visits(merchants: list[str]) -> int:
        spm, per = config["simulate"]["buyers_per_merchant"], config["simulate"]["buyers_per_real_session"]
        return sum(max(spm, math.ceil(per * sessions[m])) for m in merchants)

    # Strict runs simulate the held-out merchants that have codes from the earlier window.
    cutoff = datetime.fromisoformat(json.loads((out / "window.json").read_text())["cutoff"])
    events = pq.read_table(data / "events.parquet", columns=["merchant_id", "ts"])
    early = events.filter(pc.less(events["ts"], pa.scalar(cutoff, events.schema.field("ts").type)))
    strict = [m for m in held if m in set(early["merchant_id"].to_pylist())]
    expected = {"same-window": visits(held), "shared": visits(held), "strict": visits(strict)}
    expected["goals"] = config["goal_merchants"] * config["goal_buyers_per_merchant"] * config["goal_seeds"]
    assert visits(held) > config["simulate"]["buyers_per_merchant"] * len(
        held
    )  # the per-session rule decides here
    runs = {}
    for sim in plan["simulations"]:
        for run, n in sim["visits_per_run"].items():
            assert n == expected[run], (sim["system"], run)
        assert sim["visits"] == sum(sim["visits_per_run"].values())
        assert sim["steps_expected"] <= sim["steps_max"]
        runs.setdefault(sim["system"], []).append(sorted(sim["visits_per_run"]))
    assert runs["persona"] == [["same-window", "strict"]]
    assert runs["no-persona"] == runs["random"] == runs["mismatched-uniform"] == [["shared"]]
    assert runs["markov"] == [["same-window", "strict"], ["goals"]]
