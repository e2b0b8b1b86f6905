"""Replay a prepared directory's real sessions through the storefront: the agent's training traces.

  simpersona traces data/ --out traces/
  simpersona traces data/ --out traces/ --merchants 2882,1271 --max-sessions 200

Every session of the chosen merchants is replayed unless --max-sessions caps them (the first by buyer
id); size an agent's training with `simpersona train-agent --max-tokens N` instead, which keeps a
seeded, merchant-stratified sample of whole sessions.

Writes traces.parquet (one row per observation -> action step; inserted navigation, and the
add-to-carts inserted before removals of items added before the log's window, marked
real_event = false), replay_report.json (share of real events mapped to valid actions, the reasons
for the rest, inserted_adds) and manifest.json into --out, and prints the report.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from engine.stage_configs import ReplayTracesStage
from learners.config import add_config_args, build_config

NAME = "traces"
HELP = "replay real sessions through the storefront -> traces.parquet + replay_report.json"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="YAML file of TracesConfig fields")
    add_config_args(parser, ReplayTracesStage)


def run(args: argparse.Namespace) -> int:
    from engine.stages import replay_traces

    for line in replay_traces(build_config(ReplayTracesStage, args, args.config)).lines():
        print(line)
    return 0
