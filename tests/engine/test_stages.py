"""The stage API: every stage config renders as the command that rebuilds it, and only the console
entry point imports the CLI (the study calls the stage functions, it builds no argument lists)."""

from __future__ import annotations

import ast
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from engine.cli import build_parser
from engine.simulation_config import SimulationConfig
from engine.stage_configs import (
    COMMANDS,
    AssignStage,
    EvaluateStage,
    FitMarkovStage,
    FitPersonasStage,
    PrepareStage,
    ReplayTracesStage,
    TrainAgentStage,
    command_line,
)
from engine.study_config import StudyConfig
from learners.agent.train_config import AgentTrainConfig
from learners.config import build_config, config_flags, config_from_dict
from learners.data.prepare import PrepareConfig
from learners.data.traces import TracesConfig
from learners.vqvae.config import VQVAEConfig

ROOT = Path(__file__).resolve().parents[2]

CONFIGS = [
    PrepareStage(
        ["logs/a.csv", "logs/b"],
        mapping="m.yaml",
        out="data",
        progress=False,
        prepare=PrepareConfig(max_seq_len=128, use_ray=True),
    ),
    PrepareStage(["logs"], format="rees46", out="data"),
    FitPersonasStage(
        "data",
        "run",
        resume=True,
        truth="truth.parquet",
        report=False,
        vqvae=VQVAEConfig(codes=8, lr=0.001, use_gpu=True, workers=2),
    ),
    AssignStage("run", "data", "codes", ray=True, concurrency=3),
    ReplayTracesStage("data", "traces", TracesConfig(merchants=["m1", "m2"], max_sessions=5)),
    TrainAgentStage(
        "traces",
        "agent",
        "codes",
        agent=AgentTrainConfig(lora=True, max_tokens=1000, validation_share=0.1, stage2_lr=1e-4),
    ),
    TrainAgentStage("traces", "agent", agent=AgentTrainConfig(no_persona=True, base_model="tiny-8x")),
    FitMarkovStage("traces", "markov.json", "codes", "agent", seed=3),
    SimulationConfig(
        out="sim",
        data="data",
        distributions="d.parquet",
        merchants=["a", "b"],
        policy="random",
        buyers_per_real_session=2.5,
        use_persona=False,
        progress=False,
    ),
    EvaluateStage(
        real="data",
        sim=["persona=sim/p", "sim/random"],
        out="report",
        merchants=["a"],
        since="2014-10-01T00:00:00+00:00",
        floor_data="train",
        compare=[],
        goals=["persona=goals/p"],
        notes="strict variant (codes from events before 2014-10-01); 4 merchants",
        replicates=50,
        seed=1,
    ),
]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: COMMANDS[type(c)])
def test_a_stage_config_renders_as_the_command_that_rebuilds_it(config):
    argv = shlex.split(command_line(config))
    assert argv[:2] == ["simpersona", COMMANDS[type(config)]]
    args = build_parser(argv[1]).parse_args(argv[1:])
    assert build_config(type(config), args) == config


def test_only_non_default_fields_become_flags():
    assert command_line(AssignStage("run", "data", "codes")) == "simpersona assign run data --out codes"
    study = FitPersonasStage("d", "r", vqvae=VQVAEConfig(codes=8, use_gpu=True))
    assert command_line(study) == "simpersona fit-personas d --out r --codes 8 --use-gpu"


def test_study_sections_take_dotted_flags_over_the_study_defaults():
    config = config_from_dict(
        StudyConfig,
        {"heldout": 3, "agent": {"stage2_epochs": 6, "use_gpu": True}, "simulate": {"runners": 4}},
    )
    flags = config_flags(config)
    assert flags == [
        "--heldout",
        "3",
        "--agent.stage2-epochs",
        "6",
        "--agent.use-gpu",
        "--simulate.runners",
        "4",
    ]
    args = build_parser("study").parse_args(["study", *flags])
    assert build_config(StudyConfig, args) == config
    # A section keeps the study's defaults for what it does not name.
    assert config.agent.validation_share == 0.1 and config.simulate.buyers_per_merchant == 1000
    with pytest.raises(ValueError, match=r"simulate.seed are set by the study"):
        config_from_dict(StudyConfig, {"simulate": {"seed": 3}})
    with pytest.raises(ValueError, match=r"agent.stage2_epoch"):
        config_from_dict(StudyConfig, {"agent": {"stage2_epoch": 3}})


@pytest.mark.parametrize("path", sorted((ROOT / "examples").glob("study*.yaml")), ids=lambda p: p.name)
def test_every_example_study_loads(path):
    config = build_config(StudyConfig, build_parser("study").parse_args(["study"]), path)
    assert config.personas.codes >= 2 and config.simulate.max_steps == 30


def _imports_cli(node: ast.AST) -> bool:
    if isinstance(node, ast.Import):
        return any(a.name == "engine.cli" or a.name.startswith("engine.cli.") for a in node.names)
    if isinstance(node, ast.ImportFrom):
        return node.module == "engine.cli" or (
            node.module == "engine" and any(a.name == "cli" for a in node.names)
        )
    return False


def test_no_module_but_the_entry_point_imports_the_cli():
    sources = [p for d in ("engine", "learners", "envs") for p in (ROOT / d).rglob("*.py")]
    offenders = [
        str(p.relative_to(ROOT))
        for p in sources
        if p != ROOT / "engine" / "cli.py"
        and any(_imports_cli(n) for n in ast.walk(ast.parse(p.read_text())))
    ]
    assert offenders == []
    # And at run time: with engine.cli unimportable, every other engine module and command imports.
    script = (
        "import importlib, pkgutil, sys\n"
        "sys.modules['engine.cli'] = None\n"
        "import engine, engine.commands\n"
        "names = [f'engine.{m.name}' for m in pkgutil.iter_modules(engine.__path__) if m.name not in ('cli', 'commands')]\n"
        "names += [f'engine.commands.{m.name}' for m in pkgutil.iter_modules(engine.commands.__path__)]\n"
        "for name in names:\n"
        "    importlib.import_module(name)\n"
        "assert 'engine.study' in names and 'engine.stages' in names\n"
        "print(len(names))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert int(done.stdout.split()[-1]) > 20


def test_the_study_builds_no_argument_lists():
    tree = ast.parse((ROOT / "engine" / "study.py").read_text())
    flags = [
        n.value
        for n in ast.walk(tree)
        if isinstance(n, ast.Constant) and isinstance(n.value, str) and n.value.startswith("--")
    ]
    assert flags == []
    names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    modules = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert "argv" not in names and "shlex" not in modules


def test_a_time_without_a_zone_is_utc_as_the_prepared_timestamps_are():
    from datetime import UTC, datetime, timedelta, timezone

    from engine.stages import utc_time

    assert utc_time("2015-06-08", "--since") == datetime(2015, 6, 8, tzinfo=UTC)
    assert utc_time("2015-06-08T02:00:00+02:00", "--since") == datetime(2015, 6, 8, tzinfo=UTC)
    assert utc_time("2015-06-08T02:00:00+02:00", "--since").tzinfo == timezone(timedelta(hours=2))
    with pytest.raises(ValueError, match=r"--since 'June 8' is not an ISO date or time; fix:"):
        utc_time("June 8", "--since")


def test_implausible_event_dates_are_flagged():
    from datetime import UTC, datetime

    from engine.stage_results import time_range_lines

    now = datetime(2026, 12, 6, tzinfo=UTC)
    fine = time_range_lines({"first": "2015-06-01T00:28:48+00:00", "last": "2015-06-14T22:26:42+00:00"}, now)
    assert fine == ["  events from 2015-06-01 00:28 to 2015-06-14 22:26 UTC"]
    seconds_as_ms = {"first": "1970-01-17T14:00:00+00:00", "last": "2015-06-14T22:26:42+00:00"}
    future = {"first": "2015-06-01T00:28:48+00:00", "last": "2424-01-01T00:00:00+00:00"}
    for span in (seconds_as_ms, future):
        lines = time_range_lines(span, now)
        assert len(lines) == 2 and lines[1].startswith("  check: events dated before 1995 or in the future")
    assert time_range_lines(None) == []
