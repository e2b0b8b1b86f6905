"""Each buyer type's answer to a markdown, measured within buyers and added where the model misses it.

A what-if price cut works only if the simulated buyers answer a lower price the way their type does.
The agent reads the price from the page (``Price: 69.99 (was 99.99)``, envs/render.py), but at the
sizes this project trains on a CPU it does not learn how its persona token changes that answer.
Measured on the planted-truth log (issue 18, benchmarks/RESULTS.md sessions 12-15): the traces' deal
hunters add to cart on 22% of marked-down product pages against 14% of the others, while every tiny
agent, with the planted types themselves as codes, four times the log or higher learning rates, moved
by 0.00-0.03; the response is 0.0002 nats per training row, too small a part of the loss to learn.

So after training the missing part is measured and added as a score bias, per persona code and
action kind, on goal-free product pages that show a markdown. It is measured on the product pages of
the training and validation merchants before any token budget's cut (train.py), of every buyer who
saw both marked-down and regular ones:

- **Within buyers.** Buyers who seek sales are the ones on marked-down pages, so comparing marked and
  regular pages across a code's buyers mixes its types (on that log a code of 71% deal hunters adds to
  cart 0.229 against 0.213). Each buyer who saw both kinds of page is compared with themself, and the
  code's contrast is the mean of those, weighted by 1 / (1 / marked + 1 / regular pages): there the
  same codes give +0.07 and +0.12, the decisive buyers' codes 0.00.
- **Of what the model misses.** The contrast is of the residual, the real choice's indicator minus the
  model's probability of each kind, so what the agent already answers is not added twice.
- **Shrunk across codes.** Each kind's contrasts are pulled toward 0 by an empirical-Bayes normal prior
  (its variance: the contrasts' mean square less their mean squared error), so a code with a few
  buyers does not answer a price cut by noise.
- **As biases.** On a code's marked-down rows, one bias per kind is fitted so that the kinds' mean
  probabilities equal the model's plus the shrunk contrast (calibration.py's ``fit_share_bias``, the
  kind calibration's own fit). Scoring adds them to goal-free requests whose page shows a markdown (scoring.py's
  ``action_scores``), so both backends serve them; a no-persona agent has one set for all buyers.

A kind-wide bias keeps every ranking within a kind. A log whose products never change price has no
marked-down pages and nothing is fitted. On the truth benchmark (RESULTS.md, session 18) the persona
agent's deal hunters answered a 30% price cut with −0.018 add-to-cart per visit without the biases
and +0.049 with them; a simulator exact for every code would show +0.065 there.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from envs.render import PRICE_PREFIX, shows_markdown
from learners.agent.actions import action_kind
from learners.agent.calibration import fit_share_bias
from learners.agent.offline_eval import ScoringPolicy, requests_for
from learners.agent.scoring import MARKDOWN_FILE

MARKDOWN_COLUMNS = (
    "merchant_id",
    "buyer_id",
    "observation",
    "action",
    "history",
    "goal",
    "code",
    "valid_actions",
)
"""The training examples' columns the fit reads."""
SMALLEST_SHARE = 1e-4
"""No kind's target share on marked-down pages falls below this (a contrast may overshoot 0)."""


@dataclass
class CodeResponse:
    """One persona code's measured answer (per kind) and the biases that carry it."""

    buyers: int
    """Buyers of the code who saw both marked-down and regular product pages."""
    rows: int
    """The code's product pages fitted on (its other buyers' too)."""
    contrast: dict[str, float]
    """Within-buyer contrast (marked − regular) of the real choice less the model's probability."""
    stderr: dict[str, float]
    shrunk: dict[str, float]
    """The contrast after the prior across codes (renormalised to shares that sum to 1): what the
    biases add to the model's mean probabilities on the code's marked-down pages."""
    bias: dict[str, float]


@dataclass
class MarkdownResponse:
    """The fit over every code (``"none"`` for a no-persona agent's one set)."""

    codes: dict[str, CodeResponse] = field(default_factory=dict)

    def line(self) -> str:
        """One console line: the codes whose add-to-cart contrast is largest."""
        if not self.codes:
            return "markdown response: no buyer saw both marked-down and regular product pages"
        top = sorted(self.codes.items(), key=lambda kv: -abs(kv[1].shrunk.get("add_to_cart", 0.0)))[:3]
        parts = ", ".join(
            f"{'every buyer' if k == 'none' else 'code ' + k} {v.shrunk.get('add_to_cart', 0.0):+.3f}"
            f" ({v.buyers} buyers)"
            for k, v in top
        )
        return f"markdown response (add to cart on a marked-down page, beyond the model's): {parts}"

    def save(self, agent_dir: str | Path) -> None:
        text = json.dumps({"codes": {k: asdict(v) for k, v in self.codes.items()}}, indent=1)
        (Path(agent_dir) / MARKDOWN_FILE).write_text(text + "\n")


def within_buyer_contrast(
    values: np.ndarray, marked: np.ndarray, buyer: np.ndarray
) -> tuple[np.ndarray, np.ndarray, int]:
    """Per column of ``values`` (rows x columns): the weighted mean over buyers who have rows both
    marked and not of (mean on marked − mean on regular rows), weights 1 / (1 / n_marked + 1 /
    n_regular); its standard error over buyers; and how many buyers."""
    diffs, weights = [], []
    for b in np.unique(buyer):
        mine = buyer == b
        on, off = mine & marked, mine & ~marked
        if on.any() and off.any():
            diffs.append(values[on].mean(0) - values[off].mean(0))
            weights.append(1.0 / (1.0 / on.sum() + 1.0 / off.sum()))
    width = values.shape[1]
    if not diffs:
        return np.zeros(width), np.full(width, np.inf), 0
    d, w = np.array(diffs), np.array(weights)
    mean = w @ d / w.sum()
    if len(d) < 2:
        return mean, np.full(width, np.inf), 1
    # The ratio estimator's variance over buyers (first order), with n/(n-1) for the fitted mean.
    var = (w**2) @ (d - mean) ** 2 / w.sum() ** 2 * len(d) / (len(d) - 1)
    return mean, np.sqrt(var), len(d)


def shrink(contrast: np.ndarray, stderr: np.ndarray) -> np.ndarray:
    """Each contrast's posterior mean under a normal prior at 0 whose variance is the contrasts' mean
    square less their mean squared error (empirical Bayes; ``contrast`` is one kind's over codes)."""
    finite = np.isfinite(stderr)
    if not finite.any():
        return np.zeros_like(contrast)
    tau2 = max(0.0, float(np.mean(contrast[finite] ** 2) - np.mean(stderr[finite] ** 2)))
    out = np.zeros_like(contrast)
    out[finite] = contrast[finite] * tau2 / (tau2 + stderr[finite] ** 2) if tau2 > 0 else 0.0
    return out


def product_page_rows(examples: pa.Table, max_rows: int, seed: int = 0) -> pa.Table:
    """The goal-free product pages of ``examples`` (an agent's examples) of the buyers who saw both
    marked-down and regular ones (no other buyer is measured), up to ``max_rows`` of them: whole
    buyers, drawn with ``seed`` when there are more."""
    pages = examples.filter(pc.is_null(examples["goal"]))
    pages = pages.filter(pc.match_substring(pages["observation"], "\n" + PRICE_PREFIX))
    keys = _buyer_keys(pages)
    marked = np.array([shows_markdown(o) for o in pages["observation"].to_pylist()], dtype=bool)
    both = set(keys[marked]) & set(keys[~marked])
    measured = np.array([k in both for k in keys], dtype=bool)
    pages, keys = pages.filter(pa.array(measured, pa.bool_())), keys[measured]
    if pages.num_rows <= max_rows:
        return pages
    rng = np.random.default_rng(seed)
    order, counts = np.unique(keys, return_counts=True)
    keep, total = set(), 0
    for i in rng.permutation(len(order)):
        if total + counts[i] > max_rows:
            continue
        keep.add(order[i])
        total += counts[i]
    return pages.filter(pa.array([k in keep for k in keys]))


def fit_markdown_response(policy: ScoringPolicy, rows: pa.Table, personas: bool) -> MarkdownResponse:
    """Fit the per-code biases (module doc) for ``policy`` (scoring with its kind calibration, without
    markdown biases) on ``rows`` (``product_page_rows``); ``personas``: whether it reads codes."""
    requests = requests_for(rows, "true" if personas else "none")
    marked = np.array([shows_markdown(r.observation) for r in requests])
    if not marked.any() or marked.all():
        return MarkdownResponse()
    scores: list[np.ndarray] = []
    for start in range(0, len(requests), 64):
        scores += policy.score(requests[start : start + 64])
    names = sorted({action_kind(a) for r in requests for a in r.valid_actions})
    index = {k: i for i, k in enumerate(names)}
    kinds = [np.array([index[action_kind(a)] for a in r.valid_actions]) for r in requests]
    chosen = [index[action_kind(a)] for a in rows.column("action").to_pylist()]
    probs = [np.exp(z - np.logaddexp.reduce(z)) for z in scores]
    residual = np.zeros((len(requests), len(names)))
    for i, (p, k, c) in enumerate(zip(probs, kinds, chosen, strict=True)):
        np.add.at(residual[i], k, -p)
        residual[i, c] += 1.0
    buyer = _buyer_keys(rows)
    code = np.array(["none" if r.persona is None else str(r.persona) for r in requests])
    groups = sorted(set(code), key=lambda g: (g == "none", int(g) if g != "none" else 0))
    measured = {
        g: within_buyer_contrast(residual[code == g], marked[code == g], buyer[code == g]) for g in groups
    }
    contrast = np.array([measured[g][0] for g in groups])
    stderr = np.array([measured[g][1] for g in groups])
    shrunk = np.column_stack([shrink(contrast[:, j], stderr[:, j]) for j in range(len(names))])
    out = MarkdownResponse()
    for gi, g in enumerate(groups):
        if measured[g][2] == 0:
            continue
        on = np.flatnonzero((code == g) & marked)
        model = np.zeros(len(names))
        for i in on:
            np.add.at(model, kinds[i], probs[i])
        model /= len(on)
        target = np.maximum(model + shrunk[gi], SMALLEST_SHARE) * (model > 0)
        target /= target.sum()  # kinds shrink apart, so their contrasts no longer sum to 0
        bias = fit_share_bias([scores[i] for i in on], [kinds[i] for i in on], target)
        out.codes[g] = CodeResponse(
            buyers=measured[g][2],
            rows=int((code == g).sum()),
            contrast=_by_kind(names, contrast[gi]),
            stderr=_by_kind(names, stderr[gi]),
            shrunk=_by_kind(names, target - model),
            bias=_by_kind(names, bias),
        )
    return out


def _buyer_keys(rows: pa.Table) -> np.ndarray:
    """Each row's buyer (a buyer id is a merchant's)."""
    keys = pc.binary_join_element_wise(rows["merchant_id"], rows["buyer_id"], "\t")
    return keys.to_numpy(zero_copy_only=False)


def _by_kind(names: list[str], values: np.ndarray) -> dict[str, float]:
    return {k: round(float(v), 6) for k, v in zip(names, values, strict=True) if np.isfinite(v)}
