"""BUYERS Parquet -> padded tensors for the VQ-VAE, with the feature standardisation it was fitted on.

Sequences keep their most recent ``max_seq_len`` events, oldest first, right-padded with token 0
(event code c is token c + 1). Rows whose features are not finite or whose sequences disagree in
length are quarantined with a reason and counted (rows read = rows kept + rows quarantined).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from torch import Tensor

from learners.data.schema import EVENT_TYPES, FEATURE_ASPECTS, FEATURE_NAMES, N_FEATURES, TABLE_FILES

# Upper edges (seconds) of the time-gap histogram the decoder reconstructs; the last bin is open.
GAP_EDGES_S = (2, 5, 10, 20, 40, 80, 300, 1800, 86400)
N_GAP_BINS = len(GAP_EDGES_S) + 1
N_EVENT_TYPES = len(EVENT_TYPES)
# Transition targets: (previous event or start, next event) pairs.
N_TRANSITIONS = (N_EVENT_TYPES + 1) * N_EVENT_TYPES

READ_COLUMNS = ("merchant_id", "buyer_id", "features", "event_seq", "gap_seq", "converted", "depth")


def aspect_weights(varies: np.ndarray) -> np.ndarray:
    """Per feature, the weight that gives every aspect of ``FEATURE_ASPECTS`` the same total variance
    after standardising: 1 / sqrt(the aspect's varying columns), scaled so the varying features' total
    variance stays their number. Constant features keep weight 1 (they are 0 once centred)."""
    weights = np.ones(N_FEATURES)
    for columns in FEATURE_ASPECTS.values():
        index = [FEATURE_NAMES.index(c) for c in columns]
        n_varying = int(varies[index].sum())
        if n_varying:
            weights[index] = n_varying**-0.5
    if varies.any():
        weights[varies] /= np.sqrt(np.mean(weights[varies] ** 2))
    return np.where(varies, weights, 1.0)


@dataclass
class FeatureStats:
    """Per-feature centre and scale of the training buyers (saved with the model)."""

    mean: list[float]
    std: list[float]
    """The scale each feature is divided by: its standard deviation, times ``aspect_weights``' inverse
    when the aspects are balanced."""

    @classmethod
    def fit(cls, features: np.ndarray, balanced: bool = False) -> FeatureStats:
        std = features.std(0)
        varies = std > 1e-6
        # A constant feature (e.g. prices in a source without prices) is centred, not scaled.
        std = np.where(varies, std, 1.0)
        if balanced:
            std = std / aspect_weights(varies)
        return cls(mean=features.mean(0).astype(float).tolist(), std=std.astype(float).tolist())

    def apply(self, features: np.ndarray) -> np.ndarray:
        return ((features - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)).astype(
            np.float32
        )

    def save(self, path: Path) -> None:
        path.write_text(
            json.dumps({"feature_names": list(FEATURE_NAMES), "mean": self.mean, "std": self.std})
        )

    @classmethod
    def load(cls, path: Path) -> FeatureStats:
        data = json.loads(path.read_text())
        if data.get("feature_names") != list(FEATURE_NAMES):
            raise ValueError(
                f"{path}: feature names differ from learners/data/schema.FEATURE_NAMES; "
                "the run was fitted on another schema version, refit it"
            )
        return cls(mean=data["mean"], std=data["std"])


@dataclass
class BuyerBatch:
    """Model inputs for a set of buyers (features already standardised)."""

    features: Tensor
    events: Tensor
    gaps: Tensor
    lengths: Tensor
    converted: Tensor
    depth: Tensor
    transitions: Tensor
    """Each buyer's distribution over (previous event or start, next event) pairs, (N, N_TRANSITIONS)."""
    gap_hist: Tensor
    """Each buyer's distribution of within-history gaps over the GAP_EDGES_S bins, (N, N_GAP_BINS)."""

    def __len__(self) -> int:
        return self.features.shape[0]

    def select(self, index: Tensor) -> BuyerBatch:
        return BuyerBatch(*(t[index] for t in self.tensors()))

    def tensors(self) -> tuple[Tensor, ...]:
        return (
            self.features,
            self.events,
            self.gaps,
            self.lengths,
            self.converted,
            self.depth,
            self.transitions,
            self.gap_hist,
        )

    def inputs(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        return (self.features, self.events, self.gaps, self.lengths)


@dataclass
class BuyerRows:
    """Raw (unstandardised) arrays of the kept buyers, plus what was quarantined."""

    merchant_id: pa.Array
    buyer_id: pa.Array
    features: np.ndarray
    events: np.ndarray
    gaps: np.ndarray
    lengths: np.ndarray
    converted: np.ndarray
    depth: np.ndarray
    rows_read: int
    quarantine: dict[str, int] = field(default_factory=dict)
    """Reason -> number of rows quarantined for it."""
    quarantined: pa.Table | None = None
    """merchant_id, buyer_id, reason of every quarantined row."""

    def inputs(self, stats: FeatureStats) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """What the encoder reads (``BuyerBatch.inputs`` without computing the training targets)."""
        return (
            torch.from_numpy(stats.apply(self.features)),
            torch.from_numpy(self.events),
            torch.from_numpy(self.gaps),
            torch.from_numpy(self.lengths),
        )

    def batch(self, stats: FeatureStats) -> BuyerBatch:
        transitions, gap_hist = behaviour_targets(self.events, self.gaps, self.lengths)
        return BuyerBatch(
            features=torch.from_numpy(stats.apply(self.features)),
            events=torch.from_numpy(self.events),
            gaps=torch.from_numpy(self.gaps),
            lengths=torch.from_numpy(self.lengths),
            converted=torch.from_numpy(self.converted),
            depth=torch.from_numpy(self.depth),
            transitions=torch.from_numpy(transitions),
            gap_hist=torch.from_numpy(gap_hist),
        )


def behaviour_targets(
    events: np.ndarray, gaps: np.ndarray, lengths: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per-buyer transition and gap distributions of the padded sequences (tokens = event code + 1)."""
    n, width = events.shape
    valid = np.arange(width)[None, :] < lengths[:, None]
    previous = np.concatenate([np.zeros((n, 1), events.dtype), events[:, :-1]], axis=1)  # 0 = start
    pair = previous * N_EVENT_TYPES + np.clip(events - 1, 0, None)
    rows = np.repeat(np.arange(n), width).reshape(n, width)
    transitions = np.zeros((n, N_TRANSITIONS), np.float32)
    np.add.at(transitions, (rows[valid], pair[valid]), 1.0)
    transitions /= np.maximum(transitions.sum(1, keepdims=True), 1.0)
    has_gap = valid & (np.arange(width)[None, :] >= 1)
    bins = np.searchsorted(np.log1p(np.asarray(GAP_EDGES_S, np.float32)), gaps, side="right")
    gap_hist = np.zeros((n, N_GAP_BINS), np.float32)
    np.add.at(gap_hist, (rows[has_gap], bins[has_gap]), 1.0)
    totals = gap_hist.sum(1, keepdims=True)
    # A single-event buyer has no gap; it gets the first bin (no pause) as its target.
    gap_hist[totals[:, 0] == 0, 0] = 1.0
    gap_hist /= np.maximum(gap_hist.sum(1, keepdims=True), 1.0)
    return transitions, gap_hist


def buyers_path(data_dir: str | Path) -> Path:
    """The buyers table of a prepared directory, with a clear error when it is missing."""
    path = Path(data_dir) / TABLE_FILES["buyers"]
    if not path.exists():
        raise FileNotFoundError(
            f"{path} not found: DATA must be a directory written by `simpersona prepare ... --out DATA`"
        )
    return path


def read_buyers(path: str | Path, columns: tuple[str, ...] = READ_COLUMNS) -> pa.Table:
    """Read the columns the VQ-VAE needs, naming the file and the missing column on a schema mismatch."""
    names = pq.read_schema(path).names
    missing = [c for c in columns if c not in names]
    if missing:
        raise ValueError(
            f"{path}: column(s) {missing} missing; expected the BUYERS schema of learners/data/schema.py "
            "(re-run `simpersona prepare` to rebuild it)"
        )
    return pq.read_table(path, columns=list(columns))


def _padded(
    values: np.ndarray, offsets: np.ndarray, max_len: int, dtype: type
) -> tuple[np.ndarray, np.ndarray]:
    """The last ``max_len`` items of each list, left-aligned in a zero-padded matrix, and the lengths."""
    starts, ends = offsets[:-1], offsets[1:]
    lengths = np.minimum(ends - starts, max_len)
    first = ends - lengths
    out = np.zeros((len(lengths), max_len), dtype=dtype)
    rows = np.repeat(np.arange(len(lengths)), lengths)
    cols = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    out[rows, cols] = values[np.repeat(first, lengths) + cols]
    return out, lengths.astype(np.int64)


def _list_parts(column: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, np.ndarray]:
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if arr.null_count:
        raise ValueError("sequence column has nulls; the BUYERS schema declares it non-nullable")
    offsets = arr.offsets.to_numpy().astype(np.int64)
    values = arr.values.to_numpy(zero_copy_only=False)
    return values, offsets - offsets[0]


def _rows_with_bad_values(values: np.ndarray, offsets: np.ndarray, n: int) -> np.ndarray:
    bad_positions = np.flatnonzero(~np.isfinite(values))
    rows = np.searchsorted(offsets, bad_positions, side="right") - 1
    return np.bincount(rows, minlength=n)[:n] > 0


def rows_from_table(table: pa.Table, max_seq_len: int) -> BuyerRows:
    """Convert a BUYERS table (at least READ_COLUMNS) to arrays, quarantining unusable rows."""
    n = table.num_rows
    feats_col = table.column("features").combine_chunks()
    flat = feats_col.flatten().to_numpy(zero_copy_only=False).astype(np.float32)
    if flat.size != n * N_FEATURES:
        raise ValueError(
            f"features must hold {N_FEATURES} values per buyer (FEATURE_NAMES), got {flat.size / max(n, 1):g}:"
            " a directory prepared by another version; run `simpersona prepare` on its logs again"
        )
    features = flat.reshape(n, N_FEATURES)
    ev_values, ev_offsets = _list_parts(table.column("event_seq"))
    gap_values, gap_offsets = _list_parts(table.column("gap_seq"))
    reasons = {
        "non-finite features": ~np.isfinite(features).all(1),
        "event_seq and gap_seq lengths differ": np.diff(ev_offsets) != np.diff(gap_offsets),
        "empty event sequence": np.diff(ev_offsets) == 0,
        "non-finite gap_seq values": _rows_with_bad_values(gap_values, gap_offsets, n),
    }
    bad = np.zeros(n, dtype=bool)
    why = np.full(n, "", dtype=object)
    counts: dict[str, int] = {}
    for reason, mask in reasons.items():
        fresh = mask & ~bad
        if fresh.any():
            counts[reason] = int(fresh.sum())
            why[fresh] = reason
        bad |= mask
    events, lengths = _padded(ev_values.astype(np.int64) + 1, ev_offsets, max_seq_len, np.int64)
    gaps, _ = _padded(gap_values.astype(np.float32), gap_offsets, max_seq_len, np.float32)
    keep = ~bad
    keep_idx = pa.array(np.flatnonzero(keep))
    bad_idx = pa.array(np.flatnonzero(bad))
    quarantined = pa.table(
        {
            "merchant_id": pc.take(table.column("merchant_id"), bad_idx),
            "buyer_id": pc.take(table.column("buyer_id"), bad_idx),
            "reason": pa.array(why[bad].tolist(), pa.string()),
        }
    )
    return BuyerRows(
        merchant_id=pc.take(table.column("merchant_id"), keep_idx).combine_chunks(),
        buyer_id=pc.take(table.column("buyer_id"), keep_idx).combine_chunks(),
        features=features[keep],
        events=events[keep],
        gaps=gaps[keep],
        lengths=lengths[keep],
        converted=table.column("converted").to_numpy(zero_copy_only=False)[keep].astype(np.float32),
        depth=np.clip(table.column("depth").to_numpy(zero_copy_only=False)[keep].astype(np.int64), 0, 5),
        rows_read=n,
        quarantine=counts,
        quarantined=quarantined,
    )


def load_rows(data_dir: str | Path, max_seq_len: int) -> BuyerRows:
    """The kept buyers of a prepared directory."""
    path = buyers_path(data_dir)
    try:
        return rows_from_table(read_buyers(path), max_seq_len)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from err
