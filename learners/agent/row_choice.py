"""Which of a listing's rows each buyer type opens: by its place, its badge and its price, from the logs.

The agent decides *whether* to open a product from the page (scoring.py's two-level rule keeps the
``open product`` template's mass), but *which* row it opens it decides by the rows' id tokens, which
no model can predict on a store it never saw. Measured on the truth benchmark's held-out-merchant
validation pages (RESULTS.md, session 21), the trained tiny agent's choice among a category page's
rows followed neither their place nor their badge: whatever the buyer's code, it put 13-78% of its
mass on the eighth row, where the real buyers of a position-driven code opened an unbadged first row
on 51% of the pages that showed one and the decisive buyers' code a ``bestseller`` row in 85% of its
opens (about 40% of rows are). Its ranking was 5.6 nats per choice worse than picking a row at
random (benchmarks/row_choice.py), and the products the simulated buyers opened diverged from the real
buyers' views by 0.74 (Jensen-Shannon; 0.33 with the fit below, 0.12 between two halves of the real
buyers).

So after training, each persona code's choice among a page's rows is fitted on the logs as a
conditional logit over the rows of the page (McFadden), on three features (scoring.py's
``ROW_FEATURES``): whether the row carries the ``bestseller`` badge, the log of its place on the page,
and the log of its price over the page's median row price. Every goal-free page whose logged action
opened one of two or more listed rows is a choice, of the training and validation merchants (whole
buyers, before any token budget's cut). The model is not in the fit: this replaces, not corrects,
its ranking of the rows, so what it memorised of the training stores' ids does not count as an answer.

- **Shrunk across codes.** The pooled fit over every code is the reference; each code's coefficients
  are its own fit, pulled toward the pooled ones per feature by price_response.py's empirical-Bayes
  ``shrink`` on (code − pooled) with the code's standard error (clustered over its buyers, a
  buyer's choices are not independent), so a code with a few buyers chooses as the pool does.
- **Served within the template.** On a goal-free listing, scoring.py's ``action_scores`` gives the
  listed rows' ``open product`` actions the template's total mass times the code's logit shares, so
  both backends serve it and how often a buyer opens a product is the model's, unchanged. Goal tasks
  keep the model's ranking (the goal's rows are marked, and the model learns to open them).
- **Every code is served a fit.** A code that opened no listed row in training (a small code, or one
  drawn for a mismatched population) is served the pooled fit, not the model's ranking.

A no-persona agent has one fit for all buyers (code ``"none"``). A log whose pages never list two
products fits nothing, and the model's ranking stays.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from scipy.optimize import minimize

from envs.storefront import OPEN_PRODUCT
from learners.agent.price_response import buyer_keys, shrink, whole_buyers
from learners.agent.scoring import POOLED_ROWS, ROW_CHOICE_FILE, ROW_FEATURES, listing_features

RIDGE = 1e-3
"""L2 penalty per choice on the coefficients: keeps a code whose choices one feature separates finite."""


@dataclass
class CodeRowChoice:
    """One persona code's fitted row choice."""

    buyers: int
    choices: int
    """The code's listing pages fitted on (goal-free, two or more rows, one of them opened)."""
    estimate: dict[str, float]
    """The code's own maximum-likelihood coefficients."""
    stderr: dict[str, float]
    """Their standard errors, clustered over buyers (absent where not estimable)."""
    coef: dict[str, float]
    """The coefficients served: pulled toward the pooled fit across codes."""
    bestseller_share: float
    """Share of the code's opens that were of a ``bestseller`` row."""
    bestseller_rows: float
    """Mean share of its pages' listed rows that are ``bestseller`` rows."""
    first_share: float
    """Share of its opens that were of the page's first row (log place 0)."""


@dataclass
class RowChoice:
    """The fit over every code (``"none"`` for a no-persona agent's one fit) and the pooled one."""

    pooled: dict[str, float] = field(default_factory=dict)
    codes: dict[str, CodeRowChoice] = field(default_factory=dict)

    def line(self) -> str:
        """One console line: the pooled coefficients and the codes furthest from them on the badge."""
        if not self.codes:
            return (
                "row choice: no goal-free listing with two or more rows had one opened; the model ranks rows"
            )
        top = sorted(
            self.codes.items(),
            key=lambda kv: -abs(kv[1].coef[ROW_FEATURES[0]] - self.pooled[ROW_FEATURES[0]]),
        )
        parts = ", ".join(
            f"{'every buyer' if k == 'none' else 'code ' + k} {_coefs(v.coef)} ({v.buyers} buyers)"
            for k, v in top[:3]
        )
        return (
            f"row choice (coefficients of {', '.join(ROW_FEATURES)}): pooled {_coefs(self.pooled)}; {parts}"
        )

    def served(self) -> dict[int | None, list[float]]:
        """Code (None: a no-persona agent's buyers; ``POOLED_ROWS``: any code without its own fit) ->
        the coefficients of ``ROW_FEATURES`` scoring serves, as scoring.py's ``read_row_choice`` reads
        them from the saved fit."""
        served: dict[int | None, list[float]] = {
            None if k == "none" else int(k): [v.coef[f] for f in ROW_FEATURES] for k, v in self.codes.items()
        }
        if self.pooled:
            served[POOLED_ROWS] = [self.pooled[f] for f in ROW_FEATURES]
        return served

    def save(self, agent_dir: str | Path) -> None:
        saved = {"features": list(ROW_FEATURES), "pooled": self.pooled}
        saved["codes"] = {k: asdict(v) for k, v in self.codes.items()}
        (Path(agent_dir) / ROW_CHOICE_FILE).write_text(json.dumps(saved, indent=1) + "\n")

    @classmethod
    def load(cls, agent_dir: str | Path) -> RowChoice:
        """An agent directory's fit (empty when it has none)."""
        path = Path(agent_dir) / ROW_CHOICE_FILE
        if not path.exists():
            return cls()
        saved = json.loads(path.read_text(encoding="utf-8"))
        return cls(saved["pooled"], {k: CodeRowChoice(**v) for k, v in saved["codes"].items()})


def _coefs(values: dict[str, float]) -> str:
    return " ".join(f"{values[f]:+.2f}" for f in ROW_FEATURES)


def listing_page_rows(examples: pa.Table, max_rows: int, seed: int = 0) -> pa.Table:
    """The goal-free pages of ``examples`` (an agent's examples) whose logged action opened one of two
    or more listed rows; up to ``max_rows``, whole buyers drawn with ``seed`` when there are more."""
    pages = examples.filter(pc.is_null(examples["goal"]))
    pages = pages.filter(pc.starts_with(pages["action"], OPEN_PRODUCT))
    keep = [len(index) > 1 and logged in index for index, _, logged in _listings(pages)]
    pages = pages.filter(pa.array(keep, pa.bool_()))
    return whole_buyers(pages, buyer_keys(pages), max_rows, seed)


def _listings(rows: pa.Table) -> Iterator[tuple[np.ndarray, np.ndarray, int]]:
    """Per row: its listed rows' valid-action indices and features (``listing_features``), and the
    index of its logged action among the valid ones (-1 when the page cannot do it)."""
    for obs, valid, action in zip(
        rows["observation"].to_pylist(),
        rows["valid_actions"].to_pylist(),
        rows["action"].to_pylist(),
        strict=True,
    ):
        index, features = listing_features(obs, valid)
        yield index, features, valid.index(action) if action in valid else -1


@dataclass
class Choices:
    """Choice sets padded to one width: features [n, width, f], which rows exist, the chosen row."""

    features: np.ndarray
    present: np.ndarray
    chosen: np.ndarray

    def take(self, rows: np.ndarray) -> Choices:
        return Choices(self.features[rows], self.present[rows], self.chosen[rows])


def choices_of(rows: pa.Table) -> Choices:
    """``rows`` (``listing_page_rows``) as padded choice sets."""
    sets, chosen = [], []
    for index, features, logged in _listings(rows):
        sets.append(features)
        chosen.append(int(np.flatnonzero(index == logged)[0]))
    width = max((len(s) for s in sets), default=1)
    x = np.zeros((len(sets), width, len(ROW_FEATURES)))
    present = np.zeros((len(sets), width), dtype=bool)
    for i, s in enumerate(sets):
        x[i, : len(s)], present[i, : len(s)] = s, True
    return Choices(x, present, np.array(chosen, dtype=np.int64))


def _shares(c: Choices, beta: np.ndarray) -> np.ndarray:
    z = np.where(c.present, c.features @ beta, -np.inf)
    z -= z.max(1, keepdims=True)
    p = np.exp(z)
    return p / p.sum(1, keepdims=True)


def fit_logit(c: Choices) -> np.ndarray:
    """The conditional logit's maximum-likelihood coefficients (with ``RIDGE`` per choice)."""
    n = len(c.chosen)
    picked = c.features[np.arange(n), c.chosen]

    def objective(beta: np.ndarray) -> tuple[float, np.ndarray]:
        z = np.where(c.present, c.features @ beta, -np.inf)
        top = z.max(1)
        lse = top + np.log(np.exp(z - top[:, None]).sum(1))
        p = np.exp(z - lse[:, None])
        mean = np.einsum("nw,nwf->nf", p, c.features)
        value = -(picked @ beta - lse).sum() / n + RIDGE / 2 * beta @ beta
        return float(value), -(picked - mean).sum(0) / n + RIDGE * beta

    return minimize(objective, np.zeros(len(ROW_FEATURES)), jac=True, method="L-BFGS-B").x


def clustered_stderr(c: Choices, beta: np.ndarray, cluster: np.ndarray) -> np.ndarray:
    """The coefficients' standard errors, sandwich-clustered over ``cluster`` (inf where the information
    is singular, or with one cluster)."""
    n = len(c.chosen)
    p = _shares(c, beta)
    mean = np.einsum("nw,nwf->nf", p, c.features)
    centred = c.features - mean[:, None, :]
    info = np.einsum("nw,nwf,nwg->fg", p, centred, centred)
    score = c.features[np.arange(n), c.chosen] - mean
    _, owner = np.unique(cluster, return_inverse=True)
    if owner.max(initial=0) < 1:
        return np.full(len(beta), np.inf)
    per = np.zeros((owner.max() + 1, len(beta)))
    np.add.at(per, owner, score)
    meat = per.T @ per
    try:
        bread = np.linalg.inv(info)
    except np.linalg.LinAlgError:
        return np.full(len(beta), np.inf)
    var = np.diag(bread @ meat @ bread)
    return np.sqrt(np.where(var > 0, var, np.inf))


def fit_row_choice(rows: pa.Table, personas: bool) -> RowChoice:
    """Fit the pooled and per-code row choice (module doc) on ``rows`` (``listing_page_rows``);
    ``personas``: whether the agent reads codes (else one fit, code ``"none"``)."""
    if rows.num_rows == 0:
        return RowChoice()
    c = choices_of(rows)
    buyer = buyer_keys(rows)
    codes = rows.column("code").to_pylist()
    code = np.array(["none" if not personas or k is None else str(k) for k in codes])
    pooled = fit_logit(c)
    groups = sorted(set(code), key=lambda g: (g == "none", int(g) if g != "none" else 0))
    estimates = np.array([fit_logit(c.take(code == g)) for g in groups])
    stderrs = np.array(
        [
            clustered_stderr(c.take(code == g), e, buyer[code == g])
            for g, e in zip(groups, estimates, strict=True)
        ]
    )
    if len(groups) > 1:
        kept = np.column_stack(
            [shrink(estimates[:, j] - pooled[j], stderrs[:, j]) for j in range(len(pooled))]
        )
        served = pooled + kept
    else:
        served = estimates
    out = RowChoice(_named(pooled))
    n = np.arange(len(c.chosen))
    badged = c.features[..., 0] > 0
    for g, estimate, stderr, coef in zip(groups, estimates, stderrs, served, strict=True):
        mine = code == g
        out.codes[g] = CodeRowChoice(
            buyers=len(set(buyer[mine])),
            choices=int(mine.sum()),
            estimate=_named(estimate),
            stderr={
                f: round(float(s), 6) for f, s in zip(ROW_FEATURES, stderr, strict=True) if np.isfinite(s)
            },
            coef=_named(coef),
            bestseller_share=round(float(badged[n, c.chosen][mine].mean()), 6),
            bestseller_rows=round(float((badged.sum(1) / c.present.sum(1))[mine].mean()), 6),
            first_share=round(float((c.features[n, c.chosen, 1] == 0)[mine].mean()), 6),
        )
    return out


def _named(values: np.ndarray) -> dict[str, float]:
    return {f: round(float(v), 6) for f, v in zip(ROW_FEATURES, values, strict=True)}
