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
import tempfile
from contextlib import nullcontext
from pathlib import Path

from learners.agent.train import AgentTrainConfig, train_agent
from learners.config import add_config_args, build_config

NAME = "train-agent"
HELP = "two-stage fine-tuning of the persona-token agent on real traces (Ray Train)"

FLAG_FIELDS = ("no_persona", "lora", "use_gpu")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data", type=Path, metavar="DATA", help="traces file/directory or prepared directory")
    parser.add_argument("--personas", type=Path, metavar="RUN_OR_CODES", help="codes directory or VQ-VAE run")
    parser.add_argument("--out", type=Path, required=True, metavar="AGENT", help="output directory")
    parser.add_argument(
        "--resume", action="store_true", help="continue the run in AGENT after its last checkpoint"
    )
    parser.add_argument("--config", type=Path, help="YAML file of AgentTrainConfig fields")
    parser.add_argument(
        "--no-persona",
        dest="cfg__no_persona",
        action="store_const",
        const=True,
        help="train without persona tokens (the no-persona baseline)",
    )
    parser.add_argument(
        "--lora",
        dest="cfg__lora",
        action="store_const",
        const=True,
        help="stage 2 trains LoRA adapters plus the persona rows",
    )
    parser.add_argument(
        "--use-gpu",
        dest="cfg__use_gpu",
        action="store_const",
        const=True,
        help="one GPU per Ray Train worker",
    )
    add_config_args(parser, AgentTrainConfig, skip=FLAG_FIELDS)


def run(args: argparse.Namespace) -> int:
    config = build_config(AgentTrainConfig, args, args.config)
    if not config.no_persona and args.personas is None and not args.resume:
        raise ValueError("--personas RUN_OR_CODES is required (or --no-persona for the baseline)")
    from transformers.utils import logging as hf_logging

    from engine.console_log import ray_session
    from learners.agent.sources import load_personas, load_traces

    hf_logging.disable_progress_bar()
    with tempfile.TemporaryDirectory(prefix="train-agent-") as work:
        traces, source, personas = None, "resumed", None
        if not args.resume:
            traces, source = load_traces(args.data, Path(work) / "traces")
            if not config.no_persona:
                personas = load_personas(args.personas, args.data, Path(work) / "codes")
        # Ray starts once the inputs have been read (a bad one fails without it); --workers 0
        # trains in this process without Ray and prints its progress here directly.
        verbose = getattr(args, "verbose", False)
        with ray_session(args.out, verbose) if config.workers > 0 else nullcontext() as logs:
            result = train_agent(
                config,
                traces,
                personas.codes if personas else None,
                args.out,
                codebook=personas.codebook if personas else None,
                resume=args.resume,
                source=source,
                progress=logs.progress if logs else None,
            )
    for e in result.epochs:
        validation = f", validation loss {e['val_loss']:.4f}" if e.get("val_loss") is not None else ""
        print(
            f"  stage {e['stage']} epoch {e['epoch']}: loss {e['loss']:.4f}{validation},"
            f" {e['tokens_per_s']:,.0f} tokens/s"
        )
    if result.validation_examples:
        kept = ", ".join(f"stage {stage}: epoch {epoch}" for stage, epoch in sorted(result.chosen.items()))
        print(f"  kept (lowest validation loss, {result.validation_examples:,} examples): {kept}")
    print(f"{result.examples:,} examples ({result.quarantined:,} trace rows quarantined) -> {result.out_dir}")
    return 0
