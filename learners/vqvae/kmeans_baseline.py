"""The k-means baseline: k-means++ on the same standardised fixed-length features, same metrics.

It sees what the VQ-VAE's feature branch sees but neither the event sequences nor the
behaviour-aware loss, so the difference between the two is what those add.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.cluster import KMeans

from learners.vqvae.dataset import BuyerRows, FeatureStats
from learners.vqvae.metrics import type_metrics


@dataclass
class KMeansBaseline:
    """A fitted baseline and its assignment of the buyers it was fitted on."""

    model: KMeans
    codes: np.ndarray
    metrics: dict[str, float]


def fit_kmeans(standardised: np.ndarray, k: int, seed: int = 0, n_init: int = 4) -> KMeans:
    """scikit-learn k-means with k-means++ seeding, best of ``n_init`` restarts."""
    if len(standardised) < k:
        raise ValueError(
            f"k-means with {k} clusters needs at least {k} buyers, got {len(standardised)}:"
            f" fix: --codes {len(standardised)} or fewer, or more data"
        )
    return KMeans(n_clusters=k, init="k-means++", n_init=n_init, random_state=seed).fit(standardised)


def run_baseline(
    rows: BuyerRows, stats: FeatureStats, k: int, seed: int = 0, truth: np.ndarray | None = None
) -> KMeansBaseline:
    """Fit on ``rows`` (standardised with ``stats``, as the VQ-VAE is) and measure it."""
    standardised = stats.apply(rows.features)
    model = fit_kmeans(standardised, k, seed)
    codes = model.labels_.astype(np.int64)
    metrics = type_metrics(codes, k, standardised, rows.features, rows.converted, truth)
    return KMeansBaseline(model, codes, metrics)
