"""Drafter-invariant sampling (coupling.py): with a seed, speculative output is plain
sampling's output token for token, whatever proposes; and plain sampling that way follows the
target's exact distribution (the chi-square harness of test_sampling_lossless.py)."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest
from test_sampling_lossless import (PROMPT, SETTINGS, VOCAB, bound, chi_square, draft, empirical_counts,  # noqa: F401
                                    exact_distribution, make_engine, target)

import mlx_spec.coupling as coupling
from mlx_spec.coupling import BLOCK, perturbed, position_noise
from mlx_spec.policy import AdaptiveK, Costs
from mlx_spec.proposers import DraftModelProposer
from mlx_spec.sampling import SamplingParams, probabilities

SEEDS = 60
TOKENS = 10


def invariant(seed: int, setting: str = "t1") -> SamplingParams:
    return SamplingParams(seed=seed, **{**SETTINGS[setting], "invariant": True})


def tokens_of(engine, sampling: SamplingParams, max_tokens: int = TOKENS) -> tuple[list[int], int]:
    """(the tokens, how many drafted tokens the rounds accepted)."""
    engine.reset()
    tokens = []
    for step in engine.decode(PROMPT, sampling=sampling, max_tokens=max_tokens):
        tokens += step.tokens
    return tokens, step.stats.accepted


@pytest.mark.parametrize(
    "proposer,k,setting",
    [("draft", 2, "t1"), ("draft", 4, "t0.7-top_p"), ("draft", 3, "top_k-min_p"), ("subset", 3, "t1"),
     ("ngram", 3, "t1"), ("stop", 3, "t1"), ("jump", 3, "t0.7-top_p"), ("tree", 2, "t1"), ("tail", 1, "t1")],
)
def test_speculative_output_is_plain_output_token_for_token(target, draft, proposer, k, setting):
    plain = make_engine(target, draft, "plain", 0)
    engine = make_engine(target, draft, proposer, k)
    accepted = 0
    for seed in range(SEEDS):
        expected, _ = tokens_of(plain, invariant(seed, setting))
        got, n = tokens_of(engine, invariant(seed, setting))
        assert got == expected, f"seed {seed}"
        accepted += n
    assert accepted > SEEDS  # the rounds did accept drafted tokens: the check is not of plain vs plain


def test_adaptive_k_on_real_timings_gives_the_same_text(target, draft):
    """Adaptive k learns from wall-clock timings, so its rounds differ run to run; the text
    must not."""
    costs = Costs(draft_step=0.2, verify=[1.0, 1.1, 1.2, 1.3, 1.4])
    plain = make_engine(target, draft, "plain", 0)
    from conftest import ByteTokenizer

    from mlx_spec.decode import Engine
    engine = Engine(target, ByteTokenizer(), [DraftModelProposer(draft, VOCAB)],
                    policy=AdaptiveK(costs, k_max=4, learn_costs=True))
    for seed in range(20):
        assert tokens_of(engine, invariant(seed), 24)[0] == tokens_of(plain, invariant(seed), 24)[0]


@pytest.mark.parametrize("setting", ["t1", "t0.7-top_p", "top_k-min_p"])
def test_invariant_sampling_follows_target_distribution(target, draft, setting):
    exact = exact_distribution(target, SamplingParams(**SETTINGS[setting]))
    counts = empirical_counts(make_engine(target, draft, "plain", 0), lambda seed: invariant(seed, setting))
    stat, dof = chi_square(counts, exact)
    assert stat < bound(dof), f"chi-square {stat:.1f} with {dof} dof"


def test_the_harness_catches_noise_shared_between_positions(target, draft, monkeypatch):
    """Every position drawing the same noise (the position dropped from its key) makes a
    reply's tokens depend on each other: the bound must fail."""
    monkeypatch.setattr(coupling, "position_noise", lambda seed, position, width: position_noise(seed, 0, width))
    exact = exact_distribution(target, SamplingParams(**SETTINGS["t1"]))
    counts = empirical_counts(make_engine(target, draft, "plain", 0), lambda seed: invariant(seed))
    stat, dof = chi_square(counts, exact)
    assert stat > bound(dof)


def test_no_seed_still_samples():
    """Without a seed, a generation draws one: replies differ from call to call."""
    logits = mx.zeros((1, 50))
    probs = probabilities(logits, SamplingParams(temperature=1.0))
    picks = {int(mx.argmax(perturbed(probs, s, [3])).item()) for s in range(20)}
    assert len(picks) > 5


def test_noise_depends_on_seed_and_position_not_width():
    wide, narrow = position_noise(1, 5, 3 * BLOCK + 7), position_noise(1, 5, BLOCK + 3)
    assert mx.array_equal(wide[: BLOCK + 3], narrow)
    assert not mx.array_equal(position_noise(1, 6, 100), position_noise(1, 5, 100))
    assert not mx.array_equal(position_noise(2, 5, 100), position_noise(1, 5, 100))
    # Gumbel(0, 1): mean 0.5772, variance pi^2 / 6
    sample = np.array(position_noise(3, 0, 4 * BLOCK))
    assert abs(sample.mean() - 0.5772) < 0.03 and abs(sample.var() - np.pi ** 2 / 6) < 0.1


def test_subset_columns_read_the_noise_of_their_ids():
    logits = mx.array(np.random.default_rng(0).normal(size=(1, 40)).astype(np.float32))
    ids = mx.array([3, 17, 38])
    sampling = SamplingParams(temperature=0.9, seed=4, invariant=True)
    full = perturbed(probabilities(logits, sampling), 4, [9])
    sub = perturbed(probabilities(logits[:, ids], sampling), 4, [9], ids=ids, width=40)
    # the same noise; log-probabilities differ by the subset's normaliser only
    shift = (full[0, ids] - sub[0])
    assert float(mx.abs(shift - shift[0]).max()) < 1e-5


@pytest.mark.parametrize("setting", [{"temperature": 0.7}, {"temperature": 1.3}, {"temperature": 0.7, "top_p": 0.9},
                                     {"temperature": 1.0, "top_k": 5, "min_p": 0.05}])
def test_token_scores_pick_the_perturbed_argmax_of_the_probabilities(setting):
    """The verification's scores (tempered logits plus noise where no filter cuts the
    distribution) choose each row's token as log-probabilities plus noise do."""
    logits = mx.array(np.random.default_rng(1).normal(scale=3.0, size=(6, 300)).astype(np.float32))
    positions = range(11, 17)
    picked, expected = [], []
    for seed in range(40):
        sampling = SamplingParams(seed=seed, invariant=True, **setting)
        picked += mx.argmax(coupling.token_scores(logits, sampling, positions), axis=-1).tolist()
        expected += mx.argmax(perturbed(probabilities(logits, sampling), seed, positions), axis=-1).tolist()
    assert picked == expected
    assert len(set(picked)) > 20  # the noise moves the choice: the comparison is not vacuous


def test_token_scores_need_a_seed():
    with pytest.raises(ValueError, match="seed"):
        coupling.token_scores(mx.zeros((1, 8)), SamplingParams(temperature=0.7), [0])
