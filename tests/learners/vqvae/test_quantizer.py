"""EMA quantizer: k-means++ init, the EMA formula, dead-code restarts, straight-through gradients."""

from __future__ import annotations

import math

import torch

from learners.vqvae.quantizer import EMAQuantizer, kmeans_plus_plus


def blobs(centres: torch.Tensor, per: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.cat([c + 0.05 * torch.randn(per, centres.shape[1], generator=g) for c in centres])


def test_kmeans_plus_plus_puts_one_code_on_each_blob():
    centres = torch.tensor([[0.0, 0.0], [5.0, 0.0], [0.0, 5.0], [5.0, 5.0]])
    codebook = kmeans_plus_plus(blobs(centres, 50), 4, torch.Generator().manual_seed(0))
    nearest = torch.cdist(centres, codebook).argmin(1)
    assert sorted(nearest.tolist()) == [0, 1, 2, 3]
    assert torch.cdist(centres, codebook).min(1).values.max() < 0.1


def test_ema_update_follows_the_formula():
    q = EMAQuantizer(2, 2, decay=0.8, eps=1e-5, dead_after=1000)
    q.init_codebook(torch.tensor([[0.0, 0.0], [10.0, 10.0]]), lloyd_iters=0)
    start = q.codebook.clone()
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0], [10.0, 12.0]])
    q.train()
    out = q(z)
    assert out.codes.tolist() == [0, 0, 1] or out.codes.tolist() == [1, 1, 0]
    # Expected by hand: N <- g N + (1-g) n; m <- g m + (1-g) sum; e = m / smoothed(N).
    g, eps = 0.8, 1e-5
    near0 = int(torch.cdist(torch.tensor([[0.5, 0.5]]), start).argmin())
    counts = torch.zeros(2)
    counts[near0], counts[1 - near0] = 2.0, 1.0
    sums = torch.zeros(2, 2)
    sums[near0] = torch.tensor([1.0, 1.0])
    sums[1 - near0] = torch.tensor([10.0, 12.0])
    n = g * torch.ones(2) + (1 - g) * counts
    m = g * start + (1 - g) * sums
    smoothed = (n + eps) / (n.sum() + 2 * eps) * n.sum()
    assert torch.allclose(q.codebook, m / smoothed.unsqueeze(1), atol=1e-6)


def test_dead_codes_are_restarted_from_encoder_outputs_and_counted():
    q = EMAQuantizer(3, 2, decay=0.9, dead_after=3)
    q.init_codebook(torch.tensor([[0.0, 0.0], [1.0, 1.0], [100.0, 100.0]]), lloyd_iters=0)
    z = torch.tensor([[0.0, 0.1], [1.0, 0.9], [0.1, 0.0], [0.9, 1.0]])
    q.train()
    for _ in range(3):
        q(z)
    assert int(q.restarts) >= 1
    # Every code now sits near the data (the far one was re-seeded from a row of z).
    assert torch.cdist(q.codebook, z).min(1).values.max() < 1.0


def test_straight_through_gradient_and_commitment_loss():
    q = EMAQuantizer(2, 3, beta=0.5, dead_after=1000)
    q.init_codebook(torch.tensor([[0.0, 0.0, 0.0], [3.0, 3.0, 3.0]]), lloyd_iters=0)
    q.train()
    z = torch.tensor([[0.5, 0.0, 0.0], [3.0, 2.0, 3.0]], requires_grad=True)
    out = q(z)
    expected = 0.5 * ((z.detach() - q.codebook[out.codes]) ** 2).mean()
    assert torch.allclose(out.commitment_loss, expected, atol=1e-6)
    out.quantized.sum().backward()
    assert torch.equal(z.grad, torch.ones_like(z))


def test_perplexity_is_k_for_uniform_usage_and_eval_leaves_codebook_alone():
    q = EMAQuantizer(4, 2)
    q.init_codebook(torch.tensor([[0.0, 0.0], [0.0, 9.0], [9.0, 0.0], [9.0, 9.0]]), lloyd_iters=0)
    before = q.codebook.clone()
    q.eval()
    out = q(torch.tensor([[0.1, 0.0], [0.0, 8.9], [9.1, 0.0], [9.0, 9.2]]))
    assert math.isclose(float(out.perplexity), 4.0, rel_tol=1e-5)
    assert int(out.codes_in_use) == 4
    assert torch.equal(q.codebook, before)
