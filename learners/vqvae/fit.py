"""Fit the buyer-type codebook with Ray Train: ``TorchTrainer`` workers running DDP (gloo on CPU).

Every worker reads the prepared buyers table, standardises the features with statistics of all
training buyers, and trains on its shard of a per-epoch permutation that depends only on
``(seed, epoch)``. Rank 0 writes a checkpoint after every epoch through ``ray.train.report``, so a
killed run continues with ``resume=True`` and ends with the same codebook as an uninterrupted one.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from learners.vqvae.checkpoint import (
    TrainingState,
    build_model,
    load_state,
    load_weights,
    read_state,
    save_model,
    save_state,
)
from learners.vqvae.config import VQVAEConfig
from learners.vqvae.dataset import BuyerBatch, BuyerRows, FeatureStats, buyers_path, load_rows
from learners.vqvae.model import BuyerVQVAE, feature_weights, reconstruction_loss
from learners.vqvae.quantizer import gather_rows
from learners.worker_cpus import scaling_config

RUN_NAME = "vqvae"
TRAIN_DIR = "train"
MIN_BUYERS_PER_CODE = 10
"""Below this many kept buyers per code, most codes stand for a handful of buyers: the fit warns."""


@dataclass
class FitResult:
    """What ``fit_codebook`` leaves behind."""

    run_dir: Path
    epochs_done: int
    history: list[dict[str, float]]
    """Per-epoch metrics (recon_loss, commit_loss, perplexity, codes_in_use, restarts, ...)."""
    checkpoint: Path
    """The last Ray Train checkpoint directory."""


def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The shuffle of epoch ``epoch``: a function of (seed, epoch) only, so resumes replay it."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))


class WorkerTraining:
    """One worker's training state and epoch loop (rank 0 of 1 without Ray)."""

    def __init__(
        self, config: VQVAEConfig, data: BuyerBatch, stats: FeatureStats, device: torch.device
    ) -> None:
        self.config = config
        self.data = data
        self.stats = stats
        self.device = device
        self.rank = dist.get_rank() if dist.is_initialized() else 0
        self.world = dist.get_world_size() if dist.is_initialized() else 1
        torch.manual_seed(config.seed)
        self.model: BuyerVQVAE = build_model(asdict(config)).to(device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.lr)
        self.weights = feature_weights(config.funnel_weight).to(device)
        self.trained: torch.nn.Module = self.model
        self.epochs_done = 0
        self.history: list[dict[str, float]] = []

    def wrap(self, wrapper: Any) -> None:
        """Use ``wrapper(model)`` (DDP) for the training forward passes."""
        self.trained = wrapper(self.model)

    def state(self) -> TrainingState:
        return TrainingState(asdict(self.config), self.stats, self.epochs_done, self.history)

    def restore(self, directory: Path) -> None:
        state = load_state(directory, self.model, self.optimizer, self.device)
        self.epochs_done, self.history = state.epochs_done, state.history

    def _to(self, batch: BuyerBatch) -> BuyerBatch:
        return BuyerBatch(*(t.to(self.device) for t in batch.tensors()))

    @torch.no_grad()
    def initialise(self) -> None:
        """k-means++ codebook over encoder outputs of a full pass (each worker encodes its shard)."""
        self.model.eval()
        shard = torch.arange(self.rank, len(self.data), self.world)
        outputs = []
        for chunk in shard.split(8192):
            outputs.append(self.model.encode(*self._to(self.data.select(chunk)).inputs()))
        z = torch.cat(outputs)
        n_total = len(self.data)
        if n_total > self.config.init_sample:
            # A seeded uniform sample: each worker keeps its share of the sampled rows.
            keep = torch.rand(len(shard), generator=torch.Generator().manual_seed(self.config.seed + 17))
            z = z[keep.to(z.device) < self.config.init_sample / n_total]
        self.model.quantizer.init_codebook(z, lloyd_iters=self.config.kmeans_iters)

    def run_epoch(self) -> dict[str, float]:
        """Train one epoch on this worker's shard; metrics are summed over all workers.

        The codebook is initialised at the start of the first epoch after warm-up.
        """
        cfg, epoch = self.config, self.epochs_done
        if epoch >= cfg.warmup_epochs and not bool(self.model.quantizer.initialised):
            self.initialise()
        start = time.perf_counter()
        self.model.train()
        per_worker = len(self.data) // self.world
        order = epoch_permutation(len(self.data), cfg.seed, epoch)[
            self.rank : per_worker * self.world : self.world
        ]
        local_batch = max(1, cfg.batch_size // self.world)
        restarts_before = int(self.model.quantizer.restarts)
        totals = torch.zeros(3, dtype=torch.float64)  # recon * n, commit * n, n
        usage = torch.zeros(cfg.codes, dtype=torch.float64)
        quantize = bool(self.model.quantizer.initialised)
        for index in order.split(local_batch):
            batch = self._to(self.data.select(index))
            out = self.trained(*batch.inputs(), quantize=quantize)
            recon = reconstruction_loss(out, batch, self.weights, cfg.outcome_weight, cfg.sequence_weight)
            loss = recon + out.quant.commitment_loss
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            n = len(index)
            totals += torch.tensor(
                [recon.item() * n, out.quant.commitment_loss.item() * n, n], dtype=torch.float64
            )
            usage += torch.bincount(out.quant.codes.cpu(), minlength=cfg.codes).double()
        if self.world > 1:
            dist.all_reduce(totals)
            dist.all_reduce(usage)
        probs = usage / usage.sum().clamp_min(1.0)
        seconds = time.perf_counter() - start
        self.epochs_done += 1
        metrics = {
            "epoch": float(self.epochs_done),
            "recon_loss": float(totals[0] / totals[2]),
            "commit_loss": float(totals[1] / totals[2]),
            "perplexity": float(torch.exp(-(probs * probs.clamp_min(1e-12).log()).sum())),
            "codes_in_use": float((usage > 0).sum()),
            "restarts": float(int(self.model.quantizer.restarts) - restarts_before),
            "restarts_total": float(int(self.model.quantizer.restarts)),
            "buyers_per_s": float(totals[2]) / seconds,
            "epoch_s": seconds,
            "codebook_divergence": self.codebook_divergence(),
        }
        self.history.append(metrics)
        return metrics

    @torch.no_grad()
    def codebook_divergence(self) -> float:
        """Largest absolute difference between any worker's codebook and rank 0's (0 when in sync)."""
        codebook = self.model.quantizer.codebook
        if self.world == 1:
            return 0.0
        everything = gather_rows(codebook).view(self.world, *codebook.shape)
        return float((everything - everything[0]).abs().max())


def check_buyers(rows: BuyerRows, codes: int) -> str | None:
    """Refuse (ValueError) fewer kept buyers than ``codes``: the k-means baseline needs a buyer per
    code, and a code no buyer can hold is never learned. Returns a warning line when the codes will
    be thin (fewer than MIN_BUYERS_PER_CODE buyers each), else None."""
    kept = len(rows.lengths)
    quarantined = sum(rows.quarantine.values())
    note = f" ({quarantined:,} of {rows.rows_read:,} quarantined)" if quarantined else ""
    if kept < codes:
        fix = f"--codes {kept} or fewer, or more data" if kept else "more data"
        raise ValueError(f"{kept:,} buyers kept{note}, fewer than --codes {codes}: fix: {fix}")
    if kept < MIN_BUYERS_PER_CODE * codes:
        return (
            f"warning: {kept:,} buyers kept{note} for --codes {codes}: {kept / codes:.1f} buyers per code"
            f" (fewer than {MIN_BUYERS_PER_CODE}), so the codes will be thin; fewer --codes or more data"
            " give each more buyers"
        )
    return None


def progress_line(metrics: dict[str, float], epochs: int, codes: int) -> str:
    """One epoch's console line. Its codes are those the epoch's training batches hit, not the final
    assignment's that the report and the run's summary count."""
    return (
        f"epoch {int(metrics['epoch'])}/{epochs}  recon {metrics['recon_loss']:.4f}  "
        f"commit {metrics['commit_loss']:.4f}  perplexity {metrics['perplexity']:.1f}  "
        f"codes hit this epoch {int(metrics['codes_in_use'])}/{codes}  restarts {int(metrics['restarts'])}  "
        f"({metrics['buyers_per_s']:.0f} buyers/s)"
    )


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """The Ray Train worker function."""
    import ray.train
    import ray.train.torch

    config: VQVAEConfig = loop_config["config"]
    rows = load_rows(loop_config["data_dir"], config.max_seq_len)
    stats = FeatureStats.fit(rows.features, config.balance_aspects)
    device = ray.train.torch.get_device()
    work = WorkerTraining(config, rows.batch(stats), stats, device)
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        # A copy of this worker's own: from remote storage, ranks sharing Ray's download directory
        # can rewrite it under each other (learners/agent/train.py's RayStore).
        with tempfile.TemporaryDirectory(prefix="vqvae-resume-") as own:
            work.restore(Path(checkpoint.to_directory(own)))
    # The EMA statistics are all-reduced inside the quantizer; DDP need not copy rank 0's buffers.
    work.wrap(
        lambda m: ray.train.torch.prepare_model(m, parallel_strategy_kwargs={"forward_sync_buffers": False})
    )
    last = config.epochs if config.stop_after_epoch <= 0 else min(config.epochs, config.stop_after_epoch)
    rank = ray.train.get_context().get_world_rank()
    # The driver's sink prints each line once on its console; a worker's own print is forwarded by
    # Ray (twice, with Ray Train's print patch) and only when the driver forwards worker output.
    progress = loop_config.get("progress") or (lambda line: print(line, flush=True))
    while work.epochs_done < last:
        metrics = work.run_epoch()
        if rank == 0:
            progress(progress_line(metrics, config.epochs, config.codes))
            with tempfile.TemporaryDirectory() as tmp:
                save_state(Path(tmp), work.model, work.optimizer, work.state())
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
        else:
            ray.train.report(metrics, checkpoint=None)


def fit_codebook(
    data_dir: str | Path,
    config: VQVAEConfig,
    out: str | Path,
    resume: bool = False,
    progress: Callable[[str], None] | None = None,
    rows: BuyerRows | None = None,
) -> FitResult:
    """Fit the VQ-VAE on ``DATA/buyers.parquet`` with Ray Train and write the run directory ``out``.

    ``out`` receives model.safetensors + state.json (the fitted model), history.json and
    manifest.json; Ray Train's checkpoints live under ``out/train``. ``progress``: a picklable
    sink that rank 0 hands each epoch's progress line to (default: the worker prints it), and this
    process the thin-codes warning of ``check_buyers``. Fewer kept buyers than ``config.codes`` are
    refused before anything is written. ``rows``: the buyers already read (``load_rows``), if any.
    """
    import ray
    from ray.train import CheckpointConfig, RunConfig
    from ray.train.torch import TorchTrainer

    data_dir = Path(data_dir).resolve()
    buyers_path(data_dir)
    out = Path(out).resolve()
    storage = out / TRAIN_DIR
    previous = storage / RUN_NAME
    if resume and not previous.exists():
        raise FileNotFoundError(f"{previous} not found: nothing to resume; run without --resume first")
    if not resume and previous.exists():
        raise ValueError(f"{out} already holds a fit; pass --resume to continue it or choose another --out")
    rows = load_rows(data_dir, config.max_seq_len) if rows is None else rows
    warning = check_buyers(rows, config.codes)
    if warning:
        (progress or print)(warning)
    out.mkdir(parents=True, exist_ok=True)
    started_ray = not ray.is_initialized()
    if started_ray:
        # A cluster named by RAY_ADDRESS, else a fresh local instance (never some other session's).
        ray.init(address=os.environ.get("RAY_ADDRESS", "local"), include_dashboard=False)
    try:
        trainer = TorchTrainer(
            train_loop_per_worker,
            train_loop_config={"config": config, "data_dir": str(data_dir), "progress": progress},
            scaling_config=scaling_config(config.workers, config.use_gpu, config.cpus_per_worker),
            run_config=RunConfig(
                name=RUN_NAME,
                storage_path=str(storage),
                checkpoint_config=CheckpointConfig(num_to_keep=2),
            ),
        )
        result = trainer.fit()
    finally:
        if started_ray:
            ray.shutdown()
    if result.checkpoint is None:
        raise RuntimeError(f"Ray Train run under {storage} finished without a checkpoint: {result.error}")
    with result.checkpoint.as_directory() as directory:
        state = read_state(directory)
        model = build_model(state.config)
        load_weights(directory, model)
        checkpoint_path = Path(result.checkpoint.path)
    save_model(out, model, state)
    (out / "history.json").write_text(json.dumps(state.history, indent=1))
    manifest = {
        "kind": "vqvae-run",
        "data_dir": str(data_dir),
        "config": asdict(config),
        "epochs_done": state.epochs_done,
        "buyers_read": rows.rows_read,
        "buyers_kept": int(len(rows.lengths)),
        "buyers_quarantined": rows.quarantine,
        "checkpoint": str(checkpoint_path),
        "versions": {"torch": torch.__version__, "ray": ray.__version__, "numpy": np.__version__},
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return FitResult(out, state.epochs_done, state.history, checkpoint_path)
