"""The Python API: load_pair / stream / generate, tokenizer checks, vocabulary padding, and
the errors a user can cause."""

from __future__ import annotations

import json
import shutil

import mlx.core as mx
import pytest
from conftest import random_llama

from mlx_spec import SpecError
from mlx_spec.pair import Pair, check_tokenizers, load_pair
from mlx_spec.policy import FixedK
from mlx_spec.sampling import SamplingParams

PROMPT = "Once upon a time"


class PaddedVocab:
    """A model whose output layer has `pad` extra rows that are never likely (as Qwen2.5 7B
    has 152,064 rows for a 151,665-token tokenizer)."""

    def __init__(self, model, pad: int):
        self.model, self.pad = model, pad
        self.args = type("Args", (), {"vocab_size": model.args.vocab_size + pad})()

    def __call__(self, inputs, cache=None):
        logits = self.model(inputs, cache=cache)
        tail = mx.full((*logits.shape[:-1], self.pad), -1e4, dtype=logits.dtype)
        return mx.concatenate([logits, tail], axis=-1)

    @property
    def layers(self):
        return self.model.layers


def test_load_pair_from_directories_streams_text(stories_path):
    pair = load_pair(str(stories_path), draft=str(stories_path), k=4)
    steps = list(pair.stream(PROMPT, max_tokens=30, chat=False))
    text = "".join(s.text for s in steps)
    assert text.startswith(", there was a little girl named Lily")
    assert sum(len(s.tokens) for s in steps) == 30
    assert all(len(s.drafted) == len(s.tokens) for s in steps)
    assert any(any(s.drafted) for s in steps)
    assert steps[-1].finish_reason == "length"
    assert pair.last_stats.acceptance_rate == 1.0


def test_load_pair_with_ngram_draft(stories_path):
    pair = load_pair(str(stories_path), draft="ngram", k=4)
    plain = load_pair(str(stories_path)).generate(PROMPT, max_tokens=40, chat=False)
    result = pair.generate(PROMPT, max_tokens=40, chat=False)
    assert result.tokens == plain.tokens
    assert pair.draft_name == "ngram"


def test_mismatched_tokenizers_are_refused_naming_both_models(stories_path, tmp_path):
    other = tmp_path / "other-model"
    shutil.copytree(stories_path, other)
    tj = json.loads((other / "tokenizer.json").read_text())
    vocab = tj["model"]["vocab"]
    a, b = "▁the", "▁a"
    vocab[a], vocab[b] = vocab[b], vocab[a]
    (other / "tokenizer.json").write_text(json.dumps(tj))
    with pytest.raises(SpecError) as err:
        load_pair(str(stories_path), draft=str(other))
    message = str(err.value)
    assert "stories260K" in message and "other-model" in message
    assert "disagree on 2 of 512" in message


def test_matching_tokenizers_pass_the_check(stories):
    _, tok = stories
    check_tokenizers(tok, tok, "a", "b")


@pytest.mark.parametrize("where", ["target", "draft"])
def test_vocabulary_padding_stays_lossless(stories, where):
    model, tok = stories
    target = PaddedVocab(model, 64) if where == "target" else model
    draft = PaddedVocab(random_llama(seed=5), 64) if where == "draft" else random_llama(seed=5)
    plain = Pair(model, tok).generate(PROMPT, max_tokens=30, chat=False)
    greedy = Pair(target, tok, draft=draft, k=3).generate(PROMPT, max_tokens=30, chat=False)
    assert greedy.tokens == plain.tokens
    sampled = Pair(target, tok, draft=draft, k=3).generate(
        PROMPT, max_tokens=30, chat=False, temperature=1.0, seed=0
    )
    assert max(sampled.tokens) < 512  # padding ids have probability 0


def test_repetition_penalty_sees_plain_decoding_history(stories):
    model, tok = stories
    settings = dict(max_tokens=40, chat=False, repetition_penalty=1.3)
    plain = Pair(model, tok).generate(PROMPT, **settings)
    unpenalised = Pair(model, tok).generate(PROMPT, max_tokens=40, chat=False)
    assert plain.tokens != unpenalised.tokens  # the penalty changes the text...
    for draft, ngram in [(model, False), (None, True)]:
        spec = Pair(model, tok, draft=draft, ngram=ngram, k=4).generate(PROMPT, **settings)
        assert spec.tokens == plain.tokens  # ...and speculative decoding follows it exactly


@pytest.mark.parametrize(
    "kwargs,fragment",
    [
        (dict(temperature=-1), "temperature"),
        (dict(top_p=0.0), "top_p"),
        (dict(top_k=-3), "top_k"),
        (dict(min_p=1.5), "min_p"),
        (dict(repetition_penalty=0), "repetition_penalty"),
        (dict(max_tokens=0), "max_tokens"),
    ],
)
def test_bad_arguments_raise_the_project_error(stories, kwargs, fragment):
    model, tok = stories
    with pytest.raises(SpecError, match=fragment):
        Pair(model, tok).generate(PROMPT, chat=False, **kwargs)


@pytest.mark.parametrize("prompt", ["", "   ", []])
def test_empty_prompt_is_an_error(stories, prompt):
    model, tok = stories
    with pytest.raises(SpecError, match="empty"):
        Pair(model, tok).generate(prompt, chat=False)


def test_context_overflow_is_an_error(stories):
    model, tok = stories
    with pytest.raises(SpecError, match="exceeds the model's context of 512"):
        Pair(model, tok).generate("once " * 400, max_tokens=200, chat=False)


def test_negative_k_is_an_error():
    with pytest.raises(SpecError, match="k must be"):
        FixedK(-1)


def test_sampling_params_are_validated_on_creation():
    with pytest.raises(SpecError):
        SamplingParams(top_p=1.5)


def test_streamed_text_keeps_the_leading_space_of_a_continuation(stories):
    model, tok = stories
    prompt = "Once upon a time,"
    result = Pair(model, tok).generate(prompt, max_tokens=12, chat=False)
    ids = tok.encode(prompt)
    whole = tok.decode(ids + result.tokens)
    assert result.text == whole[len(tok.decode(ids)):]
    assert result.text.startswith(" ")
