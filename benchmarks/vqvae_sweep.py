"""VQ-VAE sweep on planted types: K in {8, 16, 32, 64, 128}, commitment beta, encoder (GRU vs
transformer), outcome-head weight.

  .venv/bin/python -m benchmarks.vqvae_sweep [--buyers 3000] [--epochs 10] [--only 7,8,9] [--markdown FILE]

Each row trains the VQ-VAE in one process (the training loop Ray Train workers run) on the same
`simpersona synth` + `prepare` data and reports codebook utilisation, perplexity, Calinski-Harabasz,
coherence and many-to-one NMI against the planted types, with k-means on the same features and K
measured in the same run as the baseline.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from learners.data.synth import SynthConfig, synth_prepared
from learners.vqvae.dataset import FeatureStats, load_rows
from learners.vqvae.fit import VQVAEConfig, WorkerTraining
from learners.vqvae.kmeans_baseline import run_baseline
from learners.vqvae.metrics import type_metrics
from learners.vqvae.report import truth_labels

GRID = [
    {"codes": 16},
    {"codes": 32},
    {"codes": 64},
    {"codes": 128},
    {"codes": 32, "beta": 1.0},
    {"codes": 32, "beta": 0.05},
    {"codes": 32, "encoder": "transformer"},
    {"codes": 32, "outcome_weight": 0.2},
    {"codes": 8, "outcome_weight": 1.0},
    {"codes": 8, "outcome_weight": 0.2},
]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--buyers", type=int, default=3000)
    parser.add_argument("--events-per-buyer", type=float, default=40.0)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--only", help="comma-separated rows of the grid to run (0-based; default: all)")
    parser.add_argument("--markdown", type=Path, help="also write the table to this file")
    args = parser.parse_args()
    torch.set_num_threads(1)  # as in a 1-CPU Ray Train worker: deterministic and comparable
    with tempfile.TemporaryDirectory() as tmp:
        synth = SynthConfig(buyers=args.buyers, merchants=8, seed=0, events_per_buyer=args.events_per_buyer)
        raw, data = synth_prepared(synth, Path(tmp))
        rows = load_rows(data, VQVAEConfig().max_seq_len)
        ids = pa.table({"merchant_id": rows.merchant_id, "buyer_id": rows.buyer_id})
        truth = truth_labels(raw / "truth.parquet", ids)
    stats = FeatureStats.fit(rows.features)
    batch = rows.batch(stats)
    standardised = stats.apply(rows.features)
    cols = [
        "encoder",
        "K",
        "beta",
        "outcome weight",
        "in use",
        "perplexity",
        "CH",
        "coherence",
        "NMI",
        "k-means NMI",
        "k-means CH",
        "fit s",
    ]
    lines = [
        f"VQ-VAE sweep: {len(batch):,} synthetic buyers with planted types, {args.epochs} epochs "
        f"(4 warm-up), batch 64",
        "",
        "| " + " | ".join(cols) + " |",
        "|" + "---|" * len(cols),
    ]
    print("\n".join(lines), flush=True)
    rows_to_run = [int(i) for i in args.only.split(",")] if args.only else range(len(GRID))
    for overrides in (GRID[i] for i in rows_to_run):
        config = VQVAEConfig(**{"epochs": args.epochs, "warmup_epochs": 4, "batch_size": 64, **overrides})
        work = WorkerTraining(config, batch, stats, torch.device("cpu"))
        start = time.perf_counter()
        for _ in range(config.epochs):
            work.run_epoch()
        seconds = time.perf_counter() - start
        work.model.eval()
        codes = work.model.assign(*batch.inputs()).numpy().astype(np.int64)
        vq = type_metrics(codes, config.codes, standardised, rows.features, rows.converted, truth)
        km = run_baseline(rows, stats, config.codes, truth=truth).metrics
        line = (
            f"| {config.encoder} | {config.codes} | {config.beta} | {config.outcome_weight} | {vq['utilisation']:.0%} | "
            f"{vq['perplexity']:.1f} | {vq['calinski_harabasz']:.0f} | {vq['coherence']:.4f} | "
            f"{vq['nmi']:.3f} | {km['nmi']:.3f} | {km['calinski_harabasz']:.0f} | {seconds:.0f} |"
        )
        lines.append(line)
        print(line, flush=True)
    if args.markdown:
        args.markdown.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
