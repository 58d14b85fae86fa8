"""models.toml: the shipped file is valid, and a bad entry is reported by pair and field."""

import pytest

from mlx_spec.errors import SpecError
from mlx_spec.registry import load_registry

GOOD = '''
default = "a"
[pairs.a]
target = "org/big"
draft = "org/small"
memory_gb = 6
good_for = ["chat"]
k = 4
description = "a pair"
'''


def write(tmp_path, text):
    path = tmp_path / "models.toml"
    path.write_text(text)
    return path


def test_shipped_models_toml_is_valid_and_covers_the_required_pairs():
    reg = load_registry()
    targets = {p.target for p in reg.pairs.values()}
    for needle in ("Qwen2.5-7B-Instruct", "Qwen2.5-14B-Instruct", "Qwen2.5-32B-Instruct",
                   "Qwen2.5-Coder-7B", "Qwen2.5-Coder-14B", "Qwen2.5-Coder-32B",
                   "Llama-3.1-8B", "Llama-3.3-70B", "Qwen3", "Qwen2.5-Coder-1.5B"):
        assert any(needle in t for t in targets), needle
    assert reg.get().memory_gb <= 10  # the default must fit a 16 GB MacBook
    assert [p.name for p in reg.pairs.values() if p.source == "pypi-gguf"] == \
        ["qwen2.5-coder-1.5b"]


def test_models_env_variable_points_at_another_file(tmp_path, monkeypatch):
    monkeypatch.setenv("MLX_SPEC_MODELS", str(write(tmp_path, GOOD)))
    assert load_registry().names == ["a"]


def test_unknown_pair_lists_known_names(tmp_path):
    reg = load_registry(write(tmp_path, GOOD))
    with pytest.raises(SpecError, match="unknown pair 'zzz'") as info:
        reg.get("zzz")
    assert "a" in info.value.hint


@pytest.mark.parametrize("old, new, field", [
    ("k = 4", "k = 0", "k"),
    ("k = 4", 'k = "four"', "k"),
    ('good_for = ["chat"]', 'good_for = ["chitchat"]', "good_for"),
    ('draft = "org/small"', 'draft = "small"', "draft"),
    ("memory_gb = 6", "memory_gb = -1", "memory_gb"),
    ('description = "a pair"', 'description = "a pair"\nsource = "ftp"', "source"),
])
def test_bad_field_is_reported_with_pair_and_field(tmp_path, old, new, field):
    with pytest.raises(SpecError, match=f"pair 'a': field '{field}'"):
        load_registry(write(tmp_path, GOOD.replace(old, new)))


def test_missing_field_is_reported(tmp_path):
    with pytest.raises(SpecError, match="pair 'a': missing field 'k'"):
        load_registry(write(tmp_path, GOOD.replace("k = 4\n", "")))


def test_unknown_field_is_reported(tmp_path):
    with pytest.raises(SpecError, match="pair 'a': unknown field 'kk'"):
        load_registry(write(tmp_path, GOOD + "kk = 3\n"))


def test_default_must_name_a_pair(tmp_path):
    with pytest.raises(SpecError, match="default = 'b'"):
        load_registry(write(tmp_path, GOOD.replace('default = "a"', 'default = "b"')))


def test_invalid_toml_is_a_spec_error(tmp_path):
    with pytest.raises(SpecError, match="not valid TOML"):
        load_registry(write(tmp_path, GOOD + "[[["))
