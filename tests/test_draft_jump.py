"""A draft chain that jumps where the text repeats: after a drafted token, an n-gram's guess of
how the chain goes on is checked by one draft forward. The chain must be exactly the one the
draft drafts step by step (the guess only makes it cheaper), and its cache must hold exactly
the chain, whatever the guess."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest
from conftest import CountingModel, quantized_copy, random_llama

from mlx_spec.pair import Pair
from mlx_spec.policy import FixedK
from mlx_spec.proposers import DraftModelProposer, NgramProposer, cache_length, padded_batch
from mlx_spec.sampling import SamplingParams

VOCAB = 64
CONTEXT = [1, 5, 9, 5, 1]
K = 8
ALWAYS = 1e-12  # a bar the chain never falls below: it reads every token, so it can jump


@pytest.fixture(scope="module")
def draft():
    return random_llama(vocab=VOCAB, dim=32, layers=1, seed=5, scale=3.0)


def greedy_chain(model, context, k):
    """The draft's greedy tokens from full forwards, no cache."""
    tokens = []
    for _ in range(k):
        tokens.append(int(mx.argmax(model(mx.array(context + tokens)[None])[0, -1]).item()))
    return tokens


def chain_with(model, guess, k=K, stop_below=ALWAYS):
    proposer = DraftModelProposer(model, VOCAB)
    proposer.guess = guess
    proposer.prefill(CONTEXT)
    proposal = proposer.propose(CONTEXT, k, SamplingParams(), np.random.default_rng(0), stop_below=stop_below)
    return proposer, proposal


def guessing(truth, wrong_from=None):
    """A guess function that knows the true chain; from position `wrong_from` on it is wrong."""
    calls = []

    def guess(context, drafted, k):
        calls.append(len(drafted))
        right = truth[len(drafted) : len(drafted) + k]
        if wrong_from is None:
            return right
        cut = max(wrong_from - len(drafted), 0)
        return right[:cut] + [(t + 1) % VOCAB for t in right[cut:]]

    return guess, calls


@pytest.mark.parametrize("wrong_from", [None, 0, 3], ids=["right", "wrong", "right-then-wrong"])
def test_a_jumping_chain_is_the_chain_drafted_step_by_step(draft, wrong_from):
    truth = greedy_chain(draft, CONTEXT, K)
    guess, calls = guessing(truth, wrong_from)
    proposer, proposal = chain_with(draft, guess)
    assert proposal.tokens.tolist() == truth
    assert calls and proposer.jumps == len(calls)
    if wrong_from is None:
        assert proposer.jumps == 1 and proposer.jumped == K - 1  # one forward drafted the chain
    if wrong_from == 0:
        assert proposer.jumped == 0  # every check failed at its first token: one token each
    # the draft cache holds the context and the chain but its newest token
    assert cache_length(proposer.cache) == len(CONTEXT) + K - 1


def test_a_proposal_records_the_draft_forwards_it_took(draft):
    """What the policy prices a chain by: step by step, one 1-token forward per token; with a
    right guess, one forward over the newest token and the guessed rest."""
    truth = greedy_chain(draft, CONTEXT, K)
    _, stepwise = chain_with(draft, None)
    assert stepwise.tokens.tolist() == truth and stepwise.forwards == (1,) * K
    _, jumped = chain_with(draft, guessing(truth)[0])
    assert jumped.tokens.tolist() == truth and jumped.forwards == (padded_batch(K),)
    assert jumped.truncated(3).forwards == jumped.forwards  # the cost was paid all the same


@pytest.mark.parametrize("wrong_from", [None, 0, 3], ids=["right", "wrong", "right-then-wrong"])
def test_after_a_jump_the_draft_cache_continues_correctly(draft, wrong_from):
    truth = greedy_chain(draft, CONTEXT, K)
    guess, _ = guessing(truth, wrong_from)
    proposer, proposal = chain_with(draft, guess)
    # the target accepted 5 of the 8 and chose another sixth token
    committed = truth[:5] + [(truth[5] + 1) % VOCAB]
    proposer.observe(proposal, 5, committed)
    context = CONTEXT + committed
    again = proposer.propose(context, 4, SamplingParams(), np.random.default_rng(0))
    assert again.tokens.tolist() == greedy_chain(draft, context, 4)


def test_the_jumping_chain_still_stops_on_its_confidence(draft):
    truth = greedy_chain(draft, CONTEXT, K)
    guess, _ = guessing(truth)
    _, proposal = chain_with(draft, guess, stop_below=1.0)  # nothing is certain: one token
    assert proposal.tokens.tolist() == truth[:1]
    plain = DraftModelProposer(draft, VOCAB)
    plain.prefill(CONTEXT)
    bar = 0.5
    stopped = plain.propose(CONTEXT, K, SamplingParams(), np.random.default_rng(0), stop_below=bar)
    _, jumped = chain_with(draft, guess, stop_below=bar)
    assert jumped.tokens.tolist() == stopped.tokens.tolist()  # the same stop, jump or not


def test_a_chain_that_cannot_stop_never_jumps(draft):
    truth = greedy_chain(draft, CONTEXT, K)
    guess, calls = guessing(truth)
    proposer, proposal = chain_with(draft, guess, stop_below=0.0)  # fixed k: no host reads
    assert proposal.tokens.tolist() == truth and not calls and proposer.jumps == 0


def test_the_ngram_guess_continues_the_chain_from_the_context_without_indexing_drafts():
    ngram = NgramProposer(max_n=3, min_n=2)
    context = [5, 6, 7, 8, 0, 5, 6]
    assert ngram.continuation(context, [7], 3) == [8, 0, 5]  # "6 7" was followed by "8 0 5"
    assert ngram.continuation(context, [9], 3) == []  # "6 9" never appeared
    assert ngram.continuation(context, [42, 43], 3) == []
    # a repeat inside the drafted tokens is not found: drafts are looked up, never indexed
    assert ngram.continuation(context, [42, 43, 1, 42, 43], 3) == []
    assert ngram.continuation(context, [7], 0) == []


def test_padded_batches_only_grow():
    assert [padded_batch(n) for n in (1, 2, 5, 9, 16, 20)] == [1, 2, 6, 16, 16, 20]


class Jumping(FixedK):
    """Up to k tokens, read on the host (a bar nothing falls below), so chains can jump."""

    def chain(self, source, k):
        return k, ALWAYS


def test_the_engine_wires_the_ngram_guess_into_the_draft_and_greedy_output_is_unchanged(stories):
    model, tok = stories
    prompt = "Tom and Lily went to the park. Tom and Lily went to the park. Tom and"
    plain = Pair(model, tok).generate(prompt, max_tokens=48, chat=False).tokens
    pair = Pair(model, tok, draft=quantized_copy(model), ngram=True, k=8)
    pair.engine.policy = Jumping(8)
    drafter = pair.engine.proposers[-1]
    assert drafter.guess is not None
    result = pair.generate(prompt, max_tokens=48, chat=False)
    assert result.tokens == plain
    assert drafter.jumps > 0 and drafter.jumped > 0


def test_jumping_rounds_keep_one_sync_one_target_forward_and_exact_caches(stories):
    model, tok = stories
    prompt = "Tom and Lily went to the park. Tom and Lily"
    pair = Pair(model, tok, draft=quantized_copy(model), ngram=True, k=6)
    pair.engine.policy = Jumping(6)
    target = CountingModel(model)
    pair.target = pair.engine.target = target
    result = pair.generate(prompt, max_tokens=50, chat=False)
    stats = result.stats
    assert stats.host_syncs == stats.rounds == stats.target_forwards
    engine, drafter = pair.engine, pair.engine.proposers[-1]
    assert drafter.jumps > 0
    assert cache_length(engine.cache) == len(engine.context) - 1
    assert cache_length(drafter.cache) == len(drafter.seen)
    assert drafter.seen == engine.context[: len(drafter.seen)]
    # continuing from those caches still equals plain decoding of the whole text
    text_so_far = list(engine.context)
    more = pair.generate(text_so_far, max_tokens=20, chat=False)
    assert more.stats.prompt_tokens == 1  # both caches were reused
    assert more.tokens == Pair(model, tok).generate(text_so_far, max_tokens=20, chat=False).tokens


def test_an_invariant_draw_is_as_sure_as_q_taken_halfway_to_the_perturbed_softmax(draft):
    """Sampling drafter-invariantly, the chain's confidence in its token is the mean of q at the
    token and the softmax of the perturbed scores at their argmax (the token); sampling by
    rejection it stays q at the token."""
    from mlx_spec.coupling import perturbed
    from mlx_spec.sampling import probabilities

    proposer = DraftModelProposer(draft, VOCAB)
    logits = draft(mx.array(CONTEXT)[None])[0, -1:]
    moved = []
    for seed in range(5):
        sampling = SamplingParams(temperature=2.0, seed=seed)
        token, q, _, sure = proposer._draw(logits, None, None, sampling, np.random.default_rng(0), 7)
        scores = perturbed(probabilities(logits, sampling), seed, [7])
        soft = float(mx.softmax(scores, axis=-1)[0, token.item()].item())
        assert token.item() == int(mx.argmax(scores, axis=-1).item())
        assert sure.item() == pytest.approx((q[0, token.item()].item() + soft) / 2, rel=1e-5)
        moved.append(abs(sure.item() - q[0, token.item()].item()))
    assert max(moved) > 1e-3  # the perturbed softmax moves the confidence: the check is not vacuous
    rejection = SamplingParams(temperature=0.8, seed=0, invariant=False)
    token, q, _, sure = proposer._draw(logits, None, None, rejection, np.random.default_rng(0), 7)
    assert sure.item() == pytest.approx(q[0, token.item()].item(), rel=1e-6)
