"""Which examples an agent trains and validates on: validation merchants and the token budget.

Validation (``validation_merchants``): a seeded share of the training merchants, whole merchants,
is held out of training and scored after every epoch (train_loop.py's early stopping). A validation
merchant is a store the agent has not trained on, as a study's held-out merchants are, so its loss
measures what the study asks of the agent: shopping like real buyers on a store it has never seen.
The split draws from the merchants of the examples it is given: in a study, the training merchants
only (the study's held-out merchants are not in the traces at all).

Token budget (``budget_sessions``): training tokens of one epoch (prompt + target ids of every
example, exactly as the training loop counts them). When the examples hold more, whole sessions are
kept (a session's goal-shown copies with it), stratified by merchant: each merchant's sessions are put
in a seeded order, and sessions are taken from every merchant alike, each at the same share of its
own tokens, until the budget is full. So every merchant keeps about the same share of its tokens, and
its kept sessions are a seeded random sample of its sessions (never the shortest or the first ones,
which would bias session length, a fidelity target). Agents of one study given one budget keep the
same seeded prefix of every merchant's sessions (up to a session at the margin, where their prompts'
token counts differ by the persona token).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

SESSION_KEY = ("merchant_id", "buyer_id", "session_id")


def _stable_unit(*parts: object) -> float:
    """A number in [0, 1) fixed by ``parts`` (independent of PYTHONHASHSEED and row order)."""
    digest = hashlib.sha1("\x1f".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def validation_merchants(merchants: Sequence[str], share: float, seed: int) -> list[str]:
    """A seeded ``share`` of ``merchants`` (rounded, at least one when ``share`` > 0), never all of
    them: none when fewer than two merchants are given."""
    unique = sorted(set(merchants))
    if share <= 0 or len(unique) < 2:
        return []
    if share >= 1:
        raise ValueError(f"validation_share must be below 1, got {share}")
    count = min(len(unique) - 1, max(1, round(share * len(unique))))
    return sorted(unique, key=lambda m: _stable_unit(seed, "validation", m))[:count]


def split_validation(examples: pa.Table, share: float, seed: int) -> tuple[pa.Table, pa.Table, list[str]]:
    """(train, validation, validation merchants): whole merchants, see ``validation_merchants``."""
    held = validation_merchants(examples.column("merchant_id").to_pylist(), share, seed)
    in_held = pc.is_in(examples.column("merchant_id"), value_set=pa.array(held, pa.string()))
    return examples.filter(pc.invert(in_held)), examples.filter(in_held), held


@dataclass
class Budget:
    """What a token budget kept (``rows.budget`` of the agent's manifest)."""

    max_tokens: int
    """The budget: training tokens of one epoch."""
    tokens: int
    """Tokens of one epoch over all the examples offered."""
    kept_tokens: int
    """Tokens of one epoch over the examples kept."""
    sessions: int
    kept_sessions: int
    examples: int
    kept_examples: int
    merchants: int
    """Merchants offered."""
    kept_merchants: int
    """Merchants with at least one kept session."""
    seed: int

    @property
    def applied(self) -> bool:
        return self.kept_examples < self.examples

    def to_dict(self) -> dict:
        return asdict(self) | {"applied": self.applied}

    def line(self) -> str:
        if not self.applied:
            return (
                f"token budget {self.max_tokens:,}: all {self.examples:,} examples fit ({self.tokens:,} tokens"
                " per epoch)"
            )
        return (
            f"token budget {self.max_tokens:,}: kept {self.kept_sessions:,} of {self.sessions:,} sessions"
            f" ({self.kept_examples:,} of {self.examples:,} examples, {self.kept_tokens:,} of"
            f" {self.tokens:,} tokens per epoch) of {self.kept_merchants} of {self.merchants} merchants,"
            f" a seeded, merchant-stratified sample (seed {self.seed})"
        )


def session_ids(examples: pa.Table) -> np.ndarray:
    """Each row's session as an index into the table's distinct (merchant, buyer, session) keys, in
    order of first appearance."""
    keys = list(zip(*(examples.column(c).to_pylist() for c in SESSION_KEY), strict=True))
    index: dict[tuple, int] = {}
    return np.array([index.setdefault(k, len(index)) for k in keys], dtype=np.int64)


def budget_order(
    examples: pa.Table, tokens: Sequence[int], seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(each row's session index, each session's tokens, the session indices in the budget's order):
    sessions ranked by the share of their merchant's tokens taken once they are in, each merchant's
    sessions in a seeded order."""
    sid = session_ids(examples)
    n = int(sid.max()) + 1 if len(sid) else 0
    per_session = np.bincount(sid, weights=np.asarray(tokens, dtype=np.float64), minlength=n).astype(np.int64)
    keys: list[tuple] = [None] * n  # type: ignore[list-item]
    for row, k in enumerate(zip(*(examples.column(c).to_pylist() for c in SESSION_KEY), strict=True)):
        keys[sid[row]] = k
    by_merchant: dict[str, list[int]] = {}
    for s, key in enumerate(keys):
        by_merchant.setdefault(key[0], []).append(s)
    position = np.zeros(n)
    draw = np.array([_stable_unit(seed, "budget", *k) for k in keys])
    for sessions in by_merchant.values():
        sessions.sort(key=lambda s: draw[s])
        total = max(int(per_session[sessions].sum()), 1)
        position[sessions] = np.cumsum(per_session[sessions]) / total
    order = np.lexsort((draw, position))
    return sid, per_session, order


def budget_sessions(
    examples: pa.Table, tokens: Sequence[int], max_tokens: int, seed: int
) -> tuple[pa.Table, Budget]:
    """The examples of the sessions a ``max_tokens`` budget keeps (module doc), and what it kept.
    ``tokens``: each example's training tokens (prompt + target ids)."""
    if max_tokens <= 0:
        raise ValueError(f"max_tokens must be positive, got {max_tokens}")
    if len(tokens) != examples.num_rows:
        raise ValueError(f"{len(tokens)} token counts for {examples.num_rows} examples")
    sid, per_session, order = budget_order(examples, tokens, seed)
    total = int(per_session.sum())
    keep = np.zeros(len(per_session), dtype=bool)
    if total <= max_tokens:
        keep[:] = True
    else:
        cumulative = np.cumsum(per_session[order])
        keep[order[: int(np.searchsorted(cumulative, max_tokens, side="right"))]] = True
    rows = keep[sid] if len(sid) else np.zeros(0, dtype=bool)
    kept = examples.filter(pa.array(rows))
    merchants = examples.column("merchant_id").to_pylist()
    budget = Budget(
        max_tokens=int(max_tokens),
        tokens=total,
        kept_tokens=int(per_session[keep].sum()),
        sessions=len(per_session),
        kept_sessions=int(keep.sum()),
        examples=examples.num_rows,
        kept_examples=kept.num_rows,
        merchants=len(set(merchants)),
        kept_merchants=len({m for m, r in zip(merchants, rows, strict=True) if r}),
        seed=seed,
    )
    return kept, budget


def keep_share(examples: pa.Table, tokens: Sequence[int], share: float, seed: int) -> pa.Table:
    """The same seeded, merchant-stratified sample at ``share`` of the tokens (the validation set of a
    budgeted run is cut to the training set's kept share, so scoring it stays a small cost)."""
    if share >= 1 or examples.num_rows == 0:
        return examples
    total = int(np.sum(tokens))
    return budget_sessions(examples, tokens, max(1, int(share * total)), seed)[0]
