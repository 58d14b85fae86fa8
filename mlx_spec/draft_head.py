"""A cheaper draft output layer: the draft scores only a subset of the vocabulary.

A draft step's output layer (vocabulary x hidden, 27% of Qwen2.5-0.5B's streamed weights) is a
large part of its cost. The target verifies every proposal, so a draft that never proposes
a token outside a subset stays lossless: greedy output is the target's either way, and when
sampling, q is exactly the distribution the draft sampled from (zero outside the subset).
Tokens of the conversation outside the subset join it; text that keeps missing it (another
script, say) turns the subset off.
"""

from __future__ import annotations

import copy
from collections import deque

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.models.cache import make_prompt_cache

MISS_WINDOW = 64  # committed tokens over which the miss rate is judged
MAX_MISSES = 4  # more misses than this in the window: score the whole vocabulary again
MAX_EXTRA = 1024  # conversation tokens added beside the subset before giving up on it
PROBE_TOLERANCE = 1e-3


def ascii_token_ids(tokenizer, vocab: int) -> list[int]:
    """Ids below `vocab` that decode to printable ASCII or whitespace, plus special tokens:
    English text and code (99.8% of the tokens of Python's standard library, measured on
    Qwen2.5's tokenizer) in 62% of its vocabulary."""
    hf = getattr(tokenizer, "_tokenizer", tokenizer)
    size = min(vocab, len(hf))
    texts = hf.batch_decode([[i] for i in range(size)])
    # an empty text is a marker piece (SentencePiece's lone "▁"): keep it
    ids = {i for i, text in enumerate(texts) if all(c.isascii() and (c.isprintable() or c in "\n\t\r") for c in text)}
    ids |= {i for i in getattr(hf, "all_special_ids", []) if i < size}
    ids |= {i for i in getattr(tokenizer, "eos_token_ids", []) if i < size}
    ids |= {i for i in hf.get_added_vocab().values() if i < size}
    return sorted(ids)


def output_layer(model):
    """The module that turns the draft's hidden states into logits (lm_head, or the tied
    input embedding used as a linear layer), or None."""
    head = getattr(model, "lm_head", None)
    if head is not None:
        return head
    embed = getattr(getattr(model, "model", None), "embed_tokens", None)
    return embed if embed is not None and hasattr(embed, "as_linear") else None


def as_function(layer):
    """An output layer as a function of hidden states: a linear layer is one; a tied input
    embedding is used as one (`as_linear`)."""
    return layer.as_linear if hasattr(layer, "as_linear") else layer


def _rows(module: nn.Module, ids: mx.array) -> nn.Module:
    """A shallow copy of a (possibly quantized) linear or embedding layer with only `ids` rows."""
    sub = copy.copy(module)
    for name in ("weight", "scales", "biases", "bias"):
        if name in module and isinstance(module[name], mx.array):
            sub[name] = mx.take(module[name], ids, axis=0)
    return sub


class SubsetHead:
    """Draft logits over `ids` (plus tokens the conversation added), computed from the
    draft body's hidden states. Built only when a probe shows that body + restricted layer
    gives exactly the full model's logits on those ids."""

    def __init__(self, model, ids: list[int]):
        self.model = model
        self.base_ids = list(ids)
        self.members = set(ids)
        module = output_layer(model)
        self._module = module
        self._base = _rows(module, mx.array(self.base_ids, dtype=mx.int32))
        self._call = as_function(self._base)
        self.extra_ids: list[int] = []
        self._extra = None
        self.ids = mx.array(self.base_ids, dtype=mx.int32)
        self.active = True
        self._recent: deque[bool] = deque(maxlen=MISS_WINDOW)
        mx.eval(self._base.parameters())

    @classmethod
    def build(cls, model, ids: list[int]) -> "SubsetHead | None":
        """A subset head for `model`, or None when its structure is not body -> output layer."""
        module = output_layer(model)
        if module is None or not hasattr(model, "model") or not ids:
            return None
        try:
            head = cls(model, ids)
            probe = mx.array([[ids[len(ids) // 2], ids[-1], ids[0]]], dtype=mx.int32)
            full = model(probe, cache=make_prompt_cache(model))[0, :, : max(ids) + 1]
            mine = head.logits(model.model(probe, cache=make_prompt_cache(model)))[0]
            expected = mx.take(full, head.ids, axis=-1)
            scale = mx.maximum(mx.abs(expected).max(), 1.0)
            ok = bool((mx.abs(mine - expected).max() <= PROBE_TOLERANCE * scale).item())
        except (AttributeError, TypeError, ValueError):
            return None
        return head if ok else None

    def logits(self, hidden: mx.array) -> mx.array:
        """(..., hidden) -> (..., len(ids)) logits, columns in the order of `self.ids`."""
        out = self._call(hidden)
        if self._extra is not None:
            out = mx.concatenate([out, self._extra(hidden)], axis=-1)
        return out

    def observe(self, committed: list[int]) -> None:
        """Committed tokens outside the subset join it; too many misses turn it off."""
        new = []
        for token in committed:
            miss = token not in self.members
            self._recent.append(miss)
            if miss:
                self.members.add(token)
                new.append(token)
        if sum(self._recent) > MAX_MISSES or len(self.extra_ids) + len(new) > MAX_EXTRA:
            self.active = False
        elif new:
            self._add(new)

    def add_context(self, tokens: list[int], vocab: int) -> None:
        """Tokens of the prompt join the subset (a prompt's words are likely in its answer)."""
        new = sorted({t for t in tokens if t < vocab} - self.members)
        if new and len(self.extra_ids) + len(new) <= MAX_EXTRA:
            self.members.update(new)
            self._add(new)

    def _add(self, tokens: list[int]) -> None:
        self.extra_ids += tokens
        extra = mx.array(self.extra_ids, dtype=mx.int32)
        sub = _rows(self._module, extra)
        self._extra = as_function(sub)
        self.ids = mx.concatenate([mx.array(self.base_ids, dtype=mx.int32), extra])

    def reset(self) -> None:
        """Back to the base subset (a new conversation)."""
        self.members = set(self.base_ids)
        self.extra_ids, self._extra = [], None
        self.ids = mx.array(self.base_ids, dtype=mx.int32)
        self.active = True
        self._recent.clear()
