"""benchmarks/draft_adapter.py: an adapter on the draft's last hidden state, and its agreement."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

from conftest import load_benchmark
from mlx_spec.draft_head import as_function, output_layer


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("draft_adapter")


def test_a_new_adapter_leaves_the_draft_as_it_was_and_can_learn(bench, stories):
    model, tokenizer = stories
    tokens = tokenizer.encode("Once upon a time, there was a little girl named Lily.")
    hidden = np.array(model.model(mx.array(tokens)[None])[0])
    head = as_function(output_layer(model))
    labels = np.array(mx.argmax(model(mx.array(tokens)[None])[0], -1))  # the model's own choices
    adapter = bench.Adapter(hidden.shape[1], 2)
    assert np.allclose(np.array(adapter(mx.array(hidden))), hidden)
    assert bench.agreement(head, None, hidden, labels) == 1.0
    assert bench.agreement(head, adapter, hidden, labels) == 1.0
    shifted = (labels + 1) % model.args.vocab_size  # every label now disagrees with the model
    assert bench.agreement(head, None, hidden, shifted) == 0.0
    mx.random.seed(0)
    for _ in bench.fit(adapter, head, hidden, shifted, lr=1e-2, epochs=100, batch=len(hidden)):
        pass
    assert bench.agreement(head, adapter, hidden, shifted) > 0.5  # the adapter moved its choices


def test_library_pieces_are_whole_pieces_and_repeatable(bench, stories):
    _, tokenizer = stories
    pieces = bench.library_pieces(tokenizer, 3)
    assert len(pieces) == 3 and all(len(p) == bench.PIECE for p in pieces)
    assert bench.library_pieces(tokenizer, 3) == pieces
