"""``VQVAEConfig``: the behaviour-aware VQ-VAE's hyper-parameters and its Ray Train fit's settings.

Its own module, light to import (no torch): commands and the study read it to build their flags.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from learners.config import option


@dataclass
class VQVAEConfig:
    """Hyper-parameters of the behaviour-aware VQ-VAE and of its Ray Train fit."""

    codes: int = 32
    """Codebook size K: the number of buyer types."""
    code_dim: int = 16
    """Dimension of the code vectors (the encoder's output size)."""
    hidden: int = 64
    """Width of the GRU / transformer, the feature MLP and the decoder."""
    event_dim: int = 16
    """Event-type embedding size of the GRU encoder."""
    encoder: str = "gru"
    """Sequence encoder: 'gru' (default) or 'transformer' (one small layer)."""
    max_seq_len: int = 64
    """Most recent events per buyer that the encoder reads."""
    epochs: int = 20
    """Passes over the training buyers, warm-up included."""
    warmup_epochs: int = 2
    """First epochs train encoder and decoder without quantization; the codebook is then initialised
    by k-means++ over encoder outputs of a full pass, so it starts from a behaviour-shaped space."""
    batch_size: int = 128
    """Global batch size, split evenly over the workers."""
    lr: float = 2e-3
    """Adam learning rate of encoder and decoder (the codebook learns by EMA)."""
    beta: float = 0.25
    """Commitment-loss weight: pulls encoder outputs towards their code."""
    decay: float = 0.95
    """EMA decay gamma of the codebook update."""
    dead_after: int = 20
    """Steps without any assigned buyer after which a code is re-seeded from encoder outputs."""
    funnel_weight: float = 3.0
    """Reconstruction weight of funnel features (views, favourites, carts, purchases, depth) vs raw counts."""
    outcome_weight: float = 1.0
    """Weight of the conversion and funnel-depth prediction losses. With few codes, lower it (0.2 at
    K = 8, as examples/study-demo.yaml does): there 1.0 lets the codes split buyers by whether this
    history happened to end in a purchase, not by how they shop (planted-type NMI 0.76 against 0.91 at
    0.2, benchmarks/vqvae_sweep.py). At K = 32 the synthetic types came out alike (0.88 against 0.90),
    and on Tmall IJCAI-15 the persona agent simulated real conversion with 1.0 (11.5% against 11.2%)
    and over-bought with 0.2 (16.1%; RESULTS.md, sessions 20-21)."""
    balance_aspects: bool = False
    """Standardise the features so every aspect of behaviour (learners/data/schema.FEATURE_ASPECTS:
    event counts, event shares, volume, pace, funnel, prices) carries the same total variance, however
    many columns describe it, instead of every column alike. On the truth benchmark's planted types it
    helps k-means most (NMI 0.83-0.88 -> 0.92-0.93) and the VQ-VAE little; on Tmall IJCAI-15 the persona
    agent on balanced codes simulated the same window worse (CRA 0.768 -> 0.671, ARA 0.740 -> 0.678,
    below the Markov chain), so it is off by default (RESULTS.md, session 23)."""
    sequence_weight: float = 4.0
    """Weight of reconstructing each buyer's event-transition and time-gap distributions."""
    init_sample: int = 50000
    """Most encoder outputs that k-means++ initialisation clusters (a seeded sample of the full pass)."""
    kmeans_iters: int = 10
    """Lloyd iterations after k-means++ seeding of the codebook."""
    seed: int = 0
    """Seed of model initialisation, per-epoch shuffles and code restarts."""
    workers: int = 1
    """Ray Train workers (DDP processes)."""
    cpus_per_worker: int = 0
    """CPUs (torch threads) each worker takes; 0: as many as the cluster can give every worker
    (learners/worker_cpus.py)."""
    use_gpu: bool = field(default=False, metadata=option(switch=True))
    """Give each worker a GPU (NCCL) instead of CPU (gloo)."""
    stop_after_epoch: int = 0
    """End this run after this many epochs in total (0 = all epochs); continue it later with --resume."""

    def __post_init__(self) -> None:
        if self.codes < 2:
            raise ValueError(f"codes must be >= 2, got {self.codes}")
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")
        if self.encoder not in ("gru", "transformer"):
            raise ValueError(f"encoder must be 'gru' or 'transformer', got {self.encoder!r}")
        if self.epochs <= self.warmup_epochs:
            # The codebook is initialised after the warm-up: without a later epoch no code is learnt.
            raise ValueError(
                f"epochs ({self.epochs}) must be more than warmup_epochs ({self.warmup_epochs}), which train"
                f" without codes; fix: --epochs {self.warmup_epochs + 4} or more, or a smaller --warmup-epochs"
            )
