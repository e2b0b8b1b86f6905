"""What-if experiments: a simulated A/B test of storefront changes, per buyer type.

  simpersona experiment examples/experiment.yaml
  simpersona experiment examples/experiment.yaml --plan --mde 0.02            # visits needed per type
  simpersona experiment examples/experiment.yaml --arms '{control: {kind: none}, price-10: {kind: price,
      percent: -10}}' --out runs/price-10                                        # arms on the command line
  simpersona experiment examples/experiment.yaml --simulation '{runners: 8}' --ray-address auto  # a cluster

The population is drawn from each merchant's own persona mix; every arm (the control storefront and
each treatment of envs/treatments.py: price, order, banner, one-page-checkout, hide-favorite,
page-size, variant) plays the same simulated buyers with the same seeds, so each effect is a mean of
per-buyer paired differences. For each treatment, per buyer type and overall: the effect on
conversion, add-to-cart rate, product views per visit, revenue per visit and visit length, with a
paired 95% bootstrap interval, the unpaired interval for comparison, how much of the variance the
pairing removed, and the MDE (the smallest effect the run detects with 80% power at alpha 0.05).

Writes OUT/arms/<arm>/rollouts/ (Parquet, one row per step) and outcomes.parquet (one row per visit),
OUT/effects.parquet and effects.json (tidy rows), OUT/report.html (forest plots, tables, type names
from the personas run); prints one line per treatment x outcome, then per-type highlights. An arm whose
rollouts exist is not simulated again. `--arms` and `--simulation` take a JSON or YAML mapping: `--arms`
replaces the file's arms, `--simulation` (further `simpersona simulate` fields for every arm) is merged
over the file's. `--plan` prints the visits each type needs for `--mde` on `--mde-metric`, from the
paired variance of a pilot run already in OUT if there is one, else from a conservative Bernoulli bound
with the merchants' real rates (conversion, add_to_cart); writes OUT/plan.json and simulates nothing.
"""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

from engine.experiment import ExperimentConfig
from learners.config import add_config_args, build_config, load_yaml, mapping_value

NAME = "experiment"
HELP = "what-if A/B tests of storefront changes on a simulated population, effects per buyer type"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "config", type=Path, nargs="?", metavar="CONFIG", help="YAML file of ExperimentConfig fields"
    )
    parser.add_argument(
        "--plan",
        action="store_true",
        help="print the visits each buyer type needs to detect --mde on --mde-metric (from a pilot run in OUT,"
        " else a conservative Bernoulli bound; with --fit-draws, their visits and, from a pilot with draws, each"
        " type's floor: the fit's spread no number of visits beats) and write OUT/plan.json; simulates nothing",
    )
    add_config_args(parser, ExperimentConfig)


def launch_command(args: argparse.Namespace) -> str:
    """The command line that reproduces this run (the config file and the flags given)."""
    words = ["simpersona", NAME, *([str(args.config)] if args.config else [])]
    for key, value in vars(args).items():
        if key.startswith("cfg__") and value is not None:
            words += ["--" + key[5:].replace("_", "-"), str(value)]
    return shlex.join(words + (["--plan"] if args.plan else []))


def run(args: argparse.Namespace) -> int:
    command = launch_command(args)
    if args.cfg__simulation is not None and args.config:
        # The flag adds to the file's simulation settings instead of replacing them all.
        flag = mapping_value(args.cfg__simulation, "simulation")
        args.cfg__simulation = {**(load_yaml(args.config).get("simulation") or {}), **flag}
    config = build_config(ExperimentConfig, args, args.config)
    if args.plan:
        from engine.experiment import unchanged_storefronts
        from engine.experiment_plan import format_plan, plan, write_plan

        for line in unchanged_storefronts(config):
            print(line)
        result = plan(config)
        print(format_plan(result))
        print(f"\nplan written to {write_plan(result, config.out)}; nothing was simulated")
        return 0
    from engine.experiment import run_experiment
    from engine.experiment_report import REPORT_HTML, summary_text

    result = run_experiment(config, command, getattr(args, "verbose", False))
    print()
    print(summary_text(result))
    print(
        f"\nreport: {Path(config.out) / REPORT_HTML} (effects.parquet, effects.json beside it); {result['elapsed_s']} s"
    )
    return 0
