"""Load one model (target or draft) from any reference, in the dtype that is fast here.

On the CPU backend float32 is the BLAS path (../shared/docs/platform.md): half-precision weights are cast
and quantized ones dequantized. On Metal/CUDA the checkpoint's dtype or quantization is kept.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from mlx_spec.errors import SpecError
from mlx_spec.resolve import is_model_dir, resolve_model

FLOAT_DTYPES = ("float32", "float16", "bfloat16")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "vocab.json",
                   "tiktoken.model")
TOKENIZER_HINT = ("the folder needs the model's tokenizer files (tokenizer.json, or tokenizer.model "
                  "with tokenizer_config.json): copy them from where the model came from")


@dataclass
class LoadedModel:
    model: object  # mlx.nn.Module
    tokenizer: object  # mlx_lm.tokenizer_utils.TokenizerWrapper
    path: Path
    name: str
    dtype: str  # of the floating weights after loading; "quantized" if left quantized
    nbytes: int  # bytes of all weights, what one decode step streams from memory


def _weights(model):
    from mlx.utils import tree_flatten

    return [x for _, x in tree_flatten(model.parameters())]


def is_quantized(model) -> bool:
    import mlx.nn as nn

    return any(isinstance(m, (nn.QuantizedLinear, nn.QuantizedEmbedding))
               for _, m in model.named_modules())


def cast_model(model, dtype: str):
    """Dequantize quantized layers, then cast every floating weight to `dtype`."""
    import mlx.core as mx
    from mlx.utils import tree_flatten, tree_unflatten
    from mlx_lm.utils import dequantize_model

    if is_quantized(model):
        model = dequantize_model(model)
    target = getattr(mx, dtype)
    # Only arrays that change: a no-op astype still copies, doubling peak memory for nothing.
    changed = [(k, x.astype(target)) for k, x in tree_flatten(model.parameters())
               if mx.issubdtype(x.dtype, mx.floating) and x.dtype != target]
    if changed:
        model.update(tree_unflatten(changed))
        mx.eval(model.parameters())
    return model


def quiet_length_warning(tokenizer) -> None:
    """Lift the Hugging Face tokenizer's own length limit: mlx-spec checks prompt plus
    max_tokens against the model's context itself (one error line and a hint), and the
    tokenizer's warning about inputs longer than its limit would only add a stray line."""
    inner = getattr(tokenizer, "_tokenizer", tokenizer)
    if getattr(inner, "model_max_length", None) is not None:
        inner.model_max_length = 1 << 62


def _raised_in(err: BaseException, function: str) -> bool:
    tb = err.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_name == function:
            return True
        tb = tb.tb_next
    return False


def load_error(path: Path, err: Exception) -> SpecError:
    """One line and a hint for what mlx_lm.load raised: an architecture mlx-lm lacks, a
    tokenizer it cannot build, or files that are incomplete or corrupt."""
    first = (str(err).strip().splitlines() or [""])[0].strip().rstrip(":")[:200]
    unsupported = re.match(r"Model type (\S+?)\.? not supported", first)
    if unsupported:
        from mlx_lm import __version__ as mlx_lm_version

        arch = unsupported.group(1)
        return SpecError(f"could not load model from {path}: mlx-lm {mlx_lm_version} does not "
                         f"support the '{arch}' architecture",
                         f"upgrade mlx-lm (pip install -U mlx-lm) if a newer one supports "
                         f"'{arch}', or choose a model of an architecture mlx-lm supports "
                         "(llama, qwen2, mistral, ...)")
    if _raised_in(err, "load_tokenizer"):
        if not any((path / name).exists() for name in TOKENIZER_FILES):
            first = f"no tokenizer files ({', '.join(TOKENIZER_FILES[:2])})"
        else:
            first = f"{type(err).__name__}: {first}"
        return SpecError(f"could not load the tokenizer of {path}: {first}",
                         TOKENIZER_HINT)
    return SpecError(f"could not load model from {path}: {type(err).__name__}: {first}",
                     "the files may be incomplete or corrupt: `mlx-spec models info PATH` "
                     "checks them; fetch the model again (`mlx-spec models pull`) if so")


def check_vocabulary(path: Path, model, tokenizer) -> None:
    """Refuse a tokenizer that knows under half the model's vocabulary: a tokenizer_config.json
    naming a slow tokenizer class whose vocabulary files are missing loads with only its
    special tokens, and every prompt would then encode to nothing."""
    inner = getattr(tokenizer, "_tokenizer", tokenizer)
    rows = getattr(getattr(model, "args", None), "vocab_size", None)
    try:
        known = len(inner)
    except TypeError:
        return
    if isinstance(rows, int) and known < rows / 2:
        raise SpecError(f"the tokenizer of {path} knows {known} tokens, the model {rows}: its "
                        "vocabulary files are missing or belong to another model",
                        TOKENIZER_HINT)


def load_model(ref: str, dtype: str | None = None) -> LoadedModel:
    """Resolve `ref` (directory, converted name, repo id) and load it with mlx_lm.

    `dtype` None: float32 on the CPU backend, the checkpoint's own dtype elsewhere.
    """
    import mlx.core as mx
    from mlx_lm import load

    from mlx_spec.platform import backend

    if dtype is not None and dtype not in FLOAT_DTYPES:
        raise SpecError(f"unknown dtype '{dtype}'", f"choose one of {', '.join(FLOAT_DTYPES)}")
    path = resolve_model(ref)
    if not is_model_dir(path):
        raise SpecError(f"{path} is not a model directory (needs config.json and "
                        "model*.safetensors)", "point at an MLX/Hugging Face model folder, or "
                        "convert a GGUF file with `mlx-spec convert`")
    try:
        model, tokenizer = load(str(path))
    except Exception as e:  # unsupported model_type, bad safetensors, broken tokenizer files
        raise load_error(path, e) from e
    check_vocabulary(path, model, tokenizer)
    quiet_length_warning(tokenizer)
    if dtype is None and backend() == "cpu":
        dtype = "float32"  # quantized and half matmuls are slow on the CPU backend
    if dtype is not None:
        model = cast_model(model, dtype)
    weights = _weights(model)
    floats = [x.dtype for x in weights if mx.issubdtype(x.dtype, mx.floating)]
    if is_quantized(model):
        loaded = "quantized"
    else:
        loaded = str(floats[0]).removeprefix("mlx.core.") if floats else "unknown"
    return LoadedModel(model=model, tokenizer=tokenizer, path=path, name=ref, dtype=loaded,
                       nbytes=sum(x.nbytes for x in weights))
