"""What an agent trains on: validation merchants are whole merchants drawn with a seed, and a token
budget keeps a seeded, merchant-stratified sample of whole sessions that fits, and says so."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from learners.agent.selection import budget_sessions, keep_share, split_validation, validation_merchants
from learners.agent.train import AgentTrainConfig, train_agent

from .conftest import make_traces


def _examples(merchants: dict[str, int], seed: int = 0) -> tuple[pa.Table, list[int]]:
    """Example rows of ``n`` sessions per merchant, 1-6 rows each, and a token count per row."""
    rng = np.random.default_rng(seed)
    rows: dict[str, list] = {"merchant_id": [], "buyer_id": [], "session_id": []}
    tokens: list[int] = []
    for merchant, sessions in merchants.items():
        for s in range(sessions):
            for _ in range(int(rng.integers(1, 7))):
                rows["merchant_id"].append(merchant)
                rows["buyer_id"].append(f"b{s % 3}")
                rows["session_id"].append(f"s{s}")
                tokens.append(int(rng.integers(50, 400)))
    return pa.table(rows), tokens


def _sessions(table: pa.Table) -> set[tuple]:
    return set(zip(*(table[c].to_pylist() for c in ("merchant_id", "buyer_id", "session_id")), strict=True))


def test_budget_keeps_whole_sessions_stratified_by_merchant_and_counts_them():
    merchants = {"a": 40, "b": 10, "c": 25, "d": 3}
    table, tokens = _examples(merchants)
    total = sum(tokens)
    counted: list[int] = []

    def count(rows):
        counted.extend(rows.tolist())
        return [tokens[i] for i in rows]

    kept, budget = budget_sessions(table, count, total // 3, seed=7, chunk=4)

    # Counted: the report matches what was kept, and the kept tokens fit the budget.
    mask = _row_mask(table, kept)
    kept_tokens = sum(t for t, keep in zip(tokens, mask, strict=True) if keep)
    assert budget.kept_tokens == kept_tokens <= budget.max_tokens == total // 3
    assert budget.applied and not budget.tokens_counted and abs(budget.tokens - total) < 0.2 * total
    assert (budget.examples, budget.kept_examples) == (table.num_rows, kept.num_rows)
    assert (budget.sessions, budget.kept_sessions) == (len(_sessions(table)), len(_sessions(kept)))
    assert budget.merchants == 4 and budget.kept_merchants == len(set(kept["merchant_id"].to_pylist()))
    assert f"kept {budget.kept_sessions:,} of {budget.sessions:,} sessions" in budget.line()
    # Only the sessions in line were tokenised (a chunk of 4 sessions past the budget at most).
    assert set(counted) >= {i for i, keep in enumerate(mask) if keep}
    assert len(counted) == len(set(counted)) < table.num_rows / 2
    # The budget is nearly used: the next session in line would not have fitted.
    assert kept_tokens > total // 3 - 6 * 400

    # Whole sessions: a kept session keeps every one of its rows.
    rows_per_session, kept_per_session = Counter(_keys(table)), Counter(_keys(kept))
    assert all(kept_per_session[k] == rows_per_session[k] for k in kept_per_session)

    # Stratified: every merchant keeps the same share of its examples, within one session's rows.
    rows, kept_rows, largest = Counter(), Counter(), Counter()
    for m, s in rows_per_session:
        rows[m] += rows_per_session[m, s]
        kept_rows[m] += kept_per_session[m, s]
        largest[m] = max(largest[m], rows_per_session[m, s])
    share = kept.num_rows / table.num_rows
    for m in merchants:
        assert abs(kept_rows[m] - share * rows[m]) <= largest[m], m

    # Seeded: the same seed keeps the same sessions, another seed others; each merchant's kept
    # sessions are a random sample, not its first ones. Counting all tokens up front keeps the same.
    again, _ = budget_sessions(table, tokens, total // 3, seed=7)
    other, _ = budget_sessions(table, tokens, total // 3, seed=8)
    assert _sessions(again) == _sessions(kept) and _sessions(other) != _sessions(kept)
    kept_a = sorted(int(s[1:]) for m, s in kept_per_session if m == "a")
    assert kept_a != list(range(len(kept_a)))


def test_a_budget_the_examples_fit_keeps_them_all():
    table, tokens = _examples({"a": 5, "b": 5})
    kept, budget = budget_sessions(table, tokens, sum(tokens), seed=0)
    assert kept.equals(table) and not budget.applied and "all" in budget.line()
    assert budget.tokens_counted and budget.tokens == budget.kept_tokens == sum(tokens)
    assert keep_share(table, tokens, 1.0, seed=0).equals(table)
    with pytest.raises(ValueError, match="positive"):
        budget_sessions(table, tokens, 0, seed=0)


def _keys(table: pa.Table) -> list[tuple]:
    """(merchant, session) per row (a session id is unique within its merchant here)."""
    return list(zip(table["merchant_id"].to_pylist(), table["session_id"].to_pylist(), strict=True))


def _row_mask(table: pa.Table, kept: pa.Table) -> list[int]:
    sessions = set(_keys(kept))
    return [int(k in sessions) for k in _keys(table)]


def test_validation_merchants_are_whole_seeded_and_never_all():
    merchants = [f"m{i}" for i in range(20)]
    drawn = validation_merchants(merchants, 0.1, seed=0)
    assert len(drawn) == 2 and drawn == validation_merchants(list(reversed(merchants)), 0.1, seed=0)
    assert drawn != validation_merchants(merchants, 0.1, seed=1)
    assert len(validation_merchants(merchants[:3], 0.01, seed=0)) == 1  # at least one when asked
    assert len(validation_merchants(merchants[:2], 0.9, seed=0)) == 1  # never every merchant
    assert validation_merchants(merchants[:1], 0.5, seed=0) == []
    assert validation_merchants(merchants, 0.0, seed=0) == []
    table, _ = _examples({m: 2 for m in merchants[:5]})
    train, validation, held = split_validation(table, 0.4, seed=3)
    assert len(held) == 2 and set(validation["merchant_id"].to_pylist()) == set(held)
    assert not set(train["merchant_id"].to_pylist()) & set(held)
    assert train.num_rows + validation.num_rows == table.num_rows


def test_validation_takes_its_share_of_the_examples_not_of_the_merchants():
    """Trivago by platform: one merchant with half the examples must not be a tenth's validation."""
    sizes = {"big": 500, **{f"m{i}": 25 for i in range(20)}}
    merchants = [m for m, n in sizes.items() for _ in range(n)]
    for seed in range(5):
        held = validation_merchants(merchants, 0.1, seed=seed)
        assert "big" not in held and 1 <= len(held) <= 4
        assert sum(sizes[m] for m in held) <= 0.1 * len(merchants)
    # Where no merchant fits the share, the smallest is the one held out.
    assert validation_merchants(["a"] * 10 + ["b"] * 6 + ["c"] * 8, 0.1, seed=0) == ["b"]


def test_train_agent_applies_and_reports_the_token_budget(tmp_path):
    traces, codes = make_traces(merchants=("m1", "m2", "m3"), buyers=4, sessions=2, seed=1)
    config = AgentTrainConfig(
        workers=0, stage1_epochs=0, stage2_epochs=1, batch_size=8, max_observation_tokens=96, log_every=100
    )
    full = train_agent(config, traces, codes, tmp_path / "full", log=lambda _: None)
    budget_tokens = full.epochs[0]["tokens"] // 2
    lines: list[str] = []
    cut = train_agent(
        AgentTrainConfig(**{**config.__dict__, "max_tokens": budget_tokens}),
        traces,
        codes,
        tmp_path / "cut",
        log=lines.append,
    )
    budget = json.loads((tmp_path / "cut" / "manifest.json").read_text())["budget"]
    assert budget["applied"] and budget["max_tokens"] == budget_tokens
    assert abs(budget["tokens"] - full.epochs[0]["tokens"]) < 0.2 * full.epochs[0]["tokens"]  # estimated
    assert cut.epochs[0]["tokens"] == budget["kept_tokens"] <= budget_tokens
    assert cut.examples == budget["kept_examples"] < full.examples
    assert budget["kept_merchants"] == 3  # every merchant keeps some of its sessions
    assert any(line.startswith(f"token budget {budget_tokens:,}: kept") for line in lines)
    kept = pq.read_table(tmp_path / "cut" / "data" / "train.parquet")
    assert len(_sessions(kept)) == budget["kept_sessions"]
