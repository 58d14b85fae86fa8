"""benchmarks/draft_layers.py: a draft's agreement with the target with one layer left out."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

from conftest import load_benchmark


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("draft_layers")


def test_agreement_counts_first_choices_and_restores_the_layers(bench, stories):
    model, tokenizer = stories
    layers = list(model.model.layers)
    tokens = tokenizer.encode("Once upon a time, there was a little girl named Lily. She liked to play")
    start = 4
    target = np.array(mx.argmax(model(mx.array(tokens)[None])[0, start - 1 : -1], -1))
    wrong = target.copy()
    wrong[::2] = (wrong[::2] + 1) % model.args.vocab_size  # every other position disagrees
    replies = [("story", tokens, start, target), ("half", tokens, start, wrong)]

    whole = bench.agreement(model, layers, None, replies)
    assert whole["story"] == 1.0  # the model agrees with itself everywhere
    assert whole["half"] == pytest.approx(1 - len(wrong[::2]) / len(wrong))
    lesser = [bench.agreement(model, layers, skip, replies)["story"] for skip in range(len(layers))]
    assert min(lesser) < 1.0  # some layer matters to what the model predicts
    assert model.model.layers == layers


def test_weights_counts_a_modules_parameters(bench, stories):
    model, _ = stories
    layer = model.model.layers[0]
    attention, mlp = layer.self_attn, layer.mlp
    expected = sum(w.size for w in (
        attention.q_proj.weight, attention.k_proj.weight, attention.v_proj.weight,
        attention.o_proj.weight, mlp.gate_proj.weight, mlp.up_proj.weight, mlp.down_proj.weight,
        layer.input_layernorm.weight, layer.post_attention_layernorm.weight))
    assert bench.weights(layer) == expected
