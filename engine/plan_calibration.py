"""The plan's measured rates: how fast this machine runs each kind of a study's work.

Each calibration is short and runs the study's own code on real data: AdamW steps of a base model
(training tokens/s) on as many threads as an agent's Ray Train worker takes CPUs
(learners/worker_cpus.py), and on one thread (the plan sets that), as a Ray worker with one CPU runs,
one VQ-VAE epoch on a subset of the training buyers (buyers/s), a few hundred simulated steps of a
policy on the held-out merchants' storefronts (steps/s), and one tiny Ray command (the fixed cost of
each command).
``engine.study_plan`` scales these rates by its exact counts into a time per stage.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from engine.study_config import StudyConfig

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
    from engine.episode_player import EnvSpec, EpisodePlayer
    from engine.population import SimBuyer, buyer_seed
    from engine.simulation_config import SimulationConfig

    # A policy in the runners plays a chunk lock-step; behind a server a runner's envs form two groups.
    envs, groups = (
        (min(config.simulate.envs_per_runner, SimulationConfig.chunk_size), 1)
        if in_runner
        else (
            config.simulate.envs_per_runner,
            min(2, config.simulate.envs_per_runner),
        )
    )
    buyers = [
        SimBuyer(
            i,
            merchants[i % len(merchants)],
            i % config.personas.codes,
            buyer_seed(config.seed, i),
            config.seed,
        )
        for i in range(SIM_BUYERS)
    ]
    player = EpisodePlayer(
        EnvSpec(kwargs={"data": str(data)}), envs, config.simulate.max_steps, use_persona, groups
    )
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
    from learners.agent.train_loop import TargetLoss, collate

    cfg = AgentTrainConfig()
    rng = np.random.default_rng(seed)
    model.train()
    loss_of = TargetLoss(model)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.stage2_lr)
    least, enough_s, most_s = TRAIN_STEPS
    tokens, timed, seconds, step, warmup = 0, 0, 0.0, 0, WARMUP_STEPS
    begun = time.perf_counter()
    while not timed or (time.perf_counter() - begun < most_s and (timed < least or seconds < enough_s)):
        batch = collate(
            [pairs[i] for i in rng.integers(0, len(pairs), cfg.batch_size)], tokenizer.pad_token_id
        )
        start = time.perf_counter()
        loss = loss_of(batch.input_ids, batch.position_ids, batch.labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
        optimizer.step()
        took = time.perf_counter() - start
        if step == 0 and took > most_s / 4:
            warmup = 1  # a slow model: one untimed step must do
        if step >= warmup:  # the first steps allocate the optimizer state and warm the allocator
            tokens, timed, seconds = tokens + batch.tokens, timed + 1, seconds + took
        step += 1
    model.eval()
    basis = f"{timed} AdamW steps of {cfg.batch_size} real examples, {torch.get_num_threads()} thread(s)"
    return Rate(name, tokens / max(seconds, 1e-9), "tokens", basis, round(seconds, 2))


def calibrate_vqvae(train_data: Path, config: StudyConfig) -> tuple[Rate, Rate, int]:
    """(training buyers/s of one quantised epoch, buyers/s of codebook init + encoding, training buyers)."""
    import torch

    from learners.vqvae.dataset import FeatureStats, load_rows
    from learners.vqvae.fit import WorkerTraining

    vq = replace(config.personas, seed=config.seed)
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
    """What each Ray stage of the study pays besides its work: one tiny simulate stage (random policy,
    8 visits of 5 steps) end to end, in this process as the study runs its stages (a Ray start, its
    runners, the output, a shutdown; no Ray start when Ray is already running here)."""
    import io

    from engine.simulation_config import SimulationConfig
    from engine.stages import simulate

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
        tiny = SimulationConfig(
            out=str(Path(tmp) / "sim"),
            data=str(data),
            distributions=str(distributions),
            policy="random",
            buyers_per_merchant=8,
            max_steps=5,
            runners=config.simulate.runners,
            progress=False,
        )
        start = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            result = simulate(tiny)
        seconds = time.perf_counter() - start
    if not result.complete:
        raise RuntimeError(f"the plan's calibration simulation did not finish: {result.lines()[0]}")
    basis = "one tiny simulate (random policy, 8 visits) end to end in this process"
    return Rate("Ray command", 1 / seconds, "commands", basis, round(seconds, 2))
