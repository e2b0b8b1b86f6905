"""The evaluation protocol end to end: merchant-disjoint split -> personas -> agents -> simulate -> evaluate.

The protocol of docs/architecture.md, in order. Every stage is a call of a stage function
(engine/stages.py) with a config built from the StudyConfig (engine/study_config.py): its section
for that stage, and the paths, seed and merchants the study decides. Each prints the ``simpersona``
command that runs the same stage by hand (rendered from that config), and is skipped when its output
is already there, so an interrupted study continues where it stopped:

1. ``data``: the prepared directory (``prepare`` of ``inputs`` when no ``data`` is given).
2. ``split``: ``heldout`` merchants drawn (``seed``) among those with ``>= min_sessions`` real
   sessions (and ``>= min_buyers`` buyers); the codebook, the agents and the Markov chain see only the
   other merchants (``train-data``). A split that would leave fewer than ``min_training_merchants``
   stops with the numbers; the split is printed.
3. ``personas``: the VQ-VAE fitted on the training merchants; every buyer assigned with its encoder
   (same window: ``codes``). For the strict variant the held-out merchants' events before a cutoff
   (the ``window_quantile`` of their event times) are prepared on their own and assigned
   (``codes-early``): their code distribution comes from the earlier window, their real rates from
   sessions starting at or after the cutoff.
4. ``agents``: traces replayed from the training merchants; the persona agent, the same-size agent
   without persona tokens and the larger no-persona model fine-tuned on them; the per-type Markov
   chain fitted on the same examples as the persona agent. Only what the chosen systems use is built.
   With ``agent_codes: other-visits`` the persona agent and the chain train on each visit's code from
   the buyer's other visits (``codes-other-visits``, learners/vqvae/other_visits.py).
5. ``simulate``: every system simulates, per held-out merchant, at least ``simulate.buyers_per_merchant``
   visits and ``simulate.buyers_per_real_session`` per real session, and goal tasks (buy a target
   product within 20 steps; ``simulate.goal_draw`` says which products are targets) over ``goal_seeds``
   seeds.
6. ``evaluate`` (run every time, never skipped): one report per variant (``report/<variant>/``) and
   ``OUT/metrics.json``, ``OUT/summary.md``, ``OUT/index.html``: every system's metrics with 95%
   intervals beside the perfect simulator's ceiling and the floor (``engine/bootstrap.py``),
   normalised scores, the main system's paired differences with each baseline, invalid rate and goal
   success (the main system's minus each other's, paired by seed).

A simulated buyer is one visit, so real rates are per session (``engine/evaluate.py``). The systems
(``SYSTEMS``) differ only in policy, persona use and code distribution; everything else is shared.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from engine import stages
from engine.population import goal_draw_fits
from engine.report import headline, plot_bounds
from engine.side_by_side import SideStage, run_side_by_side, shared_cpus
from engine.stage_configs import (
    AssignStage,
    EvaluateStage,
    FitMarkovStage,
    FitPersonasStage,
    PrepareStage,
    ReplayTracesStage,
    TrainAgentStage,
    command_line,
)
from engine.study_config import PREPARE_FIELDS, RUN_ONLY_FIELDS, SECTIONS, SYSTEMS, StudyConfig
from engine.study_report import COMPARED, goal_effects, index_html, summary_markdown, targets
from envs.catalog import PreparedCatalogs
from envs.storefront import FEATURED
from learners.config import config_to_dict
from learners.data.merchant_split import eligible_merchants, filter_prepared, heldout_merchants
from learners.data.windows import window_cutoff, window_prepared

GOAL_MAX_STEPS = 20
"""Steps of a goal task: the target product is bought within them or not at all."""


def settings(config: StudyConfig) -> dict[str, Any]:
    """The study's settings as one flat mapping (a section's fields as ``section.field``)."""
    flat = {}
    for key, value in config_to_dict(config).items():
        if key in SECTIONS:
            flat |= {f"{key}.{k}": v for k, v in value.items()}
        else:
            flat[key] = value
    return flat


class Study:
    """Runs the protocol's stages for one StudyConfig; every stage it runs is logged with its command
    and time (``verbose``: Ray's own output on the console too)."""

    def __init__(self, config: StudyConfig, verbose: bool = False) -> None:
        if config.data is None and not config.inputs:
            raise ValueError("study config: set `data` (a prepared directory) or `inputs` (raw logs)")
        self.config = config
        self.out = Path(config.out)
        self.verbose = verbose
        self.log: list[dict] = []

    def check_settings(self) -> None:
        """Record the study's settings; refuse to continue a study in OUT that was run with others."""
        path = self.out / "study-config.json"
        mine = {k: v for k, v in settings(self.config).items() if k not in RUN_ONLY_FIELDS}
        if path.exists():
            theirs = json.loads(path.read_text())
            default = settings(StudyConfig())  # a setting missing from an older record had its default

            def differs(key: str) -> bool:
                return mine.get(key, default.get(key)) != theirs.get(key, default.get(key))

            changed = sorted(k for k in mine.keys() | theirs.keys() if differs(k))
            if not (self.out / "split.json").exists():
                # No split yet (the last run was refused there): only the prepared data is kept.
                changed = [k for k in changed if k in PREPARE_FIELDS or k.startswith("prepare.")]
            if changed:
                raise ValueError(
                    f"{self.out} holds a study run with other settings ({', '.join(changed)}); its outputs "
                    "would be mixed with this one's: use another --out, or the settings in "
                    f"{path}"
                )
        path.write_text(json.dumps(mine, indent=2) + "\n")

    def stage(self, what: str, run: Callable[[Any, bool], Any], config: Any, done: Path) -> Any | None:
        """``run(config)`` (a stage function) unless ``done`` exists; print and log its command and time.
        Returns the stage's result, None when it was skipped."""
        command = command_line(config)
        if done.exists():
            self.log.append({"stage": what, "command": command, "seconds": None, "skipped": True})
            return None
        print(f"\n== {what}: {command}", flush=True)
        start = time.perf_counter()
        result = run(config, self.verbose)
        for line in result.lines():
            print(line, flush=True)
        self.log.append({"stage": what, "command": command, "seconds": round(time.perf_counter() - start, 1)})
        return result

    def prepared(self) -> Path:
        c = self.config
        if c.data is not None:
            return Path(c.data)
        data = self.out / "data"
        config = PrepareStage(
            list(c.inputs),
            format=c.format,
            mapping=None if c.format else c.mapping,
            out=str(data),
            progress=False,
            prepare=c.prepare,
        )
        self.stage("prepare", stages.prepare, config, data / "manifest.json")
        return data

    def split(self, data: Path) -> dict:
        """The held-out merchants and the training merchants' copy of the tables (split.json)."""
        path = self.out / "split.json"
        if path.exists():
            split = json.loads(path.read_text())
        else:
            split = self.draw_split(data)
            path.write_text(json.dumps(split, indent=2) + "\n")
        print(
            f"split: {split['merchants']} merchants, {split['eligible']} eligible (>= {split['min_sessions']}"
            f" real sessions, >= {split['min_buyers']} buyers); {len(split['heldout'])} held out, "
            f"{split['merchants'] - len(split['heldout'])} training ({len(split['traced'])} of them replayed"
            " into traces)",
            flush=True,
        )
        return split

    def draw_split(self, data: Path) -> dict:
        """Draw the held-out merchants; refuse a split that leaves too few training merchants."""
        c = self.config
        total = pq.read_metadata(data / "merchants.parquet").num_rows
        eligible = eligible_merchants(data, c.min_buyers, c.min_sessions)
        # A split holds out >= 1 eligible merchant, keeps one eligible to replay into traces and leaves
        # min_training_merchants to learn the types on.
        most = min(len(eligible) - 1, total - c.min_training_merchants)
        needs = (
            f"{len(eligible)} of {total} merchants have >= {c.min_sessions} real sessions and >= "
            f"{c.min_buyers} buyers, and a split must hold out one or more of them, leave another to replay"
            f" into traces and leave at least {c.min_training_merchants} training merchants"
        )
        if most < 1:
            raise ValueError(
                f"study: no split of this log works: {needs}. Fix: lower --min-sessions or"
                " --min-training-merchants; for one store (or a few), run the stages yourself on its buyers"
                " (README, 'One store')"
            )
        if not 1 <= c.heldout <= most:
            raise ValueError(
                f"study: cannot hold out {c.heldout} merchants: {needs}. Fix: --heldout {most}"
                " or lower --min-sessions"
            )
        held = heldout_merchants(data, c.heldout, c.min_buyers, c.seed, c.min_sessions)
        kept = filter_prepared(data, self.out / "train-data", held)
        return {
            "seed": c.seed,
            "min_sessions": c.min_sessions,
            "min_buyers": c.min_buyers,
            "merchants": total,
            "eligible": len(eligible),
            "requested": c.heldout,
            "heldout": held,
            "traced": [m for m in eligible if m not in set(held)],
            "training_rows": kept,
        }

    def personas(self, data: Path, split: dict) -> dict[str, Path]:
        """Fit on the training merchants; distributions per variant (held-out merchants only)."""
        c, run = self.config, self.out / "personas"
        fit = FitPersonasStage(str(self.out / "train-data"), str(run), vqvae=replace(c.personas, seed=c.seed))
        self.stage("fit personas (training merchants)", stages.fit_personas, fit, run / "model.safetensors")
        codes = self.out / "codes"
        assign = AssignStage(str(run), str(data), str(codes))
        self.stage("assign (same window)", stages.assign, assign, codes / "manifest.json")
        dists = {"same-window": codes / "merchant_distributions.parquet"}
        if "strict" in c.variants:
            early, early_codes = self.out / "early-data", self.out / "codes-early"
            window = self.window(data, split)
            if not (early / "manifest.json").exists():
                window_prepared(
                    data, early, until=datetime.fromisoformat(window["cutoff"]), merchants=split["heldout"]
                )
            assign = AssignStage(str(run), str(early), str(early_codes))
            self.stage("assign (earlier window)", stages.assign, assign, early_codes / "manifest.json")
            dists["strict"] = early_codes / "merchant_distributions.parquet"
        return dists

    def window(self, data: Path, split: dict) -> dict:
        path = self.out / "window.json"
        if not path.exists():
            cut = window_cutoff(data, self.config.window_quantile, split["heldout"])
            path.write_text(
                json.dumps({"quantile": self.config.window_quantile, "cutoff": cut.isoformat()}) + "\n"
            )
        return json.loads(path.read_text())

    def agent_paths(self) -> dict[str, Path]:
        """Where each policy the systems use lives in the study directory (``SYSTEMS[name].agent``)."""
        return {
            "persona": self.out / "agent",
            "no-persona": self.out / "agent-no-persona",
            "larger": self.out / "agent-larger",
            "markov": self.out / "markov.json",
        }

    def agents(self, split: dict) -> dict[str, Path]:
        """Traces of the training merchants (every session, unless ``traces.max_sessions`` caps them),
        the three agents (each on ``agent.max_tokens`` per epoch at most, with ``agent.validation_share``
        of those merchants as its validation set for early stopping) and the Markov chain, fitted on
        the persona agent's training examples when that agent is trained."""
        c = self.config
        traces = self.out / "traces"
        replay = ReplayTracesStage(
            str(self.out / "train-data"), str(traces), replace(c.traces, merchants=split["traced"])
        )
        self.stage("traces (training merchants)", stages.replay_traces, replay, traces / "traces.parquet")
        needed = {SYSTEMS[s].agent for s in [*c.systems, *c.goal_systems]}
        # Goal tasks are served without the goal-free biases (scoring.py): no price response or row choice to fit.
        goal_only = needed - {SYSTEMS[s].agent for s in c.systems}
        paths = self.agent_paths()
        codes = str(self.out / "codes")
        if c.agent_codes == "other-visits" and ("persona" in needed or "markov" in needed):
            codes = str(self.out / "codes-other-visits")
            run, data = str(self.out / "personas"), str(self.out / "train-data")
            assign = AssignStage(run, data, codes, other_visits=True)
            self.stage(
                "assign (each training visit from the buyer's other visits)",
                stages.assign,
                assign,
                Path(codes) / "manifest.json",
            )
        jobs: list[tuple[str, TrainAgentStage, Path]] = []
        trained = [
            ("persona", codes, c.agent.base_model),
            ("no-persona", None, c.agent.base_model),
            ("larger", None, c.larger_model),
        ]
        for key, personas, base_model in trained:
            if key in needed:
                agent = replace(c.agent, seed=c.seed, base_model=base_model, no_persona=personas is None)
                if key in goal_only:
                    agent = replace(agent, price_rows=0, row_choice_rows=0)
                config = TrainAgentStage(str(traces), str(paths[key]), personas, agent=agent)
                jobs.append((f"train {key} agent", config, paths[key] / "manifest.json"))
        self.train(jobs)
        if "markov" in needed:
            agent_dir = str(paths["persona"]) if "persona" in needed else None
            markov = FitMarkovStage(str(traces), str(paths["markov"]), codes, agent_dir, seed=c.seed)
            self.stage("fit Markov chain", stages.fit_markov, markov, paths["markov"])
        return paths

    def train(self, jobs: list[tuple[str, TrainAgentStage, Path]]) -> None:
        """Each ``(heading, config, done)`` training stage: side by side (``agents_side_by_side``,
        engine/side_by_side.py) when two or more are left to run, else one at a time here."""
        todo = [(what, config) for what, config, done in jobs if not done.exists()]
        if not self.config.agents_side_by_side or len(todo) < 2:
            for what, config, done in jobs:
                self.stage(what, stages.train_agent, config, done)
            return
        for what, config, done in jobs:
            if done.exists():
                self.stage(what, stages.train_agent, config, done)  # logged as skipped
        agent = self.config.agent
        cpus, threads = shared_cpus(len(todo), agent.workers, agent.cpus_per_worker)
        side = [
            SideStage(w, stages.train_agent, replace(c, agent=replace(c.agent, cpus_per_worker=cpus)))
            for w, c in todo
        ]
        seconds = run_side_by_side(side, self.out / "side-by-side", threads, self.verbose)
        for stage in side:
            command = command_line(stage.config)
            self.log.append(
                {
                    "stage": stage.what,
                    "command": command,
                    "seconds": seconds[stage.what],
                    "side_by_side": True,
                }
            )

    def distributions(self, dists: dict[str, Path], split: dict) -> dict[tuple[str, str], Path]:
        """Code distributions per (codes kind, variant), restricted to the held-out merchants."""
        c, folder = self.config, self.out / "distributions"
        folder.mkdir(parents=True, exist_ok=True)
        held = pa.array(split["heldout"], pa.string())
        out: dict[tuple[str, str], Path] = {}
        for variant, source in dists.items():
            table = pq.read_table(source)
            own = table.filter(pc.is_in(table["merchant_id"], value_set=held))
            out["own", variant] = folder / f"own-{variant}.parquet"
            pq.write_table(own, out["own", variant])
            out["other", variant] = folder / f"other-{variant}.parquet"
            pq.write_table(other_merchants(own, c.seed), out["other", variant])
        k = c.personas.codes
        uniform = pa.table(
            {
                "merchant_id": np.repeat(split["heldout"], k),
                "code": np.tile(np.arange(k, dtype=np.int64), len(split["heldout"])),
                "p": np.full(len(split["heldout"]) * k, 1.0 / k),
                "n": np.zeros(len(split["heldout"]) * k, dtype=np.int64),
            }
        )
        for variant in dists:
            out["uniform", variant] = folder / "uniform.parquet"
        pq.write_table(uniform, folder / "uniform.parquet")
        goal_merchants = pa.array(self.goal_merchants(split)[: c.goal_merchants], pa.string())
        own = pq.read_table(out["own", "same-window"])
        out["goal", "same-window"] = folder / "goal.parquet"
        pq.write_table(
            own.filter(pc.is_in(own["merchant_id"], value_set=goal_merchants)), out["goal", "same-window"]
        )
        return out

    def goal_merchants(self, split: dict) -> list[str]:
        """The held-out merchants that can give goal tasks: all of them, or for off-home goals those
        with a product the home page does not feature (engine/population.py's ``GOAL_DRAWS``)."""
        if self.config.simulate.goal_draw != "off-home":
            return list(split["heldout"])
        catalogs = PreparedCatalogs(self.prepared(), split["heldout"])
        return [m for m in split["heldout"] if goal_draw_fits(catalogs.get(m), "off-home")]

    def simulate(
        self, name: str, run: str, dist: Path, paths: dict[str, Path], data: Path, goals: bool
    ) -> Path:
        """One system's simulation: the study's simulate section with the system's policy and codes."""
        c, system = self.config, SYSTEMS[name]
        out = self.out / ("goals" if goals else "sim") / f"{name}-{run}"
        config = replace(
            c.simulate,
            out=str(out),
            data=str(data),
            distributions=str(dist),
            policy=system.policy,
            policy_path=str(paths[system.agent]) if system.agent else None,
            use_persona=system.use_persona,
            seed=c.seed,
            temperature=c.simulate.temperature if system.policy == "transformers" else None,
        )
        if goals:
            config = replace(
                config,
                goal_tasks=True,
                replicates=c.goal_seeds,
                buyers_per_merchant=c.goal_buyers_per_merchant,
                buyers_per_real_session=0.0,
                max_steps=GOAL_MAX_STEPS,
            )
        what = f"simulate {name} ({'goal tasks' if goals else run})"
        result = self.stage(what, stages.simulate, config, out / "manifest.json")
        if result is not None and not result.complete:
            raise RuntimeError(f"study stage {what!r} did not finish: {result.lines()[0]}")
        return out

    def run(self) -> dict:
        """All stages; returns the study's metrics (also in OUT/metrics.json)."""
        c = self.config
        self.out.mkdir(parents=True, exist_ok=True)
        self.check_settings()
        started = time.perf_counter()
        data = self.prepared()
        split = self.split(data)
        dists = self.personas(data, split)
        paths = self.agents(split)
        dist_files = self.distributions(dists, split)
        runs: dict[tuple[str, str], Path] = {}
        for variant in c.variants:
            for name in c.systems:
                system = SYSTEMS[name]
                # Without persona codes, or with uniform ones, a run does not depend on the variant.
                shared = not system.use_persona or system.codes == "uniform"
                key = "shared" if shared else variant
                if (name, key) not in runs:
                    dist = dist_files[system.codes, "same-window" if shared else variant]
                    runs[name, key] = self.simulate(name, key, dist, paths, data, goals=False)
                runs[name, variant] = runs[name, key]
        goal_dist = dist_files["goal", "same-window"]
        goal_systems = c.goal_systems if pq.read_metadata(goal_dist).num_rows else []
        if c.goal_systems and not goal_systems:
            print(
                f"\nno goal tasks: no held-out merchant has more than {FEATURED} products, which goal draw"
                " 'off-home' needs (--simulate.goal-draw popular draws among all products)",
                flush=True,
            )
        goals = {
            name: self.simulate(name, "goals", goal_dist, paths, data, goals=True) for name in goal_systems
        }
        result = self.evaluate(data, split, runs, goals)
        result["wall_s"] = round(time.perf_counter() - started, 1)
        result["log"] = self.log
        (self.out / "metrics.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
        (self.out / "summary.md").write_text(summary_markdown(result))
        (self.out / "index.html").write_text(index_html(result))
        return result

    def evaluate(self, data: Path, split: dict, runs: dict, goals: dict[str, Path]) -> dict:
        """One report per variant (the evaluate stage, run every time) and the study's figures."""
        c, main = self.config, self.config.systems[0]
        variants = {}
        for variant in c.variants:
            cutoff = self.window(data, split)["cutoff"] if variant == "strict" else None
            window = (
                f"codes from events before {datetime.fromisoformat(cutoff).date()}, real visits from then on"
                if cutoff
                else "one window"
            )
            # Strict: only merchants whose buyers were seen in the earlier window have a code distribution.
            own = pq.read_table(
                self.out / "distributions" / f"own-{variant}.parquet", columns=["merchant_id"]
            )
            config = EvaluateStage(
                real=str(data),
                sim=[f"{name}={runs[name, variant]}" for name in c.systems],
                out=str(self.out / "report" / variant),
                merchants=sorted(set(own["merchant_id"].to_pylist())),
                since=cutoff,
                floor_data=str(self.out / "train-data"),
                compare=[s for s in COMPARED if s in c.systems],
                goals=[f"{name}={path}" for name, path in goals.items()],
                notes=f"{variant} variant ({window}); {len(split['heldout'])} held-out merchants (seed"
                f" {c.seed}), one real buyer = one session, simulated types drawn by their share of visits",
                replicates=c.bootstrap,
                seed=c.seed,
            )
            print(f"\n== evaluate ({variant}): {command_line(config)}", flush=True)
            result = stages.evaluate(config, self.verbose)
            plot_bounds(result.fidelity, self.out / f"fidelity-{variant}.png")
            variants[variant] = {
                "merchants": result.merchants,
                "notes": result.notes,
                "systems": {name: headline(s) for name, s in result.systems.items()},
                "fidelity": result.fidelity,
                "goal_success": result.goal_success,
            }
        return {
            "config": config_to_dict(c),
            "split": {k: v for k, v in split.items() if k != "traced"} | {"traced": len(split["traced"])},
            "window": self.window(data, split) if "strict" in c.variants else None,
            "variants": variants,
            "targets": {
                v: targets(r["systems"], main, r["fidelity"], goal_effects(r["goal_success"], main))
                for v, r in variants.items()
            },
        }


def other_merchants(table: pa.Table, seed: int) -> pa.Table:
    """Each merchant gets another merchant's code distribution (a seeded derangement of the merchants)."""
    merchants = sorted(set(table["merchant_id"].to_pylist()))
    if len(merchants) < 2:
        raise ValueError("the mismatched-merchant baseline needs at least two held-out merchants")
    order = np.random.default_rng(seed).permutation(len(merchants))
    # Shifting a random cycle by one position leaves no merchant with its own distribution.
    donor = {merchants[order[i]]: merchants[order[(i + 1) % len(order)]] for i in range(len(order))}
    parts = []
    for merchant in merchants:
        rows = table.filter(pc.equal(table["merchant_id"], donor[merchant]))
        parts.append(rows.set_column(0, "merchant_id", pa.array([merchant] * rows.num_rows, pa.string())))
    return pa.concat_tables(parts)
