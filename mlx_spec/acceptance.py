"""The acceptance step of a round: how many drafted tokens to keep, and the one extra token.

This is the pure-MLX reference; it runs on every backend. The custom kernels
(kernels/acceptance.metal, kernels/acceptance.cu) compute exactly the same outputs from the
same inputs, uniforms included. Notation follows Leviathan et al. 2023 / Chen et al. 2023:
drafts x_i, draft distributions q_i, target distributions p_i, uniforms u_i; row k of p is
the bonus row.

The extra token is drawn by inverse CDF over integer weights (w = floor(r * 2^40)): integer
prefix sums are exact in any order, so a parallel kernel reproduces the reference bit for bit.
"""

from __future__ import annotations

import mlx.core as mx

# Fixed-point scale of the sampling weights. Probabilities below 2^-40 (about 1e-12) round
# to zero weight: at most V * 2^-40 (1.4e-7 at V = 151,936) of mass, below float32 precision.
WEIGHT_BITS = 40
UNIFORM_BITS = 24


def leading_accepts(accepted: mx.array) -> mx.array:
    """n = number of leading True values (the round stops at the first rejection)."""
    if accepted.size == 0:
        return mx.array(0, dtype=mx.int32)
    return mx.sum(mx.cumprod(accepted.astype(mx.int32))).astype(mx.int32)


def accept_greedy(target_logits: mx.array, drafts: mx.array) -> tuple[mx.array, mx.array]:
    """Greedy rule: accept while argmax p_i == x_i; the extra token is argmax p_n.

    target_logits: (k+1, V) rows (logits or probabilities: only the argmax matters; ties go
    to the lowest id, as in plain greedy decoding). drafts: (k,) token ids.
    Returns (n, extra) as int32 scalars.
    """
    choices = mx.argmax(target_logits, axis=-1).astype(mx.int32)
    k = drafts.shape[0]
    n = leading_accepts(choices[:k] == drafts.astype(mx.int32))
    return n, choices[n]


def integer_weights(weights: mx.array) -> mx.array:
    """floor(weights * 2^40) as int64 (weights >= 0): the fixed-point form every draw uses."""
    return (weights.astype(mx.float32) * float(2**WEIGHT_BITS)).astype(mx.int64)


def draw_from_integer_weights(w: mx.array, u: mx.array) -> mx.array:
    """Inverse-CDF draw from one row of int64 weights with uniform u in [0, 1).

    threshold = floor(total * u24 / 2^24) with u24 = floor(u * 2^24), computed exactly; the
    token is the first id whose prefix sum exceeds threshold. Only an all-zero row (or u = 1)
    has no such id: the last id is returned so the result is always a valid token.
    """
    total = mx.sum(w)
    u24 = (u.astype(mx.float32) * float(2**UNIFORM_BITS)).astype(mx.int64)
    low_mask = 2**UNIFORM_BITS - 1
    threshold = (total >> UNIFORM_BITS) * u24 + (((total & low_mask) * u24) >> UNIFORM_BITS)
    count = mx.sum(mx.cumsum(w) <= threshold)
    return mx.minimum(count, w.shape[-1] - 1).astype(mx.int32)


def sample_from_weights(weights: mx.array, u: mx.array) -> mx.array:
    """Inverse-CDF draw from one row of non-negative float weights with uniform u in [0, 1)."""
    return draw_from_integer_weights(integer_weights(weights), u)


def accept_sampled(
    p: mx.array, q: mx.array | None, drafts: mx.array, u: mx.array
) -> tuple[mx.array, mx.array]:
    """Speculative sampling rule.

    p: (k+1, V) target probabilities. q: (k, V) draft probabilities, or None for a draft-free
    proposal (q is then one-hot on x_i). drafts: (k,). u: (k+1,) uniforms in [0, 1).
    Accept x_i while u_i * q_i(x_i) < p_i(x_i)  (i.e. u_i < min(1, p/q)); with n accepted, the
    extra token is drawn with u_k from max(0, p_n - q_n) renormalised (the residual), or from
    p_k when n = k. A residual with no integer weight falls back to p_n.
    Returns (n, extra) as int32 scalars.
    """
    k, vocab = drafts.shape[0], p.shape[-1]
    drafts = drafts.astype(mx.int32)
    # float32 uniforms whatever the caller passed: the kernels read them as float32
    u = u.astype(mx.float32)
    p_x = mx.take_along_axis(p[:k], drafts[:, None], axis=-1)[:, 0]
    if q is None:
        q_x = mx.ones_like(p_x)
        # one-hot q rows, plus an all-zero row for the bonus position
        q_rows = (mx.arange(vocab)[None, :] == drafts[:, None]).astype(p.dtype)
    else:
        q_x = mx.take_along_axis(q[:k], drafts[:, None], axis=-1)[:, 0]
        q_rows = q[:k].astype(p.dtype)
    n = leading_accepts(u[:k] * q_x < p_x)
    q_rows = mx.concatenate([q_rows, mx.zeros((1, vocab), dtype=p.dtype)], axis=0)
    # The residual is formed in p's dtype (the kernels round to it the same way).
    residual = integer_weights(mx.maximum(p[n] - q_rows[n], 0.0))
    # No integer mass left (q_n >= p_n everywhere, to 2^-40): fall back to p_n.
    weights = mx.where(mx.sum(residual) > 0, residual, integer_weights(p[n]))
    return n, draw_from_integer_weights(weights, u[k])


def _kernel_for(greedy: bool):
    try:
        from mlx_spec import kernels
    except ImportError:
        return None
    return kernels.get_kernel(greedy)


def accept(
    target_rows: mx.array,
    q: mx.array | None,
    drafts: mx.array,
    u: mx.array | None,
    *,
    greedy: bool,
    use_kernel: bool | None = None,
) -> tuple[mx.array, mx.array]:
    """The acceptance step: the custom kernel on its backend, the reference elsewhere.

    use_kernel: None picks automatically, False forces the reference, True requires a kernel.
    target_rows are logits (greedy) or probabilities (sampling). Returns lazy (n, extra).
    """
    kernel = _kernel_for(greedy) if use_kernel is not False else None
    if use_kernel and kernel is None:
        from mlx_spec.errors import SpecError

        raise SpecError(
            "no acceptance kernel runs on this backend",
            "kernels run on Metal and CUDA; drop use_kernel=True to use the MLX reference",
        )
    if greedy:
        return (kernel or accept_greedy)(target_rows, drafts)
    return (kernel or accept_sampled)(target_rows, q, drafts, u)
