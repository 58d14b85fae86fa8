"""Bad input around models and configuration: one error line and a hint, exit 1, nothing lost.

models.toml that cannot be read, model folders whose weights are missing or cut short, odd model
references, GGUF conversion from and to the wrong places, a calibration cache of the wrong
shape, and models mlx-lm cannot load.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import mlx.core as mx
import pytest
from typer.testing import CliRunner

from conftest import random_llama
from mlx_spec.cli import app
from mlx_spec.doctor import collect
from mlx_spec.errors import SpecError
from mlx_spec.registry import load_registry


def run(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def assert_clean_error(result, *fragments):
    """Exit 1, one 'error:' line and a 'hint:' line on stderr, no traceback, nothing unexpected."""
    assert result.exit_code == 1, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 2 and lines[0].startswith("error: ") and lines[1].startswith("hint: "), \
        result.stderr
    assert "unexpected" not in result.stderr and "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr


def tiny_model(folder: Path) -> Path:
    """A model folder with a config and one small safetensors file (no tokenizer)."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", "vocab_size": 64}))
    mx.save_safetensors(str(folder / "model.safetensors"),
                        {"model.embed_tokens.weight": mx.zeros((64, 2048))})
    return folder


# ---- 1. models.toml that is not a readable text file -----------------------------------------

def test_models_toml_that_is_not_utf8_is_a_spec_error_naming_the_file(tmp_path, monkeypatch):
    toml = tmp_path / "models.toml"
    toml.write_bytes(b"\xff\xfe[pairs]")
    with pytest.raises(SpecError, match="not valid UTF-8") as info:
        load_registry(toml)
    assert str(toml) in info.value.message and info.value.hint
    monkeypatch.setenv("MLX_SPEC_MODELS", str(toml))
    assert_clean_error(run("models", "list"), str(toml))


def test_a_directory_as_models_toml_is_a_spec_error(tmp_path, monkeypatch):
    with pytest.raises(SpecError, match="is a directory") as info:
        load_registry(tmp_path)
    assert str(tmp_path) in info.value.message and "MLX_SPEC_MODELS" in info.value.hint
    monkeypatch.setenv("MLX_SPEC_MODELS", str(tmp_path))
    assert_clean_error(run("models", "list"), str(tmp_path))


def test_doctor_lists_an_unreadable_models_toml_as_a_problem(tmp_path, monkeypatch):
    toml = tmp_path / "models.toml"
    toml.write_bytes(b"\xff[pairs]")
    for path, fragment in ((toml, "not valid UTF-8"), (tmp_path, "is a directory")):
        monkeypatch.setenv("MLX_SPEC_MODELS", str(path))
        assert any(fragment in p for p in collect()["problems"])
        assert run("doctor").exit_code == 0


# ---- 2. model folders whose weights cannot be summarized ---------------------------------------

def test_models_info_of_a_folder_without_weights_is_an_error(tmp_path):
    folder = tiny_model(tmp_path / "m")
    (folder / "model.safetensors").unlink()
    assert_clean_error(run("models", "info", folder), "no weights")


def test_models_info_of_a_safetensors_cut_to_4_bytes_is_an_unreadable_header(tmp_path):
    folder = tiny_model(tmp_path / "m")
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:4])
    assert_clean_error(run("models", "info", folder), "no readable safetensors header")


def test_models_info_of_a_safetensors_cut_after_its_header_is_truncated(tmp_path):
    folder = tiny_model(tmp_path / "m")
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) - 100])
    assert_clean_error(run("models", "info", folder), "is truncated")


def test_models_info_of_a_complete_folder_still_counts_its_parameters(tmp_path):
    result = run("models", "info", tiny_model(tmp_path / "m"))
    assert result.exit_code == 0 and "0.1 M" in result.stdout and "F32" in result.stdout


# ---- 3. model references that are empty or name no folder -------------------------------------

def test_models_info_of_an_empty_reference_says_so():
    assert_clean_error(run("models", "info", ""), "empty model reference")


def test_models_info_of_a_missing_path_says_no_such_folder(tmp_path):
    for ref in (tmp_path / "nonexist", "./nonexist", "~/no/such/model", "a/b/c"):
        assert_clean_error(run("models", "info", ref), "no such folder")
    assert_clean_error(run("models", "info", "org/absent-model"), "not on this machine")


def test_models_info_of_a_folder_that_is_no_model_says_so(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = run("models", "info", ".")
    assert_clean_error(result, "not a model folder")
    assert "fetch the model again" not in result.stderr


def test_resolving_a_missing_path_says_no_such_folder(tmp_path):
    from mlx_spec.resolve import resolve_model

    with pytest.raises(SpecError, match="no such folder"):
        resolve_model(str(tmp_path / "nonexist"))


# ---- 4. GGUF conversion from and to the wrong places -------------------------------------------

@pytest.fixture
def minimal_gguf(tmp_path) -> Path:
    """The least a llama GGUF needs to reach the writing step: metadata and two tensors."""
    gguf = pytest.importorskip("gguf")
    import numpy as np

    path = tmp_path / "tiny.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(1)
    writer.add_embedding_length(32)
    writer.add_feed_forward_length(64)
    writer.add_head_count(4)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(["a", "b", "c", "d"])
    writer.add_tensor("token_embd.weight", np.zeros((4, 32), np.float32))
    writer.add_tensor("output_norm.weight", np.ones(32, np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_convert_to_a_place_that_cannot_be_written_is_a_spec_error(minimal_gguf, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    assert_clean_error(run("convert", minimal_gguf, blocker / "out"), "cannot create")
    assert blocker.read_text() == "not a folder"
    if Path("/proc").is_dir():
        assert_clean_error(run("convert", minimal_gguf, "/proc/mlx-spec-out"), "cannot create")


def test_convert_of_a_directory_says_it_is_a_directory(tmp_path):
    assert_clean_error(run("convert", tmp_path, tmp_path / "out"), "is a directory")
    assert not (tmp_path / "out").exists()


def test_convert_of_a_file_that_is_not_gguf_says_so(tmp_path):
    weights = tiny_model(tmp_path / "m") / "model.safetensors"
    result = run("convert", weights, tmp_path / "out")
    assert_clean_error(result, "is not a GGUF file")
    assert "download it again" not in result.stderr and not (tmp_path / "out").exists()


# ---- 5. a calibration cache of the wrong shape -------------------------------------------------

BAD_CACHES = ["[1, 2]", "garbage", '"text"', json.dumps({"machine|m": [1, 2]}),
              json.dumps({"machine|m": {"draft_step": 0.1, "verify": "fast"}}),
              json.dumps({"machine|m": {"draft_step": 0.1, "verify": [1.0], "extra": 1}})]


@pytest.mark.parametrize("text", BAD_CACHES)
def test_an_unusable_calibration_cache_is_measured_again_and_overwritten(text):
    from mlx_spec.policy import cached_calibration, calibrated_pairs, calibration_path

    path = calibration_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    assert calibrated_pairs() == []
    model = random_llama(vocab=64, dim=32, layers=1)
    costs = cached_calibration("machine|m", model, model, k_max=2)
    assert len(costs.verify) == 3
    assert json.loads(path.read_text())["machine|m"]["verify"] == costs.verify


@pytest.mark.parametrize("text", BAD_CACHES[:1] + BAD_CACHES[3:])
def test_doctor_ignores_an_unusable_calibration_cache(text):
    from mlx_spec.policy import calibration_key, calibration_path

    path = calibration_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text.replace("machine|m", calibration_key("org/big", "org/small", 1)))
    assert collect()["calibrated"] == []
    assert run("doctor").exit_code == 0


def test_generate_with_a_calibration_cache_that_is_a_list_recalibrates(stories_path):
    from mlx_spec.policy import calibration_path

    path = calibration_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("[1, 2]")
    result = run("generate", "Once", "--raw", "--target", stories_path, "--draft", stories_path,
                 "--max-tokens", 3)
    assert result.exit_code == 0, result.output
    assert isinstance(json.loads(path.read_text()), dict)


# ---- 6. models mlx-lm cannot load --------------------------------------------------------------

def test_an_unsupported_architecture_names_it_and_does_not_say_delete(stories_path, tmp_path):
    from mlx_spec.loading import load_model

    folder = tmp_path / "odd"
    shutil.copytree(stories_path, folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "model_type": "nosucharch"}))
    with pytest.raises(SpecError) as info:
        load_model(str(folder))
    assert "nosucharch" in info.value.message and "mlx-lm" in info.value.message
    assert "nosucharch" in info.value.hint and "delete" not in info.value.hint
    assert (folder / "model.safetensors").exists()


def test_missing_tokenizer_files_are_one_line_and_a_hint(stories_path, tmp_path):
    folder = tmp_path / "no-tokenizer"
    shutil.copytree(stories_path, folder)
    for file in folder.glob("tokenizer*"):
        file.unlink()
    result = run("generate", "Once", "--raw", "--target", folder, "--no-draft", "--max-tokens", 3)
    assert_clean_error(result, "tokenizer", "tokenizer.json")
    assert "delete" not in result.stderr


@pytest.mark.parametrize("tokenizer_class", ["LlamaTokenizer", "Qwen2Tokenizer"])
def test_a_tokenizer_config_without_vocabulary_files_is_refused_at_load(stories_path, tmp_path,
                                                                        tokenizer_class):
    """A slow tokenizer class named in tokenizer_config.json loads with only its special tokens
    when its vocabulary files are missing; every prompt would then encode to nothing."""
    folder = tmp_path / "stub-tokenizer"
    shutil.copytree(stories_path, folder)
    for file in folder.glob("tokenizer*"):
        file.unlink()
    (folder / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class":
                                                              tokenizer_class}))
    result = run("generate", "Once", "--raw", "--target", folder, "--no-draft", "--max-tokens", 3)
    assert_clean_error(result, "knows", "tokenizer.json")
    assert "prompt is empty" not in result.stderr
