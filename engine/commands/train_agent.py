"""Fine-tune the persona agent in two stages on Ray Train: persona-token meaning, then the policy.

  simpersona train-agent traces/ --personas codes/ --base-model tiny --workers 2 --out agent/
  simpersona train-agent data/ --personas run/ --base-model Qwen/Qwen3-0.6B --lora --use-gpu --workers 4 --out agent/
  simpersona train-agent traces/ --no-persona --base-model tiny-8x --out agent-8x/     # baseline
  simpersona train-agent traces/ --personas codes/ --out agent/ --resume --stage2-epochs 4
  simpersona train-agent traces/ --personas codes/ --base-model small --validation-share 0.1 \
      --patience 2 --stage2-epochs 8 --max-tokens 4000000 --out agent/    # early stopping, token budget

DATA: traces (a traces.parquet file or `simpersona traces --out` directory) or a prepared directory
(replayed into traces first). --personas: a codes directory (`simpersona assign --out`) or a VQ-VAE
run (`simpersona fit-personas --out`; DATA must then be the prepared directory). --base-model: a
preset built locally (tiny, small, base and their 8x twins tiny-8x, small-8x, base-8x: 164k, 2.2M,
25.7M; 1.3M, 17M, 202M parameters), a Hugging Face hub id, or a local model directory.

--validation-share F holds out that share of DATA's merchants (whole merchants) as validation: each
epoch ends with its loss, a stage stops after --patience epochs without improvement (the epoch
counts are caps), and each stage keeps its best epoch. --max-tokens N caps the training tokens of one
epoch: a seeded, merchant-stratified sample of whole sessions that fits is kept, and counted in the
manifest (`simpersona study --plan` prints the tokens of the examples). Both are off by default here;
`simpersona study` turns validation on (its validation_share, patience and train_tokens).

AGENT ends up a normal `save_pretrained` directory (+ tokenizer + persona_tokens.json) that
transformers' Auto classes load; see learners/agent/train.py for everything else it holds.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from engine.stage_configs import TrainAgentStage
from learners.config import add_config_args, build_config

NAME = "train-agent"
HELP = "two-stage fine-tuning of the persona-token agent on real traces (Ray Train)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="YAML file of AgentTrainConfig fields")
    add_config_args(parser, TrainAgentStage)


def run(args: argparse.Namespace) -> int:
    from engine.stages import train_agent

    for line in train_agent(
        build_config(TrainAgentStage, args, args.config), getattr(args, "verbose", False)
    ).lines():
        print(line)
    return 0
