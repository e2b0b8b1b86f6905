"""EMA vector quantizer: the discrete codebook of buyer types.

In the style of vector-quantize-pytorch (van den Oord et al. 2017, appendix A.1): codebook entries are
not trained by gradients but by exponential moving averages of the encoder outputs assigned to them,

    N_k <- g N_k + (1 - g) n_k,   m_k <- g m_k + (1 - g) sum_{z -> k} z,   e_k = m_k / N~_k,

with ``N~_k`` the Laplace-smoothed count, so that ``e_k`` tracks ``g e_k + (1 - g) zbar_k``. The
codebook starts from k-means++ over encoder outputs of a full pass over the training set; codes
unused for ``dead_after`` steps are re-seeded from current encoder outputs. Under DDP the batch
statistics are all-reduced and every random choice is made on rank 0 and broadcast, so every worker
holds the same codebook after every step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _all_reduce_sum(t: Tensor) -> Tensor:
    if _distributed():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def _broadcast(t: Tensor) -> Tensor:
    if _distributed():
        dist.broadcast(t, src=0)
    return t


def gather_rows(z: Tensor) -> Tensor:
    """All workers' rows of ``z`` concatenated in rank order (shards may differ in length)."""
    if not _distributed():
        return z
    world = dist.get_world_size()
    n = torch.tensor([z.shape[0]], dtype=torch.long, device=z.device)
    sizes = [torch.zeros_like(n) for _ in range(world)]
    dist.all_gather(sizes, n)
    longest = int(max(s.item() for s in sizes))
    padded = torch.zeros((longest, *z.shape[1:]), dtype=z.dtype, device=z.device)
    padded[: z.shape[0]] = z
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    return torch.cat([p[: int(s.item())] for p, s in zip(parts, sizes, strict=True)])


def squared_distances(z: Tensor, codebook: Tensor) -> Tensor:
    """``|z_i - e_k|^2`` for every row and code, shape (N, K)."""
    return (
        z.pow(2).sum(1, keepdim=True) - 2.0 * z @ codebook.t() + codebook.pow(2).sum(1).unsqueeze(0)
    ).clamp_min_(0.0)


def kmeans_plus_plus(z: Tensor, k: int, generator: torch.Generator, lloyd_iters: int = 10) -> Tensor:
    """k-means++ seeding (Arthur & Vassilvitskii 2007) followed by a few Lloyd iterations.

    With fewer distinct rows than ``k``, later centres repeat existing rows (they become dead codes
    and are restarted during training).
    """
    n = z.shape[0]
    if n == 0:
        raise ValueError("k-means++ initialisation needs at least one encoder output")
    first = int(torch.randint(n, (1,), generator=generator).item())
    centres = [z[first]]
    closest = (z - z[first]).pow(2).sum(1)
    for _ in range(1, k):
        total = closest.sum()
        if total <= 0:
            idx = int(torch.randint(n, (1,), generator=generator).item())
        else:
            idx = int(torch.multinomial(closest / total, 1, generator=generator).item())
        centres.append(z[idx])
        closest = torch.minimum(closest, (z - z[idx]).pow(2).sum(1))
    codebook = torch.stack(centres).clone()
    for _ in range(lloyd_iters):
        assign = squared_distances(z, codebook).argmin(1)
        sums = torch.zeros_like(codebook).index_add_(0, assign, z)
        counts = torch.bincount(assign, minlength=k).to(z.dtype)
        used = counts > 0
        codebook[used] = sums[used] / counts[used].unsqueeze(1)
    return codebook


@dataclass
class QuantizerOutput:
    """What one quantizer call returns."""

    quantized: Tensor
    """Code vectors with a straight-through gradient to the encoder output, shape (N, D)."""
    codes: Tensor
    """Index of the nearest code per row, shape (N,)."""
    commitment_loss: Tensor
    """``beta * |z - sg(e)|^2``, averaged over rows and dimensions (0 in eval mode)."""
    perplexity: Tensor
    """``exp(entropy)`` of the code usage in this batch (summed over all workers)."""
    codes_in_use: Tensor
    """Number of codes with at least one row in this batch (over all workers)."""


class EMAQuantizer(nn.Module):
    """Nearest-neighbour codebook of ``num_codes`` vectors of size ``dim`` with EMA updates."""

    def __init__(
        self,
        num_codes: int,
        dim: int,
        decay: float = 0.95,
        beta: float = 0.25,
        eps: float = 1e-5,
        dead_after: int = 100,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if num_codes < 1 or dim < 1:
            raise ValueError(f"codebook needs num_codes >= 1 and dim >= 1, got {num_codes}, {dim}")
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.num_codes = num_codes
        self.dim = dim
        self.decay = decay
        self.beta = beta
        self.eps = eps
        self.dead_after = dead_after
        self.generator = torch.Generator().manual_seed(seed)
        self.register_buffer("codebook", torch.zeros(num_codes, dim))
        self.register_buffer("ema_count", torch.zeros(num_codes))
        self.register_buffer("ema_sum", torch.zeros(num_codes, dim))
        # Steps since each code last received a row; compared with dead_after.
        self.register_buffer("idle_steps", torch.zeros(num_codes, dtype=torch.long))
        self.register_buffer("restarts", torch.zeros((), dtype=torch.long))
        self.register_buffer("initialised", torch.zeros((), dtype=torch.bool))

    @torch.no_grad()
    def init_codebook(self, z: Tensor, lloyd_iters: int = 10) -> None:
        """k-means++ over ``z`` (this worker's encoder outputs; gathered from all workers under DDP)."""
        everything = gather_rows(z.detach().float())
        codebook = torch.zeros(self.num_codes, self.dim, device=z.device)
        if not _distributed() or dist.get_rank() == 0:
            codebook = kmeans_plus_plus(everything.cpu(), self.num_codes, self.generator, lloyd_iters)
            codebook = codebook.to(z.device)
        codebook = _broadcast(codebook)
        self.codebook.copy_(codebook)
        self.ema_sum.copy_(codebook)
        self.ema_count.fill_(1.0)
        self.idle_steps.zero_()
        self.initialised.fill_(True)

    def nearest(self, z: Tensor) -> Tensor:
        """Index of the nearest code for each row of ``z``."""
        return squared_distances(z, self.codebook).argmin(1)

    def forward(self, z: Tensor) -> QuantizerOutput:
        codes = self.nearest(z.detach())
        counts = torch.bincount(codes, minlength=self.num_codes).to(z.dtype)
        if self.training:
            counts = _all_reduce_sum(counts)
            self._ema_update(z.detach(), codes, counts)
        quantized = self.codebook[codes]
        if self.training:
            commitment = self.beta * F.mse_loss(z, quantized.detach())
        else:
            commitment = torch.zeros((), device=z.device)
        probs = counts / counts.sum().clamp_min(1.0)
        perplexity = torch.exp(-(probs * torch.log(probs.clamp_min(1e-12))).sum())
        return QuantizerOutput(
            quantized=z + (quantized - z).detach(),
            codes=codes,
            commitment_loss=commitment,
            perplexity=perplexity,
            codes_in_use=(counts > 0).sum(),
        )

    def passthrough(self, z: Tensor) -> QuantizerOutput:
        """No quantization: ``z`` itself, code 0 for every row (used before initialisation)."""
        zero = torch.zeros((), device=z.device)
        codes = torch.zeros(z.shape[0], dtype=torch.long, device=z.device)
        return QuantizerOutput(z, codes, zero, zero + 1.0, zero + 1.0)

    @torch.no_grad()
    def _ema_update(self, z: Tensor, codes: Tensor, counts: Tensor) -> None:
        sums = torch.zeros_like(self.ema_sum).index_add_(0, codes, z.float())
        sums = _all_reduce_sum(sums)
        g = self.decay
        self.ema_count.mul_(g).add_(counts.float(), alpha=1 - g)
        self.ema_sum.mul_(g).add_(sums, alpha=1 - g)
        total = self.ema_count.sum()
        smoothed = (self.ema_count + self.eps) / (total + self.num_codes * self.eps) * total
        self.codebook.copy_(self.ema_sum / smoothed.unsqueeze(1))
        self.idle_steps.add_(1)
        self.idle_steps[counts > 0] = 0
        self._restart_dead(z)

    @torch.no_grad()
    def _restart_dead(self, z: Tensor) -> None:
        dead = (self.idle_steps >= self.dead_after).nonzero().flatten()
        if dead.numel() == 0:
            return
        # Every worker sees the same `dead` (from all-reduced counts); rank 0 picks the replacements.
        fresh = torch.zeros(dead.numel(), self.dim, device=z.device)
        if not _distributed() or dist.get_rank() == 0:
            picks = torch.randint(z.shape[0], (dead.numel(),), generator=self.generator)
            fresh = z[picks.to(z.device)].float()
        fresh = _broadcast(fresh)
        self.codebook[dead] = fresh
        self.ema_sum[dead] = fresh
        self.ema_count[dead] = 1.0
        self.idle_steps[dead] = 0
        self.restarts.add_(dead.numel())

    def generator_state(self) -> Tensor:
        """The state of the restart/initialisation RNG (saved in checkpoints for exact resumes)."""
        return self.generator.get_state()

    def set_generator_state(self, state: Tensor) -> None:
        self.generator.set_state(state)
