"""Each buyer type's answer to a price, measured within buyers and served in place of the model's own.

A what-if price cut or a cheapest-first listing works only if the simulated buyers answer a price the
way their type does. The agent reads the price from the page (``Price: 69.99 (was 99.99)`` and
``Typical price in its category: 89.99``, envs/render.py), but at the sizes this project trains on a
CPU it does not learn how its persona token changes that answer. Measured on the planted-truth log
(issue 18, benchmarks/RESULTS.md sessions 12-15): the traces' deal hunters add to cart on 22% of
marked-down product pages against 14% of the others, while every tiny agent, with the planted types
themselves as codes, four times the log or higher learning rates, moved by 0.00-0.03; the response
is 0.0002 nats per training row, too small a part of the loss to learn.

So after training each code's answer is measured and served as a score bias, per persona code, price
cell and action kind, on goal-free product pages. A page's price cell (envs/render.py's
``price_cell``) says whether it shows a markdown and whether its price is at or above its category's
typical price, below it, or far below it; the ``regular`` cell (no markdown, at or above) is the
reference every other cell is compared with. The fit reads the product pages of the training and
validation merchants before any token budget's cut (train.py), of every buyer who saw a regular page
and a page of another cell:

- **Within buyers.** Buyers who seek sales are the ones on marked-down pages, so comparing cells
  across a code's buyers mixes its types (on that log a code of 71% deal hunters adds to cart 0.229
  on marked-down pages against 0.213 on the others). Each buyer who saw both a cell and the regular
  one is compared with themself, and the code's contrast is the mean of those, weighted by
  1 / (1 / n_cell + 1 / n_regular): there the same codes give +0.07 and +0.12 for a markdown, the
  decisive buyers' codes 0.00.
- **Against the model at a regular price.** The contrast is of the residual, the real choice's
  indicator minus the model's probability of each kind on the same page shown at a regular price
  (envs/render.py's ``at_regular_price``). What the model knows of the pages' products is taken out
  (a cell's products differ from the regular ones), and what it reads into the price itself is not:
  the contrast is the code's whole answer to the cell, and a code that does not answer has none.
  Against the model's probability on the page as shown, the contrast was only what the model
  misses, so the prior pulled a code's small miss to 0 and kept the model's own reading, which the
  tiny agents get wrong. On the truth benchmark (RESULTS.md, session 30) the model alone lowered the
  exits of the decisive buyers' codes by 0.010-0.020 on marked-down pages, and fitted against the
  page as shown those buyers answered a 30% price cut with +0.016-0.018 in conversion and +0.15-0.17
  steps per visit (the truth: 0); fitted and served as below, -0.003-+0.000 and +0.02-+0.06.
- **Shrunk across codes and cells.** A kind's contrasts, every code's on every cell, are pulled toward
  0 by one empirical-Bayes prior fitted on them all: a contrast is exactly 0 with some chance, else
  normal (``shrink``). So a code with a few buyers does not answer a price by noise, even where the
  deal hunters' codes' contrasts are large: with a normal prior alone their size set its variance,
  and a 33-buyer code of cart abandoners kept +0.049 of a +0.059 ± 0.054 contrast. The prior is one
  per kind, not one per cell and kind: eight codes are too few to fit it on. On the truth benchmark's
  log (RESULTS.md, session 20) a per-cell prior kept −0.049 of a cart abandoners' code's −0.078 ±
  0.032 exit contrast (the pooled one keeps −0.006), and under a price cut its biases lengthened the
  cart abandoners' visits by 0.35 steps (0.02 without them; the truth: 0). A contrast's error over
  a few buyers is widened to a t interval's, so three buyers' chance −0.27 in exits is not taken for
  an answer. A code answers a kind on all of its cells or on none: the spike is drawn once per code
  and kind, from all its cells' contrasts at once, each cell keeping its own size. A deal hunters'
  code whose every cheaper cell shows two or three standard errors answers prices, though each cell
  alone could be chance; a code with one such cell among cells of noise is weighed with that noise.
  On the truth benchmark (RESULTS.md, session 33) the deal hunters' code 6 kept +0.12 of +0.15 ±
  0.07 in add to cart on pages marked down below the typical price (+0.02 with a spike per
  contrast), their code 12 +0.04–0.08 on every cell (+0.00–0.04).
- **Balanced.** The kinds are shrunk apart, so the shrunk contrasts no longer sum to 0; what they
  are off by is taken from the kinds that do not answer, by share (``balanced``), and a kind that
  answers keeps its measured change.
- **As biases on the page read at a regular price.** Served, the model reads a goal-free product page
  at its regular price (scoring.py's ``model_request``), so its own reading of the price never
  reaches the choice, and scoring adds the code's biases for the page's real cell (``action_scores``;
  both backends serve them). They are fitted on the code's pages of the cell, read so, so that the
  kinds' mean probabilities equal the model's at a regular price plus the shrunk contrast
  (calibration.py's ``fit_share_bias``, the kind calibration's own fit). A code that does not answer
  is then served the page as at a regular price, whatever the model would read into a deeper
  markdown than the logs show: biases fitted to cancel the reading on the training pages alone left
  the truth benchmark's window shoppers viewing 0.26-0.37 more products under a 30% cut; served so,
  0.02-0.05 (the truth: 0). A no-persona agent has one set for all buyers.
- **On the agent as served.** Training fits them before its rollout calibration
  (engine/rollout_calibration.py), whose simulated visits need them, and again after it
  (engine/stages.py), on the model with the per-code biases that calibration adds. Fitted only
  before, a code the calibration held back was served its target plus that push: on the truth
  benchmark (RESULTS.md, session 33) the deal hunters' code 12, whose buyers rarely added to cart
  in the logs, answered a 30% cut with +0.04 add to cart per visit (seed 0, with the spike per code
  or per contrast); fitted again, +0.14 (seed 1: +0.22; its buyers' types: +0.17, +0.16).

Beside the biases of the posterior mean, the fit keeps those of a few posterior draws of the contrasts
(``posterior_draws``, ``CellResponse.draws``), each fitted the same way, so that an experiment can
carry what the logs leave uncertain in a type's answer into its intervals (engine/experiment_fit.py).

A kind-wide bias keeps every ranking within a kind. A log whose products never change price and
whose categories have no typical price (fewer than five priced products) has only regular pages, and
nothing is fitted. On the truth benchmark (RESULTS.md, session 20) the persona agent's deal hunters
answered a 30% price cut with +0.097 add-to-cart per visit, as a simulator exact for every code would
(+0.097; the planted truth +0.255), and a cheapest-first listing with +0.036 (+0.042).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from scipy import stats

from envs.render import PRICE_CELLS, PRICE_PREFIX, REGULAR_CELL, at_regular_price, price_cell
from learners.agent.actions import action_kind
from learners.agent.calibration import fit_share_bias
from learners.agent.offline_eval import ScoringPolicy, requests_for
from learners.agent.scoring import PRICE_PAGES_READ, PRICE_RESPONSE_FILE

FIT_COLUMNS = (
    "merchant_id",
    "buyer_id",
    "observation",
    "action",
    "history",
    "goal",
    "code",
    "valid_actions",
)
"""The training examples' columns the page fits read (this price response and row_choice.py)."""
SPIKE_GRID = np.linspace(0.0, 0.98, 50)
"""The prior's chances of a contrast being exactly 0 that ``shrink`` tries."""
TAU_GRID = np.logspace(-4, 0, 41)
"""The prior's variances that ``shrink`` tries, as shares of the largest squared contrast."""
SMALLEST_SHARE = 1e-4
"""No kind's target share on a cell's pages falls below this (a contrast may overshoot 0)."""


@dataclass
class CellResponse:
    """One persona code's measured answer (per kind) on one price cell, and the biases that carry it."""

    buyers: int
    """Buyers of the code who saw both this cell's and regular product pages."""
    rows: int
    """The code's pages of this cell fitted on."""
    contrast: dict[str, float]
    """Within-buyer contrast (cell − regular) of the real choice less the model's probability of the
    page at a regular price (``at_regular_price``): the code's whole answer to the cell."""
    stderr: dict[str, float]
    shrunk: dict[str, float]
    """The contrast after the prior across codes and cells, balanced to shares that sum to 1
    (``balanced``): the served agent's mean probabilities on the code's pages of this cell less the
    model's on the same pages at a regular price."""
    bias: dict[str, float]
    reading: dict[str, float] = field(default_factory=dict)
    """The model's own answer, before the biases: its mean probabilities on these pages less its
    probabilities on the same pages at a regular price (a fit before session 30 has none)."""
    draws: list[dict[str, float]] = field(default_factory=list)
    """The biases of posterior draws of the contrasts (``posterior_draws``, then ``balanced`` and
    fitted as ``bias`` is), one per draw: what the logs leave uncertain in the answer, which an
    experiment carries into its intervals (engine/experiment_fit.py). A fit before session 34 has none."""


@dataclass
class PriceResponse:
    """The fit over every code (``"none"`` for a no-persona agent's one set) and price cell."""

    codes: dict[str, dict[str, CellResponse]] = field(default_factory=dict)

    def line(self) -> str:
        """One console line: the (code, cell) pairs whose add-to-cart contrast is largest."""
        pairs = [(k, c, v) for k, cells in self.codes.items() for c, v in cells.items()]
        if not pairs:
            return "price response: no buyer saw both regular product pages and pages of another price cell"
        top = sorted(pairs, key=lambda kcv: -abs(kcv[2].shrunk.get("add_to_cart", 0.0)))[:3]
        parts = ", ".join(
            f"{'every buyer' if k == 'none' else 'code ' + k} on {c} {v.shrunk.get('add_to_cart', 0.0):+.3f}"
            f" ({v.buyers} buyers)"
            for k, c, v in top
        )
        return f"price response (add to cart against the same pages at a regular price): {parts}"

    def save(self, agent_dir: str | Path) -> None:
        codes = {k: {c: asdict(v) for c, v in cells.items()} for k, cells in self.codes.items()}
        saved = {"model_reads": PRICE_PAGES_READ, "codes": codes}
        (Path(agent_dir) / PRICE_RESPONSE_FILE).write_text(json.dumps(saved, indent=1) + "\n")

    @classmethod
    def load(cls, agent_dir: str | Path) -> PriceResponse:
        """An agent directory's fit (empty when it has none)."""
        path = Path(agent_dir) / PRICE_RESPONSE_FILE
        if not path.exists():
            return cls()
        codes = json.loads(path.read_text(encoding="utf-8"))["codes"]
        return cls({k: {c: CellResponse(**v) for c, v in cells.items()} for k, cells in codes.items()})

    @property
    def draw_count(self) -> int:
        """Posterior draws every fitted cell carries (0 when any has none)."""
        counts = [len(v.draws) for cells in self.codes.values() for v in cells.values()]
        return min(counts) if counts else 0

    def drawn(self, draw: int) -> PriceResponse:
        """The fit with draw ``draw``'s biases served in place of the posterior mean's."""
        return PriceResponse(
            {
                k: {c: replace(v, bias=v.draws[draw], draws=[]) for c, v in cells.items()}
                for k, cells in self.codes.items()
            }
        )


def within_buyer_contrast(
    values: np.ndarray, marked: np.ndarray, buyer: np.ndarray
) -> tuple[np.ndarray, np.ndarray, int]:
    """Per column of ``values`` (rows x columns): the weighted mean over buyers who have rows both
    marked and not of (mean on marked − mean on the other rows), weights 1 / (1 / n_marked + 1 /
    n_other); its standard error over buyers; and how many buyers. The error is widened by
    t(n − 1) / z at 95%, so that its 95% interval is the t interval's: estimated from a few buyers,
    the error is itself uncertain (three buyers' ± 0.076 becomes ± 0.167)."""
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
    widen = stats.t.ppf(0.975, len(d) - 1) / stats.norm.ppf(0.975)
    return mean, np.sqrt(var) * widen, len(d)


def shrink(contrast: np.ndarray, stderr: np.ndarray, groups: np.ndarray | None = None) -> np.ndarray:
    """Each contrast's posterior mean under an empirical-Bayes prior at 0 (``contrast`` is one kind's
    over codes and cells): exactly 0 with chance ``spike``, else normal with variance ``tau2``, the
    two fitted by maximum marginal likelihood over the contrasts on a grid. ``spike`` 0 is a normal
    prior; a spike pulls the codes that look like noise to 0 even where another code's contrast is
    large, which a normal prior, its variance set by that code, does not (adaptive shrinkage,
    Stephens 2017). With ``groups`` (a label per contrast: its code), a group answers on all its
    contrasts or on none: the spike is drawn once per group (``posterior``)."""
    return posterior(contrast, stderr, groups)[0]


def posterior(
    contrast: np.ndarray, stderr: np.ndarray, groups: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``shrink``'s posterior mean of each contrast, and the posterior chance that it is an answer
    (not the spike at 0); both 0 where the error is infinite. With ``groups``, the chance is its
    group's, from all the group's contrasts at once (the module doc's "Shrunk" item)."""
    mean, answer = np.zeros_like(contrast), np.zeros_like(contrast)
    prior = _fitted_prior(contrast, stderr, groups)
    if prior is None:
        return mean, answer
    finite, x, s2, group, chance, tau2 = prior
    answer[finite] = chance[group]
    mean[finite] = answer[finite] * x * tau2 / (tau2 + s2)
    return mean, answer


def posterior_draws(
    contrast: np.ndarray,
    stderr: np.ndarray,
    groups: np.ndarray | None,
    draws: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """(draws, len(contrast)) draws of the contrasts from ``posterior``'s posterior: per draw, each group
    answers with its posterior chance (all its contrasts or none), and an answering contrast is normal
    around its slab mean x tau2 / (tau2 + s2) with variance tau2 s2 / (tau2 + s2). The prior's spike
    and variance are the fitted ones, held fixed. 0 where the error is infinite."""
    out = np.zeros((draws, len(contrast)))
    prior = _fitted_prior(contrast, stderr, groups)
    if prior is None:
        return out
    finite, x, s2, group, chance, tau2 = prior
    keep = tau2 / (tau2 + s2)
    answers = rng.random((draws, len(chance))) < chance  # (draws, groups)
    slab = x * keep + rng.standard_normal((draws, len(x))) * np.sqrt(keep * s2)
    out[:, finite] = answers[:, group] * slab
    return out


def _fitted_prior(
    contrast: np.ndarray, stderr: np.ndarray, groups: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, float] | None:
    """The prior fitted by maximum marginal likelihood on the grid: (which contrasts have a finite
    error, their values, their squared errors, their group's index, each group's posterior chance of
    answering, the prior's slab variance); None when no finite contrast differs from 0."""
    finite = np.isfinite(stderr)
    x, s2 = contrast[finite], np.maximum(stderr[finite], 1e-9) ** 2
    top = float(np.max(x**2)) if len(x) else 0.0
    if top <= 0:
        return None
    label = np.arange(len(contrast)) if groups is None else np.asarray(groups)
    _, group = np.unique(label[finite], return_inverse=True)
    tau2 = top * TAU_GRID[:, None]  # [T, 1]
    null = np.bincount(group, _log_normal(x, s2))  # [G]
    slab = np.stack([np.bincount(group, row) for row in _log_normal(x, s2 + tau2)])  # [T, G]
    spike = SPIKE_GRID[:, None, None]  # [S, 1, 1]
    with np.errstate(divide="ignore"):  # log 0: the normal prior, no spike
        joint = np.logaddexp(np.log(spike) + null, np.log1p(-spike) + slab)  # [S, T, G]
    si, ti = np.unravel_index(np.argmax(joint.sum(-1)), joint.shape[:2])
    chance = np.exp(np.log1p(-SPIKE_GRID[si]) + slab[ti] - joint[si, ti])
    return finite, x, s2, group, chance, float(tau2[ti, 0])


def _log_normal(x: np.ndarray, var: np.ndarray) -> np.ndarray:
    return -0.5 * (np.log(2 * np.pi * var) + x**2 / var)


def product_page_rows(examples: pa.Table, max_rows: int, seed: int = 0) -> pa.Table:
    """The goal-free product pages of ``examples`` (an agent's examples) whose action the page can
    do, of the buyers who saw a regular page and a page of another price cell (no other buyer is
    measured), up to ``max_rows`` of them: whole buyers, drawn with ``seed`` when there are more."""
    pages = examples.filter(pc.is_null(examples["goal"]))
    pages = pages.filter(pc.match_substring(pages["observation"], "\n" + PRICE_PREFIX))
    # A page without a price (``Price: n/a``) has no cell. A logged action the page cannot do (replay
    # keeps them, examples.py) has no kind to compare.
    cells = [price_cell(o) for o in pages["observation"].to_pylist()]
    kept = [
        cell is not None and action_kind(a) in {action_kind(v) for v in valid}
        for cell, a, valid in zip(
            cells, pages["action"].to_pylist(), pages["valid_actions"].to_pylist(), strict=True
        )
    ]
    pages = pages.filter(pa.array(kept, pa.bool_()))
    keys = buyer_keys(pages)
    regular = np.array([c == REGULAR_CELL for c, k in zip(cells, kept, strict=True) if k], dtype=bool)
    both = set(keys[regular]) & set(keys[~regular])
    measured = np.array([k in both for k in keys], dtype=bool)
    pages, keys = pages.filter(pa.array(measured, pa.bool_())), keys[measured]
    return whole_buyers(pages, keys, max_rows, seed)


def whole_buyers(rows: pa.Table, keys: np.ndarray, max_rows: int, seed: int) -> pa.Table:
    """Up to ``max_rows`` of ``rows`` (``keys``: each row's buyer, ``buyer_keys``), whole buyers drawn
    with ``seed`` when there are more."""
    if rows.num_rows <= max_rows:
        return rows
    rng = np.random.default_rng(seed)
    order, counts = np.unique(keys, return_counts=True)
    keep, total = set(), 0
    for i in rng.permutation(len(order)):
        if total + counts[i] > max_rows:
            continue
        keep.add(order[i])
        total += counts[i]
    return rows.filter(pa.array([k in keep for k in keys]))


def fit_price_response(
    policy: ScoringPolicy, rows: pa.Table, personas: bool, draws: int = 0, seed: int = 0
) -> PriceResponse:
    """Fit the per-code, per-cell biases (module doc) for ``policy`` (scoring with its kind
    calibration, without price biases) on ``rows`` (``product_page_rows``); ``personas``: whether it
    reads codes; ``draws``: posterior draws of the biases kept beside them (``CellResponse.draws``),
    drawn with ``seed``."""
    requests = requests_for(rows, "true" if personas else "none")
    cell = np.array([price_cell(r.observation) for r in requests])
    regular = cell == REGULAR_CELL
    if regular.all() or not regular.any():
        return PriceResponse()
    scores: list[np.ndarray] = []
    for start in range(0, len(requests), 64):
        scores += policy.score(requests[start : start + 64])
    names = sorted({action_kind(a) for r in requests for a in r.valid_actions})
    index = {k: i for i, k in enumerate(names)}
    kinds = [np.array([index[action_kind(a)] for a in r.valid_actions]) for r in requests]
    chosen = [index[action_kind(a)] for a in rows.column("action").to_pylist()]
    probs = [np.exp(z - np.logaddexp.reduce(z)) for z in scores]
    # The model's answer on each page at a regular price: what a code that does not answer prices does.
    moved = np.flatnonzero(~regular)
    at_regular = [replace(requests[i], observation=at_regular_price(requests[i].observation)) for i in moved]
    read, baseline = list(scores), list(probs)
    for start in range(0, len(moved), 64):
        for i, z in zip(moved[start : start + 64], policy.score(at_regular[start : start + 64]), strict=True):
            read[i], baseline[i] = z, np.exp(z - np.logaddexp.reduce(z))
    model, base = np.zeros((len(requests), len(names))), np.zeros((len(requests), len(names)))
    for i, k in enumerate(kinds):
        np.add.at(model[i], k, probs[i])
        np.add.at(base[i], k, baseline[i])
    residual = -base
    residual[np.arange(len(requests)), chosen] += 1.0
    buyer = buyer_keys(rows)
    code = np.array(["none" if r.persona is None else str(r.persona) for r in requests])
    groups = sorted(set(code), key=lambda g: (g == "none", int(g) if g != "none" else 0))
    cells = [c for c in PRICE_CELLS if c != REGULAR_CELL and (cell == c).any()]
    measured = {}
    for c in cells:
        for g in groups:
            mine = (code == g) & ((cell == c) | regular)
            measured[c, g] = within_buyer_contrast(residual[mine], cell[mine] == c, buyer[mine])
    keys = list(measured)
    contrast = np.array([measured[k][0] for k in keys])
    stderr = np.array([measured[k][1] for k in keys])
    by_code = np.array([g for _, g in keys])
    fitted = [posterior(contrast[:, j], stderr[:, j], by_code) for j in range(len(names))]
    shrunk = np.column_stack([mean for mean, _ in fitted])
    answer = np.column_stack([chance for _, chance in fitted])
    rng = np.random.default_rng(seed)
    drawn = np.stack(
        [posterior_draws(contrast[:, j], stderr[:, j], by_code, draws, rng) for j in range(len(names))],
        axis=-1,
    )  # (draws, keys, kinds)
    out = PriceResponse()
    for ki, (c, g) in enumerate(keys):
        if measured[c, g][2] == 0:
            continue
        on = np.flatnonzero((code == g) & (cell == c))
        mean, at_regular_mean = model[on].mean(0), base[on].mean(0)
        target = _target(at_regular_mean, shrunk[ki], answer[ki], mean > 0)
        # Served on the page read at a regular price (scoring.py's model_request).
        scores_on, kinds_on = [read[i] for i in on], [kinds[i] for i in on]
        bias = fit_share_bias(scores_on, kinds_on, target)
        biases = [
            fit_share_bias(scores_on, kinds_on, _target(at_regular_mean, d[ki], answer[ki], mean > 0))
            for d in drawn
        ]
        out.codes.setdefault(g, {})[c] = CellResponse(
            buyers=measured[c, g][2],
            rows=len(on),
            contrast=_by_kind(names, contrast[ki]),
            stderr=_by_kind(names, stderr[ki]),
            shrunk=_by_kind(names, target - at_regular_mean),
            bias=_by_kind(names, bias),
            reading=_by_kind(names, mean - at_regular_mean),
            draws=[_by_kind(names, b) for b in biases],
        )
    return out


def _target(model: np.ndarray, shrunk: np.ndarray, answer: np.ndarray, offered: np.ndarray) -> np.ndarray:
    """The kinds' target shares (``balanced``), none below SMALLEST_SHARE among the kinds the pages
    offer (``offered``), summing to 1."""
    target = np.maximum(balanced(model, shrunk, answer), SMALLEST_SHARE) * offered
    return target / target.sum()


def balanced(model: np.ndarray, shrunk: np.ndarray, answer: np.ndarray) -> np.ndarray:
    """The kinds' target shares on a code's pages of a cell: the model's plus the shrunk contrasts,
    made to sum to 1 again. Each kind is shrunk on its own, so the contrasts, which sum to 0 as
    measured (every page's shares sum to 1), no longer do: a clear +0.30 in add to cart keeps +0.30
    while the exits and searches it came from, each within noise, are pulled to 0. The difference is
    taken from the kinds in proportion to their share and their chance of not answering (``answer``,
    ``posterior``), as a softmax shares out a change among the others, so a kind that answers keeps
    its measured change. Scaling every share to sum to 1 would take 40% of the deal hunters' answer
    on the truth benchmark's log (benchmarks/RESULTS.md, session 29)."""
    excess = shrunk.sum()
    free = (1.0 - answer) * model
    if free.sum() <= 1e-9:
        free = model
    return model + shrunk - excess * free / free.sum()


def buyer_keys(rows: pa.Table) -> np.ndarray:
    """Each row's buyer (a buyer id is a merchant's)."""
    keys = pc.binary_join_element_wise(rows["merchant_id"], rows["buyer_id"], "\t")
    return keys.to_numpy(zero_copy_only=False)


def _by_kind(names: list[str], values: np.ndarray) -> dict[str, float]:
    return {k: round(float(v), 6) for k, v in zip(names, values, strict=True) if np.isfinite(v)}
