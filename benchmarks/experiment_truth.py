"""What-if experiments checked against planted truth: does the simulated effect of a storefront change
match the effect the synthetic generator itself shows, per buyer type?

  .venv/bin/python -m benchmarks.experiment_truth --work /tmp/xt
  .venv/bin/python -m benchmarks.experiment_truth --work /tmp/xt --buyers-per-merchant 1500 --markdown out.md
  .venv/bin/python -m benchmarks.experiment_truth --work /tmp/xt-digits --split-digits   # agents read prices digit by digit
  .venv/bin/python -m benchmarks.experiment_truth --work /tmp/xt-k16 --codes 16   # 16 buyer types, purer
  .venv/bin/python -m benchmarks.experiment_truth --work /tmp/xt-ov --codes 16 --agent-codes other-visits
  .venv/bin/python -m benchmarks.experiment_truth --work /tmp/xt --codes 16 --fit-draws 8   # intervals with the fit's uncertainty
  .venv/bin/python -m benchmarks.experiment_truth --work /tmp/xt-demo --max-tokens 1350000   # the demo's agent budget
  .venv/bin/python -m benchmarks.experiment_truth --work /tmp/xt-small --base-model small --stage2-epochs 8 --patience 2

Steps (each skipped when its output is there, so an interrupted run continues):

1. ``simpersona synth`` (planted types with price, markdown, listing and page-size sensitivities) and its true
   effects of the treatments (``--treatment``), written by the generator under control and treatment
   with common random numbers (learners/data/synth_truth.py).
2. ``simpersona study`` on that log with examples/study-demo.yaml's settings, merchant-disjoint: the
   VQ-VAE, the persona agent, the no-persona agent and the per-type Markov chain see only the training
   merchants; the held-out merchants are the ones experimented on. The agents train on every replayed
   session (``--max-tokens`` budgets them as the demo does): on the demo's 1.35M tokens an agent kept
   its first epoch of 11% of the sessions, too little to learn how one type answers a markdown.
3. ``simpersona experiment`` once per system (persona agent, the same without its price response,
   with its markdown cells only or without its row choice, no-persona agent, Markov chain) on the
   held-out merchants, the population drawn from each merchant's own persona mix, arms: control, a
   price cut on every product and the cheapest-first listing order.
4. The truth at the held-out merchants: the generator's visits there under control and treatment
   (paired), per planted type; per persona code, the mixture of the planted types of the held-out
   buyers with that code (P(type | code)), since an experiment reports per code.
5. Per planted type, the codes' effects read two ways: weighted by P(code | type), which even a
   simulator true to every code dilutes by the codes' purity, and recovered by least squares through
   P(type | code), which gives such a simulator every type's own effect.

Printed (Markdown): per system and treatment, the share of (code x metric) cells whose true effect
lies inside the simulated 95% interval, and the share with the true sign among the cells whose true
effect exceeds the run's detectable effect (MDE); then every cell. The baselines are in the same run:
the Markov chain (it reads no prices), the no-persona agent (it cannot tell the types apart), the
persona agent without the per-code biases its training measured on each price cell's pages
(``persona-no-price``) and with those of the marked-down cells only (``persona-marked-only``),
the persona agent ranking a listing's rows by its own id scores instead of its row choice
(``persona-model-rows``, learners/agent/row_choice.py), and the unpaired design (the variance ratio
of the paired difference against independent arms).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl
import yaml

from benchmarks.table_output import publish
from engine.study_config import AGENT_CODES
from envs.treatments import Treatment
from learners.agent.scoring import PRICE_RESPONSE_FILE, ROW_CHOICE_FILE
from learners.data.synth import SynthConfig
from learners.data.synth_truth import ALL, true_effects

ROOT = Path(__file__).resolve().parents[1]
TREATMENTS = {
    "price-cut": {"kind": "price", "percent": -30.0},
    "cheapest-first": {"kind": "order", "order": "price-ascending"},
}
SYSTEMS = {
    "persona": {"policy": "transformers", "path": "agent", "use_persona": True},
    # The same agent without its price response (learners/agent/price_response.py), the baseline for
    # what the per-code biases add, and with the biases of its marked-down cells only (what the
    # typical price's cells add).
    "persona-no-price": {
        "policy": "transformers",
        "path": "agent-no-price",
        "use_persona": True,
        "cells": "",
    },
    "persona-marked-only": {
        "policy": "transformers",
        "path": "agent-marked-only",
        "use_persona": True,
        "cells": "marked",
    },
    # The same agent with the model's own ranking of a listing's rows (learners/agent/row_choice.py).
    "persona-model-rows": {
        "policy": "transformers",
        "path": "agent-model-rows",
        "use_persona": True,
        "rows": False,
    },
    "no-persona": {"policy": "transformers", "path": "agent-no-persona", "use_persona": False},
    "markov": {"policy": "markov", "path": "markov.json", "use_persona": True},
}


def simpersona(*args: str) -> None:
    """One CLI call; its output goes to the console (the benchmark is a user's session)."""
    start = time.perf_counter()
    print("$ simpersona " + " ".join(args), flush=True)
    subprocess.run([sys.executable, "-m", "engine.cli", *args], check=True, cwd=ROOT)
    print(f"  ({time.perf_counter() - start:.0f} s)", flush=True)


def prepare(
    work: Path,
    synth: SynthConfig,
    truth_visits: int,
    agent: dict | None = None,
    personas: dict | None = None,
    agent_codes: str = "all-visits",
) -> None:
    """The synthetic log with its truth, then the study; ``agent`` and ``personas`` override the demo
    recipe's agent and VQ-VAE fields, ``agent_codes`` is the study's (engine/study_config.py)."""
    raw = work / "raw"
    if not (raw / "truth.parquet").exists():
        (work / "treatments.yaml").write_text(yaml.safe_dump(TREATMENTS), encoding="utf-8")
        simpersona(
            "synth", "--out", str(raw), "--buyers", str(synth.buyers), "--merchants", str(synth.merchants),
            "--seed", str(synth.seed), "--treatment", str(work / "treatments.yaml"),
            "--truth-visits", str(truth_visits),
        )  # fmt: skip
    if not (work / "study" / "metrics.json").exists():
        config = yaml.safe_load((ROOT / "examples" / "study-demo.yaml").read_text(encoding="utf-8"))
        config |= {
            "out": str(work / "study"),
            "inputs": [str(raw / "logs")],
            "mapping": str(raw / "mapping.yaml"),
            "variants": ["same-window"],
            "systems": ["persona", "no-persona", "markov"],
            "goal_systems": [],
            "agent_codes": agent_codes,
        }
        config["agent"] = config.get("agent", {}) | (agent or {})
        config["personas"] = config.get("personas", {}) | (personas or {})
        (work / "study.yaml").write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
        simpersona("study", str(work / "study.yaml"))


def copy_biases(agent: Path, to: Path, cells: str | None, rows: bool) -> None:
    """A copy of ``agent`` whose price response keeps only the cells whose name holds ``cells`` (none
    when empty, all when None), without its row choice unless ``rows``."""
    dropped = ([] if cells is None else [PRICE_RESPONSE_FILE]) + ([] if rows else [ROW_CHOICE_FILE])
    shutil.copytree(agent, to, ignore=shutil.ignore_patterns(*dropped))
    if cells and (agent / PRICE_RESPONSE_FILE).exists():
        fit = json.loads((agent / PRICE_RESPONSE_FILE).read_text(encoding="utf-8"))
        fit["codes"] = {k: {c: v for c, v in cs.items() if cells in c} for k, cs in fit["codes"].items()}
        (to / PRICE_RESPONSE_FILE).write_text(json.dumps(fit, indent=1) + "\n", encoding="utf-8")


def experiment(
    work: Path, system: str, merchants: list[str], buyers: int, seed: int, fit_draws: int = 0
) -> pl.DataFrame:
    """One system's experiment; with ``fit_draws``, its intervals carry that many posterior draws of
    the agent's price response (engine/experiment_fit.py), the arms copied from the run without."""
    name = system + (f"-fit{fit_draws}" if fit_draws else "")
    out = work / "experiments" / name
    if not (out / "effects.parquet").exists():
        spec = SYSTEMS[system]
        study = work / "study"
        if ("cells" in spec or "rows" in spec) and not (study / spec["path"]).exists():
            copy_biases(study / "agent", study / spec["path"], spec.get("cells"), spec.get("rows", True))
        plain = work / "experiments" / system / "arms"
        if fit_draws and plain.exists() and not (out / "arms").exists():
            shutil.copytree(plain, out / "arms")  # the same arms: only the draws are simulated
        config = {
            "out": str(out),
            "data": str(study / "data"),
            "distributions": str(study / "distributions" / "own-same-window.parquet"),
            "personas": str(study / "personas"),
            "merchants": merchants,
            "buyers_per_merchant": buyers,
            "seed": seed,
            "max_steps": 30,
            "policy": spec["policy"],
            "policy_path": str(study / spec["path"]),
            "arms": {"control": {"kind": "none"}, **TREATMENTS},
            "simulation": {"use_persona": spec["use_persona"], "runners": 2, "envs_per_runner": 256}
            | ({"temperature": 1.0} if spec["policy"] != "markov" else {}),
            "fit_draws": fit_draws,
        }
        path = work / f"experiment-{name}.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
        simpersona("experiment", str(path))
    return pl.read_parquet(out / "effects.parquet")


def drawable(system: str) -> bool:
    """Whether the system serves a price response to draw (an agent that keeps its biases)."""
    spec = SYSTEMS[system]
    return spec["policy"] != "markov" and spec.get("cells") != ""


def truth_per_type(synth: SynthConfig, merchants: list[str], visits: int, seed: int) -> pl.DataFrame:
    """The generator's paired effect per (treatment, planted type, metric) at ``merchants``."""
    treatments = {name: Treatment.from_dict(spec) for name, spec in TREATMENTS.items()}
    table = true_effects(synth, treatments, visits, seed, merchants=merchants)
    return table.filter(pl.col("type") != ALL).select(
        "treatment",
        pl.col("type").alias("planted"),
        "metric",
        pl.col("effect").alias("truth"),
        pl.col("se").alias("truth_se"),
        "n",
    )


def type_mix(work: Path, merchants: list[str]) -> pl.DataFrame:
    """P(planted type | persona code) over the held-out merchants' visits (``visits`` per code and
    type): a simulated buyer plays one visit, drawn by its code's share of visits."""
    codes = pl.read_parquet(
        work / "study" / "codes" / "codes.parquet", columns=["merchant_id", "buyer_id", "code"]
    )
    visits = pl.read_parquet(
        work / "study" / "data" / "buyers.parquet", columns=["merchant_id", "buyer_id", "n_sessions"]
    )
    truth = pl.read_parquet(work / "raw" / "truth.parquet", columns=["merchant_id", "buyer_id", "type"])
    joined = (
        codes.join(truth, on=["merchant_id", "buyer_id"])
        .join(visits, on=["merchant_id", "buyer_id"])
        .filter(pl.col("merchant_id").is_in(merchants))
    )
    mix = (
        joined.with_columns(pl.col("code").cast(pl.Int64))
        .group_by("code", "type")
        .agg(pl.col("n_sessions").sum().alias("visits"))
    )
    return mix.with_columns(share=pl.col("visits") / pl.col("visits").sum().over("code")).rename(
        {"type": "planted"}
    )


def compare(effects: pl.DataFrame, truth_code: pl.DataFrame) -> pl.DataFrame:
    """Each code's simulated effect beside its truth; ``se`` the whole error (the fit's spread over
    posterior draws in quadrature, where the run has it), which the readings per planted type use."""
    cells = effects.filter((pl.col("merchant") == "all") & pl.col("type").is_not_null()).join(
        truth_code, left_on=["treatment", "type", "metric"], right_on=["treatment", "code", "metric"]
    )
    if "fit_sd" in cells.columns:
        cells = cells.with_columns(se=(pl.col("se") ** 2 + pl.col("fit_sd").fill_null(0.0) ** 2).sqrt())
    return cells.with_columns(
        inside=(pl.col("truth") >= pl.col("low")) & (pl.col("truth") <= pl.col("high")),
        detectable=pl.col("truth").abs() > pl.col("mde"),
        same_sign=(pl.col("truth") * pl.col("effect")) > 0,
    )


def per_planted(
    cells: pl.DataFrame, mix: pl.DataFrame, per_type: pl.DataFrame, truth_code: pl.DataFrame
) -> pl.DataFrame:
    """The simulated effect per planted type: the codes' effects weighted by P(code | type) among the
    held-out buyers' visits, with a normal 95% interval from the codes' standard errors (different codes are
    different buyers, so their errors add in quadrature), beside the truth; and beside what a perfect
    simulator at these codes would show (``perfect``: the codes' true effects, mixtures of their types',
    weighted the same way). Where a code mixes types, even that one dilutes a type's own effect by the
    codes' purity: ``perfect_inside`` is the coverage a simulator true to every code would get."""
    weights = mix.with_columns(w=pl.col("visits") / pl.col("visits").sum().over("planted"))
    perfect = (
        truth_code.join(weights.select("code", "planted", "w"), on="code")
        .group_by("treatment", "planted", "metric")
        .agg((pl.col("w") * pl.col("truth")).sum().alias("perfect"))
    )
    sim = (
        cells.select("treatment", pl.col("type").alias("code"), "metric", "effect", "se")
        .join(weights.select("code", "planted", "w"), on="code")
        .group_by("treatment", "planted", "metric")
        .agg(
            (pl.col("w") * pl.col("effect")).sum().alias("effect"),
            ((pl.col("w") * pl.col("se")) ** 2).sum().sqrt().alias("se"),
        )
    )
    truth = per_type.select("treatment", "planted", "metric", "truth")
    keys = ["treatment", "planted", "metric"]
    return (
        sim.join(truth, on=keys)
        .join(perfect, on=keys)
        .with_columns(
            low=pl.col("effect") - 1.96 * pl.col("se"),
            high=pl.col("effect") + 1.96 * pl.col("se"),
            mde=2.8 * pl.col("se"),
            inside=(pl.col("truth") - pl.col("effect")).abs() <= 1.96 * pl.col("se"),
            perfect_inside=(pl.col("truth") - pl.col("perfect")).abs() <= 1.96 * pl.col("se"),
            detectable=pl.col("truth").abs() > 2.8 * pl.col("se"),
            same_sign=(pl.col("truth") * pl.col("effect")) > 0,
        )
    )


def per_planted_recovered(
    cells: pl.DataFrame, mix: pl.DataFrame, per_type: pl.DataFrame, truth_code: pl.DataFrame
) -> tuple[pl.DataFrame, float]:
    """The simulated effect per planted type recovered from the codes' by least squares, and the
    condition number of the mixing matrix.

    A code's effect is its types' effects mixed by P(type | code) (``S``, codes x types), so the types'
    effects are ``pinv(S) @ codes' effects``, with the codes' errors carried through (different codes
    are different buyers: independent). Unlike the weighting by P(code | type) of ``per_planted``, a
    simulator true to every code gets every type's effect back (``perfect``); the price is wider
    intervals where the types share codes."""
    planted = sorted(mix["planted"].unique().to_list())
    codes = sorted(set(cells["type"].to_list()) & set(mix["code"].to_list()))
    share = {(r["code"], r["planted"]): r["share"] for r in mix.iter_rows(named=True)}
    mixing = np.array([[share.get((c, t), 0.0) for t in planted] for c in codes])
    solve = np.linalg.pinv(mixing)
    rows = []
    for (treatment, metric), group in cells.group_by("treatment", "metric"):
        by_code = {r["type"]: r for r in group.iter_rows(named=True)}
        effect = np.array([by_code[c]["effect"] for c in codes])
        se = np.array([by_code[c]["se"] for c in codes])
        true = {
            r["code"]: r["truth"]
            for r in truth_code.filter(
                (pl.col("treatment") == treatment) & (pl.col("metric") == metric)
            ).iter_rows(named=True)
        }
        perfect = solve @ np.array([true[c] for c in codes])
        for t, value, sd, best in zip(
            planted, solve @ effect, np.sqrt(solve**2 @ se**2), perfect, strict=True
        ):
            rows.append((treatment, t, metric, float(value), float(sd), float(best)))
    recovered = pl.DataFrame(
        rows, schema=["treatment", "planted", "metric", "effect", "se", "perfect"], orient="row"
    )
    keys = ["treatment", "planted", "metric"]
    table = recovered.join(per_type.select(*keys, "truth"), on=keys).with_columns(
        low=pl.col("effect") - 1.96 * pl.col("se"),
        high=pl.col("effect") + 1.96 * pl.col("se"),
        mde=2.8 * pl.col("se"),
        inside=(pl.col("truth") - pl.col("effect")).abs() <= 1.96 * pl.col("se"),
        # Exact up to rounding: a zero-width interval (the Markov chain's) still holds it.
        perfect_inside=(pl.col("truth") - pl.col("perfect")).abs() <= 1.96 * pl.col("se") + 1e-9,
        detectable=pl.col("truth").abs() > 2.8 * pl.col("se"),
        same_sign=(pl.col("truth") * pl.col("effect")) > 0,
    )
    return table, float(np.linalg.cond(mixing))


def summary(results: dict[str, pl.DataFrame], unit: str) -> list[str]:
    """Per system and treatment: coverage of the truth, the sign test over the detectable cells and,
    where the cells carry it, the median variance ratio of the paired design to independent arms."""
    ratio = all("variance_ratio" in cells.columns for cells in results.values())
    perfect = all("perfect_inside" in cells.columns for cells in results.values())
    out = [
        f"| system | treatment | cells ({unit} x metric) | truth inside the 95% interval | detectable cells"
        " (abs(truth) > MDE) | with the true sign |"
        + (" median variance ratio (paired / unpaired) |" if ratio else "")
        + (" a perfect simulator at these codes: truth inside |" if perfect else ""),
        "|---|---|---:|---:|---:|---:|" + ("---:|" if ratio else "") + ("---:|" if perfect else ""),
    ]
    for system, cells in results.items():
        for treatment in TREATMENTS:
            c = cells.filter(pl.col("treatment") == treatment)
            det = c.filter("detectable")
            out.append(
                f"| {system} | {treatment} | {c.height} | {c['inside'].mean():.2f} | {det.height} | "
                f"{det['same_sign'].sum()} / {det.height} |"
                + (f" {c['variance_ratio'].median():.3f} |" if ratio else "")
                + (f" {c['perfect_inside'].mean():.2f} |" if perfect else "")
            )
    return out


def touched(results: dict[str, pl.DataFrame], mix: pl.DataFrame) -> list[str]:
    """Per system and treatment, the share of each planted type's buyers whose visit took another path
    than in the control (the codes' shares weighted by P(code | type)): 0 means the system did not
    respond at all to what the treatment changed."""
    weights = mix.with_columns(w=pl.col("visits") / pl.col("visits").sum().over("planted"))
    planted = sorted(mix["planted"].unique().to_list())
    out = ["| system | treatment | " + " | ".join(planted) + " |", "|---|---|" + "---:|" * len(planted)]
    for system, cells in results.items():
        shares = (
            cells.filter(pl.col("metric") == "conversion")
            .select("treatment", pl.col("type").alias("code"), "changed")
            .join(weights.select("code", "planted", "w"), on="code")
            .group_by("treatment", "planted")
            .agg((pl.col("w") * pl.col("changed")).sum().alias("changed"))
        )
        for treatment in TREATMENTS:
            got = {
                r["planted"]: r["changed"]
                for r in shares.filter(pl.col("treatment") == treatment).iter_rows(named=True)
            }
            out.append(
                f"| {system} | {treatment} | "
                + " | ".join(f"{got.get(p, float('nan')):.1%}" for p in planted)
                + " |"
            )
    return out


def markdown(results: dict[str, pl.DataFrame], mix: pl.DataFrame) -> list[str]:
    out = summary(results, "code")
    dominant = (
        mix.sort(["share", "planted"], descending=[True, False]).group_by("code", maintain_order=True).first()
    )
    names = {r["code"]: f"{r['planted']} ({r['share']:.0%})" for r in dominant.iter_rows(named=True)}
    out += [
        "",
        "| system | treatment | code (main planted type) | metric | truth | simulated [95%] | MDE |",
        "|---|---|---|---|---:|---:|---:|",
    ]
    for system, cells in results.items():
        for r in cells.sort("treatment", "type", "metric").iter_rows(named=True):
            mark = "" if r["inside"] else " ✗"
            out.append(
                f"| {system} | {r['treatment']} | {r['type']} {names.get(r['type'], '')} | {r['metric']} | "
                f"{r['truth']:+.4f} | {r['effect']:+.4f} [{r['low']:+.4f}, {r['high']:+.4f}]{mark} | {r['mde']:.4f} |"
            )
    return out


def planted_cells(results: dict[str, pl.DataFrame], reading: str, perfect: bool = False) -> list[str]:
    """Every (system, treatment, planted type, metric) cell: the truth beside ``reading``'s effect and
    interval (✗ where the truth lies outside), and where ``perfect``, a perfect simulator's."""
    head = "| system | treatment | planted type | metric | truth |"
    head += " a perfect simulator at these codes |" if perfect else ""
    out = [
        head + f" {reading} [95%] | MDE |",
        "|---|---|---|---|---:|" + ("---:|" if perfect else "") + "---:|---:|",
    ]
    for system, cells in results.items():
        for r in cells.sort("treatment", "planted", "metric").iter_rows(named=True):
            best = f" {r['perfect']:+.4f} |" if perfect else ""
            mark = "" if r["inside"] else " ✗"
            out.append(
                f"| {system} | {r['treatment']} | {r['planted']} | {r['metric']} | {r['truth']:+.4f} |{best} "
                f"{r['effect']:+.4f} [{r['low']:+.4f}, {r['high']:+.4f}]{mark} | {r['mde']:.4f} |"
            )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--buyers", type=int, default=3000, help="synthetic buyers (the demo's size)")
    parser.add_argument("--merchants", type=int, default=12)
    parser.add_argument("--synth-seed", type=int, default=7)
    parser.add_argument(
        "--buyers-per-merchant", type=int, default=1500, help="simulated buyers per held-out merchant and arm"
    )
    parser.add_argument(
        "--truth-visits", type=int, default=40_000, help="generator visits per planted type for the truth"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--systems", default=",".join(SYSTEMS))
    parser.add_argument(
        "--split-digits", action="store_true", help="agents' tokenizers split numbers into digits (prices)"
    )
    parser.add_argument(
        "--max-tokens",
        type=int,
        default=0,
        help="agents' training tokens per epoch (0: every replayed session; the demo recipe budgets 1350000)",
    )
    parser.add_argument(
        "--base-model", default="tiny", help="agents' base model (a preset such as small, or a model)"
    )
    parser.add_argument(
        "--stage2-epochs",
        type=int,
        default=3,
        help="the most epochs an agent trains (early stopping on validation)",
    )
    parser.add_argument(
        "--patience", type=int, default=1, help="epochs without a lower validation loss to stop"
    )
    parser.add_argument(
        "--codes", type=int, default=8, help="persona codes K (the demo's 8; purer codes need more)"
    )
    parser.add_argument(
        "--agent-codes",
        choices=AGENT_CODES,
        default="all-visits",
        help="the codes the persona agent and the Markov chain train with (other-visits: each visit's"
        " code from the buyer's other visits)",
    )
    parser.add_argument(
        "--fit-draws",
        type=int,
        default=0,
        help="beside each agent that serves a price response, the same run whose intervals carry this many"
        " posterior draws of it (engine/experiment_fit.py); 0: none",
    )
    parser.add_argument("--markdown", type=Path)
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    synth = SynthConfig(buyers=args.buyers, merchants=args.merchants, seed=args.synth_seed)
    agent = {
        "split_digits": args.split_digits,
        "max_tokens": args.max_tokens or None,
        "base_model": args.base_model,
        "stage2_epochs": args.stage2_epochs,
        "patience": args.patience,
    }
    prepare(args.work, synth, args.truth_visits, agent, {"codes": args.codes}, args.agent_codes)
    merchants = json.loads((args.work / "study" / "split.json").read_text(encoding="utf-8"))["heldout"]
    per_type = truth_per_type(synth, merchants, args.truth_visits, args.seed)
    mix = type_mix(args.work, merchants)
    truth_code = (
        mix.join(per_type, on="planted")
        .group_by("treatment", "code", "metric")
        .agg((pl.col("share") * pl.col("truth")).sum().alias("truth"))
    )
    results = {}
    for s in args.systems.split(","):
        results[s] = compare(
            experiment(args.work, s, merchants, args.buyers_per_merchant, args.seed), truth_code
        )
        if args.fit_draws and drawable(s):
            effects = experiment(args.work, s, merchants, args.buyers_per_merchant, args.seed, args.fit_draws)
            results[f"{s}, fit drawn x{args.fit_draws}"] = compare(effects, truth_code)
    planted = {system: per_planted(cells, mix, per_type, truth_code) for system, cells in results.items()}
    solved = {
        system: per_planted_recovered(cells, mix, per_type, truth_code) for system, cells in results.items()
    }
    recovered = {system: table for system, (table, _) in solved.items()}
    condition = next(iter(solved.values()))[1]
    lines = [
        f"Synthetic log: {args.buyers} buyers, {args.merchants} merchants, seed {args.synth_seed}; held-out merchants "
        f"{', '.join(merchants)}; {args.buyers_per_merchant} simulated buyers per merchant and arm, experiment seed "
        f"{args.seed}; truth from {args.truth_visits:,} generator visits per planted type (paired).",
        "",
        *markdown(results, mix),
        "",
        "Per planted type (the codes' effects weighted by P(code | type) among the held-out buyers' visits; a"
        " perfect simulator at these codes has each code's true effect, its types' mixed):",
        "",
        *summary(planted, "planted type"),
        "",
        "Per planted type recovered from the codes by least squares (the codes' effects = P(type | code) x the"
        f" types' effects; condition number of P(type | code) {condition:.1f}): a perfect simulator at these codes"
        " recovers each type's own effect.",
        "",
        *summary(recovered, "planted type"),
        "",
        *planted_cells(recovered, "recovered"),
        "",
        "Buyers whose visit took another path than in the control (same buyer and draws), per planted type:",
        "",
        *touched(results, mix),
        "",
        *planted_cells(planted, "simulated", perfect=True),
        "",
        "Truth per planted type at the held-out merchants:",
        "",
        "| treatment | planted type | metric | truth ± se | visits |",
        "|---|---|---|---:|---:|",
        *(
            f"| {r['treatment']} | {r['planted']} | {r['metric']} | {r['truth']:+.4f} ± {r['truth_se']:.4f} | {r['n']} |"
            for r in per_type.iter_rows(named=True)
        ),
    ]
    publish(lines, args.markdown)


if __name__ == "__main__":
    main()
