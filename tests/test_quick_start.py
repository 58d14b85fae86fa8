"""The quick start: a reply's first round is plain decoding and the draft reads the prompt
only after that round has been yielded, so the first token is not held up by the draft's
prefill. The output stays the target's, and the caches stay exact across turns."""

from __future__ import annotations

import pytest
from conftest import CountingModel, quantized_copy

from mlx_spec.chat import ChatSession, Sampling
from mlx_spec.pair import Pair
from mlx_spec.proposers import cache_length

PROMPT = "Once upon a time"


def test_no_draft_forward_before_the_first_token(stories):
    model, tok = stories
    draft = CountingModel(quantized_copy(model))
    pair = Pair(model, tok, draft=draft, k=4)
    timed = draft.calls  # loading times a draft step
    steps = pair.stream(PROMPT, max_tokens=30, chat=False, quick_start=True)
    first = next(steps)
    assert draft.calls == timed
    assert len(first.tokens) == 1 and first.drafted == [False]
    assert first.stats.first_token_time > 0
    second = next(steps)
    assert draft.calls > timed  # the draft read the prompt and proposed for round two
    rest = [step.tokens for step in steps]
    assert second.stats.drafted > 0
    assert sum(map(len, rest)) + len(first.tokens) + len(second.tokens) == 30


def test_without_quick_start_the_draft_prefills_first(stories):
    model, tok = stories
    draft = CountingModel(quantized_copy(model))
    pair = Pair(model, tok, draft=draft, k=4)
    timed = draft.calls
    first = next(pair.stream(PROMPT, max_tokens=30, chat=False))
    assert draft.calls > timed
    assert first.stats.drafted > 0


REPEATING = "Once upon a time there was a little girl. Once upon a time there was a little"


def test_a_free_guess_may_carry_the_quick_round(stories):
    """Only the paid draft waits: the n-gram guess, which costs nothing, still proposes in
    the first round, and the draft has not run when that round is yielded."""
    model, tok = stories
    draft = CountingModel(quantized_copy(model))
    pair = Pair(model, tok, draft=draft, ngram=True, k=4)
    timed = draft.calls
    steps = pair.stream(REPEATING, max_tokens=30, chat=False, quick_start=True)
    first = next(steps)
    assert draft.calls == timed
    assert first.stats.drafted > 0 and first.stats.rounds_by_source["ngram"] == 1
    rest = [step.tokens for step in steps]
    plain = Pair(model, tok).generate(REPEATING, max_tokens=30, chat=False).tokens
    assert first.tokens + sum(rest, []) == plain


def test_with_free_proposers_alone_quick_start_changes_nothing(stories):
    model, tok = stories

    def rounds(quick: bool):
        pair = Pair(model, tok, ngram=True, k=4)
        return [(step.tokens, step.drafted) for step in
                pair.stream(REPEATING, max_tokens=30, chat=False, quick_start=quick)]

    slow = rounds(False)
    assert rounds(True) == slow
    assert any(slow[0][1])  # the first round is a guess, with or without the quick start


@pytest.mark.parametrize("draft", ["quantized", "ngram", "none"])
@pytest.mark.parametrize("k", [3, None])
def test_quick_start_is_lossless(stories, draft, k):
    model, tok = stories
    plain = Pair(model, tok).generate(PROMPT, max_tokens=60, chat=False).tokens
    pair = Pair(model, tok, draft=quantized_copy(model) if draft == "quantized" else None,
                ngram=draft == "ngram", k=k)
    quick = pair.generate(PROMPT, max_tokens=60, chat=False, quick_start=True)
    assert quick.tokens == plain
    assert quick.stats.generation_time > 0


def test_cancelled_after_the_first_round_the_next_turn_is_still_exact(stories):
    model, tok = stories
    pair = Pair(model, tok, draft=quantized_copy(model), k=4)
    stream = pair.stream(PROMPT, max_tokens=50, chat=False, quick_start=True)
    first = next(stream).tokens
    stream.close()  # the draft never read the prompt
    (proposer,) = pair.engine.proposers
    assert cache_length(proposer.cache) == len(proposer.seen) == 0
    rest = pair.generate(list(pair.engine.context), max_tokens=30, quick_start=True)
    plain = Pair(model, tok).generate(PROMPT, max_tokens=31, chat=False).tokens
    assert first + rest.tokens == plain
    assert cache_length(proposer.cache) == len(proposer.seen)
    assert pair.engine.context[: len(proposer.seen)] == proposer.seen


def test_chat_replies_start_quick_and_turns_match_the_slow_start(stories_path):
    from mlx_spec.pair import load_pair

    def conversation(quick: bool):
        pair = load_pair(str(stories_path), draft=str(stories_path), k=3)
        (draft,) = [p for p in pair.engine.proposers if p.name == "draft"]
        session = ChatSession(pair, sampling=Sampling(max_tokens=25, temperature=0.0), quick_start=quick)
        texts, read_at_first = [], []
        for user in ("Once upon a time", "The next day"):
            before, seen = len(draft.seen), []

            def on_text(text, tokens, drafted):
                if not seen:  # how much of the turn the draft had read at the first token
                    read_at_first.append(len(draft.seen) - before)
                seen.append(text)

            texts.append(session.reply(user, on_text).text)
        return texts, read_at_first, session.replies

    quick_texts, quick_read, replies = conversation(True)
    slow_texts, slow_read, _ = conversation(False)
    assert quick_texts == slow_texts
    assert quick_read == [0, 0]  # the draft had not read either turn when its first token came
    assert all(n > 0 for n in slow_read)
    assert all(r.drafted > 0 and r.first_token_time > 0 for r in replies)
