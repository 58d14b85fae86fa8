"""A draft chain that stops itself: where the product of the draft's probabilities of the tokens
it drew falls below the policy's bar, the chain ends (adaptive k); the output stays the target's."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest
from conftest import quantized_copy, random_llama

from mlx_spec.pair import Pair
from mlx_spec.policy import AdaptiveK, Costs, FixedK
from mlx_spec.proposers import DraftModelProposer
from mlx_spec.sampling import SamplingParams

VOCAB = 64
CONTEXT = [1, 5, 9, 5, 1]
PROMPT = "Once upon a time"


@pytest.fixture(scope="module")
def draft():
    return random_llama(vocab=VOCAB, dim=32, layers=1, seed=5, scale=3.0)


def greedy_chain(model, context, k):
    """The draft's greedy tokens and its top probability at each step, from full forwards."""
    tokens, confidences = [], []
    for _ in range(k):
        logits = np.array(model(mx.array(context + tokens)[None])[0, -1], dtype=np.float64)
        probs = np.exp(logits - logits.max())
        probs /= probs.sum()
        tokens.append(int(probs.argmax()))
        confidences.append(float(probs.max()))
    return tokens, confidences


def propose(model, k, stop_below, sampling=SamplingParams(), seed=0):
    proposer = DraftModelProposer(model, VOCAB)
    proposer.prefill(CONTEXT)
    proposal = proposer.propose(CONTEXT, k, sampling, np.random.default_rng(seed), stop_below=stop_below)
    return proposal.tokens.tolist()


def test_the_chain_ends_after_the_token_where_its_confidence_falls_below_the_bar(draft):
    tokens, confidences = greedy_chain(draft, CONTEXT, 6)
    reach = np.cumprod(confidences)
    assert reach[2] < reach[1] < 1.0
    bar = (reach[1] + reach[2]) / 2  # tokens 1 and 2 are above it, token 3 falls below
    assert propose(draft, 6, bar) == tokens[:3]
    assert propose(draft, 6, 0.0) == tokens  # no bar: the whole chain
    assert propose(draft, 6, 1.0) == tokens[:1]  # nothing is certain: one token


def test_a_sampled_chain_reads_the_drafts_probability_of_the_token_it_drew(draft):
    """Not its top probability: a draw the draft finds unlikely is a likely rejection."""
    sampling = SamplingParams(temperature=1.5, invariant=False)
    proposer = DraftModelProposer(draft, VOCAB)
    proposer.prefill(CONTEXT)
    proposal = proposer.propose(CONTEXT, 8, sampling, np.random.default_rng(3), stop_below=1e-12)
    tokens = proposal.tokens.tolist()
    assert len(tokens) == 8 and len(proposal.confidences) == 7  # the last token is not read
    drawn, top = [], []
    for i, confidence in enumerate(proposal.confidences):
        logits = np.array(draft(mx.array(CONTEXT + tokens[:i])[None])[0, -1], dtype=np.float64) / 1.5
        q = np.exp(logits - logits.max())
        q /= q.sum()
        assert confidence == pytest.approx(q[tokens[i]], rel=1e-4)
        drawn.append(q[tokens[i]])
        top.append(q.max())
    assert min(np.array(top) - np.array(drawn)) == 0.0  # some draws were the draft's top token
    assert max(np.array(top) - np.array(drawn)) > 0.05  # and some were not: the two rules differ


def test_a_sampled_chain_ends_on_the_draw_where_its_reach_falls_below_the_bar(draft):
    """The same draws with the bar between the chain's reach before and after each of them:
    the chain ends on that draw."""
    sampling = SamplingParams(temperature=1.5, invariant=False)
    proposer = DraftModelProposer(draft, VOCAB)
    proposer.prefill(CONTEXT)
    full = proposer.propose(CONTEXT, 8, sampling, np.random.default_rng(3), stop_below=1e-12)
    reach = np.cumprod(full.confidences)
    tokens = full.tokens.tolist()
    for cut in range(1, len(reach)):
        bar = (reach[cut - 1] + reach[cut]) / 2
        proposer.reset()
        proposer.prefill(CONTEXT)
        chain = proposer.propose(CONTEXT, 8, sampling, np.random.default_rng(3), stop_below=bar)
        assert chain.tokens.tolist() == tokens[: cut + 1]


def test_a_sampled_chain_stops_on_the_draft_distribution_too(draft):
    sampling = SamplingParams(temperature=1.0, invariant=False)
    assert len(propose(draft, 6, 0.0, sampling)) == 6
    assert len(propose(draft, 6, 1.0, sampling)) == 1


def test_adaptive_policy_gives_a_self_stopping_draft_a_chain_beyond_its_plan_and_the_cost_bar():
    costs = Costs(draft_step=0.2, verify=[0.8] * 16)
    policy = AdaptiveK(costs, k_max=15)
    assert policy.stop_below == pytest.approx(0.25)  # a step pays while the chain is 25% likely
    # up to three times the planned k, at least 4, at most k_max
    assert [policy.chain("draft", k)[0] for k in (1, 2, 3, 4, 5, 6, 15)] == [4, 6, 9, 12, 15, 15, 15]
    assert policy.chain("draft", 4) == (12, policy.stop_below)
    assert policy.chain("draft", 0) == (0, 0.0)
    policy.probing.add("draft")
    assert policy.chain("draft", 1) == (1, 0.0)  # a probe stays one token
    assert FixedK(3, costs).chain("draft", 3) == (3, 0.0)  # fixed k drafts in full


class StopAt(FixedK):
    """Up to k, with the draft stopping itself below `bar` (what adaptive k does)."""

    def __init__(self, k, bar):
        super().__init__(k)
        self.bar = bar

    def chain(self, source, k):
        return k, self.bar


def test_the_engine_passes_the_chain_and_bar_and_greedy_output_is_unchanged(stories):
    model, tok = stories
    plain = Pair(model, tok).generate(PROMPT, max_tokens=48, chat=False).tokens
    pair = Pair(model, tok, draft=quantized_copy(model), k=8)
    pair.engine.policy = StopAt(8, 0.5)
    proposer = pair.engine.proposers[-1]
    calls, real = [], proposer.propose

    def spy(context, k, sampling, rng, stop_below=0.0):
        proposal = real(context, k, sampling, rng, stop_below=stop_below)
        calls.append((k, stop_below, proposal.k))
        return proposal

    proposer.propose = spy
    result = pair.generate(PROMPT, max_tokens=48, chat=False)
    assert result.tokens == plain
    assert calls and all(bar == 0.5 for _, bar, _ in calls)
    assert any(made < asked for asked, _, made in calls)  # some chains stopped early
    assert sum(result.stats.k_counts[k] * k for k in result.stats.k_counts) == sum(m for *_, m in calls)
