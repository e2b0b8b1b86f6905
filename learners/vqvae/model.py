"""The behaviour-aware VQ-VAE: clickstream encoder, EMA codebook of buyer types, behaviour decoder.

Encoder. A buyer is a sequence of (event type, log time gap) pairs plus the fixed-length features of
learners/data/schema.FEATURE_NAMES. The default sequence encoder is a one-layer GRU: buyer histories
are short (tens of events), ordered and variable in length; a GRU reads them in order, exact for
every length (packed sequences in training, only real events stepped in assignment), has few
parameters for the modest data of one merchant set, and its cost grows linearly with the events
read: assignment needs no decoder and no per-step outputs and reaches ~120k buyers/s on 2 CPU cores
(benchmarks/vqvae.py), where a transformer's attention is quadratic in length. A small transformer
(``encoder="transformer"``, one pre-norm layer over the same tokens plus learned positions, masked
mean pool) is available for comparison in benchmarks/vqvae_sweep.py. The sequence summary and an
MLP over the standardised features are concatenated and projected to the code space.

Decoder. From the quantized code alone it reconstructs the standardised feature vector, predicts the
buyer's outcomes (converted, funnel depth), and reconstructs the buyer's behaviour distributions: the
event-to-event transitions and the time-gap histogram of its sequence. The loss is behaviour-aware:
funnel outcomes (product views, favourites, carts, checkouts, purchases, their shares and ratios,
depth) weigh ``funnel_weight`` times as much as raw activity counts, the outcome heads add a
classification loss, and the distribution heads a cross-entropy, so codes separate buyers by how
they move through the funnel and at what pace rather than by how much they click. With K codes the
decoder can emit only K reconstructions, so fitting the distributions makes each code a mixture
component over browsing patterns.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence

from learners.data.schema import EVENT_TYPES, FEATURE_NAMES, FUNNEL_STAGES, N_FEATURES
from learners.vqvae.dataset import N_GAP_BINS, N_TRANSITIONS, BuyerBatch
from learners.vqvae.quantizer import EMAQuantizer, QuantizerOutput

FUNNEL_EVENTS = ("product_view", "favorite", "add_to_cart", "checkout", "purchase")
FUNNEL_FEATURES = frozenset(
    [f"log_n_{t}" for t in FUNNEL_EVENTS]
    + [f"share_{t}" for t in FUNNEL_EVENTS]
    + ["cart_per_view", "purchase_per_view", "purchase_per_cart", "depth_frac", "repeat_view_share"]
)
N_DEPTHS = len(FUNNEL_STAGES)
# Sequence token 0 is padding; event code c is token c + 1.
N_TOKENS = len(EVENT_TYPES) + 1


def feature_weights(funnel_weight: float) -> Tensor:
    """Per-feature reconstruction weights: ``funnel_weight`` for funnel outcomes, 1 for the rest."""
    return torch.tensor([funnel_weight if n in FUNNEL_FEATURES else 1.0 for n in FEATURE_NAMES])


@dataclass
class ModelShape:
    """The sizes and choices that fix the network's parameter shapes."""

    codes: int
    code_dim: int
    hidden: int
    event_dim: int
    encoder: str
    max_seq_len: int


class GRUSequenceEncoder(nn.Module):
    """Event-type embedding + log gap -> GRU -> final hidden state (exact for every length).

    With autograd on (training) the packed ``nn.GRU`` computes it. Without autograd (assignment,
    codebook initialisation) ``final_state`` steps the same cell over buyers sorted by length: step t
    updates only the buyers still reading, the input projection is a table lookup per event type,
    and no per-step outputs are kept: 2.3-3x faster on a CPU than the packed GRU, same codes.
    """

    def __init__(self, event_dim: int, hidden: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(N_TOKENS, event_dim, padding_idx=0)
        self.gru = nn.GRU(event_dim + 1, hidden, batch_first=True)

    def forward(self, events: Tensor, gaps: Tensor, lengths: Tensor) -> Tensor:
        if torch.is_grad_enabled():
            return self.packed_state(events, gaps, lengths)
        return self.final_state(events, gaps, lengths)

    def packed_state(self, events: Tensor, gaps: Tensor, lengths: Tensor) -> Tensor:
        """The GRU's last hidden state per buyer via ``nn.GRU`` over packed sequences."""
        x = torch.cat([self.embed(events), gaps.unsqueeze(-1)], dim=-1)
        packed = pack_padded_sequence(x, lengths.clamp_min(1).cpu(), batch_first=True, enforce_sorted=False)
        _, h = self.gru(packed)
        return h[-1]

    def _step_weights(self) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """The GRU's weights rearranged for ``final_state`` (see there)."""
        hidden, event_dim = self.gru.hidden_size, self.embed.embedding_dim
        w_ih, w_hh = self.gru.weight_ih_l0, self.gru.weight_hh_l0
        b_ih, b_hh = self.gru.bias_ih_l0, self.gru.bias_hh_l0
        # Input part of the r, z, n gate pre-activations per event token; the r and z recurrent
        # biases are added here once rather than at every step.
        token_gates = torch.addmm(b_ih, self.embed.weight, w_ih[:, :event_dim].t())
        token_gates[:, : 2 * hidden] += b_hh[: 2 * hidden]
        gap_gates = w_ih[:, event_dim].clone()
        w_rz = w_hh[: 2 * hidden].clone()
        # Negated z rows: sigmoid(-a) = 1 - z, the weight of the new candidate in h' = lerp(h, n, 1 - z).
        z_rows = slice(hidden, 2 * hidden)
        token_gates[:, z_rows] *= -1
        gap_gates[z_rows] *= -1
        w_rz[z_rows] *= -1
        return token_gates, gap_gates, w_rz.t(), w_hh[2 * hidden :].t(), b_hh[2 * hidden :]

    def final_state(self, events: Tensor, gaps: Tensor, lengths: Tensor, block: int = 2048) -> Tensor:
        """The GRU's last hidden state per buyer, stepping only over real events (no autograd)."""
        hidden = self.gru.hidden_size
        out = events.new_zeros((events.shape[0], hidden), dtype=gaps.dtype)
        if events.shape[0] == 0:
            return out
        token_gates, gap_gates, w_rz, w_n, b_n = self._step_weights()
        lengths = lengths.clamp_min(1)
        order = torch.argsort(lengths, descending=True)
        # Blocks of similar length keep each step's working set in cache.
        for rows in order.split(block):
            steps = int(lengths[rows[0]])
            tokens = events[rows, :steps].t().contiguous()
            pauses = gaps[rows, :steps].t().contiguous().unsqueeze(-1)
            # reading[t]: buyers with more than t events, a prefix of the block.
            reading = (lengths[rows] > torch.arange(steps, device=rows.device)[:, None]).sum(1).tolist()
            h = out.new_zeros((len(rows), hidden))
            for t, k in enumerate(reading):
                h_t = h[:k]
                gates = token_gates.index_select(0, tokens[t, :k]).addcmul_(pauses[t, :k], gap_gates)
                r_and_keep_new = torch.addmm(gates[:, : 2 * hidden], h_t, w_rz).sigmoid_()
                candidate = torch.addmm(b_n, h_t, w_n).mul_(r_and_keep_new[:, :hidden])
                candidate.add_(gates[:, 2 * hidden :]).tanh_()
                h_t.lerp_(candidate, r_and_keep_new[:, hidden:])
            out[rows] = h
        return out


class TransformerSequenceEncoder(nn.Module):
    """One pre-norm transformer layer over (event, gap, position) tokens, masked mean pool."""

    def __init__(self, event_dim: int, hidden: int, max_seq_len: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(N_TOKENS, hidden, padding_idx=0)
        self.gap = nn.Linear(1, hidden)
        self.position = nn.Embedding(max_seq_len, hidden)
        heads = 4 if hidden % 4 == 0 else 1
        self.layer = nn.TransformerEncoderLayer(
            hidden, heads, dim_feedforward=2 * hidden, dropout=0.0, batch_first=True, norm_first=True
        )

    def forward(self, events: Tensor, gaps: Tensor, lengths: Tensor) -> Tensor:
        positions = torch.arange(events.shape[1], device=events.device)
        x = self.embed(events) + self.gap(gaps.unsqueeze(-1)) + self.position(positions)
        pad = events == 0
        pad[:, 0] = False  # an empty history still attends to one (padding) token
        h = self.layer(x, src_key_padding_mask=pad)
        keep = (~pad).unsqueeze(-1).to(h.dtype)
        return (h * keep).sum(1) / keep.sum(1)


@dataclass
class VQVAEOutput:
    """One forward pass."""

    z: Tensor
    """Encoder outputs (N, code_dim)."""
    quant: QuantizerOutput
    features: Tensor
    """Reconstructed standardised features (N, N_FEATURES)."""
    converted_logit: Tensor
    depth_logits: Tensor
    transition_logits: Tensor
    gap_logits: Tensor


class BuyerVQVAE(nn.Module):
    """Encoder -> EMA codebook -> behaviour decoder."""

    def __init__(
        self,
        shape: ModelShape,
        decay: float = 0.95,
        beta: float = 0.25,
        dead_after: int = 100,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.shape = shape
        if shape.encoder == "gru":
            self.sequence: nn.Module = GRUSequenceEncoder(shape.event_dim, shape.hidden)
        elif shape.encoder == "transformer":
            self.sequence = TransformerSequenceEncoder(shape.event_dim, shape.hidden, shape.max_seq_len)
        else:
            raise ValueError(f"encoder must be 'gru' or 'transformer', got {shape.encoder!r}")
        self.features_in = nn.Sequential(nn.Linear(N_FEATURES, shape.hidden), nn.GELU())
        self.project = nn.Sequential(
            nn.Linear(2 * shape.hidden, shape.hidden), nn.GELU(), nn.Linear(shape.hidden, shape.code_dim)
        )
        self.quantizer = EMAQuantizer(
            shape.codes, shape.code_dim, decay=decay, beta=beta, dead_after=dead_after, seed=seed
        )
        self.decoder = nn.Sequential(
            nn.Linear(shape.code_dim, shape.hidden),
            nn.GELU(),
            nn.Linear(shape.hidden, shape.hidden),
            nn.GELU(),
        )
        self.features_out = nn.Linear(shape.hidden, N_FEATURES)
        self.converted_out = nn.Linear(shape.hidden, 1)
        self.depth_out = nn.Linear(shape.hidden, N_DEPTHS)
        self.transitions_out = nn.Linear(shape.hidden, N_TRANSITIONS)
        self.gaps_out = nn.Linear(shape.hidden, N_GAP_BINS)

    def encode(self, features: Tensor, events: Tensor, gaps: Tensor, lengths: Tensor) -> Tensor:
        seq = self.sequence(events, gaps, lengths)
        return self.project(torch.cat([seq, self.features_in(features)], dim=-1))

    def forward(
        self, features: Tensor, events: Tensor, gaps: Tensor, lengths: Tensor, quantize: bool = True
    ) -> VQVAEOutput:
        """``quantize=False`` decodes the encoder output itself (warm-up before the codebook exists)."""
        z = self.encode(features, events, gaps, lengths)
        quant = self.quantizer(z) if quantize else self.quantizer.passthrough(z)
        h = self.decoder(quant.quantized)
        return VQVAEOutput(
            z=z,
            quant=quant,
            features=self.features_out(h),
            converted_logit=self.converted_out(h).squeeze(-1),
            depth_logits=self.depth_out(h),
            transition_logits=self.transitions_out(h),
            gap_logits=self.gaps_out(h),
        )

    @torch.no_grad()
    def assign(self, features: Tensor, events: Tensor, gaps: Tensor, lengths: Tensor) -> Tensor:
        """Buyer type per row: one encoder pass and a nearest-code lookup (no decoder)."""
        return self.quantizer.nearest(self.encode(features, events, gaps, lengths))


def soft_cross_entropy(logits: Tensor, target: Tensor) -> Tensor:
    """Cross-entropy against a target distribution per row, averaged over rows."""
    return -(target * F.log_softmax(logits, dim=-1)).sum(-1).mean()


def reconstruction_loss(
    out: VQVAEOutput, batch: BuyerBatch, weights: Tensor, outcome_weight: float, sequence_weight: float
) -> Tensor:
    """Weighted feature MSE + outcome_weight x (conversion BCE + depth CE)
    + sequence_weight x (transition CE + gap-histogram CE)."""
    per_feature = (out.features - batch.features).pow(2).mean(0)
    feature_term = (per_feature * weights).sum() / weights.sum()
    outcome_term = F.binary_cross_entropy_with_logits(
        out.converted_logit, batch.converted.float()
    ) + F.cross_entropy(out.depth_logits, batch.depth.long())
    sequence_term = soft_cross_entropy(out.transition_logits, batch.transitions) + soft_cross_entropy(
        out.gap_logits, batch.gap_hist
    )
    return feature_term + outcome_weight * outcome_term + sequence_weight * sequence_term
