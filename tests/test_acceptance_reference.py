"""The pure-MLX acceptance reference, case by case: hand-built rounds with known n and extra.

These always run (every backend); the kernels are held to this reference elsewhere.
"""

import mlx.core as mx
import numpy as np
import pytest

import mlx_spec  # noqa: F401  (loads OpenBLAS before MLX does any work)
from mlx_spec.acceptance import (
    UNIFORM_BITS,
    WEIGHT_BITS,
    accept,
    accept_greedy,
    accept_sampled,
    sample_from_weights,
)
from mlx_spec.errors import SpecError


def arr(rows, dtype=mx.float32):
    return mx.array(np.asarray(rows, dtype=np.float32)).astype(dtype)


def ids(values):
    return mx.array(np.asarray(values, dtype=np.int32))


def sampled(p, q, drafts, u, dtype=mx.float32):
    n, extra = accept_sampled(arr(p, dtype), None if q is None else arr(q, dtype), ids(drafts),
                              arr(u))
    return n.item(), extra.item()


def greedy(logits, drafts):
    n, extra = accept_greedy(arr(logits), ids(drafts))
    return n.item(), extra.item()


# --- greedy -------------------------------------------------------------------------------

def test_greedy_all_accepted_gives_the_bonus_argmax():
    logits = [[0, 5, 1, 0], [9, 0, 0, 0], [0, 0, 0, 3]]
    assert greedy(logits, [1, 0]) == (2, 3)


def test_greedy_first_rejected_gives_the_correction():
    logits = [[0, 5, 1, 0], [9, 0, 0, 0], [0, 0, 0, 3]]
    assert greedy(logits, [2, 0]) == (0, 1)


def test_greedy_stops_at_the_first_mismatch_even_if_later_rows_match():
    logits = [[0, 5, 1, 0], [9, 0, 0, 0], [0, 0, 0, 3]]
    assert greedy(logits, [1, 3]) == (1, 0)


def test_greedy_ties_go_to_the_lowest_id():
    logits = [[1, 7, 7, 7], [4, 4, 0, 4]]
    assert greedy(logits, [1]) == (1, 0)
    assert greedy(logits, [2]) == (0, 1)


def test_greedy_with_k_zero_is_plain_greedy_decoding():
    assert greedy([[0, 2, 8, 8]], []) == (0, 2)


def test_greedy_ignores_minus_infinity_padding():
    inf = float("inf")
    assert greedy([[-inf, 1.0, -inf, -inf], [2.0, 3.0, -inf, -inf]], [1]) == (1, 1)


# --- speculative sampling -----------------------------------------------------------------

P_BONUS = [0.25, 0.25, 0.5, 0.0]


def test_sampled_all_accepted_draws_the_bonus_from_p_k():
    p = [[0.1, 0.6, 0.3, 0.0], [0.5, 0.2, 0.3, 0.0], P_BONUS]
    q = [[0.1, 0.5, 0.4, 0.0], [0.4, 0.3, 0.3, 0.0]]
    # p >= q on both drafts: accepted for any u < 1; u_k = 0.3 lands in id 1 of p_k
    assert sampled(p, q, [1, 0], [0.999, 0.999, 0.3]) == (2, 1)
    assert sampled(p, q, [1, 0], [0.999, 0.999, 0.6]) == (2, 2)


def test_sampled_first_rejected_draws_from_the_residual():
    p = [[0.1, 0.5, 0.4, 0.0], P_BONUS]
    q = [[0.8, 0.1, 0.1, 0.0]]
    # 0.5 * 0.8 >= 0.1: rejected. Residual max(0, p - q) = [0, 0.4, 0.3, 0] -> [0, 4/7, 3/7, 0]
    assert sampled(p, q, [0], [0.5, 0.5]) == (0, 1)
    assert sampled(p, q, [0], [0.5, 0.9]) == (0, 2)
    assert sampled(p, q, [0], [0.5, 0.0]) == (0, 1)  # the zero-weight draft id is skipped


def test_sampled_accept_rule_is_u_times_q_below_p():
    p = [[0.3, 0.3, 0.4, 0.0], P_BONUS]
    q = [[0.6, 0.2, 0.2, 0.0]]
    assert sampled(p, q, [0], [0.49, 0.0])[0] == 1  # 0.49 * 0.6 < 0.3
    assert sampled(p, q, [0], [0.5, 0.0])[0] == 0  # 0.5 * 0.6 == 0.3 is not below


def test_sampled_without_q_treats_q_as_one_hot_on_the_draft():
    p = [[0.2, 0.3, 0.5, 0.0], P_BONUS]
    assert sampled(p, None, [1], [0.29, 0.0])[0] == 1  # accepted with probability p(x)
    # rejected: p with x removed, [0.2, 0, 0.5] / 0.7; u = 0.3 -> 0.21 of 0.7 -> id 2
    assert sampled(p, None, [1], [0.3, 0.25]) == (0, 0)
    assert sampled(p, None, [1], [0.3, 0.3]) == (0, 2)


def test_sampled_never_draws_the_rejected_draft_without_q():
    p = [[0.2, 0.3, 0.5, 0.0], P_BONUS]
    extras = {sampled(p, None, [1], [0.99, u])[1] for u in np.linspace(0, 0.999, 50)}
    assert extras == {0, 2}


def test_sampled_never_draws_padding_ids():
    # ids 4..7 are vocabulary padding: probability 0 in both models
    p = [[0.1, 0.2, 0.3, 0.4, 0, 0, 0, 0], [0.0, 0.0, 0.5, 0.5, 0, 0, 0, 0]]
    q = [[0.7, 0.1, 0.1, 0.1, 0, 0, 0, 0]]
    top = 1.0 - 2.0**-UNIFORM_BITS
    assert sampled(p, q, [0], [0.9, top]) == (0, 3)
    assert sampled(p, q, [1], [0.0, top]) == (1, 3)


def test_sampled_zero_probability_draft_is_accepted_iff_the_target_allows_it():
    p = [[0.5, 0.5, 0.0, 0.0], P_BONUS]
    q = [[0.5, 0.5, 0.0, 0.0]]
    assert sampled(p, q, [1], [0.0, 0.0])[0] == 1
    assert sampled(p, [[1.0, 0.0, 0.0, 0.0]], [1], [0.99, 0.0])[0] == 1  # q(x) = 0 < p(x)
    assert sampled(p, q, [2], [0.0, 0.0])[0] == 0  # p(x) = q(x) = 0: 0 < 0 is false


def test_sampled_target_zero_rejects_even_with_u_zero():
    p = [[0.5, 0.5, 0.0, 0.0], P_BONUS]
    q = [[0.2, 0.2, 0.6, 0.0]]
    assert sampled(p, q, [2], [0.0, 0.0]) == (0, 0)


def test_sampled_residual_without_mass_falls_back_to_p_n():
    # p(x) = q(x) = 0 rejects while p_0 == q_0: the residual is empty, so draw from p_0
    p = [[0.5, 0.0, 0.5, 0.0], P_BONUS]
    q = [[0.5, 0.0, 0.5, 0.0]]
    assert sampled(p, q, [1], [0.0, 0.25]) == (0, 0)
    assert sampled(p, q, [1], [0.0, 0.75]) == (0, 2)


def test_sampled_with_k_zero_draws_from_p_0():
    assert sampled([P_BONUS], None, [], [0.3]) == (0, 1)
    assert sampled([P_BONUS], np.zeros((0, 4)), [], [0.8]) == (0, 2)


@pytest.mark.parametrize("dtype", [mx.float16, mx.bfloat16])
def test_sampled_accepts_half_precision_inputs(dtype):
    p = [[0.1, 0.5, 0.4, 0.0], P_BONUS]
    q = [[0.8, 0.1, 0.1, 0.0]]
    assert sampled(p, q, [0], [0.5, 0.9], dtype) == (0, 2)


def test_uniforms_are_read_as_float32():
    p = arr([[0.3, 0.3, 0.4, 0.0], P_BONUS])
    q = arr([[0.6, 0.2, 0.2, 0.0]])
    u = arr([0.49, 0.3])
    a = accept_sampled(p, q, ids([0]), u)
    b = accept_sampled(p, q, ids([0]), u.astype(mx.float16).astype(mx.float32))
    c = accept_sampled(p, q, ids([0]), u.astype(mx.float16))
    assert [x.item() for x in b] == [x.item() for x in c]
    assert a[0].item() == 1


# --- inverse CDF over integer weights -----------------------------------------------------

def test_draw_skips_zero_weights_at_the_exact_boundary():
    w = arr([1.0, 0.0, 3.0]) / 4
    assert sample_from_weights(w, arr(0.0)).item() == 0
    assert sample_from_weights(w, arr(0.25)).item() == 2  # prefix sum 1/4 is not above 1/4


def test_draw_from_an_all_zero_row_stays_a_valid_id():
    assert sample_from_weights(mx.zeros((5,)), arr(0.5)).item() == 4


def test_draw_counts_match_weights_on_a_uniform_grid():
    rng = np.random.default_rng(0)
    w = rng.random(7).astype(np.float32)
    w[3] = 0.0
    grid = (np.arange(4096) + 0.5) / 4096
    draws = [sample_from_weights(arr(w), arr(u)).item() for u in grid]
    counts = np.bincount(draws, minlength=7)
    expected = 4096 * w / w.sum()
    assert counts[3] == 0
    assert np.all(np.abs(counts - expected) <= 1.01)  # a grid misses each share by < 1


def test_draw_frequencies_match_weights_for_random_uniforms():
    rng = np.random.default_rng(1)
    w = np.array([0.05, 0.15, 0.3, 0.5], dtype=np.float32)
    draws = [sample_from_weights(arr(w), arr(u)).item() for u in rng.random(8000)]
    freq = np.bincount(draws, minlength=4) / 8000
    assert np.all(np.abs(freq - w) < 4 * np.sqrt(w * (1 - w) / 8000))


def test_integer_weights_are_floor_of_2_to_the_40():
    w = np.array([0.1, 2.0**-41, 2.0**-40, 0.7], dtype=np.float32)
    from mlx_spec.acceptance import integer_weights

    got = np.array(integer_weights(arr(w)))
    assert got.tolist() == [int(np.float32(x) * np.float32(2.0**WEIGHT_BITS)) for x in w]
    assert got[1] == 0 and got[2] == 1


def test_speculative_sampling_emits_tokens_distributed_as_p():
    # Losslessness, one position: draft x ~ q, accept or resample; the token emitted must be
    # distributed as p whatever q is (Leviathan et al. 2023, theorem 1).
    rng = np.random.default_rng(2)
    p0 = np.array([0.1, 0.4, 0.2, 0.3], dtype=np.float32)
    q0 = np.array([0.4, 0.1, 0.4, 0.1], dtype=np.float32)
    p, q = arr([p0, P_BONUS]), arr([q0])
    trials, seen = 6000, np.zeros(4)
    for _ in range(trials):
        x = rng.choice(4, p=q0 / q0.sum())
        n, extra = accept_sampled(p, q, ids([x]), arr(rng.random(2)))
        seen[x if n.item() == 1 else extra.item()] += 1
    freq = seen / trials
    assert np.all(np.abs(freq - p0) < 4 * np.sqrt(p0 * (1 - p0) / trials))


# --- the dispatcher -----------------------------------------------------------------------

def test_accept_forced_to_the_reference_matches_it():
    logits = arr([[0, 5, 1, 0], [9, 0, 0, 0], [0, 0, 0, 3]])
    n, extra = accept(logits, None, ids([1, 0]), None, greedy=True, use_kernel=False)
    assert (n.item(), extra.item()) == (2, 3)
    p = arr([[0.1, 0.5, 0.4, 0.0], P_BONUS])
    n, extra = accept(p, arr([[0.8, 0.1, 0.1, 0.0]]), ids([0]), arr([0.5, 0.9]), greedy=False,
                      use_kernel=False)
    assert (n.item(), extra.item()) == (0, 2)


@pytest.mark.skipif(mx.default_device() != mx.cpu, reason="checks the CPU backend's choice")
def test_accept_on_cpu_uses_the_reference_and_refuses_to_require_a_kernel():
    logits = arr([[0, 5, 1, 0], [9, 0, 0, 0]])
    n, extra = accept(logits, None, ids([1]), None, greedy=True)
    assert (n.item(), extra.item()) == (1, 0)
    with pytest.raises(SpecError):
        accept(logits, None, ids([1]), None, greedy=True, use_kernel=True)

