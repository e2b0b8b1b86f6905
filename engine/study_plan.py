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
  worker with one CPU runs, but training on as many as an agent's worker takes CPUs;
- scales the rates by the counts into a time per stage, each naming the measurement it comes from.

What is not measured is marked ``not estimated`` and left out of the total, never guessed.

The measured rates live in ``engine.plan_calibration``, the counting in ``engine.plan_counts``, and the
plan's record with its table and plan.json in ``engine.plan_report``.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from engine.plan_calibration import (
    Rate,
    calibrate_command,
    calibrate_simulation,
    calibrate_training,
    calibrate_vqvae,
)
from engine.plan_counts import (
    coded_buyers,
    count_tokens,
    later_sessions,
    merchant_counts,
    merchants_before,
    needed_agents,
    system_runs,
)
from engine.plan_report import AgentPlan, SimPlan, SplitCounts, StageRow, StudyPlan
from engine.rollout_calibration import round_sizes
from engine.side_by_side import shared_cpus
from engine.study import GOAL_MAX_STEPS, Study
from engine.study_config import SYSTEMS, StudyConfig
from learners.config import config_to_dict


class Planner:
    """Counts and calibrates one study; ``plan()`` returns the StudyPlan."""

    def __init__(self, config: StudyConfig, log: Callable[[str], None] = print) -> None:
        self.config, self.log = config, log
        self.study = Study(config)
        self.calibration: list[Rate] = []
        self.notes: list[str] = []
        # Ray Train workers run at once up to the cores (agents: 0 trains in process, as one).
        self.vq_workers = max(1, min(config.personas.workers, os.cpu_count() or 1))
        self.workers = max(1, min(config.agent.workers, os.cpu_count() or 1))
        # Each agent worker trains on as many threads as it takes CPUs (learners/worker_cpus.py): a
        # share of this machine's, shared with the other agents when they train side by side.
        at_once = len(needed_agents(config) - {"markov"}) if config.agents_side_by_side else 1
        cpus = shared_cpus(max(at_once, 1), config.agent.workers, config.agent.cpus_per_worker)[0]
        self.worker_threads = max(cpus, 1)
        if at_once > 1:
            self.notes.append(
                f"the {at_once} agents train side by side (agents_side_by_side), each on"
                f" {self.worker_threads} thread(s): their training and rollout-calibration rows overlap in"
                " time, and the total counts them one after another (an upper bound)"
            )

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
            replayed = session_lengths(traces)
            simulations = self.simulations(data, split, counts.cutoff, replayed, policies)
            stages += self.simulation_rows(simulations)
            stages += self.rollout_calibration_rows(agents, replayed)
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
        from learners.data.traces import build_traces

        c, heldout = self.config, split["heldout"]
        cutoff = self.study.window(data, split)["cutoff"] if "strict" in c.variants else None
        with tempfile.TemporaryDirectory(prefix="plan-traces-") as tmp:
            config = replace(c.traces, merchants=split["traced"])
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
        workers = f" x {self.vq_workers} workers" if self.vq_workers > 1 else ""
        assigned = pq.read_metadata(data / "buyers.parquet").num_rows
        early = sum(merchant_counts(data, split["heldout"], "buyers").values()) if cutoff else 0
        return [
            StageRow(
                "fit VQ-VAE",
                f"{buyers:,} buyers x {c.personas.epochs} epochs",
                round(buyers * c.personas.epochs / (fit.per_s * self.vq_workers), 1),
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
        import torch

        from learners.agent.base_models import load_base
        from learners.agent.examples import build_examples
        from learners.agent.llm_policy import LLMPolicy
        from learners.agent.markov_policy import MarkovPolicy
        from learners.agent.prompt import PromptFormat
        from learners.agent.tokens import add_persona_tokens
        from learners.agent.train import _corpus

        c, needed = self.config, needed_agents(self.config)
        share = c.agent.goal_share
        plain = build_examples(traces, None, share, c.seed).examples
        start = time.perf_counter()
        coded = (
            build_examples(traces, coded_buyers(data), share, c.seed).examples
            if needed & {"persona", "markov"}
            else None
        )
        coded_s = time.perf_counter() - start
        fmt = PromptFormat(c.agent.history_len, c.agent.max_observation_tokens)
        loaded: dict[tuple[str, int], list] = {}
        rates: dict[str, Rate] = {}
        plans: list[AgentPlan] = []
        rows: list[StageRow] = []
        policies: dict[str, Callable] = {}
        workers = f" x {self.workers} workers" if self.workers > 1 else ""
        for key, model_name, examples, epochs in (
            ("persona", c.agent.base_model, coded, c.agent.stage1_epochs + c.agent.stage2_epochs),
            ("no-persona", c.agent.base_model, plain, c.agent.stage2_epochs),
            ("larger", c.larger_model, plain, c.agent.stage2_epochs),
        ):
            if key not in needed:
                continue
            try:
                # A tiny preset's tokenizer is trained on the examples' texts, as training does.
                cache = (model_name, examples.num_rows)
                if cache not in loaded:
                    base = load_base(
                        model_name, _corpus(examples), seed=c.seed, split_digits=c.agent.split_digits
                    )
                    loaded[cache] = [*base, None]
                model, tokenizer, tokens = loaded[cache]
                if key == "persona" and tokens is None:
                    tokens = loaded[cache][2] = add_persona_tokens(
                        model, tokenizer, c.personas.codes, None, seed=c.seed
                    )
                tokens = tokens if key == "persona" else None
                counted = count_tokens(examples, tokenizer, tokens, c.seed)
                if model_name not in rates:
                    threads = torch.get_num_threads()
                    torch.set_num_threads(self.worker_threads)
                    try:
                        rates[model_name] = calibrate_training(
                            f"train {model_name}", model, tokenizer, counted.pairs, c.seed
                        )
                    finally:
                        torch.set_num_threads(threads)
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
            # A token budget caps each epoch (learners/agent/selection.py); it keeps whole sessions, so
            # an epoch holds up to the budget.
            per_epoch = min(counted.tokens, c.agent.max_tokens or counted.tokens)
            budget = f", {per_epoch:,} per epoch (max_tokens)" if per_epoch < counted.tokens else ""
            seconds = round(per_epoch * epochs / (rate.per_s * self.workers), 1)
            plans.append(
                AgentPlan(
                    key,
                    model_name,
                    examples.num_rows,
                    per_epoch,
                    epochs,
                    counted.counted,
                    rate.name,
                    seconds,
                )
            )
            rows.append(
                StageRow(
                    f"train {key} agent",
                    f"{examples.num_rows:,} examples, {counted.tokens:,} tokens{budget} x {epochs} epochs",
                    seconds,
                    f"{rate.name}{workers}; {counted.counted}"
                    + ("; stage 1 at the stage-2 rate" if key == "persona" and c.agent.stage1_epochs else ""),
                )
            )
            policies[key] = LLMPolicy(model, tokenizer, tokens, fmt, temperature=c.simulate.temperature).act
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
        self, data: Path, split: dict, cutoff: str | None, replayed: np.ndarray, policies: dict[str, Callable]
    ) -> list[SimPlan]:
        """Visits per system (the simulations' own sizing rule), steps, and time at measured steps/s."""
        from engine.placement import in_runner
        from engine.simulation_config import buyers_per_merchant
        from learners.agent.random_policy import RandomPolicy

        c, heldout = self.config, split["heldout"]
        sizing = replace(c.simulate, data=str(data))
        # Strict runs cover the held-out merchants with codes from the earlier window; the others all.
        merchants = {"strict": merchants_before(data, heldout, cutoff) if cutoff else heldout}
        merchants["same-window"] = merchants["shared"] = heldout
        policies = policies | {"random": RandomPolicy().act}
        measured: dict[str, tuple[Rate, float | None]] = {}
        plans: list[SimPlan] = []
        jobs = [
            (name, {run: buyers_per_merchant(sizing, merchants[run]) for run in runs}, c.simulate.max_steps)
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
            runner = in_runner(replace(c.simulate, policy=system.policy))
            parallel = max(1, min(c.simulate.runners, os.cpu_count() or 1)) if runner else 1
            # Agents of one base model share a rate (the persona token adds two prompt tokens).
            model = {
                "persona": c.agent.base_model,
                "no-persona": c.agent.base_model,
                "larger": c.larger_model,
            }
            rate_name = f"simulate {model[key]}" if system.policy == "transformers" else f"simulate {key}"
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
                steps = mean_steps(replayed, max_steps)
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

    def rollout_calibration_rows(self, agents: list[AgentPlan], replayed: np.ndarray) -> list[StageRow]:
        """Each LLM agent's rollout calibration (``agent.calibration_visits``): visits it walks in
        process, one per replayed session up to the cap, in each round its share (``round_sizes``), at
        its simulations' measured rate."""
        c = self.config.agent
        if c.calibration_visits <= 0 or c.calibration_rounds <= 0:
            return []
        steps = mean_steps(replayed, self.config.simulate.max_steps)
        visits = sum(round_sizes(min(c.calibration_visits, len(replayed)), c.calibration_rounds))
        rates = {r.name: r for r in self.calibration}
        rows = []
        for agent in agents:
            rate = rates.get(f"simulate {agent.base_model}")
            rows.append(
                StageRow(
                    f"rollout-calibrate {agent.key} agent",
                    f"{visits:,} visits ({c.calibration_rounds} rounds), ~{round(visits * steps):,} steps",
                    round(visits * steps / rate.per_s, 1) if rate else None,
                    f"{rate.name}, in process; {steps:.1f} steps/visit: the replayed sessions' mean"
                    if rate
                    else "not measured",
                )
            )
        return rows


def session_lengths(traces: pa.Table) -> np.ndarray:
    """Steps of each replayed session in ``traces``."""
    keys = pc.binary_join_element_wise(
        traces["merchant_id"], traces["buyer_id"], traces["session_id"], "\x1f"
    )
    return pc.value_counts(keys).field("counts").to_numpy()


def mean_steps(lengths: np.ndarray, max_steps: int) -> float:
    """Mean steps per visit of sessions of these lengths, each cut at ``max_steps`` as the env cuts a visit."""
    return float(np.minimum(lengths, max_steps).mean()) if len(lengths) else float(max_steps)


def plan_study(config: StudyConfig, log: Callable[[str], None] = print) -> StudyPlan:
    """Prepare and split (as the study does), count, calibrate and estimate."""
    return Planner(config, log).plan()
