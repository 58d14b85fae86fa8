"""Greedy speculative output equals greedy target-only output, token for token."""

from __future__ import annotations

import copy

import pytest
from conftest import quantized_copy, random_llama

from mlx_spec.pair import Pair
from mlx_spec.proposers import cache_length

PROMPTS = ["Once upon a time", "Tom and Lily went to the park. Tom and Lily"]
MAX_TOKENS = 60


def plain_tokens(stories, prompt, max_tokens=MAX_TOKENS):
    model, tok = stories
    return Pair(model, tok).generate(prompt, max_tokens=max_tokens, chat=False).tokens


def drafts(stories):
    model, _ = stories
    return {
        "self": (model, False),
        "quantized": (quantized_copy(model), False),
        "random": (random_llama(vocab=512, seed=3), False),
        "ngram": (None, True),
        "ngram+quantized": (quantized_copy(model), True),
    }


@pytest.fixture(scope="module")
def draft_models(stories):
    return drafts(stories)


@pytest.mark.parametrize("prompt", PROMPTS)
@pytest.mark.parametrize("k", [1, 2, 4, 8, None], ids=["k1", "k2", "k4", "k8", "adaptive"])
@pytest.mark.parametrize("draft", ["self", "quantized", "random", "ngram", "ngram+quantized"])
def test_greedy_speculative_equals_plain(stories, draft_models, draft, k, prompt):
    model, tok = stories
    draft_model, ngram = draft_models[draft]
    pair = Pair(model, tok, draft=draft_model, ngram=ngram, k=k)
    result = pair.generate(prompt, max_tokens=MAX_TOKENS, chat=False)
    assert result.tokens == plain_tokens(stories, prompt)
    assert result.stats.generated_tokens == MAX_TOKENS
    assert result.finish_reason == "length"


def test_mlx_lm_plain_greedy_agrees_with_our_plain_loop(stories):
    from mlx_lm.generate import generate_step
    import mlx.core as mx

    model, tok = stories
    ids = tok.encode(PROMPTS[0])
    theirs = [int(t) for t, _ in generate_step(mx.array(ids), model, max_tokens=MAX_TOKENS)]
    assert Pair(model, tok).generate(ids, max_tokens=MAX_TOKENS).tokens == theirs


def test_acceptance_levels_follow_the_draft_quality(stories, draft_models):
    model, tok = stories
    rates = {}
    for name in ["self", "quantized", "random"]:
        pair = Pair(model, tok, draft=draft_models[name][0], k=4, subset_vocab=False)
        rates[name] = pair.generate(PROMPTS[0], max_tokens=MAX_TOKENS, chat=False).stats.acceptance_rate
    assert rates["self"] == 1.0
    assert 0.0 < rates["quantized"] < 1.0
    assert rates["random"] < 0.2


def test_eos_in_the_middle_of_a_round_stops_there(stories):
    model, tok = stories
    full = plain_tokens(stories, PROMPTS[0])
    eos_token = full[11]  # a token the text reaches mid-way; pretend it is EOS
    first = full.index(eos_token)
    tok_eos = copy.copy(tok)
    tok_eos.eos_token_ids = set(tok.eos_token_ids) | {eos_token}
    pair = Pair(model, tok_eos, draft=model, k=8)
    result = pair.generate(PROMPTS[0], max_tokens=MAX_TOKENS, chat=False)
    assert result.tokens == full[: first + 1]
    assert result.finish_reason == "stop"
    # one round drafted past the EOS; the caches hold only what was committed
    engine = pair.engine
    assert cache_length(engine.cache) == len(engine.context) - 1
    assert engine.context[-len(result.tokens):] == result.tokens


@pytest.mark.parametrize("max_tokens", [1, 5, 13])
def test_max_tokens_landing_mid_round(stories, max_tokens):
    model, tok = stories
    pair = Pair(model, tok, draft=model, k=4)
    result = pair.generate(PROMPTS[0], max_tokens=max_tokens, chat=False)
    assert result.tokens == plain_tokens(stories, PROMPTS[0])[:max_tokens]
    assert len(result.tokens) == max_tokens
    assert cache_length(pair.engine.cache) == len(pair.engine.context) - 1


def test_stop_string_ends_text_and_tokens(stories):
    model, tok = stories
    plain = Pair(model, tok).generate(PROMPTS[0], max_tokens=MAX_TOKENS, chat=False)
    pair = Pair(model, tok, draft=model, k=8)
    result = pair.generate(PROMPTS[0], max_tokens=MAX_TOKENS, chat=False, stop=["park"])
    assert "park" in plain.text
    assert result.text == plain.text[: plain.text.index("park")]
    assert result.finish_reason == "stop"
    assert plain.tokens[: len(result.tokens)] == result.tokens
    assert len(result.tokens) < len(plain.tokens)
    assert cache_length(pair.engine.cache) == len(pair.engine.context) - 1
