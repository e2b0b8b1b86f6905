"""The VQ-VAE network, its dataset tensors and the single-process training loop."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from learners.data.schema import EVENT_CODE, FEATURE_NAMES, N_FEATURES
from learners.vqvae.dataset import FeatureStats, behaviour_targets, rows_from_table
from learners.vqvae.fit import VQVAEConfig, WorkerTraining
from learners.vqvae.model import N_TOKENS, BuyerVQVAE, ModelShape, feature_weights
from tests.learners.vqvae.conftest import make_buyers


def shape(encoder: str = "gru") -> ModelShape:
    return ModelShape(codes=4, code_dim=6, hidden=16, event_dim=8, encoder=encoder, max_seq_len=12)


@pytest.mark.parametrize("encoder", ["gru", "transformer"])
def test_forward_shapes(encoder):
    rows = rows_from_table(make_buyers(20, seed=2)[0], 12)
    batch = rows.batch(FeatureStats.fit(rows.features))
    model = BuyerVQVAE(shape(encoder))
    model.quantizer.init_codebook(model.encode(*batch.inputs()).detach())
    out = model(*batch.inputs())
    assert out.z.shape == (20, 6)
    assert out.features.shape == (20, N_FEATURES)
    assert out.depth_logits.shape == (20, 6)
    assert model.assign(*batch.inputs()).shape == (20,)


def test_gru_encoding_ignores_padding():
    rows = rows_from_table(make_buyers(10, seed=3)[0], 40)
    batch = rows.batch(FeatureStats.fit(rows.features))
    model = BuyerVQVAE(shape("gru")).eval()
    wider_events = torch.cat([batch.events, torch.zeros(10, 7, dtype=batch.events.dtype)], 1)
    wider_gaps = torch.cat([batch.gaps, torch.full((10, 7), 5.0)], 1)
    with torch.no_grad():
        a = model.encode(batch.features, batch.events, batch.gaps, batch.lengths)
        b = model.encode(batch.features, wider_events, wider_gaps, batch.lengths)
    assert torch.allclose(a, b, atol=1e-6)


def test_sequences_keep_the_most_recent_events_and_targets_are_distributions():
    table, _ = make_buyers(30, seed=4)
    rows = rows_from_table(table, 5)
    seqs = table.column("event_seq").to_pylist()
    for i, seq in enumerate(seqs):
        tail = seq[-5:]
        assert rows.lengths[i] == len(tail)
        assert rows.events[i, : len(tail)].tolist() == [c + 1 for c in tail]
    transitions, gaps = behaviour_targets(rows.events, rows.gaps, rows.lengths)
    assert np.allclose(transitions.sum(1), 1.0) and np.allclose(gaps.sum(1), 1.0)
    # The first pair of a buyer is (start, first event).
    first = rows.events[0, 0] - 1
    assert transitions[0, first] > 0


def test_funnel_features_weigh_more_than_counts():
    w = feature_weights(3.0)
    assert w[FEATURE_NAMES.index("log_n_purchase")] == 3.0
    assert w[FEATURE_NAMES.index("depth_frac")] == 3.0
    assert w[FEATURE_NAMES.index("log_n_events")] == 1.0
    assert w[FEATURE_NAMES.index("log_n_page_view")] == 1.0
    assert EVENT_CODE["purchase"] == 7


def test_training_loop_lowers_the_loss_and_uses_the_codebook():
    rows = rows_from_table(make_buyers(300, seed=5)[0], 16)
    stats = FeatureStats.fit(rows.features)
    config = VQVAEConfig(
        codes=8,
        code_dim=6,
        hidden=16,
        event_dim=8,
        max_seq_len=16,
        epochs=4,
        warmup_epochs=1,
        batch_size=32,
        dead_after=5,
    )
    work = WorkerTraining(config, rows.batch(stats), stats, torch.device("cpu"))
    history = [work.run_epoch() for _ in range(config.epochs)]
    assert bool(work.model.quantizer.initialised)
    quantized = history[1:]
    assert quantized[-1]["recon_loss"] < quantized[0]["recon_loss"]
    assert quantized[-1]["codes_in_use"] >= 4
    assert all(h["codebook_divergence"] == 0.0 for h in history)


def test_quarantines_unusable_rows_with_reasons():
    table, _ = make_buyers(6, seed=6)
    feats = table.column("features").to_pylist()
    feats[2] = [float("nan")] * N_FEATURES
    import pyarrow as pa

    table = table.set_column(
        table.schema.get_field_index("features"),
        table.schema.field("features"),
        pa.array(feats, table.schema.field("features").type),
    )
    rows = rows_from_table(table, 8)
    assert rows.rows_read == 6 and len(rows.lengths) == 5
    assert rows.quarantine == {"non-finite features": 1}
    assert rows.quarantined.column("buyer_id").to_pylist() == ["b2"]


def test_stepped_gru_state_equals_the_packed_gru():
    torch.manual_seed(0)
    encoder = BuyerVQVAE(shape("gru")).sequence
    n, width = 37, 12
    lengths = torch.randint(0, width + 1, (n,))
    lengths[:3] = torch.tensor([0, 1, width])
    events = torch.randint(1, N_TOKENS, (n, width)) * (torch.arange(width) < lengths[:, None])
    gaps = torch.rand(n, width) * 8
    with torch.no_grad():
        packed = encoder.packed_state(events, gaps, lengths)
        for block in (1, 5, 2048):
            stepped = encoder.final_state(events, gaps, lengths, block=block)
            assert torch.allclose(stepped, packed, atol=1e-5)
        assert torch.equal(encoder(events, gaps, lengths), encoder.final_state(events, gaps, lengths))
        assert encoder.final_state(events[:0], gaps[:0], lengths[:0]).shape == (0, 16)
    with torch.enable_grad():
        assert torch.equal(encoder(events, gaps, lengths), encoder.packed_state(events, gaps, lengths))
