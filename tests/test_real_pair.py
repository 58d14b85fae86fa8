"""Real weights: stories260K loads through load_model; the converted Qwen2.5-Coder pair (built
by `mlx-spec models pull qwen2.5-coder-1.5b`) reproduces the reference greedy continuations."""

from pathlib import Path

import pytest

import mlx_spec  # noqa: F401  (OpenBLAS before mlx.core)
from mlx_spec.errors import SpecError
from mlx_spec.loading import load_model
from mlx_spec.registry import load_registry
from mlx_spec.resolve import converted_dir, is_model_dir, models_home

STORIES = Path(__file__).resolve().parents[1].parent / "shared" / "models" / "stories260K"
FIB_PROMPT = 'def fibonacci(n):\n    """Return the n-th Fibonacci number."""\n'
# docs/offline-models.md, checked against transformers reading the same GGUF in float32.
EXPECTED = {
    "target": "    if n <= 1:\n        return n\n    else:\n        return fibonacci(n-1) + "
              "fibonacci(n",
    "draft": "    if n <= 0:\n        return 0\n    elif n == 1:\n        return 1\n",
}
# One worker runs all of them (pytest -n ... --dist loadgroup): the pair's weights load once.
pytestmark = pytest.mark.xdist_group("real_pair")
# Read at import: fixtures may point MLX_SPEC_HOME at a temp dir, but the pulled pair lives here.
PULLED_HOME = models_home()


@pytest.fixture(autouse=True)
def models_no_hub(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def greedy(loaded, prompt: str, n: int) -> str:
    from mlx_lm import stream_generate

    tokens = [r.token for r in stream_generate(loaded.model, loaded.tokenizer, prompt,
                                               max_tokens=n)]
    return loaded.tokenizer.decode(tokens)


@pytest.mark.skipif(not STORIES.is_dir(), reason="../shared/models/stories260K is absent")
def test_stories260k_loads_in_float32_and_tells_its_story():
    loaded = load_model(str(STORIES))
    assert loaded.dtype == "float32" and loaded.nbytes == 260_032 * 4
    assert greedy(loaded, "Once upon a time", 12).startswith(
        ", there was a little girl named Lily.")


def test_directory_without_weights_is_a_spec_error(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(SpecError, match="not a model directory"):
        load_model(str(tmp_path))


def test_corrupt_weights_are_a_spec_error(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "llama"}')
    (tmp_path / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(SpecError, match="could not load model"):
        load_model(str(tmp_path))


def _offline_pair():
    spec = load_registry().get("qwen2.5-coder-1.5b")
    return {"target": spec.target, "draft": spec.draft}


@pytest.mark.parametrize("role", ["draft", "target"])
def test_converted_qwen_coder_reproduces_reference_greedy_text(role, monkeypatch):
    monkeypatch.setenv("MLX_SPEC_HOME", str(PULLED_HOME))
    ref = _offline_pair()[role]
    if not is_model_dir(converted_dir(ref)):
        pytest.skip(f"{converted_dir(ref)} absent: run `mlx-spec models pull qwen2.5-coder-1.5b`")
    loaded = load_model(ref)
    assert loaded.path == converted_dir(ref) and loaded.dtype == "float32"
    n = len(loaded.tokenizer.encode(EXPECTED[role])) + 2
    assert greedy(loaded, FIB_PROMPT, n).startswith(EXPECTED[role])
