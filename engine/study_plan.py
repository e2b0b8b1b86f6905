"""Size a study before running it (``simpersona study CONFIG --plan``): counts, and time from a calibration.

The plan does what the study itself does first (prepare the data when needed, check the settings and
draw the split, through ``Study``, so the same ``split.json`` is printed and saved) and then, without
fitting or simulating anything:

- counts exactly: merchants per split, real sessions, the replayed steps (the traces are built, as
  the study builds them, into a temporary directory), the examples each agent would train on
  (``build_examples``) and their tokens (``encode_prompt`` + ``encode_target`` with the agent's real
  tokenizer: a tiny preset's BPE is trained on the examples, as training does), and the simulated
  visits per system (``engine.simulation_config.buyers_per_merchant``, the rule the simulations use);
- measures this machine's rates in a short calibration: a few AdamW steps of each agent's base model
  on real examples (tokens/s), one VQ-VAE epoch on a subset of the training buyers (buyers/s), a few
  hundred simulated steps of each policy kind on the held-out merchants' storefronts (steps/s), and
  one tiny Ray command (a simulate, as the study runs its commands); each on one thread, as a Ray
  worker with one CPU runs;
- scales the rates by the counts into a time per stage, each naming the measurement it comes from.

What is not measured is marked ``not estimated`` and left out of the total, never guessed.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from engine.study import SYSTEMS, Study, StudyConfig
from learners.config import config_to_dict

PLAN_FILE = "plan.json"
MAX_COUNTED_EXAMPLES = 50_000
"""Above this many examples, tokens are counted on a seeded sample of this size and scaled up."""
VQ_SUBSET = 2048
"""Training buyers the VQ-VAE calibration epoch runs on."""
WARMUP_STEPS = 2
"""Untimed optimizer steps first (optimizer state, allocator)."""
TRAIN_STEPS = (4, 1.5, 6.0)
"""Timed optimizer steps per base model: at least 4 and 1.5 s of them, but none started 6 s after the
first step (warm-up included)."""
SIM_BUYERS = 256
"""Buyers the simulation calibration plays at most, per policy kind ..."""
SIM_BUDGET_S = 1.5
"""... for about this long ..."""
SIM_MIN_STEPS = 200
"""... and at least this many steps (unless that takes four times the budget)."""
GOAL_MAX_STEPS = 20
"""Steps of a goal task (Study.simulate)."""


@dataclass(frozen=True)
class Rate:
    """A throughput measured on this machine, and what it was measured from."""

    name: str
    """Key the plan's stages refer to (``train tiny``, ``simulate markov``, ...)."""
    per_s: float
    unit: str
    """What is counted: tokens, buyers, steps, commands."""
    basis: str
    """How it was measured."""
    seconds: float
    """Wall time of the measurement."""


@dataclass
class SplitCounts:
    """The split the study will use (split.json) and the real sessions on each side of it."""

    merchants: int
    eligible: int
    heldout: int
    training: int
    traced: int
    """Training merchants replayed into traces (eligible and not held out)."""
    heldout_sessions: int
    """Real sessions of the held-out merchants (the same-window variant compares with all of them)."""
    strict_sessions: int | None
    """... of them starting at or after the strict variant's cutoff (None without that variant)."""
    cutoff: str | None
    replayed_sessions: int
    replayed_real_events: int
    replayed_mapped_events: int
    replayed_steps: int
    """Exact: the steps of traces built the way the study builds them."""
    inserted_steps: int
    traces_seconds: float


@dataclass
class AgentPlan:
    """One trained agent: what it trains on and how long that takes here."""

    key: str
    base_model: str
    examples: int
    tokens_per_epoch: int
    """Prompt + target tokens of one pass over the examples (what the training loop counts)."""
    epochs: int
    """Passes over the examples: stage 1 (persona agent) + stage 2."""
    counted: str
    """How the tokens were counted (all examples, or a sample scaled up)."""
    rate: str | None
    """The calibration Rate the time comes from (None: the model could not be loaded)."""
    seconds: float | None


@dataclass
class SimPlan:
    """One system's simulations (free shopping, or its goal tasks): runs, visits and steps."""

    system: str
    policy: str
    visits_per_run: dict[str, int]
    """Visits of each distinct run: a variant, "shared" (a run that does not depend on the variant:
    no persona, or uniform codes) or "goals"."""
    steps_per_visit: float
    steps_per_visit_basis: str
    steps_max: int
    """Every visit running to its step limit."""
    rate: str | None
    parallel: int
    """Processes stepping at once: the runners for policies played in them, else one policy server."""
    seconds: float | None

    @property
    def visits(self) -> int:
        return sum(self.visits_per_run.values())

    @property
    def steps_expected(self) -> int:
        return round(self.visits * self.steps_per_visit)


@dataclass
class StageRow:
    """One line of the plan's table."""

    stage: str
    work: str
    seconds: float | None
    """None: not estimated (left out of the total)."""
    basis: str
    done: bool = False
    """Done by the plan itself (prepare, split), which the study then reuses: left out of the total."""


@dataclass
class StudyPlan:
    """Everything ``--plan`` prints, also written to OUT/plan.json."""

    config: dict
    split: SplitCounts
    agents: list[AgentPlan]
    simulations: list[SimPlan]
    calibration: list[Rate]
    stages: list[StageRow]
    calibration_seconds: float
    notes: list[str] = field(default_factory=list)

    @property
    def total_seconds(self) -> float:
        return sum(r.seconds for r in self.stages if r.seconds is not None and not r.done)

    def to_dict(self) -> dict:
        out = asdict(self)
        for sim, plain in zip(self.simulations, out["simulations"], strict=True):
            plain.update(visits=sim.visits, steps_expected=sim.steps_expected)
        return out | {"total_seconds": round(self.total_seconds, 1)}


# ---- counting -----------------------------------------------------------------------------------


def merchant_counts(data: Path, merchants: Sequence[str], column: str) -> dict[str, int]:
    """A merchants.parquet count (sessions, buyers) of each of ``merchants``."""
    table = pq.read_table(data / "merchants.parquet", columns=["merchant_id", column])
    wanted = set(merchants)
    pairs = zip(table["merchant_id"].to_pylist(), table[column].to_pylist(), strict=True)
    return {m: n for m, n in pairs if m in wanted}


def _of(table: pa.Table, merchants: Sequence[str]) -> pa.Table:
    return table.filter(pc.is_in(table["merchant_id"], value_set=pa.array(list(merchants), pa.string())))


def later_sessions(data: Path, merchants: Sequence[str], cutoff: str) -> int:
    """Sessions of ``merchants`` starting at or after the cutoff (the strict variant's real side)."""
    table = _of(pq.read_table(data / "sessions.parquet", columns=["merchant_id", "start"]), merchants)
    since = pa.scalar(datetime.fromisoformat(cutoff), table.schema.field("start").type)
    return int(pc.sum(pc.greater_equal(table["start"], since)).as_py() or 0)


def merchants_before(data: Path, merchants: Sequence[str], cutoff: str) -> list[str]:
    """Held-out merchants with events before the cutoff: those the strict variant has codes for."""
    table = _of(pq.read_table(data / "events.parquet", columns=["merchant_id", "ts"]), merchants)
    until = pa.scalar(datetime.fromisoformat(cutoff), table.schema.field("ts").type)
    seen = set(table.filter(pc.less(table["ts"], until))["merchant_id"].to_pylist())
    return [m for m in merchants if m in seen]


def coded_buyers(data: Path) -> pa.Table:
    """Every buyer ``assign`` gives a code (the VQ-VAE's usable rows), with a stand-in code 0: the
    persona examples keep exactly these buyers, and which code each gets does not change the counts."""
    from learners.vqvae.dataset import load_rows
    from learners.vqvae.fit import VQVAEConfig

    rows = load_rows(data, VQVAEConfig().max_seq_len)
    n = len(rows.merchant_id)
    return pa.table(
        {"merchant_id": rows.merchant_id, "buyer_id": rows.buyer_id, "code": pa.array(np.zeros(n, np.int32))}
    )


@dataclass
class Counted:
    """Tokens of one example set under one tokenizer."""

    tokens: int
    counted: str
    pairs: list[tuple[list[int], list[int]]]
    """Encoded (prompt, target) ids of the counted examples (the training calibration draws from them)."""


def count_tokens(examples: pa.Table, tokenizer, tokens, seed: int) -> Counted:
    """Training tokens of one epoch: prompt + target ids per example, as the training loop counts them."""
    from learners.agent.prompt import PromptFormat, encode_prompt, encode_target
    from learners.agent.train import AgentTrainConfig

    fmt = PromptFormat(AgentTrainConfig.history_len, AgentTrainConfig.max_observation_tokens)
    n = examples.num_rows
    table = examples
    if n > MAX_COUNTED_EXAMPLES:
        take = np.sort(np.random.default_rng(seed).choice(n, MAX_COUNTED_EXAMPLES, replace=False))
        table = examples.take(pa.array(take))
    columns = [table.column(c).to_pylist() for c in ("observation", "action", "history", "goal", "code")]
    pairs = [
        (encode_prompt(tokenizer, obs, code, goal, history, tokens, fmt), encode_target(tokenizer, action))
        for obs, action, history, goal, code in zip(*columns, strict=True)
    ]
    total = sum(len(p) + len(t) for p, t in pairs)
    if table.num_rows == n:
        return Counted(total, f"all {n:,} examples counted", pairs)
    scaled = round(total * n / table.num_rows)
    return Counted(
        scaled, f"a seeded sample of {table.num_rows:,} of {n:,} examples counted, scaled up", pairs
    )


# ---- calibration --------------------------------------------------------------------------------


class _Enough(Exception):
    """Raised inside a timed policy call to end a calibration run once its budget is spent."""


class _TimedPolicy:
    """Wraps ``act``: counts the steps it answers; ends the run after ``budget_s`` and ``min_steps``
    (or after four times the budget, with fewer steps: a slow model on a busy machine)."""

    def __init__(self, act: Callable, budget_s: float, min_steps: int) -> None:
        self.act, self.budget_s, self.min_steps = act, budget_s, min_steps
        self.steps, self.start, self.end = 0, 0.0, 0.0

    def __call__(self, requests):
        now = time.perf_counter()
        if not self.start:
            self.start = now  # the first batch's envs were built before: a runner builds them once
        elif now - self.start > self.budget_s * (1 if self.steps >= self.min_steps else 4):
            self.end = now
            raise _Enough
        out = self.act(requests)
        self.steps += len(requests)
        self.end = time.perf_counter()
        return out


def calibrate_simulation(
    name: str,
    data: Path,
    merchants: Sequence[str],
    act: Callable,
    config: StudyConfig,
    use_persona: bool,
    in_runner: bool,
) -> tuple[Rate, float | None]:
    """Simulated steps/s of one policy on the held-out merchants' storefronts, played in this process,
    and the mean steps of a visit when every calibration visit ended within the budget."""
    from engine.env_runner import EnvSpec, EpisodePlayer
    from engine.population import SimBuyer, buyer_seed
    from engine.simulation_config import SimulationConfig

    # A policy in the runners plays a chunk lock-step; behind a server a runner's envs form two groups.
    envs, groups = (
        (min(config.envs_per_runner, SimulationConfig.chunk_size), 1)
        if in_runner
        else (
            config.envs_per_runner,
            min(2, config.envs_per_runner),
        )
    )
    buyers = [
        SimBuyer(i, merchants[i % len(merchants)], i % config.codes, buyer_seed(config.seed, i), config.seed)
        for i in range(SIM_BUYERS)
    ]
    player = EpisodePlayer(EnvSpec(kwargs={"data": str(data)}), envs, config.max_steps, use_persona, groups)
    timed = _TimedPolicy(act, SIM_BUDGET_S, SIM_MIN_STEPS)
    per_visit = None
    with contextlib.suppress(_Enough):  # the budget ran out before every visit ended
        per_visit = player.play(buyers, timed).num_rows / len(buyers)
    seconds = timed.end - timed.start
    basis = (
        f"{timed.steps:,} steps on {len(merchants)} held-out storefronts, batches of {envs // groups}, "
        "in this process"
    )
    return Rate(name, timed.steps / max(seconds, 1e-9), "steps", basis, round(seconds, 2)), per_visit


def calibrate_training(name: str, model, tokenizer, pairs: list, seed: int) -> Rate:
    """Tokens/s of AdamW steps of the whole model on batches of real examples (train_loop's step)."""
    import torch

    from learners.agent.train import AgentTrainConfig
    from learners.agent.train_loop import collate

    cfg = AgentTrainConfig()
    rng = np.random.default_rng(seed)
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.stage2_lr)
    least, enough_s, most_s = TRAIN_STEPS
    tokens, timed, seconds, step, warmup = 0, 0, 0.0, 0, WARMUP_STEPS
    begun = time.perf_counter()
    while not timed or (time.perf_counter() - begun < most_s and (timed < least or seconds < enough_s)):
        batch = collate(
            [pairs[i] for i in rng.integers(0, len(pairs), cfg.batch_size)], tokenizer.pad_token_id
        )
        start = time.perf_counter()
        out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, labels=batch.labels)
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
        optimizer.step()
        took = time.perf_counter() - start
        if step == 0 and took > most_s / 4:
            warmup = 1  # a slow model: one untimed step must do
        if step >= warmup:  # the first steps allocate the optimizer state and warm the allocator
            tokens, timed, seconds = tokens + batch.tokens, timed + 1, seconds + took
        step += 1
    model.eval()
    basis = f"{timed} AdamW steps of {cfg.batch_size} real examples"
    return Rate(name, tokens / max(seconds, 1e-9), "tokens", basis, round(seconds, 2))


def calibrate_vqvae(train_data: Path, config: StudyConfig) -> tuple[Rate, Rate, int]:
    """(training buyers/s of one quantised epoch, buyers/s of codebook init + encoding, training buyers)."""
    import torch

    from learners.vqvae.dataset import FeatureStats, load_rows
    from learners.vqvae.fit import VQVAEConfig, WorkerTraining

    vq = VQVAEConfig(codes=config.codes, epochs=config.vq_epochs, seed=config.seed, workers=config.workers)
    rows = load_rows(train_data, vq.max_seq_len)
    stats = FeatureStats.fit(rows.features)
    everyone = rows.batch(stats)
    n = len(everyone)
    pick = torch.randperm(n, generator=torch.Generator().manual_seed(config.seed))[:VQ_SUBSET]
    subset = everyone.select(pick)
    m = len(subset)
    work = WorkerTraining(replace(vq, warmup_epochs=0), subset, stats, torch.device("cpu"))
    start = time.perf_counter()
    work.initialise()
    with torch.no_grad():
        work.model.encode(*subset.inputs())
    encode_s = time.perf_counter() - start
    start = time.perf_counter()
    work.run_epoch()
    epoch_s = time.perf_counter() - start
    return (
        Rate(
            "VQ-VAE epoch",
            m / epoch_s,
            "buyers",
            f"one quantised epoch on {m:,} training buyers",
            round(epoch_s, 2),
        ),
        Rate(
            "VQ-VAE encode",
            m / encode_s,
            "buyers",
            f"codebook init + encoder pass on {m:,} buyers",
            round(encode_s, 2),
        ),
        n,
    )


def calibrate_command(data: Path, merchant: str, config: StudyConfig) -> Rate:
    """What each Ray command of the study pays besides its work: one tiny ``simpersona simulate`` (random
    policy, 8 visits of 5 steps) end to end, in this process as the study runs its commands (a Ray start,
    its runners, the output, a shutdown; no Ray start when Ray is already running here)."""
    import io

    from engine.cli import main as simpersona

    with tempfile.TemporaryDirectory(prefix="plan-command-") as tmp:
        distributions = Path(tmp) / "distributions.parquet"
        pq.write_table(
            pa.table(
                {
                    "merchant_id": pa.array([merchant], pa.string()),
                    "code": pa.array([0], pa.int64()),
                    "p": pa.array([1.0], pa.float64()),
                    "n": pa.array([1], pa.int64()),
                }
            ),
            distributions,
        )
        argv = ["simulate", "--out", str(Path(tmp) / "sim"), "--data", str(data)]
        argv += ["--distributions", str(distributions), "--policy", "random", "--buyers-per-merchant", "8"]
        argv += ["--max-steps", "5", "--runners", str(config.runners), "--progress", "false"]
        start = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            code = simpersona(argv)
        seconds = time.perf_counter() - start
    if code != 0:
        raise RuntimeError(f"the plan's calibration command failed: simpersona {' '.join(argv)}")
    basis = "one tiny simulate (random policy, 8 visits) end to end in this process"
    return Rate("Ray command", 1 / seconds, "commands", basis, round(seconds, 2))


# ---- the plan -----------------------------------------------------------------------------------


def needed_agents(config: StudyConfig) -> set[str]:
    """The trained artifacts the chosen systems use (Study.agents builds only these)."""
    return {SYSTEMS[s].agent for s in [*config.systems, *config.goal_systems]} - {None}


def system_runs(config: StudyConfig) -> dict[str, list[str]]:
    """Per system, its distinct free-shopping runs, grouped as Study.run groups them."""
    runs: dict[str, list[str]] = {}
    for name in config.systems:
        system = SYSTEMS[name]
        shared = not system.use_persona or system.codes == "uniform"
        runs[name] = ["shared"] if shared else list(config.variants)
    return runs


class Planner:
    """Counts and calibrates one study; ``plan()`` returns the StudyPlan."""

    def __init__(self, config: StudyConfig, log: Callable[[str], None] = print) -> None:
        self.config, self.log = config, log
        self.study = Study(config)
        self.calibration: list[Rate] = []
        self.notes: list[str] = []
        self.workers = max(1, min(config.workers, os.cpu_count() or 1))

    def plan(self) -> StudyPlan:
        import torch

        c, study = self.config, self.study
        study.out.mkdir(parents=True, exist_ok=True)
        study.check_settings()
        start = time.perf_counter()
        data = study.prepared()
        prepared = next((e for e in study.log if e["stage"] == "prepare" and not e.get("skipped")), None)
        stages = [
            StageRow(
                "prepare",
                f"{', '.join(c.inputs)} -> {data}",
                round(time.perf_counter() - start, 1),
                "timed now; the study reuses it",
                done=True,
            )
            if prepared
            else StageRow("prepare", f"{data}", 0.0, "already prepared", done=True)
        ]
        start = time.perf_counter()
        split = study.split(data)
        stages.append(
            StageRow(
                "split",
                f"{split['eligible']} eligible -> {len(split['heldout'])} held out",
                round(time.perf_counter() - start, 1),
                "timed now; the study reuses split.json",
                done=True,
            )
        )
        started = time.perf_counter()
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # a Ray Train worker or policy actor given one CPU runs one thread
        try:
            counts, traces = self.count_split(data, split)
            stages += self.personas(data, split, counts.cutoff)
            stages.append(
                StageRow(
                    "traces",
                    f"{counts.replayed_sessions:,} sessions -> {counts.replayed_steps:,} steps",
                    counts.traces_seconds,
                    "built them now (the count is exact)",
                )
            )
            agents, policies, agent_rows = self.agents(data, traces)
            stages += agent_rows
            simulations = self.simulations(data, split, counts.cutoff, traces, policies)
            stages += self.simulation_rows(simulations)
            ray_rate = calibrate_command(data, split["heldout"][0], c)
        finally:
            torch.set_num_threads(threads)
        self.calibration.append(ray_rate)
        if load is not None:
            self.notes.append(
                f"load average {load:.1f} on {os.cpu_count()} cores when the calibration started: the times"
                " are for a machine this busy"
            )
        starts = 1 + len(agents) + sum(len(s.visits_per_run) for s in simulations)
        stages.append(
            StageRow(
                "Ray command overhead",
                f"{starts} Ray commands (fit-personas, train-agent, simulate)",
                round(starts / ray_rate.per_s, 1),
                f"{ray_rate.name}; Ray Train's workers and LLM policy servers start on top, not estimated",
            )
        )
        stages.append(
            StageRow(
                "evaluate",
                f"{len(c.variants)} variants x {len(c.systems)} systems, {c.bootstrap} bootstrap replicates",
                None,
                "not measured",
            )
        )
        return StudyPlan(
            config_to_dict(c),
            counts,
            agents,
            simulations,
            self.calibration,
            stages,
            round(time.perf_counter() - started, 1),
            self.notes,
        )

    def count_split(self, data: Path, split: dict) -> tuple[SplitCounts, pa.Table]:
        """The split's counts, with traces built as the study builds them (into a temporary directory)."""
        from learners.data.traces import TracesConfig, build_traces

        c, heldout = self.config, split["heldout"]
        cutoff = self.study.window(data, split)["cutoff"] if "strict" in c.variants else None
        with tempfile.TemporaryDirectory(prefix="plan-traces-") as tmp:
            config = TracesConfig(merchants=split["traced"], max_sessions=c.train_sessions)
            report = build_traces(self.study.out / "train-data", tmp, config)
            traces = pq.read_table(Path(tmp) / "traces.parquet")
        self.log(f"traces (counted, not kept): {report.sessions:,} sessions -> {report.steps:,} steps")
        counts = SplitCounts(
            merchants=split["merchants"],
            eligible=split["eligible"],
            heldout=len(heldout),
            training=split["merchants"] - len(heldout),
            traced=len(split["traced"]),
            heldout_sessions=sum(merchant_counts(data, heldout, "sessions").values()),
            strict_sessions=later_sessions(data, heldout, cutoff) if cutoff else None,
            cutoff=cutoff,
            replayed_sessions=report.sessions,
            replayed_real_events=report.real_events,
            replayed_mapped_events=report.mapped_events,
            replayed_steps=report.steps,
            inserted_steps=report.inserted_steps,
            traces_seconds=round(report.seconds, 2),
        )
        return counts, traces

    def personas(self, data: Path, split: dict, cutoff: str | None) -> list[StageRow]:
        c = self.config
        fit, encode, buyers = calibrate_vqvae(self.study.out / "train-data", c)
        self.calibration += [fit, encode]
        workers = f" x {self.workers} workers" if self.workers > 1 else ""
        assigned = pq.read_metadata(data / "buyers.parquet").num_rows
        early = sum(merchant_counts(data, split["heldout"], "buyers").values()) if cutoff else 0
        return [
            StageRow(
                "fit VQ-VAE",
                f"{buyers:,} buyers x {c.vq_epochs} epochs",
                round(buyers * c.vq_epochs / (fit.per_s * self.workers), 1),
                f"{fit.name}{workers}; its report (k-means baseline, plots) not estimated",
            ),
            StageRow(
                "assign codes",
                f"{assigned:,} buyers" + (f" + <= {early:,} of the earlier window" if cutoff else ""),
                round((assigned + early) / encode.per_s, 1),
                encode.name + ("; the earlier window's prepare not estimated" if cutoff else ""),
            ),
        ]

    def agents(
        self, data: Path, traces: pa.Table
    ) -> tuple[list[AgentPlan], dict[str, Callable], list[StageRow]]:
        """Examples and tokens of each trained agent, its training time, and the simulation policies."""
        from learners.agent.base_models import load_base
        from learners.agent.examples import build_examples
        from learners.agent.llm_policy import LLMPolicy
        from learners.agent.markov_policy import MarkovPolicy
        from learners.agent.prompt import PromptFormat
        from learners.agent.tokens import add_persona_tokens
        from learners.agent.train import AgentTrainConfig, _corpus

        c, needed = self.config, needed_agents(self.config)
        share = AgentTrainConfig.goal_share
        plain = build_examples(traces, None, share, c.seed).examples
        start = time.perf_counter()
        coded = (
            build_examples(traces, coded_buyers(data), share, c.seed).examples
            if needed & {"persona", "markov"}
            else None
        )
        coded_s = time.perf_counter() - start
        fmt = PromptFormat(AgentTrainConfig.history_len, AgentTrainConfig.max_observation_tokens)
        loaded: dict[tuple[str, int], list] = {}
        rates: dict[str, Rate] = {}
        plans: list[AgentPlan] = []
        rows: list[StageRow] = []
        policies: dict[str, Callable] = {}
        workers = f" x {self.workers} workers" if self.workers > 1 else ""
        for key, model_name, examples, epochs in (
            ("persona", c.base_model, coded, c.stage1_epochs + c.stage2_epochs),
            ("no-persona", c.base_model, plain, c.stage2_epochs),
            ("larger", c.larger_model, plain, c.stage2_epochs),
        ):
            if key not in needed:
                continue
            try:
                # A tiny preset's tokenizer is trained on the examples' texts, as training does.
                cache = (model_name, examples.num_rows)
                if cache not in loaded:
                    loaded[cache] = [*load_base(model_name, _corpus(examples), seed=c.seed), None]
                model, tokenizer, tokens = loaded[cache]
                if key == "persona" and tokens is None:
                    tokens = loaded[cache][2] = add_persona_tokens(
                        model, tokenizer, c.codes, None, seed=c.seed
                    )
                tokens = tokens if key == "persona" else None
                counted = count_tokens(examples, tokenizer, tokens, c.seed)
                if model_name not in rates:
                    rates[model_name] = calibrate_training(
                        f"train {model_name}", model, tokenizer, counted.pairs, c.seed
                    )
                    self.calibration.append(rates[model_name])
            except (OSError, ValueError) as err:  # e.g. a hub model that is not available offline
                self.notes.append(f"{key} agent ({model_name}) not sized: {str(err).splitlines()[0]}")
                plans.append(
                    AgentPlan(key, model_name, examples.num_rows, 0, epochs, "not counted", None, None)
                )
                rows.append(
                    StageRow(
                        f"train {key} agent", f"{examples.num_rows:,} examples", None, "model not loaded"
                    )
                )
                continue
            rate = rates[model_name]
            seconds = round(counted.tokens * epochs / (rate.per_s * self.workers), 1)
            plans.append(
                AgentPlan(
                    key,
                    model_name,
                    examples.num_rows,
                    counted.tokens,
                    epochs,
                    counted.counted,
                    rate.name,
                    seconds,
                )
            )
            rows.append(
                StageRow(
                    f"train {key} agent",
                    f"{examples.num_rows:,} examples, {counted.tokens:,} tokens x {epochs} epochs",
                    seconds,
                    f"{rate.name}{workers}; {counted.counted}"
                    + ("; stage 1 at the stage-2 rate" if key == "persona" and c.stage1_epochs else ""),
                )
            )
            policies[key] = LLMPolicy(model, tokenizer, tokens, fmt, temperature=c.temperature).act
        if "markov" in needed:
            start = time.perf_counter()
            policies["markov"] = MarkovPolicy.fit(coded).act
            rows.append(
                StageRow(
                    "fit Markov chain",
                    f"{coded.num_rows:,} examples",
                    round(coded_s + time.perf_counter() - start, 1),
                    "built the examples and fitted it now",
                )
            )
        return plans, policies, rows

    def simulations(
        self, data: Path, split: dict, cutoff: str | None, traces: pa.Table, policies: dict[str, Callable]
    ) -> list[SimPlan]:
        """Visits per system (the simulations' own sizing rule), steps, and time at measured steps/s."""
        from engine.placement import in_runner
        from engine.simulation_config import SimulationConfig, buyers_per_merchant
        from learners.agent.random_policy import RandomPolicy

        c, heldout = self.config, split["heldout"]
        sizing = SimulationConfig(
            data=str(data),
            buyers_per_merchant=c.sessions_per_merchant,
            buyers_per_real_session=c.visits_per_real_session,
        )
        # Strict runs cover the held-out merchants with codes from the earlier window; the others all.
        merchants = {"strict": merchants_before(data, heldout, cutoff) if cutoff else heldout}
        merchants["same-window"] = merchants["shared"] = heldout
        session_keys = pc.binary_join_element_wise(
            traces["merchant_id"], traces["buyer_id"], traces["session_id"], "\x1f"
        )
        replayed = pc.value_counts(session_keys).field("counts").to_numpy()
        policies = policies | {"random": RandomPolicy().act}
        measured: dict[str, tuple[Rate, float | None]] = {}
        plans: list[SimPlan] = []
        jobs = [
            (name, {run: buyers_per_merchant(sizing, merchants[run]) for run in runs}, c.max_steps)
            for name, runs in system_runs(c).items()
        ]
        jobs += [
            (
                name,
                {
                    "goals": {
                        m: c.goal_buyers_per_merchant * c.goal_seeds for m in heldout[: c.goal_merchants]
                    }
                },
                GOAL_MAX_STEPS,
            )
            for name in c.goal_systems
        ]
        for name, per_run, max_steps in jobs:
            system = SYSTEMS[name]
            key = system.agent or system.policy
            runner = in_runner(SimulationConfig(policy=system.policy, policy_placement=c.policy_placement))
            parallel = max(1, min(c.runners, os.cpu_count() or 1)) if runner else 1
            rate_name = f"simulate {key}" + (" agent" if system.policy == "transformers" else "")
            if rate_name not in measured and key in policies:
                rate, per_visit = calibrate_simulation(
                    rate_name, data, heldout, policies[key], c, system.use_persona, runner
                )
                measured[rate_name] = rate, per_visit
                self.calibration.append(rate)
            rate, per_visit = measured.get(rate_name, (None, None))
            if system.policy == "random" and per_visit is not None:
                steps, basis = min(per_visit, max_steps), "measured on the random policy's own visits"
            else:  # the policies fitted to the traces: an untrained stand-in's visits would say nothing
                steps = float(np.minimum(replayed, max_steps).mean()) if len(replayed) else float(max_steps)
                basis = f"the replayed sessions' mean (each capped at {max_steps})"
            visits = {run: sum(counts.values()) for run, counts in per_run.items()}
            sim = SimPlan(
                name,
                system.policy,
                visits,
                round(steps, 2),
                basis,
                sum(visits.values()) * max_steps,
                rate.name if rate else None,
                parallel,
                None,
            )
            if rate:
                sim.seconds = round(sim.steps_expected / (rate.per_s * parallel), 1)
            plans.append(sim)
        return plans

    def simulation_rows(self, simulations: list[SimPlan]) -> list[StageRow]:
        rows = []
        for s in simulations:
            runs = ", ".join(s.visits_per_run)
            basis = "not measured"
            if s.rate:
                where = f" x {s.parallel} runners" if s.parallel > 1 else ""
                basis = f"{s.rate}{where}; {s.steps_per_visit:.1f} steps/visit: {s.steps_per_visit_basis}"
            rows.append(
                StageRow(
                    f"simulate {s.system} ({runs})",
                    f"{s.visits:,} visits, ~{s.steps_expected:,} steps",
                    s.seconds,
                    basis,
                )
            )
        return rows


def plan_study(config: StudyConfig, log: Callable[[str], None] = print) -> StudyPlan:
    """Prepare and split (as the study does), count, calibrate and estimate."""
    return Planner(config, log).plan()


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "not estimated"
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _table(header: Sequence[str], rows: list[Sequence[str]]) -> list[str]:
    """Left-aligned columns separated by `` | ``; the last column is not padded."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header) - 1)]

    def line(row: Sequence[str]) -> str:
        return " | ".join([*(v.ljust(w) for v, w in zip(row, widths, strict=False)), row[-1]]).rstrip()

    return [line(header), "-|-".join("-" * w for w in [*widths, len(header[-1])]), *map(line, rows)]


def format_plan(plan: StudyPlan) -> str:
    """The plan as text: the counts, the calibration, then stage | work | estimated time | from."""
    s = plan.split
    lines = [
        f"merchants: {s.merchants:,} in all, {s.eligible:,} eligible; {s.heldout:,} held out, "
        f"{s.training:,} training ({s.traced:,} of them replayed into traces)",
        f"real sessions: {s.heldout_sessions:,} of the held-out merchants"
        + (f" ({s.strict_sessions:,} from the strict cutoff {s.cutoff[:10]} on)" if s.cutoff else "")
        + f"; {s.replayed_sessions:,} replayed",
        f"replayed steps: {s.replayed_steps:,} = {s.replayed_mapped_events:,} real events (of "
        f"{s.replayed_real_events:,}) + {s.inserted_steps:,} inserted navigation/exit steps, "
        f"{s.replayed_steps / max(s.replayed_mapped_events, 1):.1f}x the events",
    ]
    for a in plan.agents:
        lines.append(
            f"agent {a.key} ({a.base_model}): {a.examples:,} examples, {a.tokens_per_epoch:,} tokens per epoch"
            f" x {a.epochs} epochs = {a.tokens_per_epoch * a.epochs:,} training tokens"
        )
    for sim in plan.simulations:
        runs = ", ".join(f"{run} {n:,}" for run, n in sim.visits_per_run.items())
        lines.append(f"visits of {sim.system}: {sim.visits:,} ({runs}); at most {sim.steps_max:,} steps")
    lines += ["", f"calibration on this machine, one thread each ({plan.calibration_seconds:.0f} s):"]
    lines += [
        f"  {r.name:<28} {r.per_s:>12,.1f} {r.unit}/s  ({r.basis})"
        if r.unit != "commands"
        else f"  {r.name:<28} {1 / r.per_s:>12,.1f} s each  ({r.basis})"
        for r in plan.calibration
    ]
    rows = [
        (r.stage, r.work, _duration(r.seconds) + (", done" if r.done else ""), r.basis) for r in plan.stages
    ]
    rows.append(("total", "", _duration(plan.total_seconds), "the estimated stages still to run"))
    lines += ["", *_table(("stage", "work", "estimated time", "from"), rows)]
    lines += [f"note: {n}" for n in plan.notes]
    return "\n".join(lines)


def write_plan(plan: StudyPlan, out: str | Path) -> Path:
    """OUT/plan.json: the plan's counts, calibration and stages."""
    path = Path(out) / PLAN_FILE
    path.write_text(json.dumps(plan.to_dict(), indent=2) + "\n")
    return path
