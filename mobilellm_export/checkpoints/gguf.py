"""GGUF source: llama.cpp files (e.g. the offline SmolLM2-135M-Instruct Q4_1) -> ModelConfig, fp32 weights, tokenizer.

Architectures: llama, qwen2, qwen3, gemma3, olmo2. Weights are dequantized with
`gguf.quants.dequantize` to float32 in HF layout ([out, in]) and HF names without the `model.`
prefix. llama.cpp's converter changes two things per architecture, undone here:
- for the llama family only, it permutes the rows of Q and K for its interleaved RoPE kernel; they
  are un-permuted back to HF's rotate_half order (qwen2/3, gemma3 and olmo2 are stored unpermuted);
- for gemma3, it stores every `*norm.weight` as w + 1 (HF's Gemma norms scale by 1 + w): 1 is
  subtracted again.
Values llama.cpp hard-codes instead of writing (Gemma 3: the local RoPE base 1e4, five sliding
layers to one global, the attention scale head_dim ** -0.5 below 27B) are filled in the same way.

The tokenizer is rebuilt from `tokenizer.ggml.*` metadata as a HF `tokenizers.Tokenizer` (byte-level
BPE only: `tokenizer.ggml.model == "gpt2"`). Anything this reader cannot reproduce faithfully
(SentencePiece vocabularies, unknown pre-tokenizers, MoE, linear/YaRN RoPE scaling, llama4 files whose
metadata omits QK-norm and the NoPE layout) is refused with a one-line UserError, never guessed.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import torch

from mobilellm_export.config import ModelConfig
from mobilellm_export.errors import UserError
from mobilellm_export.text.tokenizer import Tokenizer

# ggml token types (llama.cpp `llama_token_type`)
_TOKEN_NORMAL, _TOKEN_CONTROL, _TOKEN_USER_DEFINED = 1, 3, 4

# Llama 3 pre-tokenizer regex (tokenizer.json of Llama 3.x; llama.cpp pre "llama-bpe"/"llama3").
_LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_PRE_TOKENIZERS = ("smollm", "llama-bpe", "llama3", "gpt2", "default")

_LAYER_TENSORS = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
# Per architecture, where llama.cpp's names differ from the llama ones.
_ARCH_TENSORS = {
    "llama": {},
    "qwen2": {},
    "qwen3": {"attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm"},
    "gemma3": {"attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm",
               "post_attention_norm": "post_attention_layernorm", "ffn_norm": "pre_feedforward_layernorm",
               "post_ffw_norm": "post_feedforward_layernorm"},
    "olmo2": {"attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm",
              "post_attention_norm": "post_attention_layernorm", "post_ffw_norm": "post_feedforward_layernorm"},
}
_GLOBAL_TENSORS = {"token_embd.weight": "embed_tokens.weight", "output_norm.weight": "norm.weight",
                   "output.weight": "lm_head.weight"}
_LAYER_RE = re.compile(r"blk\.(\d+)\.(\w+)\.(weight|bias)")


def _first_line(e: BaseException) -> str:
    msg = str(e).strip().splitlines()
    return f"{type(e).__name__}: {msg[0]}" if msg else type(e).__name__


class _Meta:
    """Typed access to GGUF key/values with one-line errors naming the file."""

    def __init__(self, reader, path: Path):
        self.fields, self.path = reader.fields, path

    def has(self, key: str) -> bool:
        return key in self.fields

    def get(self, key: str, default=None):
        f = self.fields.get(key)
        if f is None:
            return default
        try:
            return f.contents()
        except Exception as e:  # malformed value (bad UTF-8, wrong layout)
            raise UserError(f"{self.path}: unreadable GGUF metadata {key!r} ({_first_line(e)})") from None

    def req(self, key: str):
        if key not in self.fields:
            raise UserError(f"{self.path}: GGUF metadata lacks required key {key!r}")
        return self.get(key)

    def int(self, key: str, default=None, required: bool = False) -> int | None:
        v = self.req(key) if required else self.get(key, default)
        if v is None:
            return None
        if isinstance(v, list):  # per-layer arrays (e.g. head_count_kv): only uniform ones are supported
            if not v or any(x != v[0] for x in v):
                raise UserError(f"{self.path}: per-layer {key!r} values {v[:4]}... are not supported (uniform only)")
            v = v[0]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or int(v) != v:
            raise UserError(f"{self.path}: GGUF metadata {key!r} = {v!r} is not an integer")
        return int(v)

    def float(self, key: str, default=None) -> float | None:
        v = self.get(key, default)
        if v is None:
            return None
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise UserError(f"{self.path}: GGUF metadata {key!r} = {v!r} is not a number")
        return float(str(np.float32(v))) if isinstance(v, float) else float(v)  # 1e-05, not 9.9999997e-06

    def str(self, key: str, default=None) -> str | None:
        v = self.get(key, default)
        if v is not None and not isinstance(v, str):
            raise UserError(f"{self.path}: GGUF metadata {key!r} = {v!r} is not a string")
        return v

    def strings(self, key: str) -> list[str] | None:
        v = self.get(key)
        if v is not None and not (isinstance(v, list) and all(isinstance(x, str) for x in v)):
            raise UserError(f"{self.path}: GGUF metadata {key!r} is not an array of strings")
        return v


# Fixed-size GGUF value types (bytes each); 8 = string, 9 = array.
_SCALAR = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}


def _check_header(path: Path, size: int) -> None:
    """Walk the metadata and tensor table with every count and length bounded by the bytes left in
    the file, before gguf's reader sees it: that reader builds a Python list per array element, so a
    68-byte file declaring a 2^40-element array grew without end ("reads headers only")."""
    import mmap
    import struct

    def bad(why: str):
        raise UserError(f"{path}: truncated or corrupt GGUF file ({size:,} bytes; {why})")

    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        pos = 0

        def take(fmt: str):
            nonlocal pos
            n = struct.calcsize(fmt)
            if pos + n > size:
                bad(f"header runs past the end at byte {pos:,}")
            v = struct.unpack_from(fmt, m, pos)[0]
            pos += n
            return v

        def skip(n: int, what: str):
            nonlocal pos
            if n < 0 or pos + n > size:
                bad(f"{what} of {n:,} bytes at byte {pos:,} runs past the end")
            pos += n

        def value(vtype: int, depth: int = 0):
            if vtype in _SCALAR:
                skip(_SCALAR[vtype], "a value")
            elif vtype == 8:
                skip(take("<Q"), "a string")
            elif vtype == 9 and depth < 4:
                etype, count = take("<I"), take("<Q")
                if etype in _SCALAR:
                    skip(count * _SCALAR[etype], "an array")
                elif count * 8 > size - pos:  # every string or array element takes at least 8 bytes
                    bad(f"an array of {count:,} elements cannot fit in the file")
                else:
                    for _ in range(count):
                        value(etype, depth + 1)
            else:
                bad(f"unknown value type {vtype}")

        skip(4, "the magic")
        if take("<I") not in (2, 3):
            bad("unsupported GGUF version")
        n_tensors, n_kv = take("<Q"), take("<Q")
        if (n_tensors + n_kv) * 12 > size:
            bad(f"{n_tensors:,} tensors and {n_kv:,} metadata entries cannot fit in the file")
        for _ in range(n_kv):
            skip(take("<Q"), "a key")
            value(take("<I"))
        for _ in range(n_tensors):
            skip(take("<Q"), "a tensor name")
            n_dims = take("<I")
            if n_dims > 8:
                bad(f"a tensor with {n_dims} dimensions")
            skip(8 * n_dims + 12, "a tensor's shape")


def _open(path: Path):
    import gguf  # noqa: PLC0415  (keeps `import mobilellm_export.checkpoints.gguf` cheap)

    if not path.exists():
        raise UserError(f"{path}: no such file")
    if not path.is_file():
        raise UserError(f"{path}: not a file")
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror or _first_line(e)})") from None
    if size == 0:
        raise UserError(f"{path}: empty file, not a GGUF model")
    if magic != b"GGUF":
        raise UserError(f"{path}: not a GGUF file (starts with {magic!r}, expected b'GGUF')")
    _check_header(path, size)
    try:
        # GGUFReader memory-maps the file and builds a view of every tensor up front, so a truncated
        # file fails here (metadata running off the end, or a tensor view shorter than its shape).
        return gguf.GGUFReader(str(path))
    except Exception as e:  # ValueError, IndexError, KeyError, OSError... depending on where it breaks
        raise UserError(f"{path}: truncated or corrupt GGUF file ({size:,} bytes; {_first_line(e)})") from None


# ---- weights -------------------------------------------------------------------------------------------


def _unpermute(w: np.ndarray, n_heads: int) -> np.ndarray:
    """llama.cpp's interleaved Q/K row order -> HF rotate_half order (inverse of convert_hf_to_gguf's permute)."""
    return np.ascontiguousarray(
        w.reshape(n_heads, w.shape[0] // n_heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape))


def _dequantize(t, path: Path) -> np.ndarray:
    import gguf  # noqa: PLC0415

    hf_shape = tuple(int(d) for d in reversed(t.shape.tolist()))  # ggml ne0 (fastest) is the last HF dim
    try:
        w = gguf.quants.dequantize(t.data, t.tensor_type)
        w = np.asarray(w, dtype=np.float32).reshape(hf_shape)
    except NotImplementedError:
        raise UserError(f"{path}: tensor {t.name!r} has type {t.tensor_type.name}, which cannot be dequantized") from None
    except Exception as e:  # the mapped bytes are short or unreadable
        raise UserError(f"{path}: cannot read tensor {t.name!r} ({_first_line(e)}); the file may be truncated") from None
    if not np.issubdtype(w.dtype, np.floating):
        raise UserError(f"{path}: tensor {t.name!r} has non-float type {t.tensor_type.name}")
    if np.may_share_memory(w, t.data):  # F32 comes back as a view of the memory map: detach it
        w = np.array(w, dtype=np.float32)
    return w


def _hf_name(name: str, n_layers: int, path: Path, arch: str = "llama") -> str:
    if name in _GLOBAL_TENSORS:
        return _GLOBAL_TENSORS[name]
    m = _LAYER_RE.fullmatch(name)
    names = {**_LAYER_TENSORS, **_ARCH_TENSORS[arch]}
    if m and m.group(2) in names and int(m.group(1)) < n_layers:
        return f"layers.{int(m.group(1))}.{names[m.group(2)]}.{m.group(3)}"
    raise UserError(f"{path}: unexpected tensor {name!r} for a {arch} model")


def _llama3_scaling(factors: np.ndarray, theta: float, head_dim: int, path: Path) -> dict | None:
    """Recover HF `rope_scaling` from llama.cpp's `rope_freqs` tensor.

    convert_hf_to_gguf does not write Llama 3.1 scaling as metadata; it stores per-frequency divisors
    `1 / ((1 - smooth) / factor + smooth)` (1 for fast, `factor` for slow frequencies). Refit them (factor =
    the largest divisor; Meta's low/high factors 1/4 and original context 8192 tried first) and require an
    exact match: anything else is refused rather than silently ignored.
    """
    factors = factors.astype(np.float64).reshape(-1)
    if factors.size != head_dim // 2:
        raise UserError(f"{path}: rope_freqs has {factors.size} entries, expected {head_dim // 2}")
    if np.allclose(factors, 1.0):
        return None
    factor = float(factors.max())
    inv_freq = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    wavelen = 2 * math.pi / inv_freq
    for old in (8192, 4096, 16384, 32768, 2048, 65536, 131072):
        for lo, hi in ((1.0, 4.0), (1.0, 2.0), (2.0, 4.0)):
            smooth = (old / wavelen - lo) / (hi - lo)
            expect = np.where(wavelen < old / hi, 1.0,
                              np.where(wavelen > old / lo, factor, 1.0 / ((1 - smooth) / factor + smooth)))
            if np.allclose(factors, expect, rtol=1e-4, atol=1e-4):
                return {"rope_type": "llama3", "factor": factor, "low_freq_factor": lo, "high_freq_factor": hi,
                        "original_max_position_embeddings": old}
    raise UserError(f"{path}: rope_freqs tensor does not match Llama 3 RoPE scaling; unsupported RoPE frequencies")


# ---- tokenizer -----------------------------------------------------------------------------------------


def _build_tokenizer(meta: _Meta, path: Path, context_length: int) -> Tokenizer:
    from tokenizers import AddedToken, Regex, decoders, pre_tokenizers, processors  # noqa: PLC0415
    from tokenizers import Tokenizer as HFTokenizer  # noqa: PLC0415
    from tokenizers.models import BPE  # noqa: PLC0415

    kind = meta.str("tokenizer.ggml.model")
    if kind is None:
        raise UserError(f"{path}: GGUF has no tokenizer (tokenizer.ggml.model missing)")
    if kind != "gpt2":
        raise UserError(f"{path}: GGUF tokenizer model {kind!r} is not supported (only byte-level BPE, 'gpt2'); pass --tokenizer with its tokenizer.json")
    pre = meta.str("tokenizer.ggml.pre", "default")
    if pre not in _PRE_TOKENIZERS:
        raise UserError(f"{path}: GGUF pre-tokenizer {pre!r} is not supported (supported: {', '.join(_PRE_TOKENIZERS)})")
    tokens = meta.strings("tokenizer.ggml.tokens")
    merges = meta.strings("tokenizer.ggml.merges")
    if not tokens:
        raise UserError(f"{path}: GGUF metadata lacks tokenizer.ggml.tokens")
    if merges is None:
        raise UserError(f"{path}: byte-level BPE GGUF lacks tokenizer.ggml.merges")
    types = meta.get("tokenizer.ggml.token_type") or [_TOKEN_NORMAL] * len(tokens)
    if len(types) != len(tokens):
        raise UserError(f"{path}: {len(types)} token types for {len(tokens)} tokens")

    vocab: dict[str, int] = {}
    for i, s in enumerate(tokens):
        vocab.setdefault(s, i)  # a duplicated string keeps its first id
    pairs = []
    for m in merges:
        parts = m.split(" ")
        if len(parts) != 2:
            raise UserError(f"{path}: malformed BPE merge {m!r}")
        pairs.append((parts[0], parts[1]))
    llama3 = pre in ("llama-bpe", "llama3")
    try:
        tok = HFTokenizer(BPE(vocab=vocab, merges=pairs, ignore_merges=llama3, fuse_unk=False, byte_fallback=False))
    except Exception as e:  # a merge naming an unknown token, ...
        raise UserError(f"{path}: cannot build the BPE tokenizer ({_first_line(e)})") from None

    if pre == "smollm":  # SmolLM / SmolLM2 tokenizer.json
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    elif llama3:
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(_LLAMA3_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    else:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()

    special = [AddedToken(s, special=True, normalized=False) for s, t in zip(tokens, types) if t == _TOKEN_CONTROL]
    user = [AddedToken(s, special=False, normalized=False) for s, t in zip(tokens, types) if t == _TOKEN_USER_DEFINED]
    if special:
        tok.add_special_tokens(special)
    if user:
        tok.add_tokens(user)

    def token_at(key: str) -> tuple[int | None, str | None]:
        i = meta.int(key)
        if i is None:
            return None, None
        if not 0 <= i < len(tokens):
            raise UserError(f"{path}: {key} = {i} is outside the vocabulary of {len(tokens)}")
        return i, tokens[i]

    bos_id, bos = token_at("tokenizer.ggml.bos_token_id")
    eos_id, eos = token_at("tokenizer.ggml.eos_token_id")
    add_bos = bool(meta.get("tokenizer.ggml.add_bos_token", False))
    add_eos = bool(meta.get("tokenizer.ggml.add_eos_token", False))
    if add_bos and bos is None:
        raise UserError(f"{path}: tokenizer.ggml.add_bos_token is set but there is no bos_token_id")
    if add_bos or (add_eos and eos is not None):
        pre_s = [bos] if add_bos else []
        post_s = [eos] if add_eos and eos is not None else []
        single = " ".join(pre_s + ["$A:0"] + post_s)
        pair = " ".join(pre_s + ["$A:0"] + post_s + [f"{s}:1" for s in pre_s] + ["$B:1"] + [f"{s}:1" for s in post_s])
        specials = ([(bos, bos_id)] if add_bos else []) + ([(eos, eos_id)] if post_s and eos != bos else [])
        try:
            tok.post_processor = processors.TemplateProcessing(single=single, pair=pair, special_tokens=specials)
        except Exception as e:
            raise UserError(f"{path}: cannot add BOS/EOS to the tokenizer ({_first_line(e)})") from None

    config = {"bos_token": bos, "eos_token": eos, "add_bos_token": add_bos, "model_max_length": context_length}
    if add_eos:
        config["add_eos_token"] = True
    template = meta.get("tokenizer.chat_template")
    if isinstance(template, str) and template:
        config["chat_template"] = template
    return Tokenizer(tok, config)


# ---- entry point ---------------------------------------------------------------------------------------


_GGUF_NAMES = {"vocab_size": "llama.vocab_size", "dim": "llama.embedding_length", "n_layers": "llama.block_count",
               "n_heads": "llama.attention.head_count", "n_kv_heads": "llama.attention.head_count_kv",
               "head_dim": "llama.attention.key_length", "hidden_dim": "llama.feed_forward_length",
               "max_position_embeddings": "llama.context_length", "norm_eps": "llama.attention.layer_norm_rms_epsilon",
               "rope_theta": "llama.rope.freq_base"}


def _arch_flags(arch: str, meta: _Meta, n_layers: int, dim: int, n_heads: int, head_dim: int,
                shapes: dict) -> dict:
    """ModelConfig flags of the non-llama architectures, from metadata and llama.cpp's fixed values."""
    a = arch
    if arch in ("qwen2", "qwen3"):
        return {"attn_bias": "layers.0.self_attn.q_proj.bias" in shapes,
                "qk_norm_learned": "head" if arch == "qwen3" else None}
    if arch == "olmo2":
        return {"qk_norm_learned": "proj", "norm_layout": "post"}
    if arch == "gemma3":
        window = meta.int(f"{a}.attention.sliding_window", 4096)
        # absent in llama.cpp's Gemma 3 files (it hard-codes 6); newer writers give a period or a
        # per-layer array of booleans (true = sliding)
        pattern = meta.get(f"{a}.attention.sliding_window_pattern", 6)
        if isinstance(pattern, list):
            if len(pattern) != n_layers or not all(isinstance(x, bool) for x in pattern):
                raise UserError(f"{meta.path}: {a}.attention.sliding_window_pattern must hold one boolean per layer")
            sliding = tuple(int(x) for x in pattern)
        else:
            pattern = meta.int(f"{a}.attention.sliding_window_pattern", 6)
            if pattern < 1:
                raise UserError(f"{meta.path}: {a}.attention.sliding_window_pattern = {pattern}: expected >= 1")
            sliding = tuple(int((i + 1) % pattern != 0) for i in range(n_layers))
        # llama.cpp: 27B scales by (dim / heads) ** -0.5, the others by head_dim ** -0.5
        scalar = float(dim // n_heads) if n_layers == 62 else float(head_dim)
        return {"qk_norm_learned": "head", "norm_plus_one": True, "norm_layout": "sandwich", "mlp_act": "gelu_tanh",
                "scale_embeddings": True, "query_pre_attn_scalar": scalar, "sliding_window": window,
                "sliding_layers": sliding,
                "rope_local_theta": meta.float(f"{a}.rope.freq_base_swa", 10000.0)}
    return {}


def load_gguf(path, weights: bool = True, tokenizer: bool = True
              ) -> tuple[ModelConfig, dict[str, torch.Tensor] | None, Tokenizer | None]:
    """Read a GGUF: config, float32 HF-named state dict (None with weights=False: header and
    metadata only), tokenizer (None with tokenizer=False: the caller brings its own, e.g. for
    Gemma's SentencePiece vocabulary, which is not rebuilt here). Errors are UserError."""
    path = Path(path)
    reader = _open(path)
    meta = _Meta(reader, path)

    arch = meta.str("general.architecture")
    if arch is None:
        raise UserError(f"{path}: GGUF metadata lacks general.architecture")
    if arch == "llama4":
        # llama.cpp's llama4 metadata records neither QK-norm nor which layers skip RoPE (it hard-codes
        # Llama 4 Scout's layout), so a dense MobileLLM-R1 GGUF cannot be rebuilt faithfully from it.
        raise UserError(f"{path}: GGUF architecture 'llama4' is not supported; export from the HF checkpoint instead")
    if arch not in _ARCH_TENSORS:
        raise UserError(f"{path}: GGUF architecture {arch!r} is not supported (only {', '.join(_ARCH_TENSORS)})")
    a = arch
    if (meta.int(f"{a}.expert_count", 0) or 0) > 0:
        raise UserError(f"{path}: mixture-of-experts GGUF ({a}.expert_count > 0) is not supported (dense only)")

    n_layers = meta.int(f"{a}.block_count", required=True)
    dim = meta.int(f"{a}.embedding_length", required=True)
    hidden = meta.int(f"{a}.feed_forward_length", required=True)
    n_heads = meta.int(f"{a}.attention.head_count", required=True)
    n_kv = meta.int(f"{a}.attention.head_count_kv", n_heads)
    if min(n_layers, dim, hidden, n_heads, n_kv) <= 0:
        raise UserError(f"{path}: GGUF metadata has a non-positive model dimension")
    head_dim = meta.int(f"{a}.attention.key_length", dim // n_heads)
    v_dim = meta.int(f"{a}.attention.value_length", head_dim)
    rot_dim = meta.int(f"{a}.rope.dimension_count", head_dim)
    if v_dim != head_dim:
        raise UserError(f"{path}: key_length {head_dim} != value_length {v_dim} is not supported")
    if rot_dim != head_dim:
        raise UserError(f"{path}: partial RoPE ({rot_dim} of {head_dim} dims) is not supported")
    eps = meta.float(f"{a}.attention.layer_norm_rms_epsilon", 1e-5)
    theta = meta.float(f"{a}.rope.freq_base", 10000.0)
    context = meta.int(f"{a}.context_length", 2048)
    scaling_type = meta.str(f"{a}.rope.scaling.type", "none")
    linear = None
    if scaling_type == "linear" and meta.float(f"{a}.rope.scaling.factor", 1.0) != 1.0:
        if arch != "gemma3":
            raise UserError(f"{path}: linear RoPE scaling is supported for gemma3 only")
        linear = {"rope_type": "linear", "factor": meta.float(f"{a}.rope.scaling.factor")}
    elif scaling_type not in ("none", "", "linear"):
        raise UserError(f"{path}: RoPE scaling {scaling_type!r} is not supported (only Llama 3 scaling)")

    tensors = {t.name: t for t in reader.tensors}
    # Only the tokenizer's size matters if the vocab_size key is absent (older files).
    n_tokens = len(meta.fields["tokenizer.ggml.tokens"].data) if meta.has("tokenizer.ggml.tokens") else None
    vocab = meta.int(f"{a}.vocab_size") or n_tokens
    if vocab is None and "token_embd.weight" in tensors:
        vocab = int(tensors["token_embd.weight"].shape[-1])
    if vocab is None:
        raise UserError(f"{path}: cannot tell the vocabulary size")

    rope_scaling = None
    shapes: dict[str, tuple[int, ...]] = {}
    for name, t in tensors.items():
        if name == "rope_freqs.weight":
            rope_scaling = _llama3_scaling(_dequantize(t, path), theta, head_dim, path)
            continue
        shapes[_hf_name(name, n_layers, path, arch)] = tuple(int(x) for x in reversed(list(t.shape)))  # ggml: [in, out]

    eos_ids: list[int] = []
    for key in ("eos_token_id", "eot_token_id", "eom_token_id"):
        i = meta.int(f"tokenizer.ggml.{key}")
        if i is not None and i not in eos_ids:
            eos_ids.append(i)
    cfg = ModelConfig(
        arch={"gemma3": "gemma3_text"}.get(arch, arch), vocab_size=vocab, dim=dim, n_layers=n_layers,
        n_heads=n_heads, n_kv_heads=n_kv, head_dim=head_dim, hidden_dim=hidden, norm_eps=eps, rope_theta=theta,
        rope_interleaved=False, rope_scaling=rope_scaling or linear, tie_embeddings="output.weight" not in tensors,
        max_position_embeddings=context, bos_token_id=meta.int("tokenizer.ggml.bos_token_id"),
        eos_token_ids=tuple(eos_ids), pad_token_id=meta.int("tokenizer.ggml.padding_token_id"),
        **_arch_flags(arch, meta, n_layers, dim, n_heads, head_dim, shapes),
    ).validate(str(path), {k: v.replace("llama.", f"{a}.") for k, v in _GGUF_NAMES.items()})
    # Names and shapes from the header against the config, before any tensor is dequantized.
    from mobilellm_export.model import check_shapes

    try:
        check_shapes(cfg, shapes, str(path))
    except UserError as e:
        raise UserError(f"{path}: {e}" if str(path) not in str(e) else str(e)) from None

    tok = _build_tokenizer(meta, path, context) if tokenizer else None
    if not weights:
        return cfg, None, tok
    state: dict[str, torch.Tensor] = {}
    for name, t in tensors.items():
        if name == "rope_freqs.weight":
            continue
        hf = _hf_name(name, n_layers, path, arch)
        w = _dequantize(t, path)
        if tuple(w.shape) != shapes[hf]:
            raise UserError(f"{path}: tensor {name!r} holds {tuple(w.shape)} values, its header says {shapes[hf]}")
        if arch == "llama" and hf.endswith("q_proj.weight"):
            w = _unpermute(w, n_heads)
        elif arch == "llama" and hf.endswith("k_proj.weight"):
            w = _unpermute(w, n_kv)
        elif arch == "gemma3" and hf.endswith("norm.weight"):
            w = w - np.float32(1.0)  # stored as w + 1
        state[hf] = torch.from_numpy(w)
    return cfg, state, tok
