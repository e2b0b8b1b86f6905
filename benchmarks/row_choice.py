"""Which listed product a simulated buyer opens, on stores the agent never trained on: the model's own
ranking of a listing's rows against the row choice (learners/agent/row_choice.py), and its cost.

  .venv/bin/python -m benchmarks.row_choice --agent /tmp/xt/study/agent
  .venv/bin/python -m benchmarks.row_choice --agent runs/study-tmall-cpu/agent --timing 512

AGENT is a trained agent directory with validation merchants (``data/validation.parquet``). The row
choice is fitted here on the training merchants' goal-free listing pages only
(``data/train.parquet``), and both rankings are scored on the validation merchants' pages, whose
stores neither saw: per page whose logged action opened one of two or more listed rows, the log
probability each gives the real row (the model's: the softmax of its scores over the page's listed
rows, without its calibration; the row choice: its code's logit), beside picking a row at random.
Differences are paired per page, with 95% intervals over pages (pages of a buyer are not independent,
so the intervals are a little narrow). Timing: ``LLMPolicy.act`` on ``--timing`` of those pages with
and without the row choice, ``--repeats`` runs each in alternating turns, the ratio of their medians.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from learners.agent.llm_policy import LLMPolicy
from learners.agent.offline_eval import requests_for
from learners.agent.price_response import FIT_COLUMNS
from learners.agent.row_choice import fit_row_choice, listing_page_rows
from learners.agent.scoring import POOLED_ROWS, listing_features
from learners.agent.tokens import agent_persona_tokens


def _interval(x: np.ndarray) -> str:
    half = 1.96 * x.std(ddof=1) / np.sqrt(len(x))
    return f"{x.mean():+.3f} [{x.mean() - half:+.3f}, {x.mean() + half:+.3f}]"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--agent", type=Path, required=True)
    parser.add_argument("--max-rows", type=int, default=50_000)
    parser.add_argument("--timing", type=int, default=256, help="pages act() is timed on (0: no timing)")
    parser.add_argument("--repeats", type=int, default=8)
    args = parser.parse_args()

    data = args.agent / "data"
    train = listing_page_rows(pq.read_table(data / "train.parquet").select(list(FIT_COLUMNS)), args.max_rows)
    held = listing_page_rows(
        pq.read_table(data / "validation.parquet").select(list(FIT_COLUMNS)), args.max_rows
    )
    policy = LLMPolicy.from_pretrained(args.agent, kind_bias={}, price_bias={}, row_choice={})
    personas = agent_persona_tokens(args.agent, policy.tokenizer) is not None
    fit = fit_row_choice(train, personas)
    requests = requests_for(held, "true" if personas else "none")
    scores: list[np.ndarray] = []
    for start in range(0, len(requests), 64):
        scores += policy.score(requests[start : start + 64])
    choice = fit.served()
    model, rows, uniform = [], [], []
    for r, z, action in zip(requests, scores, held["action"].to_pylist(), strict=True):
        index, features = listing_features(r.observation, r.valid_actions)
        k = int(np.flatnonzero(index == r.valid_actions.index(action))[0])
        beta = np.array(choice.get(r.persona, choice[POOLED_ROWS]))
        for values, out in ((z[index], model), (features @ beta, rows)):
            out.append(values[k] - np.logaddexp.reduce(values))
        uniform.append(-np.log(len(index)))
    model, rows, uniform = map(np.array, (model, rows, uniform))
    print(f"{args.agent}: row choice fitted on {train.num_rows:,} training-merchant pages ({fit.line()})")
    print(f"held-out pages: {len(requests):,}, mean rows listed {np.exp(-uniform).mean():.1f}")
    print("| ranking | mean log P(real row) | against random |")
    print("|---|---|---|")
    for name, ll in (("model (id scores)", model), ("row choice", rows), ("random", uniform)):
        print(f"| {name} | {ll.mean():.3f} | {_interval(ll - uniform)} |")
    print(f"row choice − model, paired: {_interval(rows - model)} nats per choice")

    if args.timing > 0:
        sample = requests[: args.timing]
        policies = {
            "model's ranking": LLMPolicy.from_pretrained(args.agent, row_choice={}),
            "row choice": LLMPolicy.from_pretrained(args.agent, row_choice=choice),
        }
        times: dict[str, list[float]] = {name: [] for name in policies}
        for i in range(args.repeats):  # alternated, in turns, so a busy machine slows both alike
            for name, p in sorted(policies.items(), reverse=bool(i % 2)):
                start = time.perf_counter()
                p.act(sample)
                times[name].append(time.perf_counter() - start)
        print(f"act() on {len(sample)} pages, {args.repeats} runs each (min / median):")
        for name, t in times.items():
            print(f"  {name}: {min(t):.3f} / {np.median(t):.3f} s")
        base, new = np.median(times["model's ranking"]), np.median(times["row choice"])
        print(f"  ratio of medians, row choice / model's ranking: {new / base:.3f}")


if __name__ == "__main__":
    main()
