"""GGUF import: a tiny llama GGUF written here converts into a model with the source's logits."""

from pathlib import Path

import mlx_spec  # noqa: F401  (loads OpenBLAS before mlx.core)

import mlx.core as mx
import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
from gguf import GGMLQuantizationType as Q  # noqa: E402
from gguf.quants import dequantize, quantize  # noqa: E402
from mlx.utils import tree_flatten, tree_unflatten  # noqa: E402
from mlx_lm import load  # noqa: E402
from mlx_lm.models import llama  # noqa: E402

from mlx_spec.errors import SpecError  # noqa: E402
from mlx_spec.gguf_import import convert_gguf, unpermute_qk  # noqa: E402

HEADS, KV_HEADS, HIDDEN, FFN, LAYERS = 4, 2, 64, 256, 2
MERGES = ["h e", "l l", "he ll", "hell o", "Ġ w", "o r", "Ġw or", "Ġwor l", "Ġworl d"]
SPECIALS = ["<|endoftext|>", "<|im_end|>"]
TEMPLATE = "{% for m in messages %}{{ m['content'] }}<|im_end|>{% endfor %}"
# GGUF storage type per HF weight suffix; ffn_down gets a K-quant (crafted blocks, see below).
TYPES = {"embed_tokens.weight": Q.F16, "lm_head.weight": Q.Q8_0, "q_proj.weight": Q.Q8_0,
         "k_proj.weight": Q.F16, "v_proj.weight": Q.Q4_0, "o_proj.weight": Q.F32,
         "gate_proj.weight": Q.Q8_0, "up_proj.weight": Q.Q5_0, "down_proj.weight": Q.Q4_K}


def byte_tokens() -> list[str]:
    """GPT-2's printable stand-ins for the 256 bytes, in byte order."""
    printable = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    extra = iter(range(256, 512))
    return [chr(b) if b in printable else chr(next(extra)) for b in range(256)]


def tokenizer_vocab() -> list[str]:
    tokens = byte_tokens()
    for merge in MERGES:
        tokens.append(merge.replace(" ", ""))
    return tokens + SPECIALS


def permute_qk(w: np.ndarray, n_heads: int) -> np.ndarray:
    """llama.cpp's converter layout (what we must undo)."""
    return w.reshape(n_heads, 2, w.shape[0] // n_heads // 2, *w.shape[1:]).swapaxes(1, 2) \
        .reshape(w.shape)


def q4k_blocks(rows: int, cols: int, rng) -> np.ndarray:
    """Valid Q4_K bytes (gguf.quants cannot quantize K-types): finite scales, random nibbles."""
    blocks = rng.integers(0, 256, size=(rows, cols // 256, 144), dtype=np.uint8)
    blocks[..., 0:2] = np.frombuffer(np.float16(0.01).tobytes(), np.uint8)
    blocks[..., 2:4] = np.frombuffer(np.float16(0.005).tobytes(), np.uint8)
    return blocks.reshape(rows, -1)


def gguf_name(hf: str) -> str:
    table = {"model.embed_tokens": "token_embd", "model.norm": "output_norm", "lm_head": "output",
             "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
             "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
             "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
             "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
    stem, kind = hf.rsplit(".", 1)
    if stem in table:
        return f"{table[stem]}.{kind}"
    layer, rest = stem.removeprefix("model.layers.").split(".", 1)
    return f"blk.{layer}.{table[rest]}.{kind}"


@pytest.fixture(scope="module")
def models_tiny_gguf(tmp_path_factory):
    """(gguf path, source model, token ids): weights already rounded through their GGUF type."""
    rng = np.random.default_rng(0)
    vocab = tokenizer_vocab()
    args = llama.ModelArgs(model_type="llama", hidden_size=HIDDEN, num_hidden_layers=LAYERS,
                           intermediate_size=FFN, num_attention_heads=HEADS,
                           num_key_value_heads=KV_HEADS, rms_norm_eps=1e-5,
                           vocab_size=len(vocab), rope_theta=10000.0,
                           tie_word_embeddings=False, max_position_embeddings=256)
    model = llama.Model(args)
    path = tmp_path_factory.mktemp("gguf") / "tiny-llama.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny llama")
    writer.add_block_count(LAYERS)
    writer.add_context_length(256)
    writer.add_embedding_length(HIDDEN)
    writer.add_feed_forward_length(FFN)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_freq_base(10000.0)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")
    writer.add_token_list(vocab)
    writer.add_token_types([1] * (len(vocab) - len(SPECIALS)) + [3] * len(SPECIALS))
    writer.add_token_merges(MERGES)
    writer.add_bos_token_id(vocab.index("<|endoftext|>"))
    writer.add_eos_token_id(vocab.index("<|im_end|>"))
    writer.add_add_bos_token(False)
    writer.add_chat_template(TEMPLATE)

    rounded = {}
    for name, w in tree_flatten(model.parameters()):
        w = np.array(w, dtype=np.float32)
        if w.ndim == 1:  # norms: F32, with some spread so they matter
            w = (1.0 + 0.1 * rng.standard_normal(w.shape)).astype(np.float32)
            raw, qtype = w, Q.F32
        else:
            qtype = next(t for suffix, t in TYPES.items() if name.endswith(suffix))
            if qtype == Q.Q4_K:
                raw = q4k_blocks(*w.shape, rng)
                w = dequantize(raw, qtype).reshape(w.shape)
            else:
                raw = quantize(w, qtype)
                w = dequantize(raw, qtype).reshape(w.shape)
        rounded[name] = mx.array(w)
        if ".q_proj." in name or ".k_proj." in name:
            heads = HEADS if ".q_proj." in name else KV_HEADS
            raw = permute_qk(raw, heads)  # row permutation commutes with row-wise quantization
        writer.add_tensor(gguf_name(name), raw, raw_dtype=qtype if raw.dtype == np.uint8 else None)
    model.update(tree_unflatten(list(rounded.items())))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    tokens = mx.array([[5, 72, 101, 108, 108, 111, 260, 33, 200, 7]])
    return path, model, tokens


def test_unpermute_qk_inverts_llama_cpp_permutation():
    w = np.arange(8 * 3 * 5, dtype=np.float32).reshape(24, 5)
    assert np.array_equal(unpermute_qk(permute_qk(w, 3), 3), w)


def test_converted_llama_gives_the_source_logits(models_tiny_gguf, tmp_path):
    path, source, tokens = models_tiny_gguf
    out = convert_gguf(path, tmp_path / "tiny", dtype="float32", progress=False)
    model, _ = load(str(out))
    expected, got = source(tokens), model(tokens)
    assert got.shape == expected.shape
    assert np.allclose(np.array(got), np.array(expected), atol=1e-4, rtol=1e-4)


def test_converted_tokenizer_round_trips_and_uses_merges(models_tiny_gguf, tmp_path):
    out = convert_gguf(models_tiny_gguf[0], tmp_path / "tiny", dtype="float32", progress=False)
    _, tok = load(str(out))
    vocab = tokenizer_vocab()
    text = "hello world, héllo!\n  tabs\tand ünïcode"
    assert tok.decode(tok.encode(text)) == text
    assert tok.encode("hello world") == [vocab.index("hello"), vocab.index("Ġworld")]
    assert tok.encode("<|im_end|>") == [vocab.index("<|im_end|>")]
    assert tok.eos_token_id == vocab.index("<|im_end|>")
    chat = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    assert chat == "hi<|im_end|>"


def test_bfloat16_output_is_close_to_source(models_tiny_gguf, tmp_path):
    path, source, tokens = models_tiny_gguf
    out = convert_gguf(path, tmp_path / "tiny", dtype="bfloat16", progress=False)
    model, _ = load(str(out))
    assert model.model.embed_tokens.weight.dtype == mx.bfloat16
    got = np.array(model(tokens).astype(mx.float32))
    assert np.allclose(got, np.array(source(tokens)), atol=0.1)


def test_truncated_gguf_is_a_spec_error_and_leaves_nothing(models_tiny_gguf, tmp_path):
    data = models_tiny_gguf[0].read_bytes()
    bad = tmp_path / "cut.gguf"
    bad.write_bytes(data[: len(data) * 2 // 3])
    out = tmp_path / "out" / "cut"
    with pytest.raises(SpecError, match="truncated|not a readable"):
        convert_gguf(bad, out, progress=False)
    assert not out.exists()
    assert not out.parent.exists() or list(out.parent.iterdir()) == []


def test_corrupt_gguf_is_a_spec_error(tmp_path):
    bad = tmp_path / "junk.gguf"
    bad.write_bytes(b"GGUF" + bytes(range(256)) * 4)
    with pytest.raises(SpecError) as info:
        convert_gguf(bad, tmp_path / "out", progress=False)
    assert info.value.hint
    assert not (tmp_path / "out").exists()


def test_unsupported_architecture_is_a_spec_error(tmp_path):
    path = tmp_path / "mamba.gguf"
    writer = gguf.GGUFWriter(str(path), "mamba")
    writer.add_tensor("token_embd.weight", np.zeros((4, 32), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(SpecError, match="architecture 'mamba'"):
        convert_gguf(path, tmp_path / "out", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mamba.gguf"]


def test_existing_output_directory_is_not_overwritten(models_tiny_gguf, tmp_path):
    (tmp_path / "taken").mkdir()
    with pytest.raises(SpecError, match="already exists"):
        convert_gguf(models_tiny_gguf[0], tmp_path / "taken", progress=False)


def test_overwrite_replaces_the_old_output_whole_and_leaves_no_scratch(models_tiny_gguf,
                                                                        tmp_path):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    convert_gguf(models_tiny_gguf[0], out, progress=False, overwrite=True)
    assert not (out / "stale.txt").exists() and (out / "config.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]


def test_overwrite_keeps_the_old_output_when_the_new_one_cannot_be_put_in(models_tiny_gguf,
                                                                          tmp_path, monkeypatch):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    real_rename = Path.rename

    def rename(self, target):  # the swap's second rename (new copy into place) fails
        if Path(target) == out and self.suffix == ".tmp":
            raise OSError(28, "No space left on device")
        return real_rename(self, target)

    monkeypatch.setattr(Path, "rename", rename)
    with pytest.raises(SpecError, match="cannot write"):
        convert_gguf(models_tiny_gguf[0], out, progress=False, overwrite=True)
    assert (out / "stale.txt").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]


STORIES = Path(__file__).resolve().parents[1].parent / "shared" / "models" / "stories260K"


@pytest.mark.skipif(not STORIES.is_dir(), reason="../shared/models/stories260K is absent")
def test_real_llama_with_sentencepiece_survives_a_gguf_round_trip(tmp_path):
    """stories260K written as llama.cpp would (permuted q/k, SPM vocab with scores) converts
    back into the same tokenizer and the same story."""
    spm = pytest.importorskip("sentencepiece")
    from mlx_lm import generate

    source, source_tok = load(str(STORIES))
    sp = spm.SentencePieceProcessor(model_file=str(STORIES / "tokenizer.model"))
    n = sp.vocab_size()
    types = [3 if sp.is_control(i) else 2 if sp.is_unknown(i) else 6 if sp.is_byte(i) else 1
             for i in range(n)]
    path = tmp_path / "stories.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(5)
    writer.add_context_length(512)
    writer.add_embedding_length(64)
    writer.add_feed_forward_length(172)
    writer.add_head_count(8)
    writer.add_head_count_kv(4)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_freq_base(10000.0)
    writer.add_tokenizer_model("llama")
    writer.add_token_list([sp.id_to_piece(i) for i in range(n)])
    writer.add_token_scores([sp.get_score(i) for i in range(n)])
    writer.add_token_types(types)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_add_bos_token(True)
    for name, w in tree_flatten(source.parameters()):
        w = np.array(w)
        if ".q_proj." in name or ".k_proj." in name:
            w = permute_qk(w, 8 if ".q_proj." in name else 4)
        writer.add_tensor(gguf_name(name), w)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()

    model, tok = load(str(convert_gguf(path, tmp_path / "out", progress=False)))
    for text in ("Once upon a time", "Lily saw a big dog.\nIt was   happy!", "zebra qu'il ü"):
        assert tok.encode(text) == source_tok.encode(text), text
        assert tok.decode(tok.encode(text)) == source_tok.decode(source_tok.encode(text))
    story = generate(model, tok, "Once upon a time", max_tokens=24)
    assert story == generate(source, source_tok, "Once upon a time", max_tokens=24)
    assert story.startswith(", there was a little girl named Lily.")
