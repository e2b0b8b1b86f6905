"""The plan's exact counts from a study's data: real sessions per merchant, the held-out merchants
the strict variant has codes for, the buyers that get a code, the training tokens of an example set,
and which agents and simulation runs the chosen systems need.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from engine.study_config import SYSTEMS, StudyConfig

MAX_COUNTED_EXAMPLES = 50_000
"""Above this many examples, tokens are counted on a seeded sample of this size and scaled up."""


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
