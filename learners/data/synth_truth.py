"""The true effect of storefront treatments (envs/treatments.py) on the synthetic log's planted types.

``true_effects(config, treatments, visits_per_type, seed)`` builds the same merchants, catalogs and
buyers as ``synthesize(config)`` and walks ``visits_per_type`` visits of every planted type through
the generator's own visit model (learners/data/synth_model.py) twice: on the control storefront
(treatment ``none``) and on the treated one. Each visit meets the same random draws in both
(*common random numbers*: counter-based uniforms per visit and step), so an effect is the mean of
per-visit paired differences and a treatment the model does not respond to has an effect of exactly
0. A visit of a type happens at a merchant drawn in proportion to that merchant's share of buyers of
the type, as an experiment (engine/experiment.py) simulates the same number of buyers per merchant
in each merchant's type mix; the ``all`` row weights the types by their mean share over merchants.

Metrics of one visit (the definitions of engine/experiment_outcomes.py, the simulator side):

- ``conversion``: 1 if the visit has a purchase (``buy``), else 0;
- ``add_to_cart``: 1 if it has an add-to-cart (``cart``), else 0;
- ``product_views``: its product views (``view`` events);
- ``revenue``: the sum over its purchases of the product's shown (treated) price, quantity 1;
- ``visit_length``: its events other than page navigation (``home``); a visit has no exit event.

Rows, per (treatment, type or ``all``, metric): ``control`` and ``treated`` means per visit,
``effect`` = treated - control (absolute, per visit), ``se`` its standard error (sd of the paired
differences / sqrt(n); the ``all`` row combines the types' as independent strata), ``n`` visits.

What is planted (planted_types.py has the table): price (deal hunters choose and add to cart more as
a product's price falls below its category's control median), listing order (position-biased types
view and buy what is listed first), page size (researchers view more on longer pages) and the
favourite button (hidden: no ``fav`` moves). Banner, one-page checkout and variant arms have no
planted response: their rows are exactly 0 and say so in ``note``. The simulator's storefront orders
listings by the prepared catalog's observed popularity, close to but not exactly the generator's
latent order, and a ``random`` order is a different shuffle of different products there: compare
those arms with the truth in expectation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import yaml

from envs.treatments import Treatment
from learners.data.planted_types import BUYER_TYPES, TYPE_NAMES
from learners.data.synth import SynthConfig
from learners.data.synth_model import Chains, S, World, build_chains, build_shop, build_world, walk_visits

TRUTH_FILE = "truth-effects.parquet"
TRUTH_REPORT = "truth-effects.md"
METRICS: tuple[str, ...] = ("conversion", "add_to_cart", "product_views", "revenue", "visit_length")
"""Per-visit outcomes, as engine/experiment_outcomes.METRICS."""
ALL = "all"
NO_RESPONSE = "no planted response: exactly 0 by construction"
_UNPLANTED = ("banner", "one-page-checkout", "variant")


@dataclass
class Visits:
    """Visits walked on one storefront: who, where, every event, and the per-visit metrics."""

    visit_type: np.ndarray  # [V] type index
    visit_merchant: np.ndarray  # [V]
    event_visit: np.ndarray  # [E] visit index, visit-major
    event_action: np.ndarray  # [E] state (RAW_ACTIONS index)
    event_product: np.ndarray  # [E] product index or -1
    price: np.ndarray  # [P] the storefront's shown prices
    metrics: dict[str, np.ndarray]  # METRICS -> [V]


@dataclass
class _Setup:
    world: World
    chains: Chains
    visit_type: np.ndarray
    visit_merchant: np.ndarray
    key: int
    weights: np.ndarray  # [T] the types' weights in the `all` row


def _setup(config: SynthConfig, visits_per_type: int, seed: int) -> _Setup:
    if visits_per_type < 2:
        raise ValueError(f"visits_per_type must be >= 2 (a standard error needs two), got {visits_per_type}")
    world = build_world(config, np.random.default_rng(config.seed))  # the log's own world
    n_m, n_t = len(world.merchant_names), len(BUYER_TYPES)
    counts = np.zeros((n_m, n_t))
    np.add.at(counts, (world.buyer_merchant, world.buyer_type.astype(np.int64)), 1.0)
    shop_buyers = counts.sum(1, keepdims=True)
    share = np.divide(counts, shop_buyers, out=np.zeros_like(counts), where=shop_buyers > 0)
    weights = share[shop_buyers[:, 0] > 0].mean(0)
    rng = np.random.default_rng((seed, 1))
    visit_merchant = np.empty(n_t * visits_per_type, dtype=np.int64)
    for t in range(n_t):
        # A type without buyers in this world still gets visits, at merchants by their mixtures.
        p = share[:, t] if share[:, t].sum() > 0 else world.mixtures[:, t]
        visit_merchant[t * visits_per_type : (t + 1) * visits_per_type] = rng.choice(
            n_m, size=visits_per_type, p=p / p.sum()
        )
    key = int(np.random.default_rng((seed, 2)).integers(0, 2**63))
    return _Setup(
        world=world,
        chains=build_chains(config.behaviour_noise),
        visit_type=np.repeat(np.arange(n_t), visits_per_type),
        visit_merchant=visit_merchant,
        key=key,
        weights=weights,
    )


def _walk(setup: _Setup, treatment: Treatment) -> Visits:
    shop = build_shop(setup.world, treatment)
    visit, action, product = walk_visits(
        setup.world, shop, setup.chains, setup.visit_type, setup.visit_merchant, setup.key
    )
    n = len(setup.visit_type)
    buy = action == S["buy"]

    def count(mask: np.ndarray) -> np.ndarray:
        return np.bincount(visit[mask], minlength=n).astype(float)

    metrics = {
        "conversion": (count(buy) > 0).astype(float),
        "add_to_cart": (count(action == S["cart"]) > 0).astype(float),
        "product_views": count(action == S["view"]),
        "revenue": np.bincount(visit[buy], weights=shop.price[product[buy]], minlength=n),
        "visit_length": count(action != S["home"]),
    }
    return Visits(setup.visit_type, setup.visit_merchant, visit, action, product, shop.price, metrics)


def visits_under(config: SynthConfig, treatment: Treatment, visits_per_type: int, seed: int) -> Visits:
    """The visits ``true_effects`` walks on one storefront (the same visits and draws for every
    treatment of the same arguments), with their events: for checks beyond the five metrics."""
    return _walk(_setup(config, visits_per_type, seed), treatment)


def true_effects(
    config: SynthConfig,
    treatments: Mapping[str, Treatment],
    visits_per_type: int = 20_000,
    seed: int = 0,
    merchants: Sequence[str] | None = None,
) -> pl.DataFrame:
    """Per (treatment, type or ``all``, metric): control and treated means per visit, effect, se, n
    (the module docstring defines them). ``seed`` draws the visits; ``config.seed`` the world.
    ``merchants``: only the visits at these merchants count (e.g. an experiment's held-out ones)."""
    setup = _setup(config, visits_per_type, seed)
    here = np.ones(len(setup.visit_type), dtype=bool)
    if merchants is not None:
        names = setup.world.merchant_names.to_pylist()
        here = np.isin(setup.visit_merchant, [names.index(m) for m in merchants])
    for name, treatment in treatments.items():
        _check(name, treatment, config)
    control = _walk(setup, Treatment())
    rows: list[dict[str, Any]] = []
    for name, treatment in treatments.items():
        treated = control if treatment.kind in _UNPLANTED else _walk(setup, treatment)
        note = NO_RESPONSE if treatment.kind in _UNPLANTED else ""
        for metric in METRICS:
            c, d = control.metrics[metric], treated.metrics[metric] - control.metrics[metric]
            parts = []
            for t, type_name in enumerate(TYPE_NAMES):
                mask = here & (setup.visit_type == t)
                ct, dt = c[mask], d[mask]
                if len(dt) < 2:  # a type without visits at the chosen merchants
                    mean_c = effect = se = float("nan")
                else:
                    mean_c, effect = float(ct.mean()), float(dt.mean())
                    se = float(dt.std(ddof=1) / np.sqrt(len(dt)))
                parts.append((mean_c, effect, se))
                rows.append(_row(name, treatment, type_name, metric, mean_c, effect, se, len(dt), note))
            w = setup.weights
            mean_c = float(sum(wt * p[0] for wt, p in zip(w, parts, strict=True)))
            effect = float(sum(wt * p[1] for wt, p in zip(w, parts, strict=True)))
            se = float(np.sqrt(sum((wt * p[2]) ** 2 for wt, p in zip(w, parts, strict=True))))
            rows.append(_row(name, treatment, ALL, metric, mean_c, effect, se, int(here.sum()), note))
    return pl.DataFrame(rows, schema=_SCHEMA, orient="row")


_SCHEMA = {
    "treatment": pl.String,
    "description": pl.String,
    "type": pl.String,
    "metric": pl.String,
    "control": pl.Float64,
    "treated": pl.Float64,
    "effect": pl.Float64,
    "se": pl.Float64,
    "n": pl.Int64,
    "note": pl.String,
}


def _row(
    name: str,
    t: Treatment,
    type_name: str,
    metric: str,
    control: float,
    effect: float,
    se: float,
    n: int,
    note: str,
) -> dict[str, Any]:
    return {
        "treatment": name,
        "description": t.describe(),
        "type": type_name,
        "metric": metric,
        "control": control,
        "treated": control + effect,
        "effect": effect,
        "se": se,
        "n": n,
        "note": note,
    }


def _check(name: str, treatment: Treatment, config: SynthConfig) -> None:
    """A category the synthetic catalogs cannot have is a mistake in the treatment file: say so."""
    category = treatment.category if treatment.kind == "price" else None
    if category is not None and not (category.isdigit() and int(category) < config.categories):
        raise ValueError(
            f"treatment {name!r}: category {category!r} is not a synthetic category "
            f"(ids 0..{config.categories - 1}, as the log's category column writes them)"
        )


def load_treatments(path: str | Path) -> dict[str, Treatment]:
    """Treatments of a YAML file: a mapping name -> treatment, a list of treatments (each may have a
    ``name``; else its kind names it), or an experiment config (its ``arms``)."""
    raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    if isinstance(raw, Mapping) and isinstance(raw.get("arms"), Mapping):
        raw = raw["arms"]
    if isinstance(raw, list):
        named: dict[str, Any] = {}
        for i, item in enumerate(raw):
            if not isinstance(item, Mapping):
                raise ValueError(f"{path}: item {i + 1} is not a treatment mapping such as {{kind: price}}")
            item = dict(item)
            name = str(item.pop("name", None) or item.get("kind", "none"))
            if name in named:
                name = f"{name}-{i + 1}"
            named[name] = item
        raw = named
    if not isinstance(raw, Mapping) or not raw:
        raise ValueError(f"{path}: expected a mapping name -> treatment or a list of treatments, got {raw!r}")
    out = {}
    for name, spec in raw.items():
        try:
            out[str(name)] = Treatment.from_dict(spec or {})
        except (TypeError, ValueError) as err:
            raise ValueError(f"{path}: treatment {name!r}: {err}") from err
    return out


def truth_markdown(table: pl.DataFrame, config: SynthConfig, visits_per_type: int, seed: int) -> str:
    """A readable report: one table per treatment, a row per type, ``control → treated (effect ± se)``."""
    lines = [
        "# True effects of storefront treatments on the planted buyer types\n",
        f"Synthetic world of seed {config.seed} ({config.merchants} merchants); {visits_per_type:,} visits "
        f"per type (seed {seed}), each on the control and the treated storefront with the same random "
        "draws. Cells: control → treated per visit (effect ± standard error). The `all` row weights the "
        "types by their mean share of merchants' buyers. Definitions: learners/data/synth_truth.py; "
        "planted sensitivities: learners/data/planted_types.py.\n",
    ]
    for name in table["treatment"].unique(maintain_order=True):
        part = table.filter(pl.col("treatment") == name)
        lines.append(f"## {name}: {part['description'][0]}\n")
        if part["note"][0]:
            lines.append(f"{part['note'][0]}.\n")
        lines.append("| type | " + " | ".join(METRICS) + " |")
        lines.append("|---" * (len(METRICS) + 1) + "|")
        for type_name in (*TYPE_NAMES, ALL):
            cells = []
            for metric in METRICS:
                r = part.filter((pl.col("type") == type_name) & (pl.col("metric") == metric)).row(
                    0, named=True
                )
                cells.append(f"{r['control']:.4g} → {r['treated']:.4g} ({r['effect']:+.3g} ± {r['se']:.2g})")
            lines.append(f"| {type_name} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def truth_summary(table: pl.DataFrame) -> list[str]:
    """One line per treatment: its overall effects on conversion, product views and revenue, and its
    conversion effect per planted type."""
    lines = []
    for name in table["treatment"].unique(maintain_order=True):
        rows = table.filter(pl.col("treatment") == name)
        head = f"{name} ({rows['description'][0]})"
        if rows["note"][0]:
            lines.append(f"{head}: {rows['note'][0]}")
            continue
        cell = {(r["type"], r["metric"]): r for r in rows.iter_rows(named=True)}
        overall = ", ".join(
            f"{m} {cell[ALL, m]['effect']:+.3g} ± {cell[ALL, m]['se']:.2g}"
            for m in ("conversion", "product_views", "revenue")
        )
        by_type = ", ".join(f"{t} {cell[t, 'conversion']['effect']:+.3g}" for t in TYPE_NAMES)
        lines.append(f"{head}: {overall}; conversion by type: {by_type}")
    return lines


def write_truth(
    config: SynthConfig, treatments: Mapping[str, Treatment], out: str | Path, visits_per_type: int, seed: int
) -> pl.DataFrame:
    """``true_effects`` written to OUT/truth-effects.parquet and OUT/truth-effects.md; returns the table."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    table = true_effects(config, treatments, visits_per_type, seed)
    table.write_parquet(out / TRUTH_FILE)
    (out / TRUTH_REPORT).write_text(truth_markdown(table, config, visits_per_type, seed), encoding="utf-8")
    return table
