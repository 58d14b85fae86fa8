"""A token tree in the verification: the drafted chain plus sibling leaves, in one forward.

Where the verification is padded (on OpenBLAS a 16-token target forward costs no more than a
4-token one), the padding rows can hold the draft's runner-up tokens instead: at depth i, the
draft's next most likely tokens after d_1..d_{i-1} ("siblings" of d_i). Each sibling attends
to the context, its ancestors and itself, at its own depth's position, so its row is exactly
the target's distribution after context + d_1..d_{i-1} + sibling. When the round's extra token
(the correction at the first rejection, drawn from the target as always) equals a sibling,
that row is already computed: the next token is read from it, one more token for the round's
one forward. The acceptance rule is untouched, so the output stays lossless.
"""

from __future__ import annotations

from dataclasses import dataclass

import mlx.core as mx
import numpy as np
from mlx_lm.models.cache import KVCache, make_prompt_cache

SIBLINGS = 4  # runner-up tokens the draft offers per drafted position
# How much a runner-up of each rank is worth next to the best one: where the draft's first
# choice was wrong, the target's token was its 2nd, 3rd, 4th, 5th about in these proportions
# (Qwen2.5-Coder 0.5B against 1.5B, host H: greedy, 202 misses over 10 replies, 1 : 0.38 :
# 0.14 : 0.06, open-ended text alone 1 : 0.49 : 0.23 : 0.11; at 0.7 on prose, tried in the
# verification, 1 : 0.39 : 0.19 : 0.04). The policy learns each rank's rate; this is its prior.
RANK_WORTH = (1.0, 0.4, 0.2, 0.08)
UNREAD = 0.5  # confidence assumed for a drafted token the chain did not read on the host


@dataclass
class Tree:
    """The layout of one verification: node 0 is the root (the last committed token), nodes
    1..k the chain, then the siblings as (depth, rank), then padding."""

    k: int
    siblings: list[tuple[int, int]]  # (depth 1..k, rank among the draft's runners-up)
    size: int  # tokens fed, padding included

    @property
    def depths(self) -> list[int]:
        chain = list(range(self.k + 1))
        pad = [0] * (self.size - self.k - 1 - len(self.siblings))
        return chain + [depth for depth, _ in self.siblings] + pad

    def mask(self, cached: int) -> mx.array:
        """(size, cached + size) booleans: every node sees the cache, its ancestors and itself."""
        own = np.eye(self.size, dtype=bool)
        chain = self.k + 1
        own[:chain, :chain] = np.tril(np.ones((chain, chain), dtype=bool))
        for j, (depth, _) in enumerate(self.siblings):
            own[chain + j, :depth] = True  # root, d_1..d_{depth-1}
        return mx.array(np.concatenate([np.ones((self.size, cached), dtype=bool), own], axis=1))

    def node(self, depth: int, token: int, tokens: list[int]) -> int | None:
        """The index of the sibling at `depth` whose token is `token`, or None."""
        for j, (d, _) in enumerate(self.siblings):
            if d == depth and tokens[j] == token:
                return self.k + 1 + j
        return None


def rejection_chances(k: int, confidences: list[float]) -> list[float]:
    """Per depth 1..k, the chance that the chain is accepted up to it and rejected there, with
    the draft's confidence c_j in each drafted token: c_1..c_{i-1} (1 - c_i) (UNREAD for a
    token past those read)."""
    chances, reach = [], 1.0
    for i in range(k):
        c = confidences[i] if i < len(confidences) else UNREAD
        chances.append(reach * (1.0 - c))
        reach *= c
    return chances


def plan_tree(k: int, ranks: list[int], size: int, confidences: list[float] | None = None) -> Tree:
    """Fill the rows past the chain with the siblings most likely to be needed. A sibling at
    depth i is used when d_1..d_{i-1} are accepted and d_i is not (`rejection_chances`), times
    its rank's worth. Without confidences every depth weighs the same: the best runner-up at
    every depth, then the second at every depth, and so on. ranks[i]: runners-up available at
    depth i+1."""
    weights = rejection_chances(k, confidences) if confidences else [1.0] * k
    candidates = [(i, rank) for i in range(k) for rank in range(min(ranks[i], len(RANK_WORTH)))]
    candidates.sort(key=lambda c: (-weights[c[0]] * RANK_WORTH[c[1]], c[1], c[0]))
    free = max(size - (k + 1), 0)
    return Tree(k, [(i + 1, rank) for i, rank in candidates[:free]], size)


class PositionedRope:
    """Stands in for an attention layer's RoPE during a tree forward: each token is rotated
    at its own position (rows of one depth share one) by the layer's own RoPE, given the
    positions as a per-row offset."""

    def __init__(self, rope, positions: mx.array):
        self.rope, self.positions = rope, positions

    def __call__(self, x, offset=0):
        # (1, heads, L, d) -> (L, heads, 1, d): one "batch" row per token, each at its offset
        return self.rope(x.transpose(2, 1, 0, 3), offset=self.positions).transpose(2, 1, 0, 3)


def _attentions(model) -> list | None:
    layers = getattr(model, "layers", None)
    if not layers:
        return None
    attentions = [getattr(layer, "self_attn", None) for layer in layers]
    if any(a is None or getattr(a, "rope", None) is None for a in attentions):
        return None
    return attentions


def tree_forward(model, tokens: mx.array, tree: Tree, cache: list) -> mx.array:
    """Logits (size, V) of the tree's nodes after the cached context (lazy). The cache gains
    one entry per node, in node order."""
    cached = cache[0].offset
    positions = mx.array([cached + d for d in tree.depths], dtype=mx.int32)
    mask = tree.mask(cached)
    attentions = _attentions(model)
    # the model asks its first cache for the mask and each layer's RoPE for positions
    object.__setattr__(cache[0], "make_mask", lambda *args, **kwargs: mask)
    for attention in attentions:
        object.__setattr__(attention, "rope", PositionedRope(attention.rope, positions))
    try:
        return model(tokens[None], cache=cache)[0]
    finally:
        object.__delattr__(cache[0], "make_mask")
        for attention in attentions:
            object.__delattr__(attention, "rope")


def keep_node(cache: list, node: int, at: int) -> None:
    """Move cache entry `node` to position `at` (an accepted sibling joins its chain prefix)."""
    for c in cache:
        c.keys[..., at : at + 1, :] = c.keys[..., node : node + 1, :]
        c.values[..., at : at + 1, :] = c.values[..., node : node + 1, :]


def supports_tree(model) -> bool:
    """Whether tree forwards work for this model: plain KV caches, a RoPE per attention layer,
    and a probe whose sibling row matches the same tokens run as a chain (a model that builds
    its mask or positions some other way fails the probe and keeps chain verification)."""
    cache = make_prompt_cache(model)
    if not cache or any(type(c) is not KVCache for c in cache) or _attentions(model) is None:
        return False
    vocab = getattr(getattr(model, "args", None), "vocab_size", 0)
    if vocab < 2:
        return False
    ids = [(7 * i + 1) % vocab for i in range(9)]
    context, root, chain, sibling = ids[:5], ids[5], ids[6:8], ids[8]
    try:
        model(mx.array(context)[None], cache=cache)
        tree = Tree(2, [(1, 0)], 4)
        rows = tree_forward(model, mx.array([root, *chain, sibling]), tree, cache)
        reference = model(mx.array(context + [root, sibling])[None])[0, -1]
        chain_rows = model(mx.array(context + [root, *chain])[None])[0, -3:]
        got = mx.concatenate([rows[:3], rows[3:4]]).astype(mx.float32)
        want = mx.concatenate([chain_rows, reference[None]]).astype(mx.float32)
        scale = 1.0 + mx.abs(want).max()
        return bool((mx.abs(got - want).max() <= 1e-2 * scale).item())
    except Exception:  # a model whose layers do not take these hooks verifies as a chain
        return False
