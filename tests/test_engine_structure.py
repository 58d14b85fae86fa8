"""Structural facts of the decode loop: one host synchronisation and one target forward pass
per round, caches that hold exactly the committed tokens, and continuation that equals plain
decoding."""

from __future__ import annotations

import mlx.core as mx
import pytest
from conftest import CountingModel, quantized_copy

import mlx_spec.decode as decode
from mlx_spec.pair import Pair
from mlx_spec.policy import FixedK
from mlx_spec.proposers import cache_length
from mlx_spec.render import combine

PROMPT = "Once upon a time"


@pytest.fixture
def sync_counter(monkeypatch):
    """Counts the round's host syncs and every explicit mx.eval."""
    counts = {"host_sync": 0, "eval": 0}
    real_sync, real_eval = decode.host_sync, mx.eval

    def counting_sync(values):
        counts["host_sync"] += 1
        return real_sync(values)

    def counting_eval(*args, **kwargs):
        counts["eval"] += 1
        return real_eval(*args, **kwargs)

    monkeypatch.setattr(decode, "host_sync", counting_sync)
    monkeypatch.setattr(mx, "eval", counting_eval)
    return counts


@pytest.mark.parametrize("draft", ["self", "quantized", "ngram", "none"])
def test_one_host_sync_and_one_target_forward_per_round(stories, sync_counter, draft):
    model, tok = stories
    target = CountingModel(model)
    draft_model = {"self": model, "quantized": quantized_copy(model)}.get(draft)
    pair = Pair(target, tok, draft=draft_model, ngram=draft == "ngram", k=4)
    steps = pair.stream(PROMPT, max_tokens=40, chat=False)
    first = next(steps)  # prefill done, one round done
    calls_after_prefill = target.calls - 1
    evals_after_prefill = sync_counter["eval"]
    rest = list(steps)
    stats = first.stats
    assert stats.rounds == 1 + len(rest)
    assert sync_counter["host_sync"] == stats.rounds == stats.host_syncs
    assert target.calls - calls_after_prefill == stats.rounds == stats.target_forwards
    assert sync_counter["eval"] == evals_after_prefill  # no other sync inside rounds


def test_caches_hold_exactly_the_committed_tokens(stories):
    model, tok = stories
    draft = quantized_copy(model)
    pair = Pair(model, tok, draft=draft, k=4)
    result = pair.generate(PROMPT, max_tokens=37, chat=False)
    engine = pair.engine
    (proposer,) = engine.proposers
    assert engine.context[-37:] == result.tokens
    assert cache_length(engine.cache) == len(engine.context) - 1
    assert cache_length(proposer.cache) == len(proposer.seen)
    assert engine.context[: len(proposer.seen)] == proposer.seen


@pytest.mark.parametrize("k", [2, 8, None])
def test_continuing_from_the_caches_equals_plain_decoding(stories, k):
    model, tok = stories
    plain = Pair(model, tok).generate(PROMPT, max_tokens=50, chat=False).tokens
    pair = Pair(model, tok, draft=quantized_copy(model), k=k)
    first = pair.generate(PROMPT, max_tokens=20, chat=False)
    # continue from everything committed so far: only the last token is new work
    second = pair.generate(list(pair.engine.context), max_tokens=30)
    assert second.stats.prompt_tokens == 1
    assert first.tokens + second.tokens == plain


def test_closing_the_stream_cancels_and_keeps_caches_consistent(stories):
    model, tok = stories
    pair = Pair(model, tok, draft=model, k=4)
    stream = pair.stream(PROMPT, max_tokens=100, chat=False)
    emitted = next(stream).tokens + next(stream).tokens
    stream.close()
    assert pair.engine.context[-len(emitted):] == emitted
    assert cache_length(pair.engine.cache) == len(pair.engine.context) - 1


def test_a_new_turn_prefills_only_the_new_suffix(stories):
    model, tok = stories
    pair = Pair(model, tok, draft=model, k=4)
    ids = tok.encode(PROMPT)
    pair.generate(ids, max_tokens=10)
    turn = list(pair.engine.context) + tok.encode(" The end.", add_special_tokens=False)
    result = pair.generate(turn, max_tokens=5)
    assert result.stats.prompt_tokens == len(turn) - (len(ids) + 10 - 1)


def test_plain_decoding_is_the_same_loop_with_tau_one(stories):
    model, tok = stories
    result = Pair(model, tok).generate(PROMPT, max_tokens=12, chat=False)
    assert result.stats.rounds == 12
    assert result.stats.tau == 1.0
    assert result.stats.drafted == 0


def test_statistics_are_consistent(stories):
    model, tok = stories
    pair = Pair(model, tok, draft=quantized_copy(model), k=4, target_bytes=1000)
    stats = pair.generate(PROMPT, max_tokens=40, chat=False).stats
    assert stats.generated_tokens == 40
    # n + 1 per round, and one more where the correction was a sibling (the verification may
    # be padded with the draft's runners-up when the calibrated costs make room for them)
    assert stats.generated_tokens == stats.accepted + stats.rounds + stats.sibling_hits
    assert stats.tau == pytest.approx(40 / stats.rounds)
    by_position = stats.acceptance_by_position
    assert len(by_position) == 4
    assert all(a >= b for a, b in zip(by_position, by_position[1:]))  # a prefix is accepted
    assert sum(stats.time_split().values()) == pytest.approx(1.0)
    assert stats.bandwidth_gbs > 0
    assert stats.to_dict()["tau"] == stats.tau


def test_per_source_statistics_add_up_to_the_totals(stories):
    model, tok = stories
    pair = Pair(model, tok, draft=quantized_copy(model), ngram=True, k=3, target_bytes=1000)
    stats = pair.generate(PROMPT * 3, max_tokens=60, chat=False).stats
    table = stats.by_source()
    assert set(table) == set(stats.rounds_by_source) and len(table) >= 2
    assert sum(r["rounds"] for r in table.values()) == stats.rounds
    assert sum(r["drafted"] for r in table.values()) == stats.drafted
    assert sum(r["accepted"] for r in table.values()) == stats.accepted
    assert sum(r["tokens"] for r in table.values()) == stats.generated_tokens
    for row in table.values():
        assert row["tau"] == pytest.approx(row["tokens"] / row["rounds"])
        assert 0.0 <= row["acceptance_rate"] <= 1.0 and row["accepted"] <= row["drafted"]
    assert table.get("none", {"drafted": 0})["drafted"] == 0
    assert stats.to_dict()["by_source"] == table
    both = combine([stats, stats]).by_source()
    assert {s: r["tokens"] for s, r in both.items()} == {s: 2 * r["tokens"] for s, r in table.items()}


class PaddingPolicy(FixedK):
    """Fixed k, but verifies with 5 extra (ignored) tokens, as calibration may choose."""

    def verify_tokens(self, k, source=None, confidences=None):
        return k + 6


class SizeRecordingPolicy(FixedK):
    """Fixed k that records for which source each verification's size was asked."""

    def __init__(self, k):
        super().__init__(k)
        self.asked = []

    def verify_tokens(self, k, source=None, confidences=None):
        self.asked.append(source)
        return super().verify_tokens(k, source, confidences)


def test_a_larger_verification_is_only_considered_where_siblings_can_ride_in_it(stories):
    model, tok = stories
    pair = Pair(model, tok, draft=quantized_copy(model), k=3)
    for penalty, expect_source in ((None, True), (1.2, False)):
        pair.engine.policy = policy = SizeRecordingPolicy(3)
        pair.reset()
        pair.generate(PROMPT, max_tokens=12, chat=False, temperature=0.8, seed=1,
                      repetition_penalty=penalty)
        # history-dependent processors rule the tree out: the cheapest size, asked without a source
        assert policy.asked and all((source is not None) == expect_source for source in policy.asked)


def test_padded_verification_changes_nothing_but_the_work(stories):
    model, tok = stories
    plain = Pair(model, tok).generate(PROMPT, max_tokens=40, chat=False).tokens
    target = CountingModel(model)
    pair = Pair(target, tok, draft=quantized_copy(model), k=3)
    pair.engine.policy = PaddingPolicy(3)
    result = pair.generate(PROMPT, max_tokens=40, chat=False)
    assert result.tokens == plain
    assert cache_length(pair.engine.cache) == len(pair.engine.context) - 1
    assert target.tokens > 40 + 5 * result.stats.rounds  # the padding was really fed
