"""Common random numbers at the draw: how often a simulated buyer's choice differs between two arms
whose page differs only a little, for the keyed Gumbel-max draw every policy uses
(``learners.agent.policy.choose``) against the draw it replaced (the inverse of the cumulative
probabilities in the page's action order, ``numpy.random.Generator.choice``), beside the least any
draw can do: the total variation distance between the two arms' choice probabilities.

  .venv/bin/python -m benchmarks.paired_draw
  .venv/bin/python -m benchmarks.paired_draw --pages 20000 --options 14 --markdown out.md

Each page has ``--options`` actions with standard normal scores and its own seed, the same in both
arms (a buyer at one step). The arms differ by: the actions' order (a listing order treatment on a
policy that does not read the order), one action's score raised by 0.5, the item actions' (half of
them) raised by 0.3 (a price cut every row answers), the exit's lowered by 0.2. A choice that differs
where no probability moved, or more often than the probabilities moved, parts a buyer's path from
its control path for no reason of the treatment's, and every later step of the visit with it: that
is variance the paired design exists to remove. Also timed: microseconds per draw.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from benchmarks.table_output import publish
from learners.agent.policy import choose

Draw = Callable[[np.ndarray, int, list[str]], int]


def cumulative(scores: np.ndarray, seed: int, keys: list[str]) -> int:
    """The replaced rule: one uniform per seed through the cumulative probabilities in list order."""
    p = np.exp(scores - scores.max())
    return int(np.random.default_rng(seed).choice(len(p), p=p / p.sum()))


def keyed(scores: np.ndarray, seed: int, keys: list[str]) -> int:
    return choose(scores, 1.0, seed, keys)


def arms(scores: np.ndarray, keys: list[str], rng: np.random.Generator) -> dict[str, tuple]:
    """Each change's treated (scores, keys, position of each treated option in the control list)."""
    n = len(keys)
    order = rng.permutation(n)
    items = np.arange(n) < n // 2
    exit_ = np.arange(n) == n - 1
    return {
        "order of the actions": (scores[order], [keys[i] for i in order], order),
        "one action +0.5": (scores + 0.5 * (np.arange(n) == 0), keys, np.arange(n)),
        "item actions +0.3": (scores + 0.3 * items, keys, np.arange(n)),
        "exit -0.2": (scores - 0.2 * exit_, keys, np.arange(n)),
    }


def total_variation(a: np.ndarray, b: np.ndarray) -> float:
    pa, pb = np.exp(a - a.max()), np.exp(b - b.max())
    return 0.5 * float(np.abs(pa / pa.sum() - pb / pb.sum()).sum())


def measure(pages: int, options: int, seed: int) -> dict[str, dict[str, float]]:
    rng = np.random.default_rng(seed)
    keys = [f"open product p{i}" for i in range(options // 2)]
    keys += [f"category c{i}" for i in range(options - options // 2 - 1)] + ["exit"]
    rules: dict[str, Draw] = {"keyed": keyed, "cumulative": cumulative}
    out: dict[str, dict[str, float]] = {}
    for page in range(pages):
        scores = rng.standard_normal(options)
        for change, (treated, treated_keys, position) in arms(scores, keys, rng).items():
            row = out.setdefault(change, {"least": 0.0} | dict.fromkeys(rules, 0.0))
            control_scores = scores[position]
            row["least"] += total_variation(control_scores, treated) / pages
            for name, draw in rules.items():
                control = keys[draw(scores, page, keys)]
                row[name] += (treated_keys[draw(treated, page, treated_keys)] != control) / pages
    return out


def timing(options: int, repeats: int = 20000) -> dict[str, float]:
    scores = np.random.default_rng(0).standard_normal(options)
    keys = [f"open product p{i}" for i in range(options)]
    out = {}
    for name, draw in (("keyed", keyed), ("cumulative", cumulative)):
        start = time.perf_counter()
        for s in range(repeats):
            draw(scores, s, keys)
        out[name] = (time.perf_counter() - start) / repeats * 1e6
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pages", type=int, default=20000)
    parser.add_argument("--options", type=int, default=14, help="actions per page")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--markdown", type=Path)
    args = parser.parse_args()
    shares = measure(args.pages, args.options, args.seed)
    micro = timing(args.options)
    lines = [
        f"Share of {args.pages:,} pages ({args.options} actions, seed {args.seed}) whose choice differs "
        "between the arms",
        "",
        "| the arms differ by | keyed Gumbel-max | cumulative (replaced) | least possible (TV) |",
        "|---|---:|---:|---:|",
    ]
    for change, row in shares.items():
        lines.append(f"| {change} | {row['keyed']:.4f} | {row['cumulative']:.4f} | {row['least']:.4f} |")
    lines += [
        "",
        f"Time per draw: keyed {micro['keyed']:.1f} µs, cumulative {micro['cumulative']:.1f} µs "
        f"(ratio {micro['keyed'] / micro['cumulative']:.2f}).",
    ]
    publish(lines, args.markdown)


if __name__ == "__main__":
    main()
