"""Stages side by side: each in a process of its own with a share of the CPUs, its lines printed once."""

from __future__ import annotations

import json
import time
from dataclasses import replace

import pyarrow.parquet as pq
import pytest

from engine import side_by_side, stages
from engine.cli import main as simpersona
from engine.side_by_side import SideStage, run_side_by_side, shared_cpus
from engine.stage_configs import PrepareStage, ReplayTracesStage, TrainAgentStage
from engine.study import Study
from engine.study_config import StudyConfig
from learners.agent.train_config import AgentTrainConfig


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    root = tmp_path_factory.mktemp("raw")
    argv = ["synth", "--out", str(root), "--buyers", "200", "--merchants", "3", "--seed", "1"]
    assert simpersona(argv) == 0
    return root


def test_the_machines_cpus_are_shared_equally(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(side_by_side.os, "cpu_count", lambda: 4)
    assert shared_cpus(2, 1) == (2, 2)
    assert shared_cpus(3, 1) == (1, 1)
    assert shared_cpus(2, 2) == (1, 1)
    assert shared_cpus(2, 0) == (2, 2)  # training in the driver: its threads
    assert shared_cpus(2, 1, requested=3) == (3, 3)
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    assert shared_cpus(2, 1) == (0, None)  # each driver sizes its workers on the cluster


def test_stages_run_at_once_and_print_their_lines_once(raw, tmp_path, capsys):
    def stage(name: str) -> PrepareStage:
        return PrepareStage(
            [str(raw / "logs")], mapping=str(raw / "mapping.yaml"), out=str(tmp_path / name), progress=False
        )

    side = [
        SideStage("prepare one", stages.prepare, stage("one")),
        SideStage("prepare two", stages.prepare, stage("two")),
    ]
    start = time.perf_counter()
    seconds = run_side_by_side(side, tmp_path / "side", threads=1)
    wall = time.perf_counter() - start

    assert set(seconds) == {"prepare one", "prepare two"} and all(s > 0 for s in seconds.values())
    assert wall < sum(seconds.values())  # they overlapped: one after the other would take the sum
    events = pq.read_table(tmp_path / "one" / "events.parquet")
    assert events.num_rows > 0 and events.equals(pq.read_table(tmp_path / "two" / "events.parquet"))
    out = capsys.readouterr().out
    assert out.count("== prepare one: simpersona prepare") == 1 and out.count("== prepare one: ended in") == 1
    # Each process's output is printed once, whole, and kept in its log.
    logged = (tmp_path / "side" / "one.log").read_text()
    assert "prepared" in logged and logged.strip() in out
    assert out.count(logged.splitlines()[-1]) == 1  # "wrote .../one": this stage's own line


def test_a_failed_stage_is_reported_with_its_output(raw, tmp_path):
    missing = PrepareStage(
        [str(tmp_path / "nowhere")], mapping=str(raw / "mapping.yaml"), out=str(tmp_path / "bad")
    )
    good = PrepareStage([str(raw / "logs")], mapping=str(raw / "mapping.yaml"), out=str(tmp_path / "good"))
    side = [
        SideStage("prepare bad", stages.prepare, missing),
        SideStage("prepare good", stages.prepare, good),
    ]
    with pytest.raises(
        RuntimeError, match=r"prepare bad failed \(exit 1\); its output is in .*bad\.log"
    ) as err:
        run_side_by_side(side, tmp_path / "side", threads=1)
    assert "nowhere" in str(err.value)  # the tail names what was wrong


def test_a_study_trains_its_agents_side_by_side_as_it_would_one_at_a_time(raw, tmp_path, capsys):
    data, traces = tmp_path / "data", tmp_path / "traces"
    stages.prepare(PrepareStage([str(raw / "logs")], mapping=str(raw / "mapping.yaml"), out=str(data)))
    stages.replay_traces(ReplayTracesStage(str(data), str(traces)))
    agent = AgentTrainConfig(
        no_persona=True,
        workers=0,
        stage1_epochs=0,
        stage2_epochs=1,
        max_examples=48,
        price_rows=0,
        row_choice_rows=0,
    )

    def jobs(folder: str) -> list:
        return [
            (
                f"train {seed} agent",
                TrainAgentStage(
                    str(traces), str(tmp_path / folder / f"a{seed}"), agent=replace(agent, seed=seed)
                ),
                tmp_path / folder / f"a{seed}" / "manifest.json",
            )
            for seed in (0, 1)
        ]

    def losses(folder: str) -> list[float]:
        return [
            json.loads((tmp_path / folder / f"a{s}" / "manifest.json").read_text())["epochs"][0]["loss"]
            for s in (0, 1)
        ]

    config = StudyConfig(out=str(tmp_path / "study"), data=str(data))
    side = Study(config)
    side.train(jobs("side"))
    assert [entry["stage"] for entry in side.log] == ["train 0 agent", "train 1 agent"]
    assert all(entry["side_by_side"] and entry["seconds"] > 0 for entry in side.log)
    assert "2 side by side" in capsys.readouterr().out
    alone = Study(replace(config, agents_side_by_side=False))
    alone.train(jobs("alone"))
    assert losses("side") == pytest.approx(losses("alone"), rel=1e-4)  # the same training, here or there
    assert losses("side")[0] != losses("side")[1]
    side.train(jobs("side"))  # done: nothing is trained again
    assert all(entry.get("skipped") for entry in side.log[2:]) and len(side.log) == 4
