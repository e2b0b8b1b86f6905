"""What-if experiments: one buyer population, a control storefront and treatments, run as arms.

An experiment is a set of *arms*, each a storefront (the control, usually unchanged, and one per
treatment of envs/treatments.py: a price change, another listing order, a banner, ...). Every arm is
an ordinary simulation (engine/simulation.py) of the same config except the env: the same merchants,
persona mixes, buyers and seeds. Buyer seeds derive from (run seed, buyer index) and step seeds from
the buyer's seed (engine/population.py), so the same buyer meets the same random draws in every arm:
*common random numbers*. A draw picks an action template (open a product, exit, ...) and then one of
its actions, each with noise of its own fixed by the step's seed and its text
(``learners.agent.policy.choose``), so a buyer's choice changes only where the treatment changed its
probability, not where it reordered or changed other actions (a draw through the cumulative
probabilities in the page's order parted 5-7x more choices than needed,
``benchmarks/paired_draw.py``). Whatever differs between a buyer's visit in two arms is caused by
the storefront, and an effect is the mean of per-buyer paired differences
(engine/experiment_effects.py), far more precise than comparing two independent populations.
``common_random_numbers: false`` draws each arm with its own run seed instead (independent arms; an
A/A check of the intervals).

Each arm writes ``OUT/arms/<arm>/rollouts/part-*.parquet`` and its manifest; an arm whose complete
rollouts are there (with the same settings) is not simulated again, an interrupted one resumes.
"""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import polars as pl

from engine.experiment_effects import estimate, pair_visits
from engine.experiment_fit import draw_buyers, draw_configs, widen
from engine.experiment_outcomes import METRIC_LABELS, METRICS, OUTCOMES_FILE, arm_outcomes, arm_storefronts
from engine.experiment_report import write_report
from engine.rollout_store import MANIFEST, RESULT_FIELDS
from engine.simulation_config import SimulationConfig
from envs import STOREFRONT_ID
from learners.agent.row_choice import RowChoice
from learners.agent.scoring import PRICE_RESPONSE_FILE
from learners.config import config_to_dict, mapping_value

ARMS_DIR = "arms"
ARM_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
"""An arm's name is its folder under OUT/arms."""
INDEPENDENT_SEED_STRIDE = 1_000_003
"""Run-seed offset between arms without common random numbers (far from ``replicates``' seed + r)."""
EXPERIMENT_FIELDS = (
    "out",
    "data",
    "distributions",
    "merchants",
    "buyers_per_merchant",
    "seed",
    "max_steps",
    "policy",
    "policy_path",
    "ray_address",
)
"""SimulationConfig fields an experiment sets itself; `simulation` may not repeat them."""
ARM_FIELDS = ("env_id", "env_kwargs", "resume")
"""SimulationConfig fields that differ per arm, set from the arm's treatment."""


@dataclass
class ExperimentConfig:
    """A what-if experiment: who is simulated, on which storefront arms, and how effects are measured."""

    out: str = "experiment-out"
    """Output directory: arms/<arm>/rollouts, effects.parquet, effects.json, report.html, plan.json."""
    data: str | None = None
    """Prepared directory (`simpersona prepare --out`): the merchants' catalogues and real conversion."""
    distributions: str | None = None
    """merchant_distributions.parquet of `simpersona assign`: each merchant's persona mix (``p``, the
    share of its visits per code), which its simulated population is drawn from."""
    personas: str | None = None
    """VQ-VAE run directory (`simpersona fit-personas --out`) whose metrics.json describes the types, for
    readable type names; default: the run named in the distributions' assign manifest; else "type N"."""
    merchants: list[str] = field(default_factory=list)
    """Merchants to experiment on (comma-separated on the command line); empty means all in distributions."""
    buyers_per_merchant: int = 200
    """Simulated visits per merchant in every arm (the same buyers in each); `--plan` says how many an
    effect of a given size needs."""
    seed: int = 0
    """Run seed: the population, each buyer's seed and each step's seed derive from it."""
    max_steps: int = 20
    """Steps after which a visit is cut off."""
    policy: str = "markov"
    """Policy backend: random, markov, transformers or vllm (learners/agent/registry.py)."""
    policy_path: str | None = None
    """Markov chain JSON or save_pretrained agent directory of the policy."""
    arms: dict[str, Any] = field(default_factory=lambda: {"control": {"kind": "none"}})
    """Arm name -> treatment (envs/treatments.py fields: kind none|price|order|banner|one-page-checkout|
    hide-favorite|page-size|variant, percent, category, product, order, page_size, env_id, seed). On the
    command line a JSON or YAML mapping that replaces the file's, e.g.
    '{control: {kind: none}, price-10: {kind: price, percent: -10}}'."""
    control: str = "control"
    """The arm every other arm is compared with."""
    common_random_numbers: bool = True
    """Every arm plays the same buyers with the same seeds (paired effects). False draws each arm with
    its own run seed, so arms are independent populations (an A/A check; effects are then no more
    precise than an ordinary A/B test's); matching stays by merchant, type and rank."""
    bootstrap: int = 1000
    """Bootstrap replicates of every interval (resampling buyers within merchant x type cells)."""
    mde: float = 0.02
    """`--plan`: the smallest effect (absolute, in the metric's unit) the experiment should detect."""
    mde_metric: str = "conversion"
    """`--plan`: the metric `mde` is in: conversion, add_to_cart, product_views, revenue or visit_length."""
    fit_draws: int = 0
    """Posterior draws of the agent's price response to run every arm again with (at least 2; the
    agent keeps `price_draws` of them): the intervals and MDEs then add the spread of the effects over
    the draws, the uncertainty the logs leave in how each type answers a price, to the simulation's
    (engine/experiment_fit.py). 0: the simulation's noise only."""
    fit_draw_buyers: int = 0
    """Simulated visits per merchant in each draw's arms (the same buyers in every draw); 0: a quarter
    of `buyers_per_merchant`."""
    simulation: dict[str, Any] = field(default_factory=dict)
    """Further SimulationConfig fields for every arm (runners, envs_per_runner, policy_placement,
    chunk_size, temperature, env_modules, policy_num_gpus, ...; see `simpersona simulate --help`).
    On the command line a JSON or YAML mapping merged over the file's, e.g. '{runners: 8}'."""
    ray_address: str | None = None
    """Ray cluster address ("auto" inside a cluster job); none starts or reuses a local instance."""

    def __post_init__(self) -> None:
        arms = mapping_value(self.arms, "arms")
        self.arms = {str(k): mapping_value(v or {}, f"arms.{k}") for k, v in arms.items()}
        self.simulation = mapping_value(self.simulation, "simulation")
        if len(self.arms) < 2:
            raise ValueError(
                f"experiment config: need a control and at least one treatment arm, got {sorted(self.arms)}"
            )
        bad = [n for n in self.arms if not ARM_NAME.fullmatch(n)]
        if bad:
            raise ValueError(
                f"experiment config: arm names {bad} are not plain folder names (letters, digits, . _ -)"
            )
        if self.control not in self.arms:
            raise ValueError(
                f"experiment config: control arm {self.control!r} is not among the arms {sorted(self.arms)}"
            )
        known = set(SimulationConfig.__dataclass_fields__)
        unknown = sorted(set(self.simulation) - known)
        if unknown:
            raise ValueError(
                f"experiment config: unknown simulation field(s) {unknown}; known: {sorted(known)}"
            )
        taken = sorted(set(self.simulation) & {*EXPERIMENT_FIELDS, *ARM_FIELDS})
        if taken:
            raise ValueError(
                f"experiment config: simulation.{taken} are set by the experiment itself; set the top-level"
                " field (or the arm's treatment) instead"
            )
        if self.fit_draws == 1 or self.fit_draws < 0 or self.fit_draw_buyers < 0:
            raise ValueError(
                f"experiment config: fit_draws {self.fit_draws} (fit_draw_buyers {self.fit_draw_buyers}):"
                " a spread needs at least 2 draws; use 0 (none) or 2 or more, and buyers 0 (a quarter) or more"
            )
        if self.bootstrap < 2:
            raise ValueError(
                f"experiment config: bootstrap needs at least 2 replicates, got {self.bootstrap}"
            )
        if not self.common_random_numbers and not self.simulation.get("stratified", True):
            raise ValueError(
                "experiment config: independent arms (common_random_numbers: false) are matched by merchant,"
                " type and rank, which needs the same count of each type in every arm: keep stratified true"
            )


@dataclass(frozen=True)
class Arm:
    """One storefront of the experiment and how its env is made."""

    name: str
    treatment: dict[str, Any]
    """The treatment as envs.treatments.Treatment.to_dict() writes it (``{"kind": "none"}`` for none)."""
    index: int
    """Position among the arms, the control first (seeds independent arms)."""

    @property
    def kind(self) -> str:
        return str(self.treatment.get("kind", "none"))

    @property
    def env(self) -> tuple[str, dict[str, Any]]:
        """The Gymnasium id and the kwargs besides data: the plain storefront for ``none``, a
        variant's own id, else the treated storefront with the treatment."""
        if self.kind == "none":
            return STOREFRONT_ID, {}
        from envs.treatments import treatment_env

        return treatment_env(self.treatment)


def normalised_treatment(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    """The treatment as its own class writes it (unknown kinds, fields and values fail here, early)."""
    from envs.treatments import Treatment

    try:
        return Treatment.from_dict(spec).to_dict()
    except (TypeError, ValueError) as err:
        raise ValueError(f"arm {name!r}: {err}") from err


def experiment_arms(config: ExperimentConfig) -> list[Arm]:
    """The control first, then the treatments in the order the config lists them."""
    names = [config.control, *(n for n in config.arms if n != config.control)]
    return [Arm(n, normalised_treatment(n, config.arms[n]), i) for i, n in enumerate(names)]


def unchanged_storefronts(config: ExperimentConfig) -> list[str]:
    """Lines naming the merchants where an arm's storefront is the control's (``Treatment.applies_to``:
    a price change where no product has a price, a banner for a product not sold there); an arm that
    changes no merchant's storefront is refused, since its effects would be 0 by construction, unless
    it is meant to (an A/A arm, ``Treatment.is_identity``)."""
    from envs.catalog import load_catalogs
    from envs.treatments import Treatment

    if not config.data or not config.distributions:
        return []  # the simulation says what is missing
    merchants = list(config.merchants) or sorted(
        pl.read_parquet(config.distributions, columns=["merchant_id"])["merchant_id"].unique().to_list()
    )
    catalogs = load_catalogs(config.data, merchants)
    why = {
        "price": "none of the products it reprices is sold there with a price",
        "order": "none of their products has a price",
        "banner": "the product or category is not in their catalogue",
    }
    lines = []
    for arm in experiment_arms(config)[1:]:
        treatment = Treatment.from_dict(arm.treatment)
        if treatment.is_identity:
            continue
        same = [m for m in merchants if not treatment.applies_to(catalogs[m])]
        reason = why.get(treatment.kind, "nothing it changes is there")
        if len(same) == len(merchants):
            raise ValueError(
                f"arm {arm.name!r} ({treatment.describe()}) leaves the storefront unchanged at every merchant of"
                f" the experiment ({reason}); fix: leave the arm out, or run it on a log that shows what it"
                " changes"
            )
        if same:
            named = ", ".join(same[:5]) + (f" and {len(same) - 5} more" if len(same) > 5 else "")
            lines.append(
                f"arm {arm.name}: the storefront is the control's at {len(same)} of {len(merchants)} merchants"
                f" ({named}: {reason}); their buyers' effect is 0"
            )
    return lines


def arm_dir(config: ExperimentConfig, arm: Arm) -> Path:
    return Path(config.out) / ARMS_DIR / arm.name


def arm_simulation(config: ExperimentConfig, arm: Arm, resume: bool = False) -> SimulationConfig:
    """The simulation of one arm: the experiment's shared settings, the arm's env and output folder."""
    values: dict[str, Any] = {"progress": False, **config.simulation}
    values |= {k: getattr(config, k) for k in EXPERIMENT_FIELDS if k != "out"}
    modules = list(values.get("env_modules") or ["envs"])
    if "envs" not in modules:
        modules.insert(0, "envs")  # registers the control and treated storefronts in every runner
    stride = 0 if config.common_random_numbers else INDEPENDENT_SEED_STRIDE * arm.index
    values |= {
        "out": str(arm_dir(config, arm)),
        "seed": config.seed + stride,
        "env_id": arm.env[0],
        "env_kwargs": arm.env[1],
        "env_modules": modules,
        "resume": resume,
    }
    return SimulationConfig(**values)


def arm_status(sim: SimulationConfig) -> str:
    """Whether the arm's folder is new, holds a partial run (resumed) or complete rollouts of these
    settings ("new", "partial", "done"); refuses one that holds a run of other settings."""
    path = Path(sim.out) / MANIFEST
    if not path.exists():
        return "new"
    manifest = json.loads(path.read_text(encoding="utf-8"))
    before, now = manifest.get("config", {}), config_to_dict(sim)
    defaults = config_to_dict(SimulationConfig())
    changed = [k for k in RESULT_FIELDS if before.get(k, defaults[k]) != now[k]]
    if changed:
        raise ValueError(
            f"{sim.out}: holds an arm simulated with other {changed} ({[before.get(k) for k in changed]});"
            " choose a new --out, or remove that folder to simulate the arm again"
        )
    return "done" if manifest.get("complete") else "partial"


def run_arms(
    config: ExperimentConfig, verbose: bool = False, draws: list[ExperimentConfig] | None = None
) -> dict[str, dict[str, Any]]:
    """Simulate every arm that is not already complete, and each posterior draw's arms (``draws``,
    experiment_fit.py's ``draw_configs``), in one Ray session; the main run's manifest per arm."""
    arms = experiment_arms(config)
    for line in unchanged_storefronts(config):
        print(line, flush=True)
    runs = [("", config), *((f"draw {d} ", c) for d, c in enumerate(draws or []))]
    plans = [(label, arm, arm_simulation(c, arm)) for label, c in runs for arm in arms]
    status = [arm_status(sim) for _, _, sim in plans]
    for (label, arm, sim), state in zip(plans, status, strict=True):
        if state == "done":
            print(f"{label}arm {arm.name}: rollouts exist in {sim.out}; not simulated again", flush=True)
    todo = [
        (label, arm, sim, state)
        for (label, arm, sim), state in zip(plans, status, strict=True)
        if state != "done"
    ]
    if todo:
        from engine.console_log import quiet_model_loading, ray_session
        from engine.simulation import simulate

        quiet_model_loading()
        with ray_session(config.out, verbose, address=config.ray_address):
            for label, arm, sim, state in todo:
                sim = replace(sim, resume=state == "partial")
                what = "resuming" if sim.resume else "simulating"
                print(f"{label}arm {arm.name} ({treatment_text(arm.treatment)}): {what} ...", flush=True)
                started = time.perf_counter()
                manifest = simulate(sim)
                print(
                    f"{label}arm {arm.name}: {manifest['buyers_completed']:,} visits, {manifest['steps']:,} steps"
                    f" ({manifest['invalid_steps']:,} invalid) in {time.perf_counter() - started:.1f} s",
                    flush=True,
                )
    manifests = {}
    for label, arm, sim in plans:
        manifest = json.loads((Path(sim.out) / MANIFEST).read_text(encoding="utf-8"))
        if not manifest.get("complete") or manifest["buyers_completed"] != manifest["buyers_requested"]:
            raise RuntimeError(f"{label}arm {arm.name}: the simulation did not complete ({sim.out})")
        if not label:
            manifests[arm.name] = manifest
    return manifests


def treatment_text(treatment: dict[str, Any]) -> str:
    """A treatment in a short phrase (``Treatment.describe``)."""
    if treatment.get("kind", "none") == "none":
        return "unchanged storefront"
    from envs.treatments import Treatment

    return Treatment.from_dict(treatment).describe()


def personas_dir(config: ExperimentConfig) -> Path | None:
    """The VQ-VAE run whose types the codes are: the config's, else the assign manifest's ``run``."""
    if config.personas:
        return Path(config.personas)
    if not config.distributions:
        return None
    manifest = Path(config.distributions).parent / "manifest.json"
    if not manifest.exists():
        return None
    run = json.loads(manifest.read_text(encoding="utf-8")).get("run")
    return Path(run) if run else None


def type_descriptions(config: ExperimentConfig) -> dict[int, str]:
    """Code -> the type report's one-line description (learners/vqvae/report.describe), where there is one."""
    run = personas_dir(config)
    path = run / "metrics.json" if run is not None else None
    if path is None or not path.exists():
        return {}
    types = json.loads(path.read_text(encoding="utf-8")).get("types", {})
    return {int(code): str(t.get("description", "")) for code, t in types.items() if t.get("description")}


def row_choices(config: ExperimentConfig) -> dict[int, dict[str, float]]:
    """Code -> how its buyers chose among a listing's rows in the logs the agent was trained on
    (learners/agent/row_choice.py: share of opens of a bestseller row, the rows' bestseller share, the
    first row's share, buyers), where the policy is an agent that has a row choice."""
    if config.policy not in ("transformers", "vllm") or not config.policy_path:
        return {}
    fit = RowChoice.load(config.policy_path)
    return {
        int(code): {
            "bestseller_share": c.bestseller_share,
            "bestseller_rows": c.bestseller_rows,
            "first_share": c.first_share,
            "buyers": c.buyers,
        }
        for code, c in fit.codes.items()
        if code != "none"
    }


def price_answers(config: ExperimentConfig) -> dict[int, dict[str, dict[str, float]]]:
    """Code -> price cell -> the agent's measured answer to that cell's product pages against regular
    ones (learners/agent/price_response.py: the served change in P(add to cart) against the same pages
    at a regular price, the measured contrast's standard error and the buyers it was measured on),
    where the policy is an agent that has one."""
    if config.policy not in ("transformers", "vllm") or not config.policy_path:
        return {}
    path = Path(config.policy_path) / PRICE_RESPONSE_FILE
    if not path.exists():
        return {}
    codes = json.loads(path.read_text(encoding="utf-8"))["codes"]
    return {
        int(code): {
            cell: {
                "add_to_cart": float(fit["shrunk"].get("add_to_cart", 0.0)),
                "stderr": float(fit["stderr"].get("add_to_cart", math.inf)),
                "buyers": int(fit["buyers"]),
            }
            for cell, fit in cells.items()
        }
        for code, cells in codes.items()
        if code != "none"
    }


def arm_outcome_frames(config: ExperimentConfig, arms: list[Arm]) -> dict[str, pl.DataFrame]:
    """Each arm's visits with their outcomes (engine/experiment_outcomes.py), also written to
    OUT/arms/<arm>/outcomes.parquet."""
    if not config.data:
        raise ValueError("experiment config: `data` (the prepared directory) is not set")
    frames = {}
    for arm in arms:
        sim = arm_simulation(config, arm)
        storefronts = arm_storefronts(config.data, sim.env_id, sim.env_kwargs, sim.env_modules)
        frame = arm_outcomes(sim.out, storefronts)
        frame.write_parquet(Path(sim.out) / OUTCOMES_FILE)
        frames[arm.name] = frame
    return frames


def arm_effects(
    config: ExperimentConfig, arms: list[Arm], replicates: int
) -> tuple[list[dict[str, Any]], dict[str, bool], pl.DataFrame]:
    """Every treatment's effect rows against the control (``replicates`` bootstrap replicates),
    whether each treatment's visits are the control's buyers, and the control's visits."""
    frames = arm_outcome_frames(config, arms)
    control = frames[config.control]
    rows, same_buyers = [], {}
    for arm in arms[1:]:
        pairs = pair_visits(control, frames[arm.name])
        if config.common_random_numbers and not pairs.same_buyers:
            raise RuntimeError(
                f"arm {arm.name}: its buyers are not the control's although common random numbers are on"
            )
        same_buyers[arm.name] = pairs.same_buyers
        # Each treatment's resamples from its own stream: adding an arm changes no other arm's intervals.
        rows += estimate(pairs, arm.name, replicates, seed=[config.seed, arm.index])
    return rows, same_buyers, control


def run_experiment(config: ExperimentConfig, command: str = "", verbose: bool = False) -> dict[str, Any]:
    """Simulate the arms (those not already there), measure every treatment's effects against the
    control, write OUT/effects.parquet, effects.json and report.html; returns what effects.json holds."""
    started = time.perf_counter()
    arms = experiment_arms(config)
    draws = draw_configs(config)
    manifests = run_arms(config, verbose, draws)
    rows, same_buyers, control = arm_effects(config, arms, config.bootstrap)
    if draws:
        rows = widen(rows, [arm_effects(c, arms, 2)[0] for c in draws])
    descriptions = type_descriptions(config)
    answers = price_answers(config)
    choices = row_choices(config)
    codes = control["code"].value_counts().sort("code")
    result = {
        "command": command,
        "config": config_to_dict(config),
        "control": config.control,
        "common_random_numbers": config.common_random_numbers,
        "same_buyers": same_buyers,
        "arms": [
            {
                "name": arm.name,
                "treatment": arm.treatment,
                "description": treatment_text(arm.treatment),
                "env_id": arm.env[0],
                "visits": manifests[arm.name]["buyers_completed"],
                "steps": manifests[arm.name]["steps"],
                "invalid_steps": manifests[arm.name]["invalid_steps"],
                "simulated_s": manifests[arm.name]["elapsed_s"],
            }
            for arm in arms
        ],
        "merchants": sorted(control["merchant_id"].unique().to_list()),
        "types": {
            str(code): {
                "visits": int(n),
                "share": n / control.height,
                "description": descriptions.get(code, ""),
            }
            | ({"price_answers": answers[code]} if code in answers else {})
            | ({"row_choice": choices[code]} if code in choices else {})
            for code, n in zip(codes["code"].to_list(), codes["count"].to_list(), strict=True)
        },
        "metrics": {m: METRIC_LABELS[m] for m in METRICS},
        "bootstrap": config.bootstrap,
        "fit_draws": {"draws": config.fit_draws, "buyers_per_merchant": draw_buyers(config)}
        if config.fit_draws
        else None,
        "rows": rows,
    }
    result["elapsed_s"] = round(time.perf_counter() - started, 1)
    write_report(result, config.out)
    return result
