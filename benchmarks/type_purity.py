"""What caps the truth benchmark's per-type coverage: how pure the persona codes are at held-out merchants.

  .venv/bin/python -m benchmarks.type_purity
  .venv/bin/python -m benchmarks.type_purity --codes 8,12,16 --seeds 0,1,2 --markdown out.md

An experiment reports per persona code; the truth benchmark (benchmarks/experiment_truth.py) reads a
planted type's effect off the codes, weighted by P(code | type). Where codes mix types, even a
simulator exact at every code dilutes a type's own effect, so the ceiling of the per-type coverage is
the codes' purity: per planted type, sum over codes of P(code | type) P(type | code), over the visits
of the held-out merchants' buyers (1: each of the type's visits lies in a code of that type alone).

Same log and split as the truth benchmark: ``simpersona synth`` seed 7 (3,000 buyers, 12 merchants),
4 held-out merchants (seed 0, >= 30 real sessions). Rows, each fitted on the 8 training merchants'
buyers and measured on the held-out merchants' buyers:

- the VQ-VAE with the study's settings (examples/study-demo.yaml: 6 epochs, 2 of them warm-up, outcome
  weight 0.2), in this process (the loop a Ray Train worker runs), per K and fit seed;
- k-means with the same K on the same standardised features (the baseline; the ratio is VQ-VAE / k-means);
- a logistic regression trained on the training buyers' planted types: not a persona method (no log
  has the labels), but how much of the types the buyer features tell at all.

Each row twice: on features standardised column by column (the default) and with every aspect of
behaviour weighed alike (``--balance-aspects true``, schema.FEATURE_ASPECTS); the last table gives the
VQ-VAE's mean purity balanced / column by column per K.
"""

from __future__ import annotations

import argparse
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from sklearn.linear_model import LogisticRegression

from learners.data.merchant_split import heldout_merchants
from learners.data.planted_types import TYPE_NAMES
from learners.data.synth import SynthConfig, synth_prepared
from learners.vqvae.dataset import (
    READ_COLUMNS,
    BuyerRows,
    FeatureStats,
    buyers_path,
    read_buyers,
    rows_from_table,
)
from learners.vqvae.fit import VQVAEConfig, WorkerTraining
from learners.vqvae.kmeans_baseline import fit_kmeans
from learners.vqvae.report import truth_labels


def purity(types: np.ndarray, codes: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Per planted type (0..T-1), sum over codes of P(code | type) P(type | code), ``weight``-weighted."""
    out = np.zeros(len(TYPE_NAMES))
    for t in range(len(TYPE_NAMES)):
        mine = types == t
        for c in np.unique(codes[mine]):
            both = weight[mine & (codes == c)].sum()
            out[t] += both / weight[mine].sum() * both / weight[codes == c].sum()
    return out


def part(data: Path, merchants: list[str], keep: bool, max_seq_len: int) -> tuple[BuyerRows, np.ndarray]:
    """The buyers of ``merchants`` (``keep``) or of every other merchant, with their visit counts."""
    table = read_buyers(buyers_path(data), (*READ_COLUMNS, "n_sessions"))
    member = pc.is_in(table["merchant_id"], value_set=pc.cast(merchants, table["merchant_id"].type))
    table = table.filter(member if keep else pc.invert(member))
    return rows_from_table(table, max_seq_len), table["n_sessions"].to_numpy().astype(float)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--codes", default="8,12,16", help="codebook sizes K")
    parser.add_argument("--seeds", default="0,1,2", help="VQ-VAE fit seeds")
    parser.add_argument("--markdown", type=Path, help="also write the table to this file")
    args = parser.parse_args()
    torch.set_num_threads(1)  # as in a 1-CPU Ray Train worker: deterministic and comparable
    base = VQVAEConfig(epochs=6, outcome_weight=0.2)
    with tempfile.TemporaryDirectory() as tmp:
        raw, data = synth_prepared(SynthConfig(buyers=3000, merchants=12, seed=7), Path(tmp))
        held = heldout_merchants(data, 4, min_buyers=1, seed=0, min_sessions=30)
        train, _ = part(data, held, False, base.max_seq_len)
        test, visits = part(data, held, True, base.max_seq_len)
        truth = {
            name: truth_labels(
                raw / "truth.parquet", pa.table({"merchant_id": r.merchant_id, "buyer_id": r.buyer_id})
            )
            for name, r in (("train", train), ("test", test))
        }
    lines = [
        f"Held-out merchants {', '.join(held)}: {len(truth['test']):,} buyers, {int(visits.sum()):,} visits;"
        f" planted types there: "
        + ", ".join(f"{n} {np.mean(truth['test'] == t):.0%}" for t, n in enumerate(TYPE_NAMES)),
        "",
        "| features | method | K | seed | " + " | ".join(TYPE_NAMES) + " | mean | VQ-VAE / k-means (mean) |",
        "|---|---|---:|---:|" + "---:|" * (len(TYPE_NAMES) + 2),
    ]
    print("\n".join(lines), flush=True)

    def row(
        features: str, method: str, k: int | str, seed: int | str, values: np.ndarray, ratio: str = ""
    ) -> None:
        cells = " | ".join(f"{v:.2f}" for v in values)
        lines.append(f"| {features} | {method} | {k} | {seed} | {cells} | {values.mean():.3f} | {ratio} |")
        print(lines[-1], flush=True)

    means: dict[tuple[bool, int], list[float]] = {}
    for balanced in (False, True):
        features = "aspects balanced" if balanced else "columns alike"
        stats = FeatureStats.fit(train.features, balanced)
        x_train, x_test = stats.apply(train.features), stats.apply(test.features)
        for k in (int(v) for v in args.codes.split(",")):
            kmeans = purity(truth["test"], fit_kmeans(x_train, k).predict(x_test), visits)
            for seed in (int(v) for v in args.seeds.split(",")):
                config = replace(base, codes=k, seed=seed, balance_aspects=balanced)
                work = WorkerTraining(config, train.batch(stats), stats, torch.device("cpu"))
                for _ in range(config.epochs):
                    work.run_epoch()
                work.model.eval()
                with torch.no_grad():
                    codes = work.model.assign(*test.batch(stats).inputs()).numpy().astype(np.int64)
                vq = purity(truth["test"], codes, visits)
                means.setdefault((balanced, k), []).append(vq.mean())
                row(features, "VQ-VAE", k, seed, vq, f"{vq.mean() / kmeans.mean():.3f}")
            row(features, "k-means", k, "–", kmeans)
        labels = LogisticRegression(max_iter=3000).fit(x_train, truth["train"]).predict(x_test)
        row(
            features,
            "logistic on the planted types (supervised)",
            "5",
            "–",
            purity(truth["test"], labels, visits),
        )
    lines += [
        "",
        "| K | VQ-VAE mean purity, aspects balanced / columns alike (mean over seeds) |",
        "|---:|---:|",
    ]
    for k in sorted({k for _, k in means}):
        lines.append(f"| {k} | {np.mean(means[True, k]) / np.mean(means[False, k]):.3f} |")
    print("\n".join(lines[-len(means) // 2 - 3 :]), flush=True)
    if args.markdown:
        args.markdown.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
