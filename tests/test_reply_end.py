"""Nothing is proposed past a token that ends the reply: a draft chain read on the host ends
on it, and an n-gram guess stops at it. The output stays the target's."""

from __future__ import annotations

import copy

import mlx.core as mx
import numpy as np
import pytest

from mlx_spec.decode import Engine
from mlx_spec.pair import Pair
from mlx_spec.policy import AdaptiveK, Costs
from mlx_spec.proposers import DraftModelProposer, NgramProposer, cache_length
from mlx_spec.sampling import SamplingParams
from mlx_spec.stats import Stats

K = 8
ALWAYS = 1e-12  # a bar the chain never falls below: it reads every token


@pytest.fixture(scope="module")
def draft(stories):
    return stories[0]


@pytest.fixture(scope="module")
def context(stories):
    return list(stories[1].encode("Once upon a time"))


def greedy_chain(model, context, k):
    tokens = []
    for _ in range(k):
        tokens.append(int(mx.argmax(model(mx.array(context + tokens)[None])[0, -1]).item()))
    return tokens


def first_new(tokens, start=1):
    """The first position from `start` whose token did not come before it."""
    return next(i for i in range(start, len(tokens)) if tokens[i] not in tokens[:i])


def propose(model, context, ends, stop_below, guess=None):
    proposer = DraftModelProposer(model, model.args.vocab_size)
    proposer.ends, proposer.guess = frozenset(ends), guess
    proposer.prefill(context)
    proposal = proposer.propose(context, K, SamplingParams(), np.random.default_rng(0), stop_below=stop_below)
    return proposer, proposal.tokens.tolist()


def test_a_chain_read_on_the_host_ends_on_the_end_token(draft, context):
    truth = greedy_chain(draft, context, K)
    end = first_new(truth, 2)
    _, tokens = propose(draft, context, {truth[end]}, ALWAYS)
    assert tokens == truth[: end + 1]
    _, unread = propose(draft, context, {truth[end]}, 0.0)  # a fixed k reads nothing on the host
    assert unread == truth
    _, no_end = propose(draft, context, set(), ALWAYS)
    assert no_end == truth


def test_a_jumping_chain_ends_on_the_end_token_and_keeps_its_cache_right(draft, context):
    truth = greedy_chain(draft, context, K)
    end = first_new(truth, 2)

    def guess(context, drafted, k):  # knows the chain
        return truth[len(drafted) : len(drafted) + k]

    proposer, tokens = propose(draft, context, {truth[end]}, ALWAYS, guess)
    assert tokens == truth[: end + 1] and proposer.jumps >= 1
    assert cache_length(proposer.cache) == len(context) + end  # the chain but its newest token


def test_an_ngram_guess_stops_at_the_end_token():
    END = 40
    context = [1, 2, 3, 4, END, 5, 6, 7, 1, 2, 3]
    plain = NgramProposer(max_n=3, min_n=2)
    assert plain.propose(context, 6, SamplingParams(), None).host == [4, END, 5, 6, 7, 1]
    ending = NgramProposer(max_n=3, min_n=2)
    ending.ends = frozenset({END})
    assert ending.propose(context, 6, SamplingParams(), None).host == [4, END]
    assert ending.continuation(context, [4], 6) == [END]
    assert ending.continuation(context, [4, END], 6) == []  # nothing follows the end
    assert plain.continuation(context, [4, END], 6) == [5, 6, 7, 1, 2, 3]


def test_an_adaptive_engine_proposes_nothing_past_the_end_and_stays_lossless(stories, context):
    model, tok = stories
    full = Pair(model, tok).generate(context, max_tokens=60).tokens
    end = first_new(full, 11)  # a token the text reaches mid-way; pretend it ends the reply
    tok_end = copy.copy(tok)
    tok_end.eos_token_ids = set(tok.eos_token_ids) | {full[end]}
    ngram, drafter = NgramProposer(), DraftModelProposer(model, model.args.vocab_size)
    drafter.guess = ngram.continuation
    # drafting priced cheap, so the adaptive policy drafts long chains read on the host
    policy = AdaptiveK(Costs(draft_step=0.1, verify=[1.0] * 16), k_max=15)
    engine = Engine(model, tok_end, [ngram, drafter], policy=policy)
    stats = Stats(trace=[])
    tokens = [t for step in engine.decode(context, max_tokens=60, stats=stats) for t in step.tokens]
    assert tokens == full[: end + 1]
    proposed = [r["proposed"] for r in stats.trace]
    assert any(full[end] in p for p in proposed)  # a proposal reached the end
    for p in proposed:
        assert full[end] not in p[:-1]  # and none went past it
    assert cache_length(engine.cache) == len(engine.context) - 1
