"""A fixed k's free tail: the n-gram's continuation of the proposal rides in the verification's
spare rows (decode.Engine._with_tail). The paid draft steps stay k; the output stays the
target's (greedy here; sampled in test_sampling_lossless.py's "tail" cases)."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest
from conftest import ByteTokenizer, random_llama

from mlx_spec.decode import Engine
from mlx_spec.pair import Pair
from mlx_spec.policy import AdaptiveK, Costs, FixedK
from mlx_spec.proposers import DraftModelProposer, NgramProposer, Proposal
from mlx_spec.sampling import SamplingParams

VOCAB = 16
# the same 4 tokens again and again: the n-gram always has a continuation to offer
PROMPT = [3, 5, 7, 9] * 4 + [3]


def costs(rows: int = 8, k_max: int = 4) -> Costs:
    """Every verification of 1..k_max drafts padded to `rows` tokens."""
    return Costs(draft_step=0.1, verify=[1.0] * (k_max + 1), verify_tokens=[1] + [rows] * k_max)


class Repeater:
    """A target that always continues PROMPT's cycle (3 5 7 9): the tail is always right.
    With `every`, the token at each position that is a multiple of it is 11 instead (a
    chain-only target: its rows are told their position by the cache)."""

    def __init__(self, model, every: int | None = None):
        self.model, self.every = model, every

    def __getattr__(self, name):
        return getattr(self.model, name)

    def __call__(self, inputs, cache=None):
        offset = cache[0].offset if cache else 0
        logits = self.model(inputs, cache=cache)
        cycle = {3: 5, 5: 7, 7: 9, 9: 3}
        nxt = [cycle.get(int(t), 3) for t in np.array(inputs[0])]
        if self.every:
            nxt = [11 if (offset + i + 1) % self.every == 0 else t for i, t in enumerate(nxt)]
        return logits + 100.0 * (mx.arange(logits.shape[-1])[None, None, :] == mx.array(nxt)[None, :, None])


@pytest.fixture(scope="module")
def models():
    target = random_llama(vocab=VOCAB, dim=32, layers=2, seed=21)
    draft = random_llama(vocab=VOCAB, dim=32, layers=1, seed=22)
    return target, draft


def engine(target, draft, policy, ngram: bool = True) -> Engine:
    proposers = ([NgramProposer()] if ngram else []) + [DraftModelProposer(draft, VOCAB)]
    return Engine(target, ByteTokenizer(), proposers, policy=policy)


def decode(engine: Engine, max_tokens: int = 24, temperature: float = 0.0):
    tokens = []
    for step in engine.decode(PROMPT, sampling=SamplingParams(temperature=temperature, seed=0),
                              max_tokens=max_tokens):
        tokens += step.tokens
    return tokens, step.stats


def plain(target, max_tokens: int = 24) -> list[int]:
    return decode(Engine(target, ByteTokenizer()), max_tokens)[0]


def test_extended_appends_a_one_hot_guess():
    q = mx.full((2, VOCAB), 1.0 / VOCAB)
    runners = [mx.array([4, 6], dtype=mx.int32)] * 2
    proposal = Proposal(mx.array([3, 5], dtype=mx.int32), q, "draft", siblings=runners)
    longer = proposal.extended([7, 9], [3, 5])
    assert longer.tokens.tolist() == [3, 5, 7, 9] and longer.host == [3, 5, 7, 9]
    assert longer.tail == 2 and longer.source == "draft"
    assert np.allclose(np.array(longer.q[:2]), np.array(q))
    assert longer.q[2].tolist() == [1.0 if t == 7 else 0.0 for t in range(VOCAB)]
    assert longer.q[3].tolist() == [1.0 if t == 9 else 0.0 for t in range(VOCAB)]
    assert [s.shape[0] for s in longer.siblings] == [2, 2, 0, 0]  # no runners-up for a guess
    assert longer.truncated(3).tail == 1 and longer.truncated(2).tail == 0


def test_a_fixed_k_is_extended_by_the_ngram_and_stays_lossless(models):
    target, draft = Repeater(models[0]), models[1]
    tokens, stats = decode(engine(target, draft, FixedK(2, costs())))
    assert tokens == plain(target)
    assert stats.tail_proposed > 0 and stats.tail_accepted == stats.tail_proposed  # the cycle goes on
    assert max(stats.k_counts) > 2
    assert stats.tau > 3.0


def test_the_tail_fills_the_rows_left_after_one_sibling_per_draft(models):
    target, draft = models
    eng = engine(target, draft, FixedK(2, costs()))
    eng.context = list(range(1, 12)) + [1, 2]  # "1 2" was followed by 3 4 5 6 7 8 9 10 11
    eng.policy.update("ngram:2", 2, 2)  # the n-gram's 2-token matches have been landing
    runners = [mx.array([12, 13], dtype=mx.int32)] * 2
    drafted = Proposal(mx.array([3, 4], dtype=mx.int32), None, "draft", siblings=runners)
    greedy = SamplingParams()
    # 8 rows: the root, 2 drafts, a sibling for each, 3 left for the tail
    assert eng._with_tail(drafted, 8, greedy, 20)[0].tokens.tolist() == [3, 4, 5, 6, 7]
    guessed = Proposal(mx.array([3, 4], dtype=mx.int32), None, "ngram", host=[3, 4])  # no siblings
    assert eng._with_tail(guessed, 8, greedy, 20)[0].tokens.tolist() == [3, 4, 5, 6, 7, 8, 9]
    assert eng._with_tail(guessed, 8, greedy, 3)[0].tokens.tolist() == [3, 4, 5]  # the token budget
    assert eng._with_tail(guessed, 3, greedy, 20)[0].k == 2  # no spare row


def test_the_tail_respects_the_token_budget(models):
    target, draft = Repeater(models[0]), models[1]
    for max_tokens in (3, 4, 5, 7):
        tokens, stats = decode(engine(target, draft, FixedK(2, costs())), max_tokens)
        assert tokens == plain(target, max_tokens)
        assert len(tokens) == max_tokens == stats.generated_tokens


def test_rejected_tail_tokens_leave_the_output_the_targets(models):
    target = Repeater(models[0], every=7)  # every 7th token breaks the cycle the n-gram copies
    eng = Engine(target, ByteTokenizer(), [NgramProposer()], policy=FixedK(2, costs(rows=16)))
    tokens, stats = decode(eng, 40)
    assert tokens == plain(target, 40)
    assert 0 < stats.tail_accepted < stats.tail_proposed


def test_the_tail_goes_only_where_the_ngrams_guesses_land(models):
    target, draft = models
    policy = FixedK(2, costs(), tail_bar=0.3)
    assert not policy.tail_worth()  # nothing learned yet
    policy.update("ngram:3", 2, 0)
    policy.update("ngram:3", 2, 0)  # 3-token matches: guessed wrong twice
    policy.update("ngram:2", 2, 2)
    assert policy.tail_worth() and policy.tail_worth("ngram:2") and not policy.tail_worth("ngram:3")
    eng = engine(target, draft, policy)
    guess = Proposal(mx.array([4], dtype=mx.int32), None, "ngram", host=[4])
    eng.context = [1, 2, 3, 4, 5, 6, 7, 8, 2, 3]  # + 4: "2 3 4" matches, 3 tokens
    assert eng._with_tail(guess, 8, SamplingParams(), 20)[0].k == 1
    eng.context = [1, 2, 3, 4, 5, 6, 7, 8, 9, 3]  # + 4: "3 4" matches, 2 tokens
    assert eng._with_tail(guess, 8, SamplingParams(), 20)[0].tokens.tolist() == [4, 5, 6, 7, 8, 9, 3]
    policy.tail_bar = 0.0  # no bar: a tail wherever the n-gram has one
    eng.context = [1, 2, 3, 4, 5, 6, 7, 8, 2, 3]
    assert eng._with_tail(guess, 8, SamplingParams(), 20)[0].tokens.tolist() == [4, 5, 6, 7, 8, 2, 3]


def test_no_tail_without_spare_rows_a_guesser_or_a_fixed_k(models):
    target, draft = Repeater(models[0]), models[1]
    unpadded = decode(engine(target, draft, FixedK(2, costs(rows=3))))[1]  # 3 rows: the chain only
    no_ngram = decode(engine(target, draft, FixedK(2, costs()), ngram=False))[1]
    switched_off = decode(engine(target, draft, FixedK(2, costs(), tail=False)))[1]
    adaptive = decode(engine(target, draft, AdaptiveK(costs(), k_max=4)))[1]
    for stats in (unpadded, no_ngram, switched_off, adaptive):
        assert stats.tail_proposed == 0


def test_a_real_pair_at_a_fixed_k_with_its_tail_equals_plain(stories):
    model, tok = stories
    prompt = "Tom and Lily went to the park. Tom and Lily went to the park. Tom and"
    pair = Pair(model, tok, draft=model, ngram=True, k=2)
    pair.engine.policy = FixedK(2, costs(rows=16, k_max=8))
    result = pair.generate(prompt, max_tokens=48, chat=False)
    assert result.tokens == Pair(model, tok).generate(prompt, max_tokens=48, chat=False).tokens
    assert result.stats.tail_proposed > 0


def ladder_costs(sixteen: float, eight: float = 1.55, row: float = 0.1) -> Costs:
    """No padding is free: k drafts are verified in k + 1 rows (1 + `row` per row past the
    first), and 8 and 16 rows cost `eight` and `sixteen`."""
    verify = [1.0 + row * k for k in range(5)]
    ladder = {t + 1: s for t, s in enumerate(verify)} | {8: eight, 16: sixteen}
    return Costs(draft_step=0.1, verify=verify, verify_tokens=[1, 2, 3, 4, 5], ladder=ladder)


def test_a_fixed_k_buys_rows_for_its_tail_only_where_they_pay():
    policy = FixedK(2, ladder_costs(1.6))
    for _ in range(4):
        policy.update("draft", 2, 2)
        policy.update("ngram:3", 2, 2)  # the drafts and the n-gram's guesses have been landing
    room = lambda s: max(s - 1 - 2 - 2, 0)  # noqa: E731  (root, 2 drafts, 2 siblings)
    assert policy.tail_size("draft", 2, 3, "ngram:3", room) == 16
    assert FixedK(2, ladder_costs(4.0, 4.0)).tail_size("draft", 2, 3, "ngram:3", room) < 8  # too dear
    policy.update("ngram:2", 2, 0)
    policy.update("ngram:2", 2, 0)
    policy.update("ngram:2", 2, 0)  # 2-token matches: guessed wrong
    assert policy.tail_size("draft", 2, 3, "ngram:2", room) < 16
    assert policy.tail_size("draft", 2, 3, "ngram:3", lambda s: 0) == 3  # no tail: no rows
    assert FixedK(2).tail_size("draft", 2, 3, "ngram:3", room) == 3  # no costs: as chosen


def test_bought_rows_carry_the_tail_and_stay_lossless(models):
    target, draft = Repeater(models[0]), models[1]
    tokens, stats = decode(engine(target, draft, FixedK(2, ladder_costs(1.6))))
    assert tokens == plain(target)
    assert stats.tail_proposed > 0 and max(stats.verify_sizes) > 3  # more than k + 1 rows
    dear = decode(engine(target, draft, FixedK(2, ladder_costs(40.0, 20.0, row=2.0))))
    assert dear[0] == plain(target) and dear[1].tail_proposed == 0
    adaptive = decode(engine(target, draft, AdaptiveK(ladder_costs(1.6), k_max=4)))[1]
    assert adaptive.tail_proposed == 0  # an adaptive k drafts on instead
