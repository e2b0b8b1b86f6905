"""How the LLM policy lays out a batch of prompts and candidate actions for its forward passes.

Scoring runs two passes per group of requests (llm_policy.py): the distinct pages of the group, then
one packed row per request on top of its page's KV cache. A packed row is the buyer's own prompt
tokens (a chain, each token seeing those before it) and then the trie of the candidates' tokens,
hanging from the chain's last token: candidates that start alike (``open product p1``, ``open product
p2``) share their common tokens' columns. Each column sees its ancestors only and sits at the position
it would have in ``prompt + candidate``, so a candidate's score equals running it alone. The items of
one template share its prefix nodes, so the template's own log-probability (scoring.py's two-level
rule) comes from the same pass.

``length_groups`` cuts a batch into groups of similar prompt length, so padding stays small.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

PADDING_SLACK = 1.25
"""A forward pass may hold at most this many padded tokens per real prompt token; requests are sorted
by prompt length and split where the next one would exceed it (padding costs as much as tokens)."""


def length_groups(lengths: Sequence[int], max_size: int | None = None) -> list[list[int]]:
    """Indices of ``lengths`` sorted by length and cut into groups (of at most ``max_size``) whose
    padded size, group size x longest, stays within ``PADDING_SLACK`` x their total length."""
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    groups: list[list[int]] = []
    total = 0
    for i in order:
        group = groups[-1] if groups else []
        full = max_size is not None and len(group) >= max_size
        padded = (len(group) + 1) * lengths[i]
        if not group or full or padded > PADDING_SLACK * (total + lengths[i]):
            groups.append([i])
            total = lengths[i]
        else:
            group.append(i)
            total += lengths[i]
    return groups


@dataclass(frozen=True)
class CandidateTrie:
    """The target tokens of one request's candidates as a trie below the prompt's last token (the
    root). A candidate's last token is only ever predicted, so it is no node. Buyers who see the same
    candidates share one trie."""

    ids: list[int]
    """Token of each node, parents before children."""
    depth: torch.Tensor
    """(nodes,) distance from the root (>= 1)."""
    ancestors: torch.Tensor
    """(nodes, nodes) bool: node i sees node j (j is i or one of its ancestors)."""
    pick_node: list[int]
    """Per candidate token, the node whose output predicts it (-1: the root)."""
    pick_id: list[int]
    """Per candidate token, its id."""
    pick_owner: list[int]
    """Per candidate token, the index of its candidate."""
    lengths: list[int]
    """Tokens per candidate."""

    @classmethod
    def build(cls, targets: Sequence[Sequence[int]]) -> CandidateTrie:
        ids: list[int] = []
        parent: list[int] = []
        child: dict[tuple[int, int], int] = {}
        pick_node, pick_id, pick_owner = [], [], []
        for c, target in enumerate(targets):
            node = -1
            for k, token in enumerate(target):
                pick_node.append(node)
                pick_id.append(token)
                pick_owner.append(c)
                if k == len(target) - 1:
                    break
                nxt = child.get((node, token))
                if nxt is None:
                    nxt = child[(node, token)] = len(ids)
                    ids.append(token)
                    parent.append(node)
                node = nxt
        ancestors = torch.eye(len(ids), dtype=torch.bool)
        depth = torch.ones(len(ids), dtype=torch.long)
        for node, up in enumerate(parent):  # parents come first, so their rows are complete
            if up >= 0:
                ancestors[node] |= ancestors[up]
                depth[node] = depth[up] + 1
        return cls(ids, depth, ancestors, pick_node, pick_id, pick_owner, [len(t) for t in targets])


NO_CANDIDATES = CandidateTrie.build([])


@dataclass(frozen=True)
class PackedSuffixes:
    """One row per request, run on top of its page's cache: its chain, then its candidate trie."""

    ids: torch.Tensor
    """Token ids (requests, width), padded on the right."""
    real: torch.Tensor
    """(requests, width) bool: which columns hold tokens (the others are padding)."""
    positions: torch.Tensor
    """Position ids: a chain token's position in the prompt; a trie node's root position + depth."""
    attend: torch.Tensor
    """(requests, width, width) bool: every column sees itself and its ancestors (padding sees
    itself only, so no softmax row is empty)."""
    picks: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
    """(row, column predicting it, id) of every candidate token."""
    pick_owner: torch.Tensor
    """Index of the candidate (in request-major order) each pick belongs to."""

    @property
    def width(self) -> int:
        return self.ids.shape[1]


def pack_suffixes(
    offsets: Sequence[int], chains: Sequence[Sequence[int]], tries: Sequence[CandidateTrie]
) -> PackedSuffixes:
    """Rows of ``chains`` (token ids after the cached ones, whose count is ``offsets``) each followed by
    its trie, rooted at the chain's last token (a trie needs a non-empty chain)."""
    width = max(len(c) + len(t.ids) for c, t in zip(chains, tries, strict=True))
    n = len(chains)
    ids = torch.zeros((n, width), dtype=torch.long)
    real = torch.zeros((n, width), dtype=torch.bool)
    positions = torch.zeros((n, width), dtype=torch.long)
    attend = torch.eye(width, dtype=torch.bool).repeat(n, 1, 1)
    pick_row, pick_col, pick_id, pick_owner = [], [], [], []
    owner = 0
    for i, (offset, chain, trie) in enumerate(zip(offsets, chains, tries, strict=True)):
        c, end = len(chain), len(chain) + len(trie.ids)
        if trie.pick_id and not c:
            raise ValueError("a candidate trie needs a chain to hang from (the prompt's last token)")
        ids[i, :end] = torch.tensor([*chain, *trie.ids], dtype=torch.long)
        real[i, :end] = True
        positions[i, :c] = offset + torch.arange(c)
        positions[i, c:end] = offset + c - 1 + trie.depth
        attend[i, :c, :c] = torch.ones((c, c), dtype=torch.bool).tril()
        attend[i, c:end, :c] = True
        attend[i, c:end, c:end] = trie.ancestors
        pick_row += [i] * len(trie.pick_id)
        pick_col += [c + node for node in trie.pick_node]  # the root (-1) is the chain's last column
        pick_id += trie.pick_id
        pick_owner += [owner + k for k in trie.pick_owner]
        owner += len(trie.lengths)
    picks = (
        torch.tensor(pick_row, dtype=torch.long),
        torch.tensor(pick_col, dtype=torch.long),
        torch.tensor(pick_id, dtype=torch.long),
    )
    return PackedSuffixes(ids, real, positions, attend, picks, torch.tensor(pick_owner, dtype=torch.long))
