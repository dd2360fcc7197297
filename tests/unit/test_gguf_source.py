"""GGUF source on tiny synthetic files written with `gguf.GGUFWriter` (fast; no real weights).

The files mimic llama.cpp's convert_hf_to_gguf: HF weights with Q/K rows permuted for llama.cpp's
interleaved RoPE, a byte-level BPE vocabulary with merges, control and user-defined tokens.
"""

from __future__ import annotations

import math

import gguf
import numpy as np
import pytest
import torch

from mobilellm_export.errors import UserError
from mobilellm_export.model import Transformer
from mobilellm_export.checkpoints.gguf import load_gguf

N_LAYERS, DIM, N_HEADS, N_KV, HEAD_DIM, HIDDEN = 2, 32, 4, 2, 8, 48
CONTROL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
USER = "<tool>"
MERGES = ["Ġ t", "h e", "t he", "Ġt he", "i s", "Ġ is", "1 2"]  # "1 2" is shadowed by per-digit pre-tokenization
TEMPLATE = "{% for m in messages %}<|im_start|>{{ m['content'] }}<|im_end|>{% endfor %}"


def _byte_chars() -> list[str]:
    """GPT-2 bytes_to_unicode table, in byte order (the first 256 entries of a byte-level vocab)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for _, c in sorted(zip(bs, cs))]


def _vocab() -> tuple[list[str], list[int]]:
    tokens = CONTROL + _byte_chars()
    for m in MERGES:
        tokens.append(m.replace(" ", ""))
    tokens.append(USER)
    types = [3] * len(CONTROL) + [1] * (len(tokens) - len(CONTROL) - 1) + [4]
    return tokens, types


def _llama_cpp_permute(w: np.ndarray, n_heads: int) -> np.ndarray:
    """convert_hf_to_gguf's LlamaModel.permute: HF rotate_half rows -> llama.cpp interleaved rows."""
    return w.reshape(n_heads, 2, w.shape[0] // n_heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _hf_weights(vocab: int, tied: bool, seed: int = 0, hidden: int = HIDDEN, n_heads: int = N_HEADS,
                n_kv: int = N_KV) -> dict[str, np.ndarray]:
    hd = DIM // n_heads
    rng = np.random.default_rng(seed)
    sd = {"embed_tokens.weight": rng.standard_normal((vocab, DIM), dtype=np.float32) * 0.1,
          "norm.weight": 1 + 0.1 * rng.standard_normal(DIM, dtype=np.float32)}
    if not tied:
        sd["lm_head.weight"] = rng.standard_normal((vocab, DIM), dtype=np.float32) * 0.1
    shapes = {"self_attn.q_proj": (n_heads * hd, DIM), "self_attn.k_proj": (n_kv * hd, DIM),
              "self_attn.v_proj": (n_kv * hd, DIM), "self_attn.o_proj": (DIM, n_heads * hd),
              "mlp.gate_proj": (hidden, DIM), "mlp.up_proj": (hidden, DIM), "mlp.down_proj": (DIM, hidden)}
    for i in range(N_LAYERS):
        for n, shape in shapes.items():
            sd[f"layers.{i}.{n}.weight"] = rng.standard_normal(shape, dtype=np.float32) / math.sqrt(shape[1])
        for n in ("input_layernorm", "post_attention_layernorm"):
            sd[f"layers.{i}.{n}.weight"] = 1 + 0.1 * rng.standard_normal(DIM, dtype=np.float32)
    return sd


_GGUF_NAMES = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
               "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
               "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}


def _gguf_name(hf: str) -> str:
    glob = {"embed_tokens.weight": "token_embd.weight", "norm.weight": "output_norm.weight",
            "lm_head.weight": "output.weight"}
    if hf in glob:
        return glob[hf]
    _, i, rest = hf.split(".", 2)
    return f"blk.{i}.{_GGUF_NAMES[rest.removesuffix('.weight')]}.weight"


def write_gguf(path, *, tied=True, arch="llama", tok_model="gpt2", pre="smollm", add_bos=False,
               rope_freqs: np.ndarray | None = None, quantize_embedding=False, seed=0,
               hidden: int = HIDDEN, n_heads: int = N_HEADS, n_kv: int = N_KV) -> dict[str, np.ndarray]:
    """Write a tiny llama GGUF; returns the HF-layout weights it encodes. `hidden`: the MLP width (48
    by default; an Android 4-bit export needs a multiple of 32); `n_heads` sets head_dim = DIM / n_heads
    (8 by default; ONNX Runtime needs a multiple of 16)."""
    tokens, types = _vocab()
    sd = _hf_weights(len(tokens), tied, seed, hidden, n_heads, n_kv)
    hd = DIM // n_heads
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(N_LAYERS)
    w.add_context_length(4096)
    w.add_embedding_length(DIM)
    w.add_feed_forward_length(hidden)
    w.add_head_count(n_heads)
    w.add_head_count_kv(n_kv)
    w.add_key_length(hd)
    w.add_value_length(hd)
    w.add_rope_dimension_count(hd)
    w.add_rope_freq_base(500000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(len(tokens))
    w.add_tokenizer_model(tok_model)
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(MERGES)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_eot_token_id(0)
    w.add_pad_token_id(0)
    w.add_add_bos_token(add_bos)
    w.add_chat_template(TEMPLATE)
    if rope_freqs is not None:
        w.add_tensor("rope_freqs.weight", rope_freqs.astype(np.float32))
    for name, t in sd.items():
        if name.endswith("q_proj.weight"):
            t = _llama_cpp_permute(t, n_heads)
        elif name.endswith("k_proj.weight"):
            t = _llama_cpp_permute(t, n_kv)
        if quantize_embedding and name == "embed_tokens.weight":
            q = gguf.quants.quantize(t, gguf.GGMLQuantizationType.Q8_0)
            w.add_tensor(_gguf_name(name), q, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            w.add_tensor(_gguf_name(name), t)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return sd


@pytest.fixture
def tiny(tmp_path):
    path = tmp_path / "tiny.gguf"
    return path, write_gguf(path)


# ---- config and weights ----------------------------------------------------------------------------------


def test_config_and_unpermuted_weights(tiny):
    path, hf = tiny
    cfg, sd, tok = load_gguf(path)
    assert (cfg.arch, cfg.n_layers, cfg.dim, cfg.hidden_dim) == ("llama", N_LAYERS, DIM, HIDDEN)
    assert (cfg.n_heads, cfg.n_kv_heads, cfg.head_dim) == (N_HEADS, N_KV, HEAD_DIM)
    assert cfg.vocab_size == len(_vocab()[0]) == tok.vocab_size
    assert cfg.rope_theta == 500000.0 and cfg.norm_eps == 1e-5 and cfg.rope_scaling is None
    assert not cfg.rope_interleaved and not cfg.qk_norm and cfg.tie_embeddings
    assert cfg.max_position_embeddings == 4096
    assert cfg.bos_token_id == 1 and cfg.eos_token_ids == (2, 0) and cfg.pad_token_id == 0
    assert set(sd) == set(hf)
    for k, v in hf.items():
        assert sd[k].dtype == torch.float32 and tuple(sd[k].shape) == v.shape, k
        assert torch.equal(sd[k], torch.from_numpy(v)), k
    Transformer(cfg, max_context=16).load_weights(sd)  # names and shapes fit the reference model


def test_untied_head_and_quantized_embedding(tmp_path):
    path = tmp_path / "untied.gguf"
    hf = write_gguf(path, tied=False, quantize_embedding=True)
    cfg, sd, _ = load_gguf(path)
    assert not cfg.tie_embeddings
    assert torch.equal(sd["lm_head.weight"], torch.from_numpy(hf["lm_head.weight"]))
    emb, ref = sd["embed_tokens.weight"].numpy(), hf["embed_tokens.weight"]
    assert emb.shape == ref.shape
    # Q8_0 (blocks of 32 along a row, fp16 scale absmax/127): error within about half a step per block
    step = np.abs(ref.reshape(-1, 32)).max(1, keepdims=True) / 127
    assert (np.abs(emb - ref).reshape(-1, 32) <= 0.6 * step).all()
    Transformer(cfg, max_context=16).load_weights(sd)


def test_llama3_rope_scaling_recovered_from_rope_freqs(tmp_path):
    theta, factor, lo, hi, old = 500000.0, 32.0, 1.0, 4.0, 8192
    freqs = 1.0 / theta ** (np.arange(0, HEAD_DIM, 2) / HEAD_DIM)
    divisors = []
    for f in freqs:  # convert_hf_to_gguf's LlamaModel.generate_extra_tensors
        wavelen = 2 * math.pi / f
        if wavelen < old / hi:
            divisors.append(1.0)
        elif wavelen > old / lo:
            divisors.append(factor)
        else:
            smooth = (old / wavelen - lo) / (hi - lo)
            divisors.append(1 / ((1 - smooth) / factor + smooth))
    path = tmp_path / "llama31.gguf"
    write_gguf(path, rope_freqs=np.array(divisors))
    cfg, sd, _ = load_gguf(path)
    assert cfg.rope_scaling == {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                                "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    assert "rope_freqs.weight" not in sd
    path2 = tmp_path / "odd_freqs.gguf"
    write_gguf(path2, rope_freqs=np.array([1.0, 3.0, 1.0, 2.0]))
    with pytest.raises(UserError, match="rope_freqs"):
        load_gguf(path2)


# ---- tokenizer -------------------------------------------------------------------------------------------


def test_tokenizer(tiny):
    path, _ = tiny
    _, _, tok = load_gguf(path)
    tokens, _ = _vocab()
    ids = {s: i for i, s in enumerate(tokens)}
    assert tok.encode("the the is") == [ids["the"], ids["Ġthe"], ids["Ġis"]]
    assert tok.encode("12") == [ids["1"], ids["2"]]  # smollm: digits are split before BPE
    assert tok.encode("<|im_start|>the<tool><|im_end|>") == [1, ids["the"], ids[USER], 2]
    for text in ["the the is", "héllo wörld 🙂\n\n  x = 12345;", "<|im_start|>hi<|im_end|>"]:
        assert tok.decode(tok.encode(text)) == text
    assert tok.config["bos_token"] == "<|im_start|>" and tok.config["eos_token"] == "<|im_end|>"
    assert tok.config["add_bos_token"] is False and tok.config["model_max_length"] == 4096
    assert tok.config["chat_template"] == TEMPLATE
    assert tok.bos_id == 1 and tok.eos_id == 2


def test_tokenizer_add_bos_and_llama3_pre(tmp_path):
    path = tmp_path / "bos.gguf"
    write_gguf(path, add_bos=True, pre="llama-bpe")
    _, _, tok = load_gguf(path)
    tokens, _ = _vocab()
    ids = {s: i for i, s in enumerate(tokens)}
    assert tok.encode("the") == [1, ids["the"]]
    assert tok.encode("the", add_special_tokens=False) == [ids["the"]]
    assert tok.encode("12", add_special_tokens=False) == [ids["12"]]  # Llama 3 regex keeps up to 3 digits together
    assert tok.config["add_bos_token"] is True


# ---- refusals --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kw, match", [
    ({"tok_model": "llama"}, "tokenizer model 'llama' is not supported"),
    ({"pre": "qwen2"}, "pre-tokenizer 'qwen2' is not supported"),
    ({"arch": "llama4"}, "'llama4' is not supported"),
    ({"arch": "gemma"}, "'gemma' is not supported"),
])
def test_unsupported_variants(tmp_path, kw, match):
    path = tmp_path / "x.gguf"
    write_gguf(path, **kw)
    with pytest.raises(UserError, match=match):
        load_gguf(path)


def test_nonexistent_path(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        load_gguf(tmp_path / "missing.gguf")


def test_directory_path(tmp_path):
    with pytest.raises(UserError, match="not a file"):
        load_gguf(tmp_path)


@pytest.mark.parametrize("size", [0, 3, 4096])
def test_random_bytes(tmp_path, size):
    path = tmp_path / "random.gguf"
    path.write_bytes(np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8).tobytes())
    with pytest.raises(UserError) as e:
        load_gguf(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_truncated_files(tiny, tmp_path):
    path, _ = tiny
    data = path.read_bytes()
    # inside the header, inside the metadata (token list), inside the tensor data, one byte short
    for cut in (10, 2000, len(data) // 2, len(data) - 1):
        p = tmp_path / f"cut{cut}.gguf"
        p.write_bytes(data[:cut])
        with pytest.raises(UserError) as e:
            load_gguf(p)
        msg = str(e.value)
        assert str(p) in msg and "\n" not in msg, msg
