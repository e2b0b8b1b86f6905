"""Does a persona agent answer a markdown the way its planted buyer type does? Per planted type of a
synthetic log, the agent's P(add to cart) on product pages its training examples show.

  .venv/bin/python -m benchmarks.markdown_probe --work /tmp/xt --agent /tmp/xt/study/agent
  .venv/bin/python -m benchmarks.markdown_probe --work /tmp/xt --agent CHECKPOINT_DIR \\
      --examples /tmp/xt/study/agent/data/train.parquet      # an epoch's weights in a copy of the agent

WORK is a truth benchmark's directory (benchmarks/experiment_truth.py: ``raw/truth.parquet`` names
each buyer's planted type per merchant). The pages are the agent's own goal-free training examples on
a product page that offers "add to cart" (``AGENT/data/train.parquet``, or ``--examples``), with the
example's persona code and history. Per planted type, ``--pages`` of them sampled with ``--seed``:

- probe: each page shown at its regular price, then cut 30% and marked down as a price-cut arm
  shows it (``Price: X (was Y)``); the mean change in P(add to cart). The planted truth: deal
  hunters answer (learners/data/planted_types.py), the other types do not.
- factual: the pages as they were, those with a markdown and those without: the agent's mean
  P(add to cart) on each, beside the share of the examples that did add to cart (the target).

P is the softmax of the agent's scores over the page's valid actions without its calibration
(``kind_bias``) or price response (``price_bias``): the model's own answer, so an epoch
checkpoint, which has neither, reads like the exported agent.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import polars as pl

from envs.render import PRICE_LINE, PRICE_PREFIX
from learners.agent.llm_policy import LLMPolicy
from learners.agent.offline_eval import requests_for
from learners.agent.price_response import FIT_COLUMNS

CUT = 0.7
ADD = "add to cart"


def pages(examples: Path, truth: Path) -> pl.DataFrame:
    """Goal-free product-page examples that offer add to cart, with the buyer's planted type."""
    types = pl.read_parquet(truth).select("merchant_id", pl.col("buyer_id").cast(pl.Utf8), "type")
    table = pl.read_parquet(examples, columns=list(FIT_COLUMNS))
    return (
        table.filter(pl.col("goal").is_null() & pl.col("valid_actions").list.contains(ADD))
        .with_columns(
            pl.col("buyer_id").cast(pl.Utf8),
            pl.col("observation").str.contains("(was ", literal=True).alias("marked"),
        )
        .join(types, on=["merchant_id", "buyer_id"], how="inner")
    )


def p_add(
    policy: LLMPolicy, rows: list[dict], observations: list[str] | None = None, batch: int = 64
) -> np.ndarray:
    """The agent's P(add to cart) per row (on ``observations`` instead of the rows' own, if given)."""
    table = pl.DataFrame(rows).select("observation", "valid_actions", "goal", "history", "code")
    if observations is not None:
        table = table.with_columns(observation=pl.Series(observations))
    requests = requests_for(table.to_arrow(), "true" if policy.tokens is not None else "none")
    out = []
    for start in range(0, len(requests), batch):
        chunk = requests[start : start + batch]
        for request, scores in zip(chunk, policy.score(chunk), strict=True):
            p = np.exp(scores - np.logaddexp.reduce(scores))
            out.append(float(p[request.valid_actions.index(ADD)]))
    return np.array(out)


def regular_and_cut(observation: str) -> tuple[str, str] | None:
    """The page at its regular price, and cut 30% with the regular price beside it."""
    found = PRICE_LINE.search(observation)
    if found is None:
        return None
    regular = float(found.group(2) or found.group(1))
    return (
        PRICE_LINE.sub(f"{PRICE_PREFIX}{regular:.2f}", observation, count=1),
        PRICE_LINE.sub(f"{PRICE_PREFIX}{regular * CUT:.2f} (was {regular:.2f})", observation, count=1),
    )


def sample(frame: pl.DataFrame, n: int, rng: np.random.Generator) -> list[dict]:
    rows = frame.to_dicts()
    return [rows[i] for i in rng.choice(len(rows), size=min(n, len(rows)), replace=False)]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--work", type=Path, required=True, help="a truth benchmark's directory")
    parser.add_argument("--agent", type=Path, required=True)
    parser.add_argument("--examples", type=Path, help="the agent's data/train.parquet unless given")
    parser.add_argument("--pages", type=int, default=300, help="pages per planted type and probe")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    frame = pages(args.examples or args.agent / "data" / "train.parquet", args.work / "raw" / "truth.parquet")
    policy = LLMPolicy.from_pretrained(args.agent, kind_bias={}, price_bias={})
    rng = np.random.default_rng(args.seed)
    print(
        f"agent {args.agent}: P(add to cart), no calibration, {args.pages} pages per type and probe (seed {args.seed})"
    )
    print()
    print(
        "| planted type | probe: cut and marked − regular | factual: no markdown / markdown | target: no markdown / markdown |"
    )
    print("|---|---:|---:|---:|")
    for kind in sorted(frame["type"].unique().to_list()):
        mine = frame.filter(pl.col("type") == kind)
        rows, shown = [], []
        for row in sample(mine, args.pages, rng):
            pair = regular_and_cut(row["observation"])
            if pair is not None:
                rows.append(row)
                shown.append(pair)
        change = p_add(policy, rows, [cut for _, cut in shown]) - p_add(
            policy, rows, [reg for reg, _ in shown]
        )
        plain, marked = mine.filter(~pl.col("marked")), mine.filter(pl.col("marked"))
        factual = [p_add(policy, sample(part, args.pages, rng)).mean() for part in (plain, marked)]
        target = [float((part["action"] == ADD).mean()) for part in (plain, marked)]
        print(
            f"| {kind} | {change.mean():+.4f} ± {change.std(ddof=1) / np.sqrt(len(change)):.4f} | "
            f"{factual[0]:.3f} / {factual[1]:.3f} | {target[0]:.3f} / {target[1]:.3f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
