"""Shared fixtures: the tiny real model from ../shared and small models the tests build."""

from __future__ import annotations

import copy
import importlib.util
from pathlib import Path

import pytest

import mlx_spec  # noqa: F401  (loads OpenBLAS before mlx.core)
import mlx.core as mx
import mlx.nn as nn
from mlx_lm.models import llama

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
STORIES = SHARED / "models" / "stories260K"
BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_benchmark(name: str):
    """A script of benchmarks/ (not a package) imported as a module, for testing its functions."""
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path, monkeypatch):
    """Calibration and converted models go to a temporary home, never the user's cache."""
    monkeypatch.setenv("MLX_SPEC_HOME", str(tmp_path / "mlx-spec-home"))


@pytest.fixture(scope="session")
def stories_path() -> Path:
    if not (STORIES / "config.json").exists():
        pytest.skip(f"needs ../shared/models/stories260K (not found at {STORIES})")
    return STORIES


@pytest.fixture(scope="session")
def stories(stories_path):
    """(model, tokenizer) of stories260K, a real 512-token Llama."""
    from mlx_lm import load

    return load(str(stories_path))


def random_llama(vocab: int = 512, dim: int = 64, layers: int = 2, seed: int = 0, scale: float = 1.0):
    """A Llama with random weights; `scale` sharpens its output distributions."""
    args = llama.ModelArgs(
        model_type="llama", hidden_size=dim, num_hidden_layers=layers, intermediate_size=2 * dim,
        num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-5, vocab_size=vocab,
        tie_word_embeddings=True,
    )
    mx.random.seed(seed)
    model = llama.Model(args)
    if scale != 1.0:
        emb = model.model.embed_tokens
        emb.weight = emb.weight * scale
    mx.eval(model.parameters())
    return model


def quantized_copy(model, bits: int = 4, group_size: int = 32):
    """A quantized copy (layers whose width the group size does not divide stay float)."""
    clone = copy.deepcopy(model)
    nn.quantize(
        clone, group_size=group_size, bits=bits,
        class_predicate=lambda _, m: hasattr(m, "to_quantized") and m.weight.shape[-1] % group_size == 0,
    )
    mx.eval(clone.parameters())
    return clone


class CountingModel:
    """Wraps a model and counts forward passes (and tokens fed)."""

    def __init__(self, model):
        self.model, self.calls, self.tokens = model, 0, 0

    def __call__(self, inputs, cache=None):
        self.calls += 1
        self.tokens += inputs.shape[-1]
        return self.model(inputs, cache=cache)

    def __getattr__(self, name):
        return getattr(self.model, name)


class ByteTokenizer:
    """Minimal tokenizer for tiny-vocabulary models: token i is the character chr(65 + i)."""

    has_chat_template = False

    def __init__(self, eos: set[int] = frozenset()):
        self.eos_token_ids = set(eos)

    def encode(self, text):
        return [ord(c) - 65 for c in text]

    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(65 + i) for i in ids)


CLI_CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)


@pytest.fixture(scope="session")
def cli_chat_model(stories_path, tmp_path_factory) -> Path:
    """A copy of stories260K whose tokenizer has a simple chat template."""
    import json
    import shutil

    out = tmp_path_factory.mktemp("cli") / "stories-chat"
    shutil.copytree(stories_path, out)
    config = json.loads((out / "tokenizer_config.json").read_text())
    config["chat_template"] = CLI_CHAT_TEMPLATE
    (out / "tokenizer_config.json").write_text(json.dumps(config))
    return out


@pytest.fixture(scope="session")
def cli_mismatched_model(stories_path, tmp_path_factory) -> Path:
    """A copy of stories260K whose tokenizer swaps two ids: a draft that must be refused."""
    import json
    import shutil

    out = tmp_path_factory.mktemp("cli") / "stories-swapped"
    shutil.copytree(stories_path, out)
    tj = json.loads((out / "tokenizer.json").read_text())
    vocab = tj["model"]["vocab"]
    vocab["▁the"], vocab["▁a"] = vocab["▁a"], vocab["▁the"]
    (out / "tokenizer.json").write_text(json.dumps(tj))
    return out
