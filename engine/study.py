"""The evaluation protocol end to end: merchant-disjoint split -> personas -> agents -> simulate -> evaluate.

The protocol of docs/architecture.md, in order (each stage writes under ``OUT`` and is skipped when its output is
already there, so an interrupted study continues where it stopped):

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
5. ``simulate``: every system simulates, per held-out merchant, at least ``sessions_per_merchant``
   visits and ``visits_per_real_session`` per real session, and goal tasks (buy a target product
   within 20 steps) over ``goal_seeds`` seeds.
6. ``evaluate``: one report per variant (``report/<variant>/``) and ``OUT/metrics.json``,
   ``OUT/summary.md``, ``OUT/index.html``: every system's metrics with 95% intervals beside the
   perfect simulator's ceiling and the floor (``engine/bootstrap.py``), normalised scores, the main
   system's paired differences with each baseline, invalid rate and goal success.

A simulated buyer is one visit, so real rates are per session (``engine/evaluate.py``). The systems
(``SYSTEMS``) differ only in policy, persona use and code distribution; everything else is shared.
"""

from __future__ import annotations

import html
import json
import shlex
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import yaml

from engine.bootstrap import uncertainty
from engine.cli import main as simpersona
from engine.evaluate import fidelity, real_stats, real_units, sim_stats, sim_units, step_quality
from engine.report import fidelity_html, fidelity_text, headline, markdown_table, plot_bounds, write_report
from learners.config import config_to_dict
from learners.data.merchant_split import eligible_merchants, filter_prepared, heldout_merchants
from learners.data.windows import window_cutoff, window_prepared

VARIANTS = ("strict", "same-window")
RUN_ONLY_FIELDS = ("out", "workers", "runners", "envs_per_runner", "policy_placement")
"""Settings that change how fast a study runs, not what it finds: a study may continue with others."""


@dataclass(frozen=True)
class System:
    """One simulated system of the study: which policy, which agent, which code distribution."""

    policy: str
    """Simulation backend: transformers, markov or random."""
    agent: str | None
    """Key of the trained artifact it uses (persona, no-persona, larger, markov) or none."""
    use_persona: bool
    """Whether the policy sees each buyer's persona code."""
    codes: str
    """Where the codes come from: own (the merchant's), other (another held-out merchant's), uniform."""


SYSTEMS: dict[str, System] = {
    "persona": System("transformers", "persona", True, "own"),
    "mismatched-merchant": System("transformers", "persona", True, "other"),
    "mismatched-uniform": System("transformers", "persona", True, "uniform"),
    "no-persona": System("transformers", "no-persona", False, "own"),
    "larger-no-persona": System("transformers", "larger", False, "own"),
    "markov": System("markov", "markov", True, "own"),
    "markov-mismatched-merchant": System("markov", "markov", True, "other"),
    "random": System("random", None, False, "own"),
}


@dataclass
class StudyConfig:
    """One run of the evaluation protocol (``simpersona study CONFIG``)."""

    out: str = "study"
    """Study directory: every stage's output, the reports, metrics.json and summary.md."""
    data: str | None = None
    """Prepared directory of the real logs; none prepares `inputs` into OUT/data."""
    inputs: list[str] = field(default_factory=list)
    """Raw log files or directories, prepared when `data` is not set."""
    format: str | None = None
    """Source format of `inputs` (tmall-ijcai15, tmall-brand, rees46, taobao)."""
    mapping: str | None = None
    """YAML mapping of `inputs` (instead of `format`)."""
    heldout: int = 42
    """Held-out merchants, drawn among the eligible ones (`min_sessions`, `min_buyers`)."""
    min_sessions: int = 50
    """Held-out merchants, and training merchants replayed into traces, have at least this many real
    sessions: a merchant's real rates are only as precise as its sessions allow."""
    min_buyers: int = 1
    """... and at least this many buyers."""
    min_training_merchants: int = 4
    """A split that leaves fewer training merchants (not held out) is refused."""
    seed: int = 0
    """Seed of the split, the fits, the training and the simulations."""
    variants: list[str] = field(default_factory=lambda: list(VARIANTS))
    """Protocol variants to evaluate: strict (earlier-window codes, later-window rates), same-window."""
    window_quantile: float = 0.5
    """Strict variant: the cutoff is this quantile of the held-out merchants' event times (day precision)."""
    codes: int = 32
    """Codebook size K."""
    vq_epochs: int = 10
    """VQ-VAE training epochs."""
    workers: int = 1
    """Ray Train workers of the VQ-VAE and agent fits."""
    train_sessions: int | None = None
    """At most this many sessions replayed into traces per training merchant (the first by buyer id);
    default: every session. Size the agents' training with `train_tokens` instead."""
    train_tokens: int | None = None
    """Training tokens per epoch of each agent (train-agent's max_tokens): when the training merchants'
    examples hold more, each agent keeps a seeded, merchant-stratified sample of whole sessions that
    fits (its manifest counts them). None: every session of every replayed training merchant."""
    base_model: str = "tiny"
    """Base model of the persona and no-persona agents (tiny, small, base or a Hugging Face id)."""
    larger_model: str = "tiny-8x"
    """Base model of the larger no-persona baseline (the 8x twin: tiny-8x, small-8x, base-8x)."""
    stage1_epochs: int = 1
    """Agent stage-1 epochs (persona-token meaning); with validation, the most it may run."""
    stage2_epochs: int = 2
    """Agent stage-2 epochs (the policy); with validation, the most it may run."""
    validation_share: float = 0.1
    """Share of the replayed training merchants (whole merchants; never the held-out ones) each agent
    holds out as validation: both stages stop early on its loss and keep their best epoch."""
    patience: int = 2
    """Agent early stopping: a stage stops after this many epochs without a lower validation loss."""
    batch_size: int = 16
    """Examples per optimizer step of each agent (and Ray Train worker). 64 suits a GPU: on an H200 the
    25.7M-parameter agent trains at 150k tokens/s with 64, 34k with 16."""
    use_gpu: bool = False
    """Train the agents on one GPU per Ray Train worker (bf16 autocast)."""
    systems: list[str] = field(default_factory=lambda: list(SYSTEMS))
    """Systems to simulate and compare (keys of engine.study.SYSTEMS); the first is the main one."""
    sessions_per_merchant: int = 1000
    """Simulated visits per held-out merchant and system (the least, see `visits_per_real_session`)."""
    visits_per_real_session: float = 5.0
    """A merchant gets at least this many simulated visits per real session, so the simulation's own
    sampling error is small next to the real side's; 0 fixes every merchant at `sessions_per_merchant`."""
    bootstrap: int = 1000
    """Bootstrap replicates of the intervals, the ceiling and the floor."""
    max_steps: int = 30
    """Steps after which a simulated visit is truncated."""
    temperature: float = 1.0
    """Sampling temperature of the LLM agents over the page's valid actions."""
    goal_systems: list[str] = field(
        default_factory=lambda: ["persona", "no-persona", "larger-no-persona", "markov"]
    )
    """Systems given goal tasks (buy a target product within 20 steps)."""
    goal_merchants: int = 10
    """Held-out merchants (the first ones, sorted) whose catalogues give the goal tasks."""
    goal_buyers_per_merchant: int = 10
    """Goal tasks per merchant and seed."""
    goal_seeds: int = 3
    """Seeds of the goal tasks; success is reported with a confidence interval over them."""
    runners: int = 2
    """Env runner actors per simulation."""
    envs_per_runner: int = 128
    """Concurrent episodes per runner."""
    policy_placement: str = "auto"
    """Where the simulations' policies run (simulate's ``policy_placement``): "auto" serves LLM agents
    from a policy server (GPUs); "runner" gives each runner a copy, faster on a CPU-only box."""


class Study:
    """Runs the protocol's stages for one StudyConfig; every command it runs is logged with its time."""

    def __init__(self, config: StudyConfig) -> None:
        unknown = [s for s in [*config.systems, *config.goal_systems] if s not in SYSTEMS]
        if unknown:
            raise ValueError(f"study config: unknown system(s) {unknown}; choose from {list(SYSTEMS)}")
        bad = [v for v in config.variants if v not in VARIANTS]
        if bad or not config.variants:
            raise ValueError(f"study config: variants must be a non-empty subset of {VARIANTS}, got {bad}")
        if config.data is None and not config.inputs:
            raise ValueError("study config: set `data` (a prepared directory) or `inputs` (raw logs)")
        self.config = config
        self.out = Path(config.out)
        self.log: list[dict] = []

    def check_settings(self) -> None:
        """Record the study's settings; refuse to continue a study in OUT that was run with others."""
        path = self.out / "study-config.json"
        mine = {k: v for k, v in config_to_dict(self.config).items() if k not in RUN_ONLY_FIELDS}
        if path.exists():
            theirs = json.loads(path.read_text())
            changed = sorted(k for k in mine.keys() | theirs.keys() if mine.get(k) != theirs.get(k))
            if changed:
                raise ValueError(
                    f"{self.out} holds a study run with other settings ({', '.join(changed)}); its outputs "
                    "would be mixed with this one's: use another --out, or the settings in "
                    f"{path}"
                )
        else:
            path.write_text(json.dumps(mine, indent=2) + "\n")

    def cli(self, what: str, argv: list[str], done: Path) -> None:
        """Run ``simpersona ARGV`` unless ``done`` exists; log the command and its wall time."""
        command = "simpersona " + shlex.join(argv)
        if done.exists():
            self.log.append({"stage": what, "command": command, "seconds": None, "skipped": True})
            return
        print(f"\n== {what}: {command}", flush=True)
        start = time.perf_counter()
        if simpersona(argv) != 0:
            raise RuntimeError(f"study stage {what!r} failed: {command}")
        self.log.append({"stage": what, "command": command, "seconds": round(time.perf_counter() - start, 1)})

    def prepared(self) -> Path:
        c = self.config
        if c.data is not None:
            return Path(c.data)
        data = self.out / "data"
        source = ["--format", c.format] if c.format else ["--mapping", str(c.mapping)]
        self.cli(
            "prepare",
            ["prepare", *c.inputs, *source, "--out", str(data), "--no-progress"],
            data / "manifest.json",
        )
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
        training = total - c.heldout
        if c.heldout > len(eligible) or training < c.min_training_merchants or len(eligible) <= c.heldout:
            raise ValueError(
                f"study: cannot hold out {c.heldout} merchants: {len(eligible)} of {total} have >= "
                f"{c.min_sessions} real sessions and >= {c.min_buyers} buyers, and a split must leave at "
                f"least {c.min_training_merchants} training merchants and one eligible merchant to replay "
                f"into traces. Fix: --heldout {max(min(len(eligible) - 1, total - c.min_training_merchants), 0)}"
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
        self.cli(
            "fit personas (training merchants)",
            ["fit-personas", str(self.out / "train-data"), "--out", str(run), "--codes", str(c.codes)]
            + ["--epochs", str(c.vq_epochs), "--workers", str(c.workers), "--seed", str(c.seed)],
            run / "model.safetensors",
        )
        codes = self.out / "codes"
        self.cli(
            "assign (same window)",
            ["assign", str(run), str(data), "--out", str(codes)],
            codes / "manifest.json",
        )
        dists = {"same-window": codes / "merchant_distributions.parquet"}
        if "strict" in c.variants:
            early, early_codes = self.out / "early-data", self.out / "codes-early"
            window = self.window(data, split)
            if not (early / "manifest.json").exists():
                window_prepared(
                    data, early, until=datetime.fromisoformat(window["cutoff"]), merchants=split["heldout"]
                )
            self.cli(
                "assign (earlier window)",
                ["assign", str(run), str(early), "--out", str(early_codes)],
                early_codes / "manifest.json",
            )
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

    def agents(self, split: dict) -> dict[str, Path]:
        """Traces of the training merchants (every session, unless `train_sessions` caps them), the three
        agents (each on `train_tokens` per epoch at most, with `validation_share` of those merchants as
        its validation set for early stopping) and the Markov chain."""
        c = self.config
        traces = self.out / "traces"
        config = self.out / "traces.yaml"
        config.write_text(yaml.safe_dump({"merchants": split["traced"], "max_sessions": c.train_sessions}))
        self.cli(
            "traces (training merchants)",
            ["traces", str(self.out / "train-data"), "--out", str(traces), "--config", str(config)],
            traces / "traces.parquet",
        )
        needed = {SYSTEMS[s].agent for s in [*c.systems, *c.goal_systems]}
        paths = {
            "persona": self.out / "agent",
            "no-persona": self.out / "agent-no-persona",
            "larger": self.out / "agent-larger",
            "markov": self.out / "markov.json",
        }
        common = ["--stage1-epochs", str(c.stage1_epochs), "--stage2-epochs", str(c.stage2_epochs)]
        common += ["--workers", str(c.workers), "--seed", str(c.seed), "--log-every", "1000"]
        common += ["--validation-share", str(c.validation_share), "--patience", str(c.patience)]
        common += ["--batch-size", str(c.batch_size)]
        common += ["--max-tokens", str(c.train_tokens)] if c.train_tokens is not None else []
        common += ["--use-gpu"] if c.use_gpu else []
        trained = [
            ("persona", ["--personas", str(self.out / "codes"), "--base-model", c.base_model]),
            ("no-persona", ["--no-persona", "--base-model", c.base_model]),
            ("larger", ["--no-persona", "--base-model", c.larger_model]),
        ]
        for key, flags in trained:
            if key in needed:
                self.cli(
                    f"train {key} agent",
                    ["train-agent", str(traces), *flags, "--out", str(paths[key]), *common],
                    paths[key] / "manifest.json",
                )
        if "markov" in needed and not paths["markov"].exists():
            self.fit_markov(traces, paths["markov"], paths["persona"])
        return paths

    def fit_markov(self, traces: Path, out: Path, agent: Path | None = None) -> None:
        """The per-type Markov chain, on the examples the persona agent is trained on: its
        ``data/train.parquet`` (without its validation merchants, within its token budget) when it
        was trained, else every example of the traces."""
        from learners.agent.examples import build_examples
        from learners.agent.markov_policy import MarkovPolicy
        from learners.agent.train import AgentTrainConfig

        start, seed = time.perf_counter(), self.config.seed
        trained = agent / "data" / "train.parquet" if agent is not None else None
        if trained is not None and trained.exists():
            examples, what = pq.read_table(trained), f"{trained} (the persona agent's training examples)"
        else:
            codes = pq.read_table(self.out / "codes" / "codes.parquet")
            built = build_examples(
                pq.read_table(traces / "traces.parquet"), codes, AgentTrainConfig.goal_share, seed
            )
            examples, what = built.examples, f"build_examples(traces, codes, seed={seed})"
        MarkovPolicy.fit(examples).save(out)
        self.log.append(
            {
                "stage": "fit Markov chain",
                "command": f"MarkovPolicy.fit({what}).save(markov.json)",
                "seconds": round(time.perf_counter() - start, 1),
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
        uniform = pa.table(
            {
                "merchant_id": np.repeat(split["heldout"], c.codes),
                "code": np.tile(np.arange(c.codes, dtype=np.int64), len(split["heldout"])),
                "p": np.full(len(split["heldout"]) * c.codes, 1.0 / c.codes),
                "n": np.zeros(len(split["heldout"]) * c.codes, dtype=np.int64),
            }
        )
        for variant in dists:
            out["uniform", variant] = folder / "uniform.parquet"
        pq.write_table(uniform, folder / "uniform.parquet")
        goal_merchants = pa.array(split["heldout"][: self.config.goal_merchants], pa.string())
        own = pq.read_table(out["own", "same-window"])
        out["goal", "same-window"] = folder / "goal.parquet"
        pq.write_table(
            own.filter(pc.is_in(own["merchant_id"], value_set=goal_merchants)), out["goal", "same-window"]
        )
        return out

    def simulate(
        self, name: str, run: str, dist: Path, paths: dict[str, Path], data: Path, goals: bool
    ) -> Path:
        c, system = self.config, SYSTEMS[name]
        out = self.out / ("goals" if goals else "sim") / f"{name}-{run}"
        argv = ["simulate", "--out", str(out), "--data", str(data), "--distributions", str(dist)]
        argv += ["--policy", system.policy, "--policy-path", str(paths[system.agent]) if system.agent else ""]
        argv += ["--use-persona", str(system.use_persona).lower(), "--seed", str(c.seed)]
        argv += [
            "--runners",
            str(c.runners),
            "--envs-per-runner",
            str(c.envs_per_runner),
            "--progress",
            "false",
            "--policy-placement",
            c.policy_placement,
        ]
        if system.policy == "transformers":
            argv += ["--temperature", str(c.temperature)]
        if goals:
            argv += ["--goal-tasks", "true", "--replicates", str(c.goal_seeds)]
            argv += ["--buyers-per-merchant", str(c.goal_buyers_per_merchant), "--max-steps", "20"]
        else:
            argv += ["--buyers-per-merchant", str(c.sessions_per_merchant), "--max-steps", str(c.max_steps)]
            argv += ["--buyers-per-real-session", str(c.visits_per_real_session)]
        self.cli(f"simulate {name} ({'goal tasks' if goals else run})", argv, out / "manifest.json")
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
        goals = {
            name: self.simulate(name, "goals", dist_files["goal", "same-window"], paths, data, goals=True)
            for name in c.goal_systems
        }
        result = self.evaluate(data, split, runs, goals)
        result["wall_s"] = round(time.perf_counter() - started, 1)
        result["log"] = self.log
        (self.out / "metrics.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
        (self.out / "summary.md").write_text(summary_markdown(result))
        (self.out / "index.html").write_text(index_html(result))
        return result

    def evaluate(self, data: Path, split: dict, runs: dict, goals: dict[str, Path]) -> dict:
        c, main = self.config, self.config.systems[0]
        goal_success = {name: step_quality(path).get("goal_success") for name, path in goals.items()}
        variants = {}
        for variant in c.variants:
            since = (
                datetime.fromisoformat(self.window(data, split)["cutoff"]) if variant == "strict" else None
            )
            # Strict: only merchants whose buyers were seen in the earlier window have a code distribution.
            own = pq.read_table(
                self.out / "distributions" / f"own-{variant}.parquet", columns=["merchant_id"]
            )
            merchants = sorted(set(own["merchant_id"].to_pylist()))
            real = real_stats(data, merchants, unit="session", since=since)
            real_kinds = {k for stats in real.values() for k in stats.kind_counts}
            systems = {}
            for name in c.systems:
                metrics = fidelity(sim_stats(runs[name, variant], real_kinds), real) | step_quality(
                    runs[name, variant]
                )
                if name in goal_success:
                    metrics["goal_success"] = goal_success[name]
                systems[name] = metrics
            units = real_units(data, merchants, unit="session", since=since)
            bounded = uncertainty(
                units,
                {name: sim_units(runs[name, variant], units.actions) for name in c.systems},
                main,
                compare=[s for s in COMPARED if s in c.systems],
                pool=real_units(self.out / "train-data", actions=units.actions),
                replicates=c.bootstrap,
                seed=c.seed,
            )
            window = (
                f"codes from events before {since.date()}, real visits from then on"
                if since
                else "one window"
            )
            notes = (
                f"{variant} variant ({window}); {len(split['heldout'])} held-out merchants (seed {c.seed}), "
                f"one real buyer = one session; {bounded['visits']['median']:.0f} simulated visits per "
                "merchant (median)"
            )
            write_report(systems, self.out / "report" / variant, main=main, notes=notes, fidelity=bounded)
            plot_bounds(bounded, self.out / f"fidelity-{variant}.png")
            variants[variant] = {
                "merchants": min(s["merchants"] for s in systems.values()),
                "notes": notes,
                "systems": {name: headline(s) for name, s in systems.items()},
                "fidelity": bounded,
                "goal_success": goal_success,
            }
        return {
            "config": config_to_dict(c),
            "split": {k: v for k, v in split.items() if k != "traced"} | {"traced": len(split["traced"])},
            "window": self.window(data, split) if "strict" in c.variants else None,
            "variants": variants,
            "targets": {v: targets(r["systems"], main, r["fidelity"]) for v, r in variants.items()},
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


COMPARED = ("mismatched-merchant", "mismatched-uniform", "no-persona", "larger-no-persona", "markov")
"""Baselines whose paired difference with the main system a study reports."""
NORMALISED_TARGET = 0.95


def targets(systems: dict[str, dict], main: str, bounded: dict) -> dict[str, dict]:
    """The study's targets for the main system, stated against what the data allows: CRA and ARA
    within the perfect simulator's reach (normalised score >= 0.95), a paired effect over each
    mismatched baseline whose interval is above 0, not below the Markov chain, and goal success above
    the larger no-persona model. Each with its measured value and whether it is met."""
    me, effects = bounded["systems"][main], bounded["effects"]["vs"]
    checks: dict[str, tuple[float | None, bool]] = {}
    for k in ("cra", "ara"):
        value = me[k]["normalised"]
        checks[f"{k} normalised >= {NORMALISED_TARGET}"] = (
            value,
            value is not None and value >= NORMALISED_TARGET,
        )
    for other in ("mismatched-merchant", "mismatched-uniform"):
        for k in ("cra", "ara", "cr_corr"):
            if other in effects:
                d = effects[other][k]
                checks[f"{k}: {main} - {other} > 0 (paired 95% low)"] = (
                    d["low"],
                    d["low"] is not None and d["low"] > 0,
                )
    if "markov" in effects:
        for k in ("cra", "ara"):
            d = effects["markov"][k]
            checks[f"{k}: {main} not below markov (paired 95% high >= 0)"] = (
                d["high"],
                d["high"] is not None and d["high"] >= 0,
            )
    larger = systems.get("larger-no-persona", {}).get("goal_success")
    mine = systems[main].get("goal_success")
    if larger is not None and mine is not None:
        checks["goal_success > larger-no-persona"] = (mine - larger, mine > larger)
    return {name: {"value": value, "met": bool(met)} for name, (value, met) in checks.items()}


def explain(variant: str, fidelity: dict, main: str) -> str:
    """One paragraph that says what a variant's numbers mean: which system is closest to real buyers,
    whether the persona codes matter, and how close the main system is to a perfect simulator."""
    systems, bounds = fidelity["systems"], fidelity["bounds"]

    def norm(name: str) -> float:
        values = [systems[name][k]["normalised"] for k in ("cra", "ara")]
        values = [v for v in values if v is not None]
        return sum(values) / len(values) if values else float("-inf")

    best = max(systems, key=norm)
    me = systems[main]
    ceiling = bounds["cra"]["ceiling"]
    closest = (
        f"closest to real buyers is {best} (CRA and ARA on average {norm(best):.2f} of the way from a "
        "simulator that knows nothing of the merchant (0) to a perfect one (1))"
        if norm(best) > 0
        else f"no system is closer to real buyers than one that knows nothing of the merchant (best: {best})"
    )
    lines = [
        f"{variant}: {closest}.",
        f"{main}: CRA {me['cra']['value']:.3f} [{me['cra']['low']:.3f}, {me['cra']['high']:.3f}] against a "
        f"perfect simulator's {ceiling['mean']:.3f} [{ceiling['low']:.3f}, {ceiling['high']:.3f}] on the same "
        f"data ({bounds['cra']['ceiling_unlimited']['mean']:.3f} with unlimited visits) and "
        f"{bounds['cra']['floor']['mean']:.3f} for one that knows nothing of the merchant;"
        + (
            " inside the ceiling's interval: no better simulator can be told apart on this data."
            if ceiling["low"] is not None and me["cra"]["value"] >= ceiling["low"]
            else " below the ceiling's interval: there is room to improve."
        ),
    ]
    vs = fidelity["effects"]["vs"]
    for other in ("mismatched-merchant", "mismatched-uniform", "no-persona"):
        if other in vs:
            d = vs[other]["cra"]
            verdict = (
                "the persona codes matter"
                if d["claimed"] and d["low"] > 0
                else "worse with the right codes"
                if d["claimed"]
                else "no difference the data can show"
            )
            lines.append(
                f"Against {other}: CRA {d['diff']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}], {verdict}."
            )
    return " ".join(lines)


def _value(target: dict) -> str:
    return "–" if target["value"] is None else f"{target['value']:.3f}"


def index_html(result: dict) -> str:
    """One page over the variants: the target checks and links to each variant's full report."""
    sections = []
    for variant, r in result["variants"].items():
        rows = "".join(
            f"<tr><td>{html.escape(name)}</td><td>{_value(t)}</td><td>{'met' if t['met'] else 'missed'}</td></tr>"
            for name, t in result["targets"][variant].items()
        )
        sections.append(
            f"<h2>{html.escape(variant)}</h2>"
            f"<p><b>{html.escape(explain(variant, r['fidelity'], result['config']['systems'][0]))}</b></p>"
            f"<p>{html.escape(r['notes'])}</p>"
            f'<p><a href="report/{variant}/index.html">full report</a></p>'
            f'<img src="fidelity-{variant}.png" alt="each system with its interval, the ceiling and the floor,'
            f' {variant}">{fidelity_html(r["fidelity"])}'
            f"<h3>Targets</h3><table><tr><th>target</th><th>value</th><th>met</th></tr>{rows}</table>"
        )
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8"><title>SimPersona study</title>'
        "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto}td,th{border:1px solid #ccc;"
        "padding:4px 8px}table{border-collapse:collapse}img{max-width:100%}</style></head><body>"
        f"<h1>SimPersona study</h1><p>Held-out merchants: {len(result['split']['heldout'])}, split seed "
        f'{result["split"]["seed"]}. Details: <a href="summary.md">summary.md</a>, '
        f'<a href="metrics.json">metrics.json</a>.</p>{"".join(sections)}</body></html>\n'
    )


def summary_markdown(result: dict) -> str:
    split = result["split"]
    lines = [
        "# Study summary",
        "",
        f"Held-out merchants: {len(split['heldout'])} of {split['eligible']} with >= {split['min_sessions']}"
        f" real sessions and >= {split['min_buyers']} buyers ({split['merchants']} merchants in all), split"
        f" seed {split['seed']}; wall time {result['wall_s']} s.",
    ]
    for variant, r in result["variants"].items():
        lines += [
            "",
            f"## {variant}",
            "",
            explain(variant, r["fidelity"], result["config"]["systems"][0]),
            "",
        ]
        lines += [r["notes"] + f"; {r['merchants']} merchants compared.", ""]
        lines += [f"![fidelity](fidelity-{variant}.png)", "", fidelity_text(r["fidelity"]), ""]
        lines += ["Other figures:", "", markdown_table(r["systems"]), ""]
        lines += ["| target | value | met |", "|---|---:|---|"]
        for name, t in result["targets"][variant].items():
            lines.append(f"| {name} | {_value(t)} | {'yes' if t['met'] else 'no'} |")
    lines += ["", "## Commands", "", "| stage | command | s |", "|---|---|---:|"]
    for entry in result["log"]:
        seconds = "done before" if entry.get("skipped") else entry["seconds"]
        lines.append(f"| {entry['stage']} | `{entry['command']}` | {seconds} |")
    return "\n".join(lines) + "\n"
