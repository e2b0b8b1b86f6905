"""Per-action-kind score biases that carry an agent's action rates to stores it has never seen.

A trained agent's choices are calibrated on the stores it trained on and drift on new ones. Measured
on the brand log (issue 15; tiny persona agent, 3,000 goal-free rows each): on its training brands'
real pages its mean probability of ``checkout`` on a product page is 0.030 against a real rate of
0.029; on the held-out brands' real pages, 0.022 against 0.037, and ``exit`` 0.35 against 0.30. Pages
of a new store (ids the model never saw) pull it toward leaving, and its simulated conversion was
4.0% against 5.5% real, while the Markov chain, which never reads a page, matched it.

The validation merchants are such stores: the agent never trained on them. So after training, one
bias per action kind is fitted on their goal-free rows by maximum likelihood of the kinds the real
buyers took (L-BFGS; a small ridge keeps kinds they never took finite and fixes the shared offset).
At the optimum the kinds' mean probabilities on those rows equal their real shares. Scoring adds the
bias of an action's kind to its score (scoring.py's ``action_scores``), so both backends apply it;
they read it from the agent's ``calibration.json``. A kind-wide bias keeps every ranking within a
kind: which product a buyer opens is still the model's choice. Goal tasks are left uncalibrated: the
rows are goal-free, and a buyer told what to buy does not shop at a store's free rates.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from scipy.optimize import minimize

from learners.agent.actions import action_kind
from learners.agent.offline_eval import ScoringPolicy, requests_for
from learners.agent.scoring import CALIBRATION_FILE

RIDGE = 1e-3
"""L2 weight on the biases (per row-averaged log-likelihood): small next to any kind the rows show."""


@dataclass
class KindCalibration:
    """The fitted biases and what they changed on the rows they were fitted on."""

    bias: dict[str, float]
    """Added to the score of every action of the kind."""
    rows: int
    """Goal-free validation rows fitted on."""
    merchants: int
    """Merchants those rows come from (none of them trained on)."""
    real: dict[str, float]
    """Share of the rows whose real action is of each kind."""
    before: dict[str, float]
    """The agent's mean probability of each kind on the rows, without biases."""
    after: dict[str, float]
    """The same with the biases."""

    def line(self) -> str:
        """One console line: the kinds whose rate moved most."""
        moved = sorted(self.real, key=lambda k: -abs(self.after[k] - self.before[k]))[:3]
        parts = ", ".join(
            f"{k} {self.before[k]:.3f} -> {self.after[k]:.3f} (real {self.real[k]:.3f})" for k in moved
        )
        return f"calibrated on {self.rows:,} goal-free rows of {self.merchants} validation merchants: {parts}"

    def save(self, agent_dir: str | Path) -> None:
        (Path(agent_dir) / CALIBRATION_FILE).write_text(json.dumps(asdict(self), indent=1) + "\n")


def kind_rates(
    scores: Sequence[np.ndarray], kinds: Sequence[Sequence[str]], bias: Mapping[str, float]
) -> dict[str, float]:
    """Mean probability of each kind over the rows (softmax of scores plus the kinds' biases)."""
    total: dict[str, float] = {}
    for row, names in zip(scores, kinds, strict=True):
        z = np.asarray(row, dtype=np.float64) + np.array([bias.get(k, 0.0) for k in names])
        p = np.exp(z - z.max())
        p /= p.sum()
        for k, value in zip(names, p, strict=True):
            total[k] = total.get(k, 0.0) + float(value)
    return {k: v / len(scores) for k, v in total.items()}


def fit_share_bias(
    scores: Sequence[np.ndarray], kinds: Sequence[np.ndarray], target: np.ndarray, ridge: float = RIDGE
) -> np.ndarray:
    """Per-kind biases whose mean softmax probabilities over the rows equal ``target`` (kinds indexed
    0..len(target)-1; ``kinds[i]`` holds row i's actions' kind indices): the minimum of the mean
    logsumexp of the biased scores less target·bias, convex, whose gradient is the shares' gap. With
    ``target`` the shares of the rows' chosen kinds it is their maximum likelihood (``fit_kind_bias``)."""
    n, size = len(scores), len(target)
    width = max(len(s) for s in scores)
    z0 = np.full((n, width), -np.inf)
    kind = np.zeros((n, width), dtype=np.int64)
    for i, (row, row_kinds) in enumerate(zip(scores, kinds, strict=True)):
        z0[i, : len(row)] = row
        kind[i, : len(row)] = row_kinds
    present = np.isfinite(z0)
    flat = (np.arange(n)[:, None] * size + kind)[present]

    def objective(b: np.ndarray) -> tuple[float, np.ndarray]:
        z = np.where(present, z0 + b[kind], -np.inf)
        top = z.max(1, keepdims=True)
        p = np.where(present, np.exp(z - top), 0.0)
        total = p.sum(1, keepdims=True)
        p /= total
        value = float((top + np.log(total)).mean()) - float(target @ b) + ridge / 2 * float(b @ b)
        share = np.bincount(flat, weights=p[present], minlength=n * size).reshape(n, size).mean(0)
        return value, share - target + ridge * b

    return minimize(objective, np.zeros(size), jac=True, method="L-BFGS-B").x


def fit_kind_bias(
    scores: Sequence[np.ndarray], kinds: Sequence[Sequence[str]], chosen: Sequence[str], ridge: float = RIDGE
) -> dict[str, float]:
    """Biases maximising the mean log-probability of each row's ``chosen`` kind (module doc);
    ``scores[i]`` and ``kinds[i]`` are row i's valid actions' scores and kinds."""
    names = sorted({k for row in kinds for k in row})
    index = {k: i for i, k in enumerate(names)}
    coded = [np.array([index[k] for k in row]) for row in kinds]
    taken = [index.get(c, -1) for c in chosen]
    # A row whose real kind its page does not offer says nothing here.
    keep = [i for i, (row, c) in enumerate(zip(coded, taken, strict=True)) if c in row]
    if not keep:
        return {}
    target = np.bincount([taken[i] for i in keep], minlength=len(names)) / len(keep)
    found = fit_share_bias([scores[i] for i in keep], [coded[i] for i in keep], target, ridge)
    return {k: round(float(v), 6) for k, v in zip(names, found, strict=True)}


def calibration_rows(examples: pa.Table, max_rows: int, seed: int = 0) -> pa.Table:
    """Up to ``max_rows`` goal-free rows of ``examples`` (an agent's validation examples), a seeded
    sample in their order when there are more."""
    free = examples.filter(pc.is_null(examples["goal"]))
    if free.num_rows <= max_rows:
        return free
    return free.take(np.sort(np.random.default_rng(seed).choice(free.num_rows, max_rows, replace=False)))


def calibrate(policy: ScoringPolicy, rows: pa.Table) -> KindCalibration:
    """Fit kind biases for ``policy`` (scoring without biases) on ``rows`` (``calibration_rows``)."""
    if rows.num_rows == 0:
        raise ValueError("calibration needs goal-free validation rows; there are none")
    requests = requests_for(rows, "true")
    scores: list[np.ndarray] = []
    for start in range(0, len(requests), 64):
        scores += policy.score(requests[start : start + 64])
    kinds = [[action_kind(a) for a in r.valid_actions] for r in requests]
    chosen = [action_kind(a) for a in rows.column("action").to_pylist()]
    bias = fit_kind_bias(scores, kinds, chosen)
    real = {k: chosen.count(k) / len(chosen) for k in sorted(set(chosen))}
    before, after = kind_rates(scores, kinds, {}), kind_rates(scores, kinds, bias)
    return KindCalibration(
        bias=bias,
        rows=rows.num_rows,
        merchants=len(set(rows.column("merchant_id").to_pylist())),
        real=real,
        before={k: before.get(k, 0.0) for k in real},
        after={k: after.get(k, 0.0) for k in real},
    )
