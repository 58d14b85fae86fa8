"""Turn a model reference (local path, converted model, Hugging Face repo id) into a directory.

Order: an explicit local directory; the project's own models directory; the Hugging Face cache;
a download with `huggingface_hub` (progress bars). Offline, a missing model is one SpecError.
"""

from __future__ import annotations

import os
from pathlib import Path

from mlx_spec.errors import SpecError

# The files `mlx_lm.load` needs; everything else in a repo (GGUF, PyTorch bins) is skipped.
# Same list as mlx_lm.utils.DEFAULT_ALLOW_PATTERNS, kept here because importing mlx_lm.utils
# pulls in mlx and transformers, and resolution must stay cheap for `models list`.
ALLOW_PATTERNS = ["*.json", "model*.safetensors", "*.py", "tokenizer.model", "*.tiktoken",
                  "tiktoken.model", "*.txt", "*.jsonl", "*.jinja"]


def models_home() -> Path:
    """`$MLX_SPEC_HOME`, else `~/.cache/mlx-spec`: parts, GGUF files and converted models."""
    env = os.environ.get("MLX_SPEC_HOME")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "mlx-spec"


def converted_dir(ref: str) -> Path:
    """Where the project keeps its own (converted) copy of `ref`: `org/name` -> `org--name`."""
    return models_home() / "models" / ref.strip("/").replace("/", "--")


def hf_cache_dir() -> Path:
    """The Hugging Face hub cache, read from the environment at call time.

    huggingface_hub reads these variables once at import; tests and users may set them later.
    """
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    hf_home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", str(Path.home() / ".cache")), "huggingface")
    return Path(hf_home).expanduser() / "hub"


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def is_model_dir(path: Path) -> bool:
    """A directory `mlx_lm.load` can open: a config and at least one safetensors file."""
    return (path / "config.json").is_file() and any(path.glob("model*.safetensors"))


def looks_like_repo_id(ref: str) -> bool:
    parts = ref.split("/")
    return len(parts) == 2 and all(parts) and not ref.startswith((".", "~"))


def looks_like_path(ref: str) -> bool:
    """A reference written as a file system path (`/x`, `./x`, `../x`, `~/x`, `a/b/c`)."""
    return ref.startswith(("/", "./", "../", "~")) or ref in (".", "..") or (
        os.sep in ref and not looks_like_repo_id(ref))


def find_in_hf_cache(repo_id: str) -> Path | None:
    """The cached snapshot of `repo_id` (via `refs/main`), if it holds a complete model."""
    from huggingface_hub import snapshot_download

    try:
        path = Path(snapshot_download(repo_id, cache_dir=hf_cache_dir(), local_files_only=True,
                                      allow_patterns=ALLOW_PATTERNS))
    except Exception:  # any "not cached" flavour (LocalEntryNotFound, bad repo id, ...)
        return None
    return path if is_model_dir(path) else None


def missing_hint(ref: str) -> str:
    from mlx_spec.offline import offline_pair_hint

    return (f"run `mlx-spec models pull {ref}` on a machine with network access "
            f"(or copy the model into {converted_dir(ref)}); {offline_pair_hint()}")


def download(repo_id: str, progress: bool = True) -> Path:
    """Fetch an MLX-format repo into the HF cache; huggingface_hub draws the progress bars."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.utils import disable_progress_bars, enable_progress_bars

    if not progress:
        disable_progress_bars()
    try:
        path = Path(snapshot_download(repo_id, cache_dir=hf_cache_dir(),
                                      allow_patterns=ALLOW_PATTERNS))
    except Exception as e:  # network down, repo gone, gated repo: all one user-level error
        first_line = (str(e).strip().splitlines() or [""])[0][:200]
        raise SpecError(f"could not download model '{repo_id}': {type(e).__name__}: "
                        f"{first_line}", missing_hint(repo_id)) from e
    finally:
        if not progress:
            enable_progress_bars()
    if not is_model_dir(path):
        raise SpecError(f"'{repo_id}' downloaded but holds no MLX model (config.json + "
                        "model*.safetensors)", "pick an MLX-format repo, e.g. from mlx-community")
    return path


def find_local(ref: str) -> Path | None:
    """Steps 1-3 of resolution (directory, own models, HF cache): never touches the network."""
    local = Path(ref).expanduser()
    if local.exists():
        if not local.is_dir():
            raise SpecError(f"'{ref}' is a file, not a model directory",
                            "for a .gguf file run `mlx-spec convert FILE.gguf OUT` first")
        return local.resolve()
    own = converted_dir(ref)
    if is_model_dir(own):
        return own
    return find_in_hf_cache(ref) if looks_like_repo_id(ref) else None


def present_path(ref: str) -> Path | None:
    """Where `ref` is on this machine, or None; for listings, which must not fail on odd refs."""
    try:
        return find_local(ref)
    except SpecError:
        return None


def resolve_model(ref: str, progress: bool = True) -> Path:
    """The local directory of model `ref`, downloading it only as the last resort."""
    if not ref or not ref.strip():
        raise SpecError("empty model reference", "give a local directory or an org/name repo id")
    found = find_local(ref)
    if found is not None:
        return found
    if looks_like_path(ref):
        raise SpecError(f"model '{ref}' not found: no such folder", "check the path: a model "
                        "is a folder holding config.json and model*.safetensors")
    if not looks_like_repo_id(ref):
        raise SpecError(f"model '{ref}' not found: no such directory and not an org/name repo id",
                        f"give a directory, a Hugging Face repo id, or a name under "
                        f"{models_home() / 'models'}")
    if hub_offline():
        raise SpecError(f"model '{ref}' is not available locally and HF_HUB_OFFLINE is set",
                        missing_hint(ref))
    return download(ref, progress=progress)


def resolve_pair(name: str, progress: bool = True) -> tuple[Path, Path]:
    """(target dir, draft dir) of a pair from models.toml."""
    from mlx_spec.registry import load_registry

    spec = load_registry().get(name)
    return resolve_model(spec.target, progress), resolve_model(spec.draft, progress)
