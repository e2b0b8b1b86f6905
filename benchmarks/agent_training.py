"""Agent training step throughput: the training loop's packed rows and target-only loss
(learners/agent/train_loop.py: ``collate``, ``TargetLoss``) against the step it replaced, right-padded
rows and the model's own loss over full-sequence logits (kept here only, as the baseline).

  .venv/bin/python -m benchmarks.agent_training [--data DIR] [--sessions 400] [--steps 150]
      [--repeats 3] [--threads 2] [--base-model tiny] [--markdown FILE]

Examples are a real agent's training rows: ``train_agent`` (in-process, no epochs) replays the traces
into examples and writes the initial model; with ``--data`` (a study's or the demo's ``traces`` folder)
they are real replayed sessions, else seeded random walks through a real storefront. Both steps start
from the same initial weights with the same optimizer settings and take ``--steps`` AdamW steps of the
same batches (the loop's ``epoch_batches``), so their mean losses agree up to float error; the variants
alternate ``--repeats`` times and the median is reported. Tokens counted are real (unpadded) tokens,
as in the training log.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from benchmarks.agent import walk_traces
from benchmarks.table_output import publish
from learners.agent.prompt import IGNORE_INDEX, PromptFormat
from learners.agent.sources import load_traces
from learners.agent.tokens import PERSONA_TOKENS_FILE, PersonaTokens
from learners.agent.train import AgentTrainConfig, train_agent
from learners.agent.train_loop import TargetLoss, collate, encode_examples, epoch_batches


def time_steps(init: Path, batches: list[list], step_of, pad_id: int) -> dict:
    model = AutoModelForCausalLM.from_pretrained(init)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-4)
    step = step_of(model, pad_id)
    tokens = cells = 0
    losses = []
    start = time.perf_counter()
    for pairs in batches:
        loss, real, total = step(pairs)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        tokens, cells = tokens + real, cells + total
        losses.append(float(loss.detach()))
    seconds = time.perf_counter() - start
    return {"tokens_per_s": tokens / seconds, "padding": 1 - tokens / cells, "mean_loss": np.mean(losses)}


def right_padded(pairs: list, pad_id: int) -> dict[str, torch.Tensor]:
    """The replaced layout: one example per row, right-padded, with an attention mask."""
    width = max(len(p) + len(t) for p, t in pairs)
    ids = torch.full((len(pairs), width), pad_id)
    mask = torch.zeros((len(pairs), width), dtype=torch.long)
    labels = torch.full((len(pairs), width), IGNORE_INDEX)
    for i, (prompt, target) in enumerate(pairs):
        ids[i, : len(prompt) + len(target)] = torch.tensor(prompt + target)
        mask[i, : len(prompt) + len(target)] = 1
        labels[i, len(prompt) : len(prompt) + len(target)] = torch.tensor(target)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def padded_full_logits(model, pad_id: int):
    """The replaced step: right-padded rows and the model's own loss over full-sequence logits."""

    def step(pairs: list) -> tuple[torch.Tensor, int, int]:
        batch = right_padded(pairs, pad_id)
        return model(**batch).loss, int(batch["attention_mask"].sum()), batch["input_ids"].numel()

    return step


def packed_target_only(model, pad_id: int):
    """The loop's step: packed rows (``collate``) and ``TargetLoss``."""
    loss = TargetLoss(model)

    def step(pairs: list) -> tuple[torch.Tensor, int, int]:
        batch = collate(pairs, pad_id)
        return loss(batch.input_ids, batch.position_ids, batch.labels), batch.tokens, batch.input_ids.numel()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, help="a traces folder (study/demo); default: random walks")
    parser.add_argument("--sessions", type=int, default=400, help="random-walk sessions without --data")
    parser.add_argument("--steps", type=int, default=150, help="optimizer steps per measurement")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--base-model", default="tiny")
    parser.add_argument("--markdown", type=Path, help="also write the table to this file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if args.data:
            traces, source = load_traces(args.data, root / "traces")
            codes = None
        else:
            traces, codes = walk_traces(args.sessions, seed=0, max_steps=12)
            source = "random walks"
        config = AgentTrainConfig(
            base_model=args.base_model,
            workers=0,
            stage1_epochs=0,
            stage2_epochs=0,
            no_persona=codes is None,  # a traces folder has no codes; one persona token changes nothing here
            log_every=10**9,
        )
        train_agent(config, traces, codes, root / "agent", source=source, log=lambda _: None)
        init = root / "agent" / "init"
        tokenizer = AutoTokenizer.from_pretrained(init)
        tokens = PersonaTokens.load(init) if (init / PERSONA_TOKENS_FILE).exists() else None
        fmt = PromptFormat(config.history_len, config.max_observation_tokens)
        data = encode_examples(str(root / "agent" / "data" / "train.parquet"), tokenizer, tokens, fmt)
        n = args.steps * args.batch_size
        if len(data) < n:
            data = (data * (n // len(data) + 1))[:n]
        batches = list(epoch_batches(data, args.batch_size, 0, 2, 1, 0, 1))[: args.steps]
        variants = {
            "right-padded, full logits (baseline)": padded_full_logits,
            "packed, target-only loss": packed_target_only,
        }
        runs: dict[str, list[dict]] = {name: [] for name in variants}
        for _ in range(args.repeats):
            for name, step_of in variants.items():
                runs[name].append(time_steps(init, batches, step_of, tokenizer.pad_token_id))
    base = statistics.median(r["tokens_per_s"] for r in runs[next(iter(runs))])
    lines = [
        f"examples: {source}, {len(data):,} encoded; {args.steps} steps of {args.batch_size};"
        f" {args.threads} threads; median of {args.repeats}",
        "",
        "| step | tokens/s | ratio | padding share | mean loss |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, results in runs.items():
        rate = statistics.median(r["tokens_per_s"] for r in results)
        padding = statistics.median(r["padding"] for r in results)
        loss = statistics.median(r["mean_loss"] for r in results)
        lines.append(f"| {name} | {rate:,.0f} | {rate / base:.2f}x | {padding:.2f} | {loss:.4f} |")
    publish(lines, args.markdown)


if __name__ == "__main__":
    main()
