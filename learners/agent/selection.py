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
own examples, until the next one would not fit. So every merchant keeps about the same share of its
examples (and tokens), and its kept sessions are a seeded random sample of its sessions (never the
shortest or the first ones, which would bias session length, a fidelity target). Only the sessions in
line are tokenised to count them, so a small budget on a large log is cheap. Agents of one study
given one budget keep the same seeded prefix of every merchant's sessions (up to a session at the
margin: their prompts' token counts differ by the persona token).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable, Sequence
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
    """Whole merchants, in a seeded order, holding at most ``share`` of ``merchants``' entries (one per
    example: a merchant's entries are its size), at least one when ``share`` > 0 (the smallest, if
    none fits), never all of them: none when fewer than two merchants are given. By examples, not by
    merchants: one large merchant drawn as a tenth of the merchants took half the examples."""
    sizes = Counter(merchants)
    if share <= 0 or len(sizes) < 2:
        return []
    if share >= 1:
        raise ValueError(f"validation_share must be below 1, got {share}")
    order = sorted(sizes, key=lambda m: _stable_unit(seed, "validation", m))
    budget, held = share * sum(sizes.values()), []
    for merchant in order:
        if len(held) == len(order) - 1:
            break
        if sum(sizes[m] for m in held) + sizes[merchant] <= budget:
            held.append(merchant)
    return sorted(held or [min(order, key=lambda m: sizes[m])])


def split_validation(examples: pa.Table, share: float, seed: int) -> tuple[pa.Table, pa.Table, list[str]]:
    """(train, validation, validation merchants): whole merchants, see ``validation_merchants``."""
    held = validation_merchants(examples.column("merchant_id").to_pylist(), share, seed)
    in_held = pc.is_in(examples.column("merchant_id"), value_set=pa.array(held, pa.string()))
    return examples.filter(pc.invert(in_held)), examples.filter(in_held), held


TokenCounter = Callable[[np.ndarray], Sequence[int]]
"""Training tokens (prompt + target ids) of the examples at the given row indices."""


@dataclass
class Budget:
    """What a token budget kept (``budget`` of the agent's manifest)."""

    max_tokens: int
    """The budget: training tokens of one epoch."""
    tokens: int
    """Tokens of one epoch over all the examples offered: counted when every session was (the examples
    fit, or nearly), else estimated from the counted sessions' tokens per example (``tokens_counted``)."""
    tokens_counted: bool
    """Whether ``tokens`` was counted (True) or estimated (False)."""
    kept_tokens: int
    """Tokens of one epoch over the examples kept (counted)."""
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
        of = f"{self.tokens:,}" if self.tokens_counted else f"about {self.tokens:,}"
        return (
            f"token budget {self.max_tokens:,}: kept {self.kept_sessions:,} of {self.sessions:,} sessions"
            f" ({self.kept_examples:,} of {self.examples:,} examples, {self.kept_tokens:,} of {of} tokens per"
            f" epoch) of {self.kept_merchants} of {self.merchants} merchants, a seeded, merchant-stratified"
            f" sample (seed {self.seed})"
        )


def session_ids(examples: pa.Table) -> np.ndarray:
    """Each row's session as an index into the table's distinct (merchant, buyer, session) keys, in
    order of first appearance."""
    keys = list(zip(*(examples.column(c).to_pylist() for c in SESSION_KEY), strict=True))
    index: dict[tuple, int] = {}
    return np.array([index.setdefault(k, len(index)) for k in keys], dtype=np.int64)


def budget_order(examples: pa.Table, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(each row's session index, the session indices in the budget's order). Each merchant's sessions
    are put in a seeded order; a session's place is the share of its merchant's examples taken once it
    is in, so taking sessions in this order takes every merchant's at the same pace."""
    sid = session_ids(examples)
    n = int(sid.max()) + 1 if len(sid) else 0
    rows = np.bincount(sid, minlength=n)
    keys: list[tuple] = [()] * n
    for row, k in enumerate(zip(*(examples.column(c).to_pylist() for c in SESSION_KEY), strict=True)):
        keys[sid[row]] = k
    by_merchant: dict[str, list[int]] = {}
    for session, key in enumerate(keys):
        by_merchant.setdefault(key[0], []).append(session)
    draw = np.array([_stable_unit(seed, "budget", *k) for k in keys])
    position = np.zeros(n)
    for sessions in by_merchant.values():
        sessions.sort(key=lambda s: draw[s])
        position[sessions] = np.cumsum(rows[sessions]) / rows[sessions].sum()
    return sid, np.lexsort((draw, position))


def budget_sessions(
    examples: pa.Table,
    tokens: Sequence[int] | TokenCounter,
    max_tokens: int,
    seed: int,
    chunk: int = 256,
) -> tuple[pa.Table, Budget]:
    """The examples of the sessions a ``max_tokens`` budget keeps (module doc), and what it kept.
    ``tokens``: each example's training tokens, or a function that counts them for given rows; then
    only the sessions in line for the budget are counted (``chunk`` sessions at a time), so a budget
    far below the examples' tokens costs little to apply."""
    if max_tokens <= 0:
        raise ValueError(f"max_tokens must be positive, got {max_tokens}")
    if not callable(tokens):
        if len(tokens) != examples.num_rows:
            raise ValueError(f"{len(tokens)} token counts for {examples.num_rows} examples")
        counts = np.asarray(tokens, dtype=np.int64)
        tokens = counts.__getitem__
    sid, order = budget_order(examples, seed)
    rows_of = np.argsort(sid, kind="stable")  # rows grouped by session, in row order within each
    bounds = np.searchsorted(sid[rows_of], np.arange(len(order) + 1))
    keep = np.zeros(len(order), dtype=bool)
    used, counted, counted_rows, full = 0, 0, 0, False
    for start in range(0, len(order), chunk):
        sessions = order[start : start + chunk]
        rows = [rows_of[bounds[s] : bounds[s + 1]] for s in sessions]
        per_row = np.asarray(tokens(np.concatenate(rows)), dtype=np.int64)
        per_session = np.add.reduceat(per_row, np.cumsum([0] + [len(r) for r in rows[:-1]]))
        counted += int(per_row.sum())
        counted_rows += len(per_row)
        for session, n in zip(sessions, per_session, strict=True):
            if used + n > max_tokens:
                full = True
                break
            keep[session] = True
            used += int(n)
        if full:
            break
    row_mask = keep[sid] if len(sid) else np.zeros(0, dtype=bool)
    kept = examples.filter(pa.array(row_mask))
    merchants = examples.column("merchant_id").to_pylist()
    every = counted_rows == examples.num_rows
    budget = Budget(
        max_tokens=int(max_tokens),
        tokens=counted if every else round(counted / max(counted_rows, 1) * examples.num_rows),
        tokens_counted=every,
        kept_tokens=used,
        sessions=len(order),
        kept_sessions=int(keep.sum()),
        examples=examples.num_rows,
        kept_examples=kept.num_rows,
        merchants=len(set(merchants)),
        kept_merchants=len({m for m, r in zip(merchants, row_mask, strict=True) if r}),
        seed=seed,
    )
    return kept, budget


def keep_share(examples: pa.Table, tokens: Sequence[int] | TokenCounter, share: float, seed: int) -> pa.Table:
    """The same seeded, merchant-stratified sample at ``share`` of the examples' tokens (the validation
    set of a budgeted run is cut to the training set's kept share, so scoring it stays a small cost)."""
    if share >= 1 or examples.num_rows == 0:
        return examples
    if callable(tokens):
        tokens = tokens(np.arange(examples.num_rows))
    return budget_sessions(examples, tokens, max(1, int(share * int(np.sum(tokens)))), seed)[0]
