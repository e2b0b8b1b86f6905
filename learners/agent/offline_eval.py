"""Offline evaluation of policies on held-out real traces (held-out buyers and held-out merchants).

Per policy and split: next-action accuracy (exact action text), macro-F1 over action kinds, the
Jensen-Shannon divergence between each persona type's predicted and real action-kind distributions
(weighted by the type's steps; the type is the buyer's real code, also for policies that never see
it), and the invalid-action rate (share of answers the page does not offer: 0 by construction for
scoring policies, the paper's "browser crashes" for free generation).

A policy is evaluated with the buyers' true codes, with mismatched codes (each replaced by a
different code, uniformly; the paper's mismatched-persona baseline), or without codes.

``funnel_calibration``: a scoring policy's mean probability of each purchase-funnel step (``go to
cart`` after ``add to cart``, ``checkout`` after ``go to cart``, ``place order`` after
``checkout``) against the real rate, on goal-free and goal-shown rows apart. No sampling, so it tells
agents apart with far less noise than simulated conversion, and a goal-free rate pulled toward the
goal-shown one is the goal copies leaking into free shopping (issue 15: the demo study's tiny persona
agent gave ``go to cart`` 0.70 after ``add to cart`` on its goal-free training rows, whose rate is
0.47; 0.84 on its goal-shown rows, rate 0.85).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import pyarrow as pa
from scipy.spatial.distance import jensenshannon
from sklearn.metrics import f1_score

from learners.agent.actions import ACTION_KINDS, action_kind, is_offered
from learners.agent.policy import ActRequest, Policy

PERSONA_MODES = ("true", "mismatched", "none")


@dataclass
class PolicySpec:
    """A policy to evaluate and which persona codes its requests carry."""

    name: str
    policy: Policy
    personas: str = "true"
    """``true`` (the buyer's code), ``mismatched`` (a different code) or ``none``."""


@dataclass
class EvalRow:
    """The metrics of one policy on one split."""

    policy: str
    split: str
    steps: int
    accuracy: float
    macro_f1: float
    kind_js: float
    invalid_rate: float


def mismatched(codes: Sequence[int | None], num_codes: int, seed: int = 0) -> list[int | None]:
    """Each code replaced by a different one, uniformly (codes stay None where they were None)."""
    if num_codes < 2:
        raise ValueError("mismatched personas need a codebook of at least 2 codes")
    rng = np.random.default_rng(seed)
    shifts = rng.integers(1, num_codes, size=len(codes))
    return [None if c is None else int((c + s) % num_codes) for c, s in zip(codes, shifts, strict=True)]


def requests_for(
    examples: pa.Table, personas: str, num_codes: int | None = None, seed: int = 0
) -> list[ActRequest]:
    """One request per example row; request seeds are ``seed + row``."""
    if personas not in PERSONA_MODES:
        raise ValueError(f"personas must be one of {PERSONA_MODES}, got {personas!r}")
    codes = examples.column("code").to_pylist()
    if personas == "none":
        codes = [None] * len(codes)
    elif personas == "mismatched":
        codes = mismatched(codes, num_codes or (max(c for c in codes if c is not None) + 1), seed)
    cols = [examples.column(c).to_pylist() for c in ("observation", "valid_actions", "goal", "history")]
    return [
        ActRequest(obs, tuple(valid or ()), code, goal, tuple(history), seed + i)
        for i, (obs, valid, goal, history, code) in enumerate(zip(*cols, codes, strict=True))
    ]


def kind_divergence(real: Sequence[str], predicted: Sequence[str], groups: Sequence[object]) -> float:
    """Step-weighted mean over groups of the Jensen-Shannon divergence (base 2, in [0, 1]) between the
    real and predicted action-kind distributions of the group."""
    total, weighted = 0, 0.0
    for group in set(groups):
        idx = [i for i, g in enumerate(groups) if g == group]
        r = Counter(real[i] for i in idx)
        p = Counter(predicted[i] for i in idx)
        a = np.array([r[k] for k in ACTION_KINDS], dtype=float)
        b = np.array([p[k] for k in ACTION_KINDS], dtype=float)
        weighted += len(idx) * float(jensenshannon(a / a.sum(), b / b.sum(), base=2) ** 2)
        total += len(idx)
    return weighted / total if total else float("nan")


def evaluate(
    spec: PolicySpec,
    examples: pa.Table,
    split: str,
    batch_size: int = 64,
    seed: int = 0,
    num_codes: int | None = None,
) -> EvalRow:
    """Run ``spec.policy`` over every example of a split, ``batch_size`` requests per ``act`` call."""
    requests = requests_for(examples, spec.personas, num_codes, seed)
    answers: list[str] = []
    for start in range(0, len(requests), batch_size):
        answers += [r.action for r in spec.policy.act(requests[start : start + batch_size])]
    real = examples.column("action").to_pylist()
    real_kinds = [action_kind(a) for a in real]
    kinds = [action_kind(a) for a in answers]
    labels = sorted(set(real_kinds) | set(kinds))
    n = len(real)
    return EvalRow(
        policy=spec.name,
        split=split,
        steps=n,
        accuracy=sum(a == b for a, b in zip(answers, real, strict=True)) / n if n else float("nan"),
        macro_f1=float(f1_score(real_kinds, kinds, labels=labels, average="macro", zero_division=0))
        if n
        else float("nan"),
        kind_js=kind_divergence(real_kinds, kinds, examples.column("code").to_pylist()),
        invalid_rate=sum(not is_offered(a, r.valid_actions) for a, r in zip(answers, requests, strict=True))
        / n
        if n
        else float("nan"),
    )


def evaluate_all(
    specs: Sequence[PolicySpec],
    splits: dict[str, pa.Table],
    batch_size: int = 64,
    seed: int = 0,
    num_codes: int | None = None,
) -> list[EvalRow]:
    """Every policy on every split."""
    return [
        evaluate(s, table, split, batch_size, seed, num_codes)
        for split, table in splits.items()
        for s in specs
    ]


FUNNEL = (("add to cart", "go to cart"), ("go to cart", "checkout"), ("checkout", "place order"))
"""Purchase-funnel steps: (the previous action, the next action) whose rate ``funnel_calibration`` checks."""


class ScoringPolicy(Protocol):
    """A policy that scores every valid action of a request (LLMPolicy's ``score``)."""

    def score(self, requests: Sequence[ActRequest]) -> list[np.ndarray]: ...


@dataclass
class FunnelRow:
    """One funnel step on goal-free or goal-shown rows: the real rate and the policy's mean probability."""

    after: str
    """The previous action (the history's last)."""
    action: str
    """The funnel's next action."""
    goal_shown: bool
    rows: int
    """Rows whose previous action is ``after`` and that offer ``action``."""
    real: float
    """Share of those rows whose action is ``action``."""
    model: float
    """The policy's mean probability of ``action`` on them (softmax of its scores)."""


def funnel_calibration(
    policy: ScoringPolicy,
    examples: pa.Table,
    batch_size: int = 64,
    funnel: Sequence[tuple[str, str]] = FUNNEL,
) -> list[FunnelRow]:
    """Per funnel step and goal-free / goal-shown rows (module doc), the real rate and the policy's
    mean probability; steps without rows are left out."""
    requests = requests_for(examples, "true")
    actions = examples.column("action").to_pylist()
    out: list[FunnelRow] = []
    for after, action in funnel:
        for goal_shown in (False, True):
            idx = [
                i
                for i, r in enumerate(requests)
                if r.history
                and r.history[-1] == after
                and (r.goal is not None) == goal_shown
                and action in r.valid_actions
            ]
            if not idx:
                continue
            probs: list[float] = []
            for start in range(0, len(idx), batch_size):
                batch = [requests[i] for i in idx[start : start + batch_size]]
                for request, scores in zip(batch, policy.score(batch), strict=True):
                    z = np.asarray(scores, dtype=np.float64)
                    p = np.exp(z - z.max())
                    probs.append(float(p[request.valid_actions.index(action)] / p.sum()))
            real = sum(actions[i] == action for i in idx) / len(idx)
            out.append(FunnelRow(after, action, goal_shown, len(idx), real, float(np.mean(probs))))
    return out


def markdown_table(rows: Sequence[EvalRow]) -> str:
    """The rows as a Markdown table (higher accuracy/F1 is better; lower JS and invalid rate)."""
    lines = [
        "| split | policy | steps | next-action acc. | kind macro-F1 | per-type kind JS | invalid rate |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r.split} | {r.policy} | {r.steps} | {r.accuracy:.3f} | {r.macro_f1:.3f} | {r.kind_js:.3f} | {r.invalid_rate:.3f} |"
        )
    return "\n".join(lines) + "\n"
