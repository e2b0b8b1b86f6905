"""VQ-VAE benchmark: Ray Train fit throughput with 1 and 2 workers, and assignment throughput beside
scikit-learn ``KMeans.predict`` on the same standardised features (the ratio), and beside the packed
``nn.GRU`` that training uses (the stepped GRU of assignment must give the same codes).

  .venv/bin/python -m benchmarks.vqvae [--buyers 20000] [--data DIR] [--workers 1 2] [--markdown FILE]

Without --data, planted-type data is generated with `simpersona synth` + `prepare` in a temp dir.
Every figure, and each ratio's baseline, is measured in this run.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import ray
import torch

from benchmarks.table_output import publish
from learners.data.synth import SynthConfig, synth_prepared
from learners.vqvae.assign import CodeAssigner, assign_codes
from learners.vqvae.dataset import buyers_path, read_buyers, rows_from_table
from learners.vqvae.fit import VQVAEConfig, fit_codebook
from learners.vqvae.kmeans_baseline import fit_kmeans


def best_of(fn, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def assignment_rows(assigner: CodeAssigner, table: pa.Table, k: int) -> list[tuple[str, str, str]]:
    """Assignment throughput (stepped GRU, packed GRU, whole table) and the KMeans.predict baseline."""
    rows = rows_from_table(table, assigner.max_seq_len)
    features, events, gaps, lengths = rows.inputs(assigner.stats)
    n = len(lengths)
    model = assigner.model
    inputs = (features, events, gaps, lengths)
    threads = torch.get_num_threads()
    t_model = best_of(lambda: assign_codes(model, inputs))
    t_one = best_of(lambda: assign_codes(model, inputs, threads=1))
    with torch.inference_mode():
        t_intra = best_of(lambda: model.assign(*inputs))
        t_stepped = best_of(lambda: model.sequence.final_state(events, gaps, lengths))
        t_packed = best_of(lambda: model.sequence.packed_state(events, gaps, lengths))
        z_packed = model.project(
            torch.cat([model.sequence.packed_state(events, gaps, lengths), model.features_in(features)], -1)
        )
        same = float((model.quantizer.nearest(z_packed) == assign_codes(model, inputs)).double().mean())
    t_full = best_of(lambda: assigner.codes_of(table))
    standardised = features.numpy()
    kmeans = fit_kmeans(standardised, k, seed=0, n_init=1)
    t_km = best_of(lambda: kmeans.predict(standardised))
    return [
        (
            "assign: encoder + nearest code (tensors ready)",
            f"{n / t_model:,.0f} buyers/s",
            f"{n:,} buyers, `assign_codes`: {threads} worker threads x 1 torch thread",
        ),
        ("assign: same, 1 worker thread", f"{n / t_one:,.0f} buyers/s", ""),
        ("assign: one `model.assign` call", f"{n / t_intra:,.0f} buyers/s", f"{threads} intra-op threads"),
        (
            "GRU encoder alone: stepped, no autograd (assignment)",
            f"{n / t_stepped:,.0f} buyers/s",
            f"{threads} intra-op threads",
        ),
        (
            "GRU encoder alone: packed nn.GRU (training path, before)",
            f"{n / t_packed:,.0f} buyers/s",
            f"{threads} intra-op threads",
        ),
        ("speed-up stepped / packed GRU", f"{t_packed / t_stepped:.2f}x", f"codes identical for {same:.2%}"),
        ("assign: BUYERS table -> codes table (incl. padding)", f"{n / t_full:,.0f} buyers/s", ""),
        ("baseline: sklearn KMeans.predict, same features", f"{n / t_km:,.0f} buyers/s", ""),
        ("ratio VQ-VAE encoder / KMeans.predict", f"{t_km / t_model:.3f}", "higher = VQ-VAE faster"),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--buyers", type=int, default=20000)
    parser.add_argument("--data", type=Path, help="a prepared directory (default: synthetic)")
    parser.add_argument("--codes", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument(
        "--workers", type=int, nargs="+", default=[1, 2], help="Ray Train worker counts to fit with"
    )
    parser.add_argument("--markdown", type=Path, help="also write the table to this file")
    args = parser.parse_args()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data = args.data or synth_prepared(SynthConfig(buyers=args.buyers, merchants=16, seed=0), root)[1]
        table = read_buyers(buyers_path(data))
        ray.init(address="local", include_dashboard=False, log_to_driver=False)
        rows_md = []
        runs = {}
        for workers in args.workers:
            config = VQVAEConfig(codes=args.codes, epochs=args.epochs, warmup_epochs=1, workers=workers)
            start = time.perf_counter()
            result = fit_codebook(data, config, root / f"run{workers}")
            wall = time.perf_counter() - start
            per_epoch = [h["buyers_per_s"] for h in result.history[1:]]
            runs[workers] = statistics.mean(per_epoch)
            rows_md.append(
                (
                    f"fit, {workers} Ray Train worker(s), buyers/s per quantized epoch",
                    f"{runs[workers]:,.0f}",
                    f"wall {wall:.1f} s incl. Ray Train start",
                )
            )
        ray.shutdown()
        if {1, 2} <= runs.keys():
            rows_md.append(
                ("fit speed-up, 2 vs 1 workers", f"{runs[2] / runs[1]:.2f}x", "same data, same config")
            )
        rows_md += assignment_rows(CodeAssigner(root / f"run{args.workers[0]}"), table, args.codes)
        n = table.num_rows
    head = (
        f"VQ-VAE benchmark: {n:,} buyers, K={args.codes}, torch threads {torch.get_num_threads()}, "
        f"{os.cpu_count()} CPUs, {platform.processor() or platform.machine()}, "
        f"load average {load_before[0]:.2f} at start, {os.getloadavg()[0]:.2f} at end"
    )
    lines = [head, "", "| measure | value | note |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows_md]
    publish(lines, args.markdown)


if __name__ == "__main__":
    main()
