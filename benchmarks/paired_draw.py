"""Common random numbers at the draw: how often a simulated buyer's choice differs between two arms
whose page differs only a little, for the draw every policy uses (``learners.agent.policy.choose``:
an action template, then one of its options, each by keyed Gumbel-max) against the draw it replaced
(the inverse of the cumulative probabilities in the page's action order,
``numpy.random.Generator.choice``) and a one-step keyed Gumbel-max over the options, beside the least
any draw can do: the total variation distance between the two arms' choice probabilities.

  .venv/bin/python -m benchmarks.paired_draw
  .venv/bin/python -m benchmarks.paired_draw --pages 20000 --markdown out.md

Each page has 7 ``open product`` actions, 6 ``category`` links and ``exit``, with standard normal
scores (the products' 1 lower) and its own seed, the same in both arms (a buyer at one step). The
arms differ by: the actions' order (a listing order treatment on a policy that does not read the
order); other products listed (a reordered listing's first page), at scores drawn alike; one
product's score raised by 0.5; every product's by 0.3 (a price cut every row answers); the exit's
lowered by 0.2. A choice that differs where no probability moved, or more often than the
probabilities moved, parts a buyer's path from its control path for no reason of the treatment's,
and every later step of the visit with it: variance the paired design exists to remove. Counted:
pages whose chosen action differs, and whose chosen template differs (a product opened in one arm
and the exit taken in the other, say), which is what moves a visit's outcomes. Also timed:
microseconds per draw.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from benchmarks.table_output import publish
from learners.agent.actions import action_template
from learners.agent.policy import choose, keyed_gumbel

Draw = Callable[[np.ndarray, int, list[str]], int]
PRODUCTS, CATEGORIES = 7, 6


def cumulative(scores: np.ndarray, seed: int, keys: list[str]) -> int:
    """The replaced rule: one uniform per seed through the cumulative probabilities in list order."""
    p = np.exp(scores - scores.max())
    return int(np.random.default_rng(seed).choice(len(p), p=p / p.sum()))


def one_step(scores: np.ndarray, seed: int, keys: list[str]) -> int:
    """Keyed Gumbel-max over the options at once, without the template step."""
    return int(np.argmax(scores + keyed_gumbel(keys, seed)))


def two_step(scores: np.ndarray, seed: int, keys: list[str]) -> int:
    return choose(scores, 1.0, seed, keys)


RULES: dict[str, Draw] = {"two_step": two_step, "one_step": one_step, "cumulative": cumulative}


def arms(scores: np.ndarray, keys: list[str], rng: np.random.Generator) -> dict[str, tuple]:
    """Each change's treated (scores, keys, control scores in the treated options' order for the
    least possible share; None where the options differ)."""
    n = len(keys)
    order = rng.permutation(n)
    products = np.arange(n) < PRODUCTS
    other = scores.copy()
    other[:PRODUCTS] = rng.standard_normal(PRODUCTS) - 1.0
    return {
        "order of the actions": (scores[order], [keys[i] for i in order], scores[order]),
        "other products listed": (
            other,
            [f"open product q{i}" for i in range(PRODUCTS)] + keys[PRODUCTS:],
            None,
        ),
        "one product +0.5": (scores + 0.5 * (np.arange(n) == 0), keys, scores),
        "every product +0.3": (scores + 0.3 * products, keys, scores),
        "exit -0.2": (scores - 0.2 * (np.arange(n) == n - 1), keys, scores),
    }


def total_variation(a: np.ndarray, b: np.ndarray) -> float:
    pa, pb = np.exp(a - a.max()), np.exp(b - b.max())
    return 0.5 * float(np.abs(pa / pa.sum() - pb / pb.sum()).sum())


def measure(pages: int, seed: int) -> dict[str, dict[str, tuple[float, float]]]:
    """Per change and rule: the share of pages whose chosen action, and template, differ."""
    rng = np.random.default_rng(seed)
    keys = [f"open product p{i}" for i in range(PRODUCTS)] + [f"category c{i}" for i in range(CATEGORIES)]
    keys.append("exit")
    out: dict[str, dict[str, list[float]]] = {}
    for page in range(pages):
        scores = rng.standard_normal(len(keys)) - 1.0 * (np.arange(len(keys)) < PRODUCTS)
        for change, (treated, treated_keys, control) in arms(scores, keys, rng).items():
            row = out.setdefault(change, {name: [0.0, 0.0] for name in ["least", *RULES]})
            if control is not None:
                row["least"][0] += total_variation(control, treated) / pages
            for name, draw in RULES.items():
                a = keys[draw(scores, page, keys)]
                b = treated_keys[draw(treated, page, treated_keys)]
                row[name][0] += (a != b) / pages
                row[name][1] += (action_template(a) != action_template(b)) / pages
    return {change: {k: (v[0], v[1]) for k, v in row.items()} for change, row in out.items()}


def timing(repeats: int = 20000) -> dict[str, float]:
    rng = np.random.default_rng(0)
    keys = [f"open product p{i}" for i in range(PRODUCTS)] + [f"category c{i}" for i in range(CATEGORIES)]
    keys.append("exit")
    scores = rng.standard_normal(len(keys))
    out = {}
    for name, draw in RULES.items():
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
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--markdown", type=Path)
    args = parser.parse_args()
    shares = measure(args.pages, args.seed)
    micro = timing()
    lines = [
        f"Share of {args.pages:,} pages (14 actions, seed {args.seed}) whose chosen action (template) "
        "differs between the arms",
        "",
        "| the arms differ by | two steps, keyed (kept) | one step, keyed | cumulative (replaced) "
        "| least possible (TV) |",
        "|---|---:|---:|---:|---:|",
    ]
    for change, row in shares.items():
        cells = [f"{row[name][0]:.4f} ({row[name][1]:.4f})" for name in RULES]
        least = f"{row['least'][0]:.4f}" if change != "other products listed" else "n/a"
        lines.append(f"| {change} | {' | '.join(cells)} | {least} |")
    lines += [
        "",
        "Time per draw: "
        + ", ".join(f"{name} {us:.1f} µs" for name, us in micro.items())
        + f" (two steps / cumulative {micro['two_step'] / micro['cumulative']:.2f}).",
    ]
    publish(lines, args.markdown)


if __name__ == "__main__":
    main()
