"""The cheaper draft output layer: a draft that scores only part of the vocabulary."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
from conftest import quantized_copy, random_llama
from mlx_lm.models.cache import make_prompt_cache

from mlx_spec.draft_head import MAX_MISSES, SubsetHead, ascii_token_ids
from mlx_spec.pair import Pair, draft_head

PROMPT = "Once upon a time"


def test_subset_logits_equal_the_full_models_columns(stories):
    model, _ = stories
    ids = list(range(0, 512, 3))
    head = SubsetHead.build(model, ids)
    tokens = mx.array([[1, 40, 200, 7]])
    full = model(tokens, cache=make_prompt_cache(model))
    mine = head.logits(model.model(tokens, cache=make_prompt_cache(model)))
    assert mine.shape == (1, 4, len(ids))
    assert mx.allclose(mine, full[..., mx.array(ids)], atol=1e-5).item()


def test_a_quantized_tied_draft_gets_a_subset_head_too():
    model = quantized_copy(random_llama(vocab=512, dim=64, seed=4))
    assert isinstance(model.model.embed_tokens, nn.QuantizedEmbedding)
    assert SubsetHead.build(model, list(range(100, 300))) is not None


class SoftCapped(nn.Module):
    """A model whose logits are not just the output layer applied to the body's states."""

    def __init__(self, inner):
        super().__init__()
        self.model, self.lm_head_inner = inner.model, inner

    def __call__(self, inputs, cache=None):
        return 30 * mx.tanh(self.lm_head_inner(inputs, cache=cache) / 30)

    @property
    def layers(self):
        return self.model.layers


def test_a_draft_with_a_different_output_transform_keeps_its_full_head():
    assert SubsetHead.build(SoftCapped(random_llama(vocab=512, seed=5, scale=20.0)), list(range(200))) is None


def test_greedy_with_a_subset_missing_the_frequent_tokens_equals_plain(stories):
    model, tok = stories
    plain = Pair(model, tok).generate(PROMPT, max_tokens=60, chat=False).tokens
    frequent = {t for t in plain if plain.count(t) > 1}
    head = SubsetHead.build(model, [i for i in range(512) if i not in frequent])
    pair = Pair(model, tok, draft=model, k=4)
    pair.engine.proposers[0].head = head
    result = pair.generate(PROMPT, max_tokens=60, chat=False)
    assert result.tokens == plain
    assert result.stats.acceptance_rate < 1.0  # the self-draft could not propose those tokens
    assert frequent & set(head.extra_ids)  # ... until they were committed once


def test_committed_tokens_outside_the_subset_join_it(stories):
    model, _ = stories
    head = SubsetHead.build(model, list(range(256)))
    head.observe([3, 300, 301])
    assert head.active
    assert head.extra_ids == [300, 301]
    assert head.ids.tolist()[-2:] == [300, 301]
    assert head.logits(mx.zeros((1, model.args.hidden_size))).shape == (1, 258)
    head.reset()
    assert head.extra_ids == [] and head.ids.size == 256


def test_text_that_keeps_missing_the_subset_turns_it_off(stories):
    model, _ = stories
    head = SubsetHead.build(model, list(range(256)))
    head.observe(list(range(300, 300 + MAX_MISSES + 1)))
    assert not head.active
    head.reset()
    assert head.active


def test_ascii_subset_holds_plain_text_and_special_tokens(stories):
    _, tok = stories
    ids = ascii_token_ids(tok, 512)
    assert set(tok.encode("Once upon a time, there was a dog.")) <= set(ids)
    assert set(tok.eos_token_ids) <= set(ids)
    assert len(ids) < 512  # raw byte pieces (0x00.., 0x80..) are not plain ASCII text


def test_pairs_use_the_subset_head_only_when_it_saves_enough(stories):
    model, tok = stories
    assert Pair(model, tok, draft=model).engine.proposers[0].head is not None
    assert Pair(model, tok, draft=model, subset_vocab=False).engine.proposers[0].head is None
    assert draft_head(model, tok, 512) is not None
