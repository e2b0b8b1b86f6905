"""Persona agent offline fidelity on real data (Tmall IJCAI-15 sample), merchant-disjoint held-out sellers.

  .venv/bin/python -m benchmarks.agent_fidelity [--work DIR] [--data PREPARED] [--markdown FILE] [--seed S]
      [--heldout 20] [--min-buyers 30] [--train-sessions 6] [--eval-sessions 12] [--codes 16]
      [--vq-epochs 10] [--stage1-epochs 1] [--stage2-epochs 2] [--workers 1] [--temperature 1.0]

1. ``simpersona prepare`` the sample (or reuse --data);
2. hold out --heldout sellers drawn (seed) among those with >= --min-buyers buyers; the training
   merchants are all the others (learners/data/merchant_split.py writes their copy of the tables);
3. fit the VQ-VAE on the training merchants' buyers only, then assign every buyer with the fitted
   encoder (one forward pass, no retraining);
4. replay traces: the training merchants with >= --min-buyers buyers (--train-sessions sessions each)
   and the held-out sellers (--eval-sessions each);
5. train, on the training traces only: the persona agent, the same agent without persona tokens and
   the 8x larger no-persona model (tiny / tiny-8x); fit the per-type Markov chain on the agent's
   training examples;
6. evaluate on the held-out sellers' traces (learners/agent/offline_eval.py): next-action accuracy,
   macro-F1 over action kinds, per-type action-kind JS vs real, invalid-action rate.

Held-out examples carry no hindsight goal (--eval-goal-share 0), so the persona code is the only
buyer-specific input. LLM policies sample at --temperature (1.0: draws from the softmax over the
page's actions, as simulation does); "generate" rows decode the action text freely, the only mode
in which invalid actions can occur. Codes come from the same window as the evaluated sessions (the
same-window variant of the study protocol, docs/architecture.md). Every figure, and each ratio's baseline, is measured in
this run.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray
import torch
from scipy.spatial.distance import jensenshannon

from engine import stages
from engine.stage_configs import (
    AssignStage,
    FitPersonasStage,
    PrepareStage,
    ReplayTracesStage,
    TrainAgentStage,
    command_line,
)
from learners.agent.actions import ACTION_KINDS, action_kind
from learners.agent.examples import build_examples
from learners.agent.llm_policy import LLMPolicy
from learners.agent.markov_policy import MarkovPolicy
from learners.agent.offline_eval import EvalRow, PolicySpec, evaluate_all, markdown_table
from learners.agent.random_policy import RandomPolicy
from learners.agent.train_config import AgentTrainConfig
from learners.data.merchant_split import eligible_merchants, filter_prepared, heldout_merchants
from learners.data.traces import TracesConfig
from learners.vqvae.config import VQVAEConfig
from tests.conftest import REAL_FILES

SPLIT = "held-out sellers"
PERSONA, MISMATCHED, NO_PERSONA, LARGER = (
    "persona agent",
    "persona agent, mismatched codes",
    "no-persona agent",
    "8x no-persona model",
)


@dataclass
class Log:
    """The commands run, with their wall times, in order."""

    steps: list[tuple[str, str, float]] = field(default_factory=list)
    """(what, command or call, seconds)."""

    def stage(self, what: str, run: Callable[[Any, bool], Any], config: Any) -> None:
        """Run a stage function (engine/stages.py), logged as the command that re-runs it by hand."""
        start = time.perf_counter()
        command = command_line(config)
        print(f"\n## {what}: {command}", flush=True)
        for line in run(config, False).lines():
            print(line, flush=True)
        self.steps.append((what, command, time.perf_counter() - start))

    def timed(self, what: str, call: str, seconds: float) -> None:
        self.steps.append((what, call, seconds))


@dataclass
class Outcome:
    """Everything a finished run leaves for the report."""

    work: Path
    data: Path
    held: list[str]
    """Held-out sellers."""
    train_traced: list[str]
    """Training merchants whose sessions were replayed into traces."""
    kept: dict[str, int]
    """Rows per table of the training merchants' copy of the prepared tables."""
    run_dir: Path
    codes_dir: Path
    train_traces: Path
    eval_traces: Path
    agents: dict[str, Path]
    train_examples: pa.Table
    heldout: pa.Table
    """Held-out examples, with the buyers' true codes."""
    heldout_quarantined: int
    rows: list[EvalRow]
    log: Log
    wall_s: float


def count_rows(path: Path) -> int:
    return pq.read_metadata(path).num_rows


def distinct(table: pa.Table, *columns: str) -> int:
    return len(set(zip(*(table.column(c).to_pylist() for c in columns), strict=True)))


def type_signal(examples: pa.Table) -> float:
    """Step-weighted JS between each type's real action-kind distribution and that of all steps:
    how far apart the types really act (0 = a persona code cannot change the per-type JS)."""
    kinds = [action_kind(a) for a in examples.column("action").to_pylist()]
    codes = examples.column("code").to_pylist()
    pooled = Counter(kinds)
    all_p = np.array([pooled[k] for k in ACTION_KINDS], float)
    weighted = 0.0
    for code in set(codes):
        group = Counter(k for k, c in zip(kinds, codes, strict=True) if c == code)
        p = np.array([group[k] for k in ACTION_KINDS], float)
        weighted += p.sum() * float(jensenshannon(p / p.sum(), all_p / all_p.sum(), base=2) ** 2)
    return weighted / len(kinds)


def llm_specs(name: str, agent_dir: Path, personas: str, temperature: float) -> list[PolicySpec]:
    score = LLMPolicy.from_pretrained(agent_dir, temperature=temperature)
    generate = LLMPolicy(
        score.model, score.tokenizer, score.tokens, score.fmt, mode="generate", temperature=temperature
    )
    return [
        PolicySpec(f"{name} (score)", score, personas),
        PolicySpec(f"{name} (generate)", generate, personas),
    ]


def build_specs(
    agents: dict[str, Path], markov: MarkovPolicy, temperature: float, generate: bool
) -> list[PolicySpec]:
    persona = llm_specs(PERSONA, agents[PERSONA], "true", temperature)
    specs = [
        *persona,
        *(PolicySpec(s.name.replace(PERSONA, MISMATCHED), s.policy, "mismatched") for s in persona),
        *llm_specs(NO_PERSONA, agents[NO_PERSONA], "none", temperature),
        *llm_specs(LARGER, agents[LARGER], "none", temperature),
        PolicySpec("Markov chain (per type)", markov, "true"),
        PolicySpec("Markov chain, mismatched codes", markov, "mismatched"),
        PolicySpec("Markov chain, no codes", markov, "none"),
        PolicySpec("random", RandomPolicy(), "none"),
    ]
    return specs if generate else [s for s in specs if "(generate)" not in s.name]


def ratio_lines(rows: list[EvalRow]) -> list[str]:
    """The claim, as ratios of per-type kind JS measured in this run (< 1: the persona agent is closer)."""
    js = {r.policy: r.kind_js for r in rows}
    lines = []
    for mode in ("score", "generate"):
        mine = js.get(f"{PERSONA} ({mode})")
        if mine is None:
            continue
        for other in (MISMATCHED, NO_PERSONA, LARGER):
            theirs = js[f"{other} ({mode})"]
            verdict = "closer" if mine < theirs else "NOT closer"
            lines.append(
                f"- {mode}: persona agent JS {mine:.4f} vs {other} {theirs:.4f}: ratio {mine / theirs:.3f} ({verdict})"
            )
    markov = js["Markov chain (per type)"]
    for other in ("Markov chain, mismatched codes", "Markov chain, no codes"):
        lines.append(
            f"- Markov: true codes JS {markov:.4f} vs {other} {js[other]:.4f}: ratio {markov / js[other]:.3f}"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--work", type=Path, help="keep every artifact here (default: a temp dir)")
    parser.add_argument("--data", type=Path, help="a prepared directory of the sample (default: prepare it)")
    parser.add_argument("--markdown", type=Path, help="also write the report to this file")
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the split, the fits, training and evaluation"
    )
    parser.add_argument("--heldout", type=int, default=20, help="held-out sellers")
    parser.add_argument(
        "--min-buyers", type=int, default=30, help="held-out and trace merchants have >= this many buyers"
    )
    parser.add_argument(
        "--train-sessions", type=int, default=6, help="sessions replayed per training merchant"
    )
    parser.add_argument("--eval-sessions", type=int, default=12, help="sessions replayed per held-out seller")
    parser.add_argument("--codes", type=int, default=16, help="codebook size K")
    parser.add_argument("--vq-epochs", type=int, default=10)
    parser.add_argument("--stage1-epochs", type=int, default=1)
    parser.add_argument("--stage2-epochs", type=int, default=2)
    parser.add_argument(
        "--workers", type=int, default=1, help="Ray Train workers per fit (0: agents in-process)"
    )
    parser.add_argument(
        "--temperature", type=float, default=1.0, help="LLM sampling temperature (0 = greedy)"
    )
    parser.add_argument(
        "--eval-goal-share", type=float, default=0.0, help="held-out purchase sessions showing their goal"
    )
    parser.add_argument("--no-generate", action="store_true", help="skip the free-generation rows")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="agent-fidelity-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        ray.init(address="local", num_cpus=max(2, args.workers), include_dashboard=False, log_to_driver=False)
        try:
            report = report_text(args, run(args, work.resolve()))
        finally:
            ray.shutdown()
    print("\n" + report)
    if args.markdown:
        args.markdown.write_text(report)
        print(f"wrote {args.markdown}")


def run(args: argparse.Namespace, work: Path) -> Outcome:
    log, started = Log(), time.perf_counter()
    source = REAL_FILES["tmall-ijcai15"]
    data = args.data
    if data is None:
        if not source.exists():
            raise SystemExit(
                f"{source} not found: the real sample lives in ../shared/data beside the checkout"
            )
        data = work / "data"
        prepare = PrepareStage([str(source)], format="tmall-ijcai15", out=str(data), progress=False)
        log.stage("prepare", stages.prepare, prepare)

    # 2. The merchant-disjoint split.
    start = time.perf_counter()
    held = heldout_merchants(data, args.heldout, args.min_buyers, args.seed)
    train_traced = [m for m in eligible_merchants(data, args.min_buyers) if m not in set(held)]
    train_data = work / "train-data"
    kept = filter_prepared(data, train_data, held)
    log.timed(
        "split",
        f"learners.data.merchant_split.filter_prepared(DATA, train-data, <{len(held)} held-out>)",
        time.perf_counter() - start,
    )

    # 3. Codebook on training merchants only; every buyer assigned with its encoder.
    run_dir, codes_dir = work / "vqvae", work / "codes"
    vq = VQVAEConfig(codes=args.codes, epochs=args.vq_epochs, workers=max(1, args.workers), seed=args.seed)
    fit = FitPersonasStage(str(train_data), str(run_dir), report=False, vqvae=vq)
    log.stage("fit codebook (training merchants)", stages.fit_personas, fit)
    log.stage("assign all buyers", stages.assign, AssignStage(str(run_dir), str(data), str(codes_dir)))

    # 4. Traces.
    train_traces, eval_traces = work / "traces-train", work / "traces-heldout"
    replay = TracesConfig(merchants=train_traced, max_sessions=args.train_sessions)
    log.stage(
        "traces (training merchants)",
        stages.replay_traces,
        ReplayTracesStage(str(train_data), str(train_traces), replay),
    )
    replay = TracesConfig(merchants=held, max_sessions=args.eval_sessions)
    log.stage(
        "traces (held-out sellers)",
        stages.replay_traces,
        ReplayTracesStage(str(data), str(eval_traces), replay),
    )

    # 5. Agents and the Markov chain, on the training traces only.
    agent = AgentTrainConfig(
        stage1_epochs=args.stage1_epochs,
        stage2_epochs=args.stage2_epochs,
        workers=args.workers,
        seed=args.seed,
        log_every=1000,
    )
    agents = {PERSONA: work / "agent", NO_PERSONA: work / "agent-no-persona", LARGER: work / "agent-8x"}
    trained = [
        ("train persona agent", PERSONA, str(codes_dir), "tiny"),
        ("train no-persona agent", NO_PERSONA, None, "tiny"),
        ("train 8x no-persona model", LARGER, None, "tiny-8x"),
    ]
    for what, key, personas, base_model in trained:
        config = replace(agent, base_model=base_model, no_persona=personas is None)
        log.stage(
            what,
            stages.train_agent,
            TrainAgentStage(str(train_traces), str(agents[key]), personas, agent=config),
        )
    start = time.perf_counter()
    train_examples = pq.read_table(agents[PERSONA] / "data" / "train.parquet")
    markov = MarkovPolicy.fit(train_examples)
    log.timed("fit Markov chain", "MarkovPolicy.fit(agent/data/train.parquet)", time.perf_counter() - start)

    # 6. Offline evaluation on the held-out sellers.
    start = time.perf_counter()
    codes = pq.read_table(codes_dir / "codes.parquet")
    built = build_examples(
        pq.read_table(eval_traces / "traces.parquet"),
        codes,
        goal_share=args.eval_goal_share,
        seed=args.seed,
        source=str(eval_traces / "traces.parquet"),
    )
    if built.quarantine.num_rows:
        print(
            f"held-out traces: {built.quarantine.num_rows} rows quarantined "
            f"({Counter(built.quarantine.column('reason').to_pylist())})"
        )
    heldout = built.examples
    if set(heldout.column("merchant_id").to_pylist()) & set(train_examples.column("merchant_id").to_pylist()):
        raise RuntimeError("a held-out seller appears in the training examples: the split leaked")
    specs = build_specs(agents, markov, args.temperature, not args.no_generate)
    rows = evaluate_all(specs, {SPLIT: heldout}, batch_size=64, seed=args.seed, num_codes=args.codes)
    log.timed(
        "evaluate",
        f"offline_eval.evaluate_all({len(specs)} policies, batch 64, seed {args.seed})",
        time.perf_counter() - start,
    )

    print("\n" + markdown_table(rows), flush=True)
    return Outcome(
        work=work,
        data=data,
        held=held,
        train_traced=train_traced,
        kept=kept,
        run_dir=run_dir,
        codes_dir=codes_dir,
        train_traces=train_traces,
        eval_traces=eval_traces,
        agents=agents,
        train_examples=train_examples,
        heldout=heldout,
        heldout_quarantined=built.quarantine.num_rows,
        rows=rows,
        log=log,
        wall_s=time.perf_counter() - started,
    )


def training_losses(agent_dir: Path) -> str:
    epochs = json.loads((agent_dir / "manifest.json").read_text())["epochs"]
    return ", ".join(f"stage {e['stage']} epoch {e['epoch']} {e['loss']:.3f}" for e in epochs)


def parameters(agent_dir: Path) -> int:
    return sum(p.numel() for p in LLMPolicy.from_pretrained(agent_dir).model.parameters())


def report_text(args: argparse.Namespace, r: Outcome) -> str:
    """The Markdown report: table, claim ratios, diagnostics, sizes, commands and times."""
    assigned = json.loads((r.codes_dir / "manifest.json").read_text())["counts"]
    train_rep = json.loads((r.train_traces / "replay_report.json").read_text())
    eval_rep = json.loads((r.eval_traces / "replay_report.json").read_text())
    vq = json.loads((r.run_dir / "history.json").read_text())[-1]
    held_types = len(set(r.heldout.column("code").to_pylist()))
    lines = [
        "# Persona agent offline fidelity: Tmall IJCAI-15 sample, merchant-disjoint held-out sellers",
        "",
        f"Split seed {args.seed}; {len(r.held)} held-out sellers drawn among the "
        f"{len(r.held) + len(r.train_traced)} with >= {args.min_buyers} buyers; K = {args.codes} codes; "
        f"LLM temperature {args.temperature}; held-out goal share {args.eval_goal_share}. "
        f"Machine: {platform.machine()}, {torch.get_num_threads()} torch threads, CPU only.",
        "",
        markdown_table(r.rows),
        "Per-type kind JS: step-weighted Jensen-Shannon divergence (base 2) between each persona type's "
        "predicted and real action-kind distributions on the held-out sellers (lower is closer to real).",
        "",
        "## The claim: per-type JS of the persona agent vs its baselines (same run)",
        *ratio_lines(r.rows),
        "",
        "## Diagnostics",
        "- type signal on the held-out steps (JS of each type's real kind distribution vs all steps, "
        f"step-weighted): {type_signal(r.heldout):.4f}",
        f"- codebook fit: {int(vq['codes_in_use'])}/{args.codes} codes in use, perplexity "
        f"{vq['perplexity']:.1f} (last epoch); held-out steps fall in {held_types} types",
        *(f"- training loss, {name}: {training_losses(d)}" for name, d in r.agents.items()),
        "- parameters: " + ", ".join(f"{name} {parameters(d):,}" for name, d in r.agents.items()),
        "",
        "## Sizes",
        f"- prepared sample: {count_rows(r.data / 'merchants.parquet'):,} merchants, "
        f"{count_rows(r.data / 'buyers.parquet'):,} buyers, {count_rows(r.data / 'events.parquet'):,} events",
        f"- codebook training data (every merchant but the held-out): {r.kept['merchants']:,} merchants, "
        f"{r.kept['buyers']:,} buyers, {r.kept['events']:,} events",
        f"- assigned: {assigned['buyers_assigned']:,} of {assigned['buyers_read']:,} buyers "
        f"({assigned['buyers_quarantined']:,} quarantined)",
        f"- training traces: {train_rep['merchants']} merchants, {train_rep['sessions']:,} sessions, "
        f"{train_rep['steps']:,} steps; {r.train_examples.num_rows:,} examples, "
        f"{distinct(r.train_examples, 'merchant_id', 'buyer_id'):,} buyers",
        f"- held-out traces: {eval_rep['merchants']} sellers, {eval_rep['sessions']:,} sessions, "
        f"{eval_rep['steps']:,} steps; {r.heldout.num_rows:,} examples, "
        f"{distinct(r.heldout, 'merchant_id', 'buyer_id'):,} buyers ({r.heldout_quarantined} rows quarantined)",
        f"- held-out sellers: {', '.join(r.held)}",
        "",
        "## Commands and wall times",
        "```",
        f".venv/bin/python -m benchmarks.agent_fidelity {shlex.join(sys.argv[1:])}",
        "```",
        "| step | command | wall s |",
        "|---|---|---:|",
        *(f"| {what} | `{call.replace(str(r.work), 'WORK')}` | {s:.1f} |" for what, call, s in r.log.steps),
        f"| total | | {r.wall_s:.1f} |",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
