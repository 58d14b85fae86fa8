"""benchmarks/forward_anatomy.py: where a decoding forward's time goes, by ablation."""

from __future__ import annotations

import mlx.core as mx
import pytest

from conftest import load_benchmark, random_llama


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("forward_anatomy")


def hidden(model, tokens):
    return model.model(mx.array(tokens)[None])


@pytest.mark.parametrize("part", ["attention", "rope"])
def test_an_ablated_part_changes_the_forward_and_is_restored_after(bench, part):
    model = random_llama(vocab=64, dim=32, layers=2)
    tokens = [1, 5, 9, 3, 7]
    before = hidden(model, tokens)
    with bench.ablated(model, part):
        during = hidden(model, tokens)
    after = hidden(model, tokens)
    assert not mx.allclose(during, before).item()  # the identity took the part's place
    assert mx.array_equal(after, before).item()


def test_an_unknown_part_is_refused(bench):
    with pytest.raises(ValueError, match="unknown part"):
        with bench.ablated(random_llama(vocab=64, dim=32, layers=1), "mlp"):
            pass


def test_layer_weights_are_the_blocks_linear_weights(bench):
    model = random_llama(vocab=64, dim=32, layers=2)
    weights = bench.layer_weights(model)
    assert len(weights) == 2 * 7  # q, k, v, o, gate, up, down per block
    assert all(w.ndim == 2 for w in weights)
    assert not any(w is model.model.embed_tokens.weight for w in weights)


def test_anatomy_times_every_variant_and_leaves_the_model_whole(bench):
    model = random_llama(vocab=64, dim=32, layers=2)
    tokens = [1, 5, 9, 3, 7]
    before = hidden(model, tokens)
    ms = bench.anatomy(model, context=8, rows=2, repeats=2)
    assert set(ms) == {"whole", "attention", "rope", "products"}
    assert all(value > 0 for value in ms.values())
    assert mx.array_equal(hidden(model, tokens), before).item()
    text = bench.table([("tiny, 2 tokens", ms)])
    assert text.count("\n") == 2 and "tiny, 2 tokens" in text
