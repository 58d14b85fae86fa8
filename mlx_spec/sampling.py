"""Sampling settings and the one transform that turns logits into probabilities.

The same transform (processors, temperature, top-k, top-p, min-p) is applied to the target's
rows (p) and the draft's rows (q): acceptance is only exact when both see the same transform.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Callable, Sequence

import mlx.core as mx
from mlx_lm.sample_utils import make_logits_processors

from mlx_spec.errors import SpecError

LogitsProcessor = Callable[[mx.array, mx.array], mx.array]


@dataclass(frozen=True)
class SamplingParams:
    """How tokens are chosen. temperature 0 means greedy (argmax). `invariant` (default):
    sample drafter-invariantly (coupling.py): with a seed, the text is the one plain sampling
    with that seed gives, whatever the draft, k or the machine's speed; False: the round
    accepts by rejection sampling, whose text at a seed depends on what was drafted."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    seed: int | None = None
    repetition_penalty: float | None = None
    repetition_context_size: int = 20
    logit_bias: dict[int, float] | None = field(default=None, hash=False)
    invariant: bool = True

    def __post_init__(self):
        checks = [
            (self.temperature >= 0, "temperature must be >= 0", "use 0 for greedy decoding"),
            (self.top_k >= 0, "top_k must be >= 0", "use 0 to disable top-k"),
            (0 < self.top_p <= 1, "top_p must be in (0, 1]", "use 1.0 to disable top-p"),
            (0 <= self.min_p < 1, "min_p must be in [0, 1)", "use 0 to disable min-p"),
            (
                self.repetition_penalty is None or self.repetition_penalty > 0,
                "repetition_penalty must be > 0",
                "1.0 means no penalty",
            ),
            (self.repetition_context_size > 0, "repetition_context_size must be > 0", ""),
        ]
        for ok, message, hint in checks:
            if not ok:
                raise SpecError(message, hint)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @cached_property
    def processors(self) -> list[LogitsProcessor]:
        """History-dependent logits processors (repetition penalty, logit bias)."""
        return make_logits_processors(
            logit_bias=self.logit_bias,
            repetition_penalty=self.repetition_penalty,
            repetition_context_size=self.repetition_context_size,
        )


def apply_processors(
    processors: Sequence[LogitsProcessor], history: mx.array, logits: mx.array
) -> mx.array:
    """Apply processors to one row of logits (shape (1, V)) given the tokens before it."""
    for processor in processors:
        logits = processor(history, logits)
    return logits


def _keep_at_least(probs: mx.array, threshold: mx.array) -> mx.array:
    return mx.where(probs >= threshold, probs, 0.0)


def filters_cut(params: SamplingParams, vocab: int) -> bool:
    """Whether any filter `probabilities` applies (top-k, top-p, min-p) can cut a row of
    `vocab` logits: where none can, the probabilities are the tempered softmax."""
    return 0 < params.top_k < vocab or params.top_p < 1.0 or params.min_p > 0


def probabilities(logits: mx.array, params: SamplingParams) -> mx.array:
    """Rows of logits (..., V) -> rows of probabilities after temperature/top-k/top-p/min-p.

    Filters keep every token tied with the last kept one, so the result does not depend on
    sort stability and a kernel can reproduce it.
    """
    logits = logits.astype(mx.float32)
    if params.greedy:
        # Greedy acceptance only looks at the argmax; keep a proper distribution for stats.
        return mx.softmax(logits, axis=-1)
    probs = mx.softmax(logits / params.temperature, axis=-1)
    vocab = probs.shape[-1]
    if 0 < params.top_k < vocab:
        kth = mx.sort(probs, axis=-1)[..., vocab - params.top_k]
        probs = _keep_at_least(probs, kth[..., None])
    if params.top_p < 1.0:
        ranked = mx.sort(probs, axis=-1)[..., ::-1]
        mass_before = mx.cumsum(ranked, axis=-1) - ranked
        # Smallest set of top tokens whose mass reaches top_p (always at least one token).
        kept = mx.maximum(mx.sum(mass_before < params.top_p * ranked.sum(-1, keepdims=True), -1), 1)
        cutoff = mx.take_along_axis(ranked, (kept - 1)[..., None], axis=-1)
        probs = _keep_at_least(probs, cutoff)
    if params.min_p > 0:
        probs = _keep_at_least(probs, params.min_p * probs.max(axis=-1, keepdims=True))
    return probs / probs.sum(axis=-1, keepdims=True)
