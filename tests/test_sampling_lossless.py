"""Sampling is lossless: speculative output follows the target's exact distribution.

On an 8-token vocabulary the exact probability of every 3-token continuation is computed
from the target, and thousands of seeded generations are compared against it with a
chi-square statistic. The same harness, run with a wrong acceptance rule (resampling from p
instead of the residual after a rejection), must fail the bound: the test can fail.
"""

from __future__ import annotations

import itertools
import math

import mlx.core as mx
import numpy as np
import pytest
from conftest import ByteTokenizer, random_llama

import mlx_spec.decode as decode
from mlx_spec.acceptance import accept_sampled, leading_accepts, sample_from_weights
from mlx_spec.decode import Engine
from mlx_spec.draft_head import SubsetHead
from mlx_spec.policy import Costs, FixedK
from mlx_spec.proposers import DraftModelProposer, NgramProposer
from mlx_spec.sampling import SamplingParams, probabilities

VOCAB = 8
LENGTH = 3
RUNS = 2000
PROMPT = [1, 2, 1, 2, 1]  # repeats, so the n-gram proposer has something to propose


@pytest.fixture(scope="module")
def target():
    return random_llama(vocab=VOCAB, dim=32, layers=2, seed=11, scale=0.8)


@pytest.fixture(scope="module")
def draft():
    return random_llama(vocab=VOCAB, dim=32, layers=1, seed=12, scale=0.8)


def exact_distribution(target, sampling) -> dict[tuple[int, ...], float]:
    """P(t_1..t_L | prompt) for every continuation, from full forward passes."""
    probs = {(): 1.0}
    for _ in range(LENGTH):
        grown = {}
        for prefix, mass in probs.items():
            logits = target(mx.array(PROMPT + list(prefix))[None])[0, -1:]
            row = np.array(probabilities(logits, sampling)[0])
            for token in range(VOCAB):
                grown[prefix + (token,)] = mass * float(row[token])
        probs = grown
    return probs


def empirical_counts(engine, sampling_for_seed, fresh: bool = False, extra: int = 0) -> dict[tuple[int, ...], int]:
    """Counts of the first LENGTH tokens of RUNS seeded generations (of LENGTH + extra tokens:
    a longer budget lets the first round draft further; the first LENGTH tokens must still
    follow the exact distribution)."""
    counts: dict[tuple[int, ...], int] = {}
    for seed in range(RUNS):
        if fresh:
            engine.reset()
        tokens = []
        for step in engine.decode(PROMPT, sampling=sampling_for_seed(seed), max_tokens=LENGTH + extra):
            tokens += step.tokens
        tokens = tokens[:LENGTH]
        counts[tuple(tokens)] = counts.get(tuple(tokens), 0) + 1
    return counts


def chi_square(counts, exact) -> tuple[float, int]:
    """Pearson statistic over cells with expected count >= 5 (the rest pooled)."""
    stat, dof, pooled_obs, pooled_exp = 0.0, -1, 0, 0.0
    for cell, p in exact.items():
        expected, observed = p * RUNS, counts.get(cell, 0)
        if expected >= 5:
            stat += (observed - expected) ** 2 / expected
            dof += 1
        else:
            pooled_obs += observed
            pooled_exp += expected
    if pooled_exp > 0:
        stat += (pooled_obs - pooled_exp) ** 2 / pooled_exp
        dof += 1
    return stat, dof


def bound(dof: int) -> float:
    # about 4.5 standard deviations above the mean of a chi-square with `dof` degrees
    return dof + 4.5 * math.sqrt(2 * dof)


# rejection sampling (test_invariant_sampling.py tests the default, drafter-invariant sampling)
SETTINGS = {
    "t1": dict(temperature=1.0, invariant=False),
    "t0.7-top_p": dict(temperature=0.7, top_p=0.9, invariant=False),
    "top_k-min_p": dict(temperature=1.0, top_k=5, min_p=0.05, invariant=False),
}


SUBSET = [0, 1, 2, 4, 6]  # the prompt's tokens and two more: 3, 5 and 7 are never drafted


class StopEarly(FixedK):
    """Up to k tokens, the draft stopping itself where its confidence falls (adaptive k's
    chains): the stop depends on the draft's own draws, so sampling must stay exact."""

    # On this draft after PROMPT (temperature 1): its probability of its first draw is at
    # least 0.013 (the chain goes on), and the product after the second draw is 0.0003..0.23
    # depending on both draws: the chain of a 3-token round stops after 2 tokens or not, at
    # random.
    BAR = 0.01

    def chain(self, source, k):
        return k, self.BAR


class ReadEvery(StopEarly):
    """Up to k tokens, each read on the host (a bar nothing falls below): the chain jumps."""

    BAR = 1e-12


def jumping_draft(draft) -> DraftModelProposer:
    """A draft whose chain checks an n-gram guess of how it goes on: the guess depends on the
    tokens the draft sampled, and where the draft's draw differs from it the jump ends."""
    proposer = DraftModelProposer(draft, VOCAB)
    proposer.guess = NgramProposer(max_n=2, min_n=1).continuation
    return proposer


def padded(k: int) -> FixedK:
    """Fixed k, verified in 8 rows: the rows past the chain hold the draft's runners-up."""
    return FixedK(k, Costs(draft_step=0.1, verify=[1.0] * 4, verify_tokens=[1] + [8] * 3))


def make_engine(target, draft, proposer: str, k: int):
    if proposer == "tree":
        return Engine(target, ByteTokenizer(), [DraftModelProposer(draft, VOCAB)], policy=padded(k))
    if proposer == "stop":
        return Engine(target, ByteTokenizer(), [DraftModelProposer(draft, VOCAB)], policy=StopEarly(k))
    if proposer == "jump":
        return Engine(target, ByteTokenizer(), [jumping_draft(draft)], policy=ReadEvery(k))
    if proposer == "tail":  # the n-gram's guess extends the draft's k tokens into the spare rows
        return Engine(target, ByteTokenizer(), [NgramProposer(max_n=2, min_n=1), DraftModelProposer(draft, VOCAB)],
                      policy=padded(k))
    proposers = {
        "draft": [DraftModelProposer(draft, VOCAB)] if draft is not None else [],
        "subset": [DraftModelProposer(draft, VOCAB, SubsetHead.build(draft, SUBSET))],
        "ngram": [NgramProposer(max_n=2, min_n=1)],
        "plain": [],
    }[proposer]
    return Engine(target, ByteTokenizer(), proposers, policy=FixedK(k if proposers else 0))


@pytest.mark.parametrize(
    "proposer,k,setting",
    [("draft", 2, "t1"), ("draft", 3, "t0.7-top_p"), ("draft", 2, "top_k-min_p"), ("ngram", 3, "t1"),
     ("plain", 0, "t1"), ("subset", 3, "t1"), ("stop", 3, "t1"),
     ("jump", 3, "t1"), ("jump", 3, "t0.7-top_p"), ("tree", 1, "t1"), ("tree", 2, "t0.7-top_p"),
     ("tail", 1, "t1"), ("tail", 1, "t0.7-top_p")],
)
def test_sampled_output_follows_target_distribution(target, draft, proposer, k, setting):
    params = SETTINGS[setting]
    exact = exact_distribution(target, SamplingParams(**params))
    engine = make_engine(target, draft, proposer, k)
    # a subset head learns tokens as they are committed: start every run from its base subset
    counts = empirical_counts(engine, lambda seed: SamplingParams(seed=seed, **params), fresh=proposer == "subset",
                              extra={"stop": 1, "jump": 1, "tail": 2}.get(proposer, 0))
    stat, dof = chi_square(counts, exact)
    assert stat < bound(dof), f"chi-square {stat:.1f} with {dof} dof"


def test_the_tree_harness_takes_tokens_from_siblings(target, draft):
    engine = make_engine(target, draft, "tree", 2)
    assert engine.tree
    hits = rounds = 0
    for seed in range(200):
        for step in engine.decode(PROMPT, sampling=SamplingParams(seed=seed, **SETTINGS["t1"]), max_tokens=LENGTH):
            pass
        hits, rounds = hits + step.stats.sibling_hits, rounds + step.stats.rounds
    assert hits > rounds / 10  # a sibling often holds the correction: the tree path is tested


def test_the_harness_catches_a_sibling_row_read_wrongly(target, draft, monkeypatch):
    """The token after an accepted sibling drawn from the chain's row at the same depth (the
    distribution after the rejected draft, not after the sibling) must fail the bound."""
    after = Engine._after_siblings

    def wrong(rows, tree, sampling, rng, start=0):
        chain_rows = mx.stack([rows[depth] for depth, _ in tree.siblings])
        shifted = mx.concatenate([rows[: tree.k + 1], chain_rows, rows[tree.k + 1 + len(tree.siblings) :]])
        return after(shifted, tree, sampling, rng, start)

    monkeypatch.setattr(Engine, "_after_siblings", staticmethod(wrong))
    params = SETTINGS["t1"]
    exact = exact_distribution(target, SamplingParams(**params))
    counts = empirical_counts(make_engine(target, draft, "tree", 1), lambda seed: SamplingParams(seed=seed, **params))
    stat, dof = chi_square(counts, exact)
    assert stat > bound(dof)


def test_the_stopping_harness_does_stop_chains(target, draft):
    """The "stop" case above is only a test of stopping if some chains do stop early."""
    engine = make_engine(target, draft, "stop", 3)
    first_rounds = []
    for seed in range(40):
        engine.reset()
        steps = engine.decode(PROMPT, sampling=SamplingParams(seed=seed, **SETTINGS["t1"]), max_tokens=LENGTH + 1)
        first_rounds.append(next(steps).stats.k_counts.copy())
        list(steps)
    ks = {k for counts in first_rounds for k in counts}
    assert ks == {2, 3}  # asked for 3: some chains stopped after 2, never after 1


def test_the_jumping_harness_does_jump(target, draft):
    """The "jump" cases above test jumps only if chains jump, and the draft's draws sometimes
    take the guess and sometimes leave it."""
    engine = make_engine(target, draft, "jump", 3)
    drafter = engine.proposers[0]
    for seed in range(40):
        engine.reset()
        list(engine.decode(PROMPT, sampling=SamplingParams(seed=seed, **SETTINGS["t1"]), max_tokens=LENGTH + 1))
    assert drafter.jumps > 0
    assert drafter.jumped > 0  # some draws took the guess
    assert drafter.jumped < 2 * drafter.jumps  # guesses are 1..2 tokens: not all were taken


def test_the_tail_harness_extends_proposals(target, draft):
    """The "tail" cases above test the free tail only if rounds carry one, and the target
    accepts some of its tokens and rejects others."""
    engine = make_engine(target, draft, "tail", 1)
    proposed = accepted = 0
    for seed in range(40):
        for step in engine.decode(PROMPT, sampling=SamplingParams(seed=seed, **SETTINGS["t1"]), max_tokens=LENGTH + 2):
            pass
        proposed, accepted = proposed + step.stats.tail_proposed, accepted + step.stats.tail_accepted
    assert 0 < accepted < proposed


def wrong_accept_sampled(p, q, drafts, u):
    """The classic bug: after a rejection, sample from p_n instead of the residual."""
    k = drafts.shape[0]
    if k == 0:
        return accept_sampled(p, q, drafts, u)
    p_x = mx.take_along_axis(p[:k], drafts[:, None], axis=-1)[:, 0]
    q_x = mx.take_along_axis(q[:k], drafts[:, None], axis=-1)[:, 0]
    n = leading_accepts(u[:k] * q_x < p_x)
    return n, sample_from_weights(p[n], u[k])


def test_the_harness_catches_a_wrong_acceptance_rule(target, draft, monkeypatch):
    params = SETTINGS["t1"]
    exact = exact_distribution(target, SamplingParams(**params))

    def wrong(rows, q, drafts, u, *, greedy, use_kernel=None):
        return wrong_accept_sampled(rows, q, drafts, u)

    monkeypatch.setattr(decode, "accept", wrong)
    engine = make_engine(target, draft, "draft", 2)
    counts = empirical_counts(engine, lambda seed: SamplingParams(seed=seed, **params))
    stat, dof = chi_square(counts, exact)
    assert stat > bound(dof), f"a wrong rule passed: chi-square {stat:.1f} with {dof} dof"


def test_exact_distribution_sums_to_one(target):
    exact = exact_distribution(target, SamplingParams(temperature=1.0))
    assert set(exact) == set(itertools.product(range(VOCAB), repeat=LENGTH))
    assert abs(sum(exact.values()) - 1.0) < 1e-4


def test_speculative_sampling_accepts_more_than_sample_and_compare(target, draft):
    """sum_x min(p, q) >= sum_x p q: the reason rejection sampling beats mlx-lm's rule."""
    logits = target(mx.array(PROMPT)[None])[0, -1:]
    dlogits = draft(mx.array(PROMPT)[None])[0, -1:]
    params = SamplingParams(temperature=1.0)
    p = np.array(probabilities(logits, params)[0])
    q = np.array(probabilities(dlogits, params)[0])
    assert np.minimum(p, q).sum() > (p * q).sum()
    # and the reference realises sum min(p, q) empirically
    drafts_sampled = np.random.default_rng(0).choice(VOCAB, size=4000, p=q / q.sum())
    us = np.random.default_rng(1).random((4000, 2), dtype=np.float32)
    accepted = 0
    P = mx.array(np.stack([p, p]))
    Q = mx.array(q[None])
    for x, u in zip(drafts_sampled, us):
        n, _ = accept_sampled(P, Q, mx.array([int(x)]), mx.array(u))
        accepted += n.item()
    assert abs(accepted / 4000 - np.minimum(p, q).sum()) < 0.03
