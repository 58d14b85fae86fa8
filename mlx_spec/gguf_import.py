"""Convert a GGUF file (llama.cpp, LM Studio, Ollama) into a directory `mlx_lm.load` accepts.

Dequantizes every tensor type the `gguf` package knows (K-quants included), undoes llama.cpp's
q/k row permutation for `llama`, rebuilds `tokenizer.json` from the GGUF metadata, and writes
to a temp directory beside the output that is renamed only when everything succeeded.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from mlx_spec.errors import SpecError

SUPPORTED_ARCHS = ("llama", "qwen2")
DTYPES = ("float32", "float16", "bfloat16", "q4", "q8")
RECORD = "mlx_spec_conversion.json"  # how a directory was made; `pull` and `info` read it
QUANT_GROUP = 64

# GGUF tensor name -> Hugging Face name; per block `blk.N.` -> `model.layers.N.`.
TOP_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
BLOCK_NAMES = {
    "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}


def hf_name(name: str) -> str | None:
    """`blk.3.attn_q.weight` -> `model.layers.3.self_attn.q_proj.weight`; None if unknown."""
    stem, _, kind = name.rpartition(".")
    if stem in TOP_NAMES:
        return f"{TOP_NAMES[stem]}.{kind}"
    parts = stem.split(".")
    if len(parts) == 3 and parts[0] == "blk" and parts[2] in BLOCK_NAMES:
        return f"model.layers.{parts[1]}.{BLOCK_NAMES[parts[2]]}.{kind}"
    return None


def unpermute_qk(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's per-head interleave of q/k rows (its RoPE pairs adjacent dims)."""
    return w.reshape(n_heads, w.shape[0] // n_heads // 2, 2, *w.shape[1:]).swapaxes(1, 2) \
        .reshape(w.shape)


def open_gguf(path: Path):
    """A GGUFReader on `path`, with truncation and corruption turned into SpecError."""
    import gguf

    if path.is_dir():
        raise SpecError(f"{path} is a directory, not a GGUF file",
                        "give the .gguf file itself (a model folder needs no conversion)")
    if not path.is_file():
        raise SpecError(f"GGUF file {path} not found", "check the path")
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise SpecError(f"cannot read {path}: {e.strerror or e}", "check the file's "
                        "permissions") from e
    if not magic:
        raise SpecError(f"{path.name} is empty", "the download failed: download it again")
    if magic != b"GGUF":
        raise SpecError(f"{path.name} is not a GGUF file (it does not start with 'GGUF')",
                        "give a .gguf file from LM Studio, Ollama or llama.cpp; a safetensors "
                        "model folder needs no conversion")
    try:
        reader = gguf.GGUFReader(str(path), "r")
    except Exception as e:  # the reader raises ValueError/struct errors/IndexError on bad bytes
        raise SpecError(f"{path.name} is not a readable GGUF file ({type(e).__name__}: {e})",
                        "the file is corrupt or truncated: download it again") from e
    size = path.stat().st_size
    for t in reader.tensors:
        if t.data_offset + t.n_bytes > size or t.data.nbytes != t.n_bytes:
            raise SpecError(f"{path.name} is truncated: tensor {t.name} ends past the file end",
                            "the download was cut short: download the file again")
    return reader


def field(reader, key: str, default=None):
    f = reader.fields.get(key)
    return default if f is None else f.contents()


def _llama3_rope_factors(base: float, dim: int, factor: float, low: float, high: float,
                         old_ctx: int) -> np.ndarray:
    """The per-frequency divisors llama.cpp stores as `rope_freqs` for Llama 3.1+ scaling."""
    freqs = 1.0 / base ** (np.arange(0, dim, 2, dtype=np.float64) / dim)
    wavelen = 2 * np.pi / freqs
    smooth = (old_ctx / wavelen - low) / (high - low)
    out = 1.0 / ((1 - smooth) / factor + smooth)
    out = np.where(wavelen < old_ctx / high, 1.0, out)
    return np.where(wavelen > old_ctx / low, factor, out)


def rope_scaling(reader, arch: str, base: float, head_dim: int) -> dict | None:
    """HF `rope_scaling` from GGUF metadata or, for Llama 3.x, from the `rope_freqs` tensor."""
    kind = field(reader, f"{arch}.rope.scaling.type")
    if kind == "linear":
        return {"type": "linear", "factor": float(field(reader, f"{arch}.rope.scaling.factor"))}
    if kind not in (None, "none"):
        raise SpecError(f"RoPE scaling '{kind}' in GGUF is not supported", "use a model without it")
    freqs = next((t for t in reader.tensors if t.name == "rope_freqs.weight"), None)
    if freqs is None:
        return None
    stored = np.asarray(freqs.data, dtype=np.float64).ravel()
    # The published Llama 3.1 (factor 8) and 3.2 (factor 32) settings; we match, not guess.
    for factor in (8.0, 32.0, 16.0, 4.0):
        ref = _llama3_rope_factors(base, head_dim, factor, 1.0, 4.0, 8192)
        if ref.shape == stored.shape and np.allclose(ref, stored, rtol=1e-4):
            return {"rope_type": "llama3", "factor": factor, "low_freq_factor": 1.0,
                    "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    raise SpecError("the GGUF's rope_freqs tensor matches no known Llama 3 RoPE scaling",
                    "convert the original Hugging Face checkpoint with mlx_lm.convert instead")


def model_config(reader, arch: str, vocab_size: int, tied: bool) -> dict:
    def need(key):
        value = field(reader, f"{arch}.{key}")
        if value is None:
            raise SpecError(f"GGUF metadata lacks {arch}.{key}", "the file is incomplete or not "
                            "a language model; re-export it with a current llama.cpp")
        return value

    n_heads = int(need("attention.head_count"))
    n_kv = int(field(reader, f"{arch}.attention.head_count_kv", n_heads))
    hidden = int(need("embedding_length"))
    head_dim = int(field(reader, f"{arch}.attention.key_length", hidden // n_heads))
    base = float(field(reader, f"{arch}.rope.freq_base", 10000.0))
    config = {
        "architectures": ["Qwen2ForCausalLM" if arch == "qwen2" else "LlamaForCausalLM"],
        "model_type": arch,
        "hidden_size": hidden,
        "num_hidden_layers": int(need("block_count")),
        "intermediate_size": int(need("feed_forward_length")),
        "num_attention_heads": n_heads,
        "num_key_value_heads": n_kv,
        "rms_norm_eps": float(need("attention.layer_norm_rms_epsilon")),
        "vocab_size": vocab_size,
        "max_position_embeddings": int(field(reader, f"{arch}.context_length", 4096)),
        "rope_theta": base,
        "tie_word_embeddings": tied,
    }
    if arch == "llama":
        config.update(head_dim=head_dim, attention_bias=any(
            t.name.endswith("attn_q.bias") for t in reader.tensors), mlp_bias=False)
    scaling = rope_scaling(reader, arch, base, head_dim)
    if scaling:
        config["rope_scaling"] = scaling
    for key, meta in (("bos_token_id", "bos_token_id"), ("eos_token_id", "eos_token_id")):
        value = field(reader, f"tokenizer.ggml.{meta}")
        if value is not None:
            config[key] = int(value)
    return config


# ---- weights -------------------------------------------------------------------------------

def _dequantized(t, config: dict, arch: str) -> np.ndarray:
    from gguf.quants import dequantize

    shape = tuple(int(d) for d in reversed(t.shape))  # GGUF lists dims innermost-first
    try:
        w = dequantize(t.data, t.tensor_type).reshape(shape)
    except NotImplementedError as e:
        raise SpecError(f"tensor {t.name} has type {t.tensor_type.name}, which the gguf package "
                        "cannot dequantize", "re-export the model with a common type "
                        "(Q4_K_M, Q8_0, F16)") from e
    if arch == "llama" and (".attn_q." in t.name or ".attn_k." in t.name):
        heads = config["num_attention_heads" if ".attn_q." in t.name else "num_key_value_heads"]
        w = unpermute_qk(w, heads)
    return np.ascontiguousarray(w, dtype=np.float32)


def _encode(name: str, w: np.ndarray, dtype: str) -> list[tuple[str, str, list, bytes]]:
    """(name, safetensors dtype, shape, bytes) of one tensor in the output dtype."""
    import mlx.core as mx

    if dtype == "float32":
        return [(name, "F32", list(w.shape), w.tobytes())]
    if dtype == "float16":
        return [(name, "F16", list(w.shape), w.astype(np.float16).tobytes())]
    x = mx.array(w)
    if dtype in ("q4", "q8") and _quantizable(name, w.shape):
        q, scales, biases = mx.quantize(x, group_size=QUANT_GROUP, bits=int(dtype[1:]))
        base = name.rsplit(".", 1)[0]
        return [(name, "U32", list(q.shape), np.array(q).tobytes()),
                *_encode(base + ".scales", np.array(scales.astype(mx.float32)), "bfloat16"),
                *_encode(base + ".biases", np.array(biases.astype(mx.float32)), "bfloat16")]
    bf16 = np.array(x.astype(mx.bfloat16).view(mx.uint16))
    return [(name, "BF16", list(w.shape), bf16.tobytes())]


def _quantizable(name: str, shape) -> bool:
    return name.endswith(".weight") and len(shape) == 2 and shape[-1] % QUANT_GROUP == 0


def _planned(name: str, shape: tuple, dtype: str) -> list[tuple[str, str, list, int]]:
    """The same entries as `_encode`, sizes only: the header is written before any data."""
    if dtype in ("q4", "q8") and _quantizable(name, shape):
        bits, base = int(dtype[1:]), name.rsplit(".", 1)[0]
        rows, cols = shape
        groups = [rows, cols // QUANT_GROUP]
        return [(name, "U32", [rows, cols * bits // 32], rows * cols * bits // 8),
                (base + ".scales", "BF16", groups, rows * groups[1] * 2),
                (base + ".biases", "BF16", groups, rows * groups[1] * 2)]
    code, size = {"float32": ("F32", 4), "float16": ("F16", 2)}.get(dtype, ("BF16", 2))
    return [(name, code, list(shape), int(np.prod(shape)) * size)]


def write_weights(reader, names: dict, config: dict, arch: str, dtype: str, out: Path,
                  progress) -> int:
    """Stream every tensor into one safetensors file, holding one tensor in memory at a time."""
    plan = []
    for t in reader.tensors:
        if t.name in names:
            shape = tuple(int(d) for d in reversed(t.shape))
            plan += _planned(names[t.name], shape, dtype)
    header, offset = {}, 0
    for name, code, shape, size in plan:
        header[name] = {"dtype": code, "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    header["__metadata__"] = {"format": "mlx"}
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # safetensors wants the data 8-byte aligned
    task = progress.add_task("convert tensors", total=len(names))
    with open(out, "wb") as f:
        f.write(len(blob).to_bytes(8, "little"))
        f.write(blob)
        for t in reader.tensors:
            if t.name not in names:
                continue
            for name, code, shape, data in _encode(names[t.name], _dequantized(t, config, arch),
                                                   dtype):
                assert header[name]["dtype"] == code and header[name]["shape"] == shape, name
                f.write(data)
            progress.advance(task)
    return offset


# ---- tokenizer -----------------------------------------------------------------------------

# Pre-tokenizer split patterns by `tokenizer.ggml.pre` (the published regexes of each family).
_QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"
                r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_LLAMA3_SPLIT = _QWEN2_SPLIT.replace(r"\p{N}|", r"\p{N}{1,3}|", 1)
SPLIT_PATTERNS = {"qwen2": _QWEN2_SPLIT, "llama-bpe": _LLAMA3_SPLIT, "llama3": _LLAMA3_SPLIT,
                  "smaug-bpe": _LLAMA3_SPLIT}
CONTROL, USER_DEFINED, BYTE = 3, 4, 6  # llama.cpp token types


def _bpe_pipeline(pre: str | None) -> dict:
    """Normalizer, pre-tokenizer, decoder of a byte-level (gpt2-style) BPE tokenizer."""
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False,
                  "use_regex": pre not in SPLIT_PATTERNS}
    pre_tok = byte_level
    if pre in SPLIT_PATTERNS:
        split = {"type": "Split", "pattern": {"Regex": SPLIT_PATTERNS[pre]},
                 "behavior": "Isolated", "invert": False}
        pre_tok = {"type": "Sequence", "pretokenizers": [split, byte_level]}
    return {"normalizer": {"type": "NFC"} if pre == "qwen2" else None,
            "pre_tokenizer": pre_tok,
            "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False,
                        "use_regex": False}}


def _spm_merges(tokens: list[str], scores, types) -> list[list[str]]:
    """SentencePiece-BPE GGUFs carry scores, not merges: rebuild merges, best-scored first."""
    index = {t: i for i, t in enumerate(tokens)}
    merges = []
    for i, tok in enumerate(tokens):
        if types[i] != 1 or len(tok) < 2:
            continue
        for cut in range(1, len(tok)):
            left, right = tok[:cut], tok[cut:]
            if left in index and right in index:
                merges.append((-scores[i], index[left], index[right], [left, right]))
    return [m[3] for m in sorted(merges)]


def _spm_pipeline() -> dict:
    return {"normalizer": {"type": "Sequence", "normalizers": [
                {"type": "Prepend", "prepend": "\u2581"},
                {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"}]},
            "pre_tokenizer": None,
            "decoder": {"type": "Sequence", "decoders": [
                {"type": "Replace", "pattern": {"String": "\u2581"}, "content": " "},
                {"type": "ByteFallback"}, {"type": "Fuse"},
                {"type": "Strip", "content": " ", "start": 1, "stop": 0}]}}


def build_tokenizer(reader) -> tuple[dict, dict]:
    """(tokenizer.json, tokenizer_config.json) contents from the GGUF's tokenizer metadata."""
    kind = field(reader, "tokenizer.ggml.model")
    tokens = field(reader, "tokenizer.ggml.tokens")
    if not tokens:
        raise SpecError("GGUF has no tokenizer (tokenizer.ggml.tokens)",
                        "use a GGUF exported with its tokenizer")
    types = field(reader, "tokenizer.ggml.token_type") or [1] * len(tokens)
    vocab = {}
    for i, tok in enumerate(tokens):
        vocab.setdefault(tok, i)  # padding entries may repeat; the first id wins
    if kind == "gpt2":
        merges = [m.split(" ", 1) for m in field(reader, "tokenizer.ggml.merges") or []]
        pipeline = _bpe_pipeline(field(reader, "tokenizer.ggml.pre"))
        byte_fallback, unk = False, None
    elif kind == "llama":
        merges = _spm_merges(tokens, field(reader, "tokenizer.ggml.scores"), types)
        pipeline = _spm_pipeline()
        byte_fallback = True
        unk_id = field(reader, "tokenizer.ggml.unknown_token_id")
        unk = tokens[unk_id] if unk_id is not None else None
    else:
        raise SpecError(f"GGUF tokenizer model '{kind}' is not supported",
                        "supported: gpt2 (byte-level BPE) and llama (SentencePiece BPE)")

    def token_at(key):
        idx = field(reader, f"tokenizer.ggml.{key}_token_id")
        return tokens[idx] if idx is not None and 0 <= idx < len(tokens) else None

    bos, eos = token_at("bos"), token_at("eos")
    add_bos = bool(field(reader, "tokenizer.ggml.add_bos_token", kind == "llama"))
    added = [{"id": i, "content": tokens[i], "single_word": False, "lstrip": False,
              "rstrip": False, "normalized": False, "special": types[i] == CONTROL}
             for i in range(len(tokens)) if types[i] in (CONTROL, USER_DEFINED)]
    post = None
    if add_bos and bos is not None:
        bos_id = vocab[bos]
        post = {"type": "TemplateProcessing",
                "single": [{"SpecialToken": {"id": bos, "type_id": 0}},
                           {"Sequence": {"id": "A", "type_id": 0}}],
                "pair": [{"SpecialToken": {"id": bos, "type_id": 0}},
                         {"Sequence": {"id": "A", "type_id": 0}},
                         {"Sequence": {"id": "B", "type_id": 1}}],
                "special_tokens": {bos: {"id": bos, "ids": [bos_id], "tokens": [bos]}}}
    tokenizer_json = {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
        **{k: pipeline[k] for k in ("normalizer", "pre_tokenizer")},
        "post_processor": post, "decoder": pipeline["decoder"],
        "model": {"type": "BPE", "dropout": None, "unk_token": unk,
                  "continuing_subword_prefix": None, "end_of_word_suffix": None,
                  "fuse_unk": byte_fallback, "byte_fallback": byte_fallback,
                  "ignore_merges": False, "vocab": vocab, "merges": merges},
    }
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": False,
        "add_bos_token": add_bos, "add_eos_token": False,
        "model_max_length": int(field(reader, f"{field(reader, 'general.architecture')}"
                                             ".context_length", 4096)),
    }
    for key, value in (("bos_token", bos), ("eos_token", eos), ("unk_token", unk),
                       ("pad_token", token_at("padding"))):
        if value is not None:
            tokenizer_config[key] = value
    template = field(reader, "tokenizer.chat_template")
    if template:
        tokenizer_config["chat_template"] = template
    return tokenizer_json, tokenizer_config


# ---- the whole conversion ------------------------------------------------------------------

def read_conversion_record(model_dir: Path) -> dict | None:
    try:
        return json.loads((Path(model_dir) / RECORD).read_text())
    except (OSError, ValueError):
        return None


def _tensor_names(reader, arch: str) -> dict[str, str]:
    names, unknown = {}, []
    for t in reader.tensors:
        if t.name == "rope_freqs.weight":
            continue  # folded into config's rope_scaling
        mapped = hf_name(t.name)
        (unknown.append(t.name) if mapped is None else names.__setitem__(t.name, mapped))
    if unknown:
        raise SpecError(f"GGUF tensors of architecture '{arch}' not understood: "
                        f"{', '.join(unknown[:5])}", "this converter handles plain "
                        f"{'/'.join(SUPPORTED_ARCHS)} transformer checkpoints")
    if "token_embd.weight" not in names:
        raise SpecError("GGUF has no token_embd.weight tensor", "the file is not a language model")
    return names


def _swap_in(new: Path, out_dir: Path) -> None:
    """Put the complete conversion `new` at `out_dir`. An existing `out_dir` (overwrite=True)
    is moved aside first and removed only once the new one is in place, so a failed rename
    leaves it where it was."""
    if not out_dir.exists():
        new.rename(out_dir)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".old", dir=out_dir.parent))
    old.rmdir()
    out_dir.rename(old)
    try:
        new.rename(out_dir)
    except OSError:
        old.rename(out_dir)
        raise
    shutil.rmtree(old, ignore_errors=True)


def convert_gguf(gguf_path, out_dir, dtype: str | None = None, progress: bool = True,
                 overwrite: bool = False) -> Path:
    """Convert `gguf_path` into model directory `out_dir`; returns `out_dir`.

    `dtype`: float32 | float16 | bfloat16 | q4 | q8 (MLX quantization); default: float32 on the
    CPU backend, bfloat16 elsewhere. `out_dir` appears only when the conversion succeeded.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from mlx_spec.platform import default_dtype

    gguf_path, out_dir = Path(gguf_path).expanduser(), Path(out_dir).expanduser()
    dtype = dtype or default_dtype()
    if dtype not in DTYPES:
        raise SpecError(f"unknown dtype '{dtype}'", f"choose one of {', '.join(DTYPES)}")
    if out_dir.exists() and not overwrite:
        raise SpecError(f"output directory {out_dir} already exists",
                        "remove it or choose another output path")
    start = time.perf_counter()
    reader = open_gguf(gguf_path)
    arch = field(reader, "general.architecture")
    if arch not in SUPPORTED_ARCHS:
        raise SpecError(f"GGUF architecture '{arch}' is not supported",
                        f"supported: {', '.join(SUPPORTED_ARCHS)}")
    names = _tensor_names(reader, arch)
    embed = next(t for t in reader.tensors if t.name == "token_embd.weight")
    config = model_config(reader, arch, vocab_size=int(embed.shape[1]),
                          tied="output.weight" not in names)
    if dtype in ("q4", "q8"):
        config["quantization"] = {"group_size": QUANT_GROUP, "bits": int(dtype[1:])}
    else:
        config["torch_dtype"] = dtype

    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
        tmp.chmod(0o755)  # mkdtemp makes it owner-only; a model directory is ordinary data
    except OSError as e:
        raise SpecError(f"cannot create {out_dir}: {e.strerror or e}",
                        "choose an output path in a folder you can write to") from e
    try:
        tokenizer_json, tokenizer_config = build_tokenizer(reader)
        (tmp / "tokenizer.json").write_text(json.dumps(tokenizer_json, ensure_ascii=False))
        (tmp / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2))
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
        with Progress("[progress.description]{task.description}", BarColumn(),
                      MofNCompleteColumn(), TimeElapsedColumn(), disable=not progress) as bar:
            nbytes = write_weights(reader, names, config, arch, dtype,
                                   tmp / "model.safetensors", bar)
        record = {"gguf": gguf_path.name, "gguf_bytes": gguf_path.stat().st_size,
                  "name": field(reader, "general.name"), "architecture": arch, "dtype": dtype,
                  "file_type": field(reader, "general.file_type"), "weight_bytes": nbytes,
                  "seconds": round(time.perf_counter() - start, 1)}
        (tmp / RECORD).write_text(json.dumps(record, indent=2))
        _swap_in(tmp, out_dir)
    except OSError as e:  # disk full, permissions changed underway
        shutil.rmtree(tmp, ignore_errors=True)
        raise SpecError(f"cannot write {out_dir}: {e.strerror or e}",
                        "check free space and permissions, or choose another output path") from e
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir
