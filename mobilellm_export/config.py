"""ModelConfig: one dataclass of flags for the whole Llama / MobileLLM / MobileLLM-R1 family.

Parsed from a HF `config.json` (either transformers generation), GGUF metadata, or a preset.
Differences between the architectures are flags (QK-norm, RoPE layout, layer sharing...), never
subclasses, so one `Transformer` serves them all.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from mobilellm_export.errors import UserError

# What this tool exports: phone-sized decoders. Bounds are generous (a 1,000-layer or 65,536-wide
# config is refused in microseconds instead of hanging while a model of that size is planned).
LIMITS = {"vocab_size": 1 << 21, "dim": 1 << 16, "n_layers": 1024, "n_heads": 1024, "n_kv_heads": 1024,
          "head_dim": 4096, "hidden_dim": 1 << 20, "max_position_embeddings": 1 << 24}
MAX_PARAMS = 50_000_000_000


@dataclass(frozen=True)
class ModelConfig:
    arch: str  # "llama" | "llama4_text" | "mobilellm" | "qwen2" | "qwen3" | "gemma3_text" | "olmo2"
    vocab_size: int
    dim: int
    n_layers: int  # unique blocks; with layer_sharing each is applied twice
    n_heads: int
    n_kv_heads: int
    head_dim: int
    hidden_dim: int  # dense MLP width (Llama-4: intermediate_size_mlp, not intermediate_size)
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_interleaved: bool = False  # Llama-4: pairs (0,1),(2,3)...; Llama-2/3 HF: rotate_half
    rope_scaling: dict | None = None  # only {"rope_type": "llama3", ...} is supported
    qk_norm: bool = False  # weightless RMS norm of q and k heads, after RoPE, on RoPE layers only
    rope_layers: tuple[int, ...] | None = None  # HF `no_rope_layers`: 1 = layer uses RoPE
    attn_temperature_tuning: bool = False  # Llama-4 NoPE-layer query scaling
    floor_scale: float = 8192.0
    attn_scale: float = 0.1
    tie_embeddings: bool = True
    layer_sharing: bool = False  # MobileLLM v1 "-layer-share": each block applied twice in a row
    max_position_embeddings: int = 2048
    attention_chunk_size: int | None = None  # Llama-4: RoPE layers attend within chunks of this size
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    pad_token_id: int | None = None
    # ---- Qwen2/3, Gemma 3, OLMo 2 (defaults = Llama) ----
    attn_bias: bool = False  # Qwen2: biases on q/k/v
    # Learned q/k RMSNorm, before RoPE: "head" = over each head (Qwen3, Gemma 3; HF q_norm/k_norm
    # of head_dim), "proj" = over the whole q and k projections (OLMo 2). Distinct from `qk_norm`.
    qk_norm_learned: str | None = None
    norm_plus_one: bool = False  # Gemma: RMSNorm scales by (1 + w), computed in fp32
    norm_layout: str = "pre"  # "pre" (Llama), "sandwich" (Gemma 3: 4 norms a block), "post" (OLMo 2)
    mlp_act: str = "silu"  # "silu" | "gelu_tanh" (Gemma's GeGLU)
    scale_embeddings: bool = False  # Gemma: embeddings times sqrt(dim)
    query_pre_attn_scalar: float | None = None  # Gemma: attention scale is this ** -0.5, not head_dim ** -0.5
    sliding_window: int | None = None  # keys a sliding layer sees: q - k < window
    sliding_layers: tuple[int, ...] | None = None  # 1 = sliding-window layer (HF layer_types)
    rope_local_theta: float | None = None  # Gemma 3: RoPE base of the sliding layers

    # ---- derived -------------------------------------------------------------------------
    def uses_rope(self, layer: int) -> bool:
        return self.rope_layers is None or bool(self.rope_layers[layer])

    def window(self, layer: int) -> int | None:
        """The sliding window of `layer`, or None for full causal attention."""
        return self.sliding_window if self.sliding_layers and self.sliding_layers[layer] else None

    def local_rope(self, layer: int) -> bool:
        """Does `layer` rotate with the local (sliding-layer) RoPE base?"""
        return self.rope_local_theta is not None and self.window(layer) is not None

    @property
    def attn_scale_factor(self) -> float:
        return (self.query_pre_attn_scalar or self.head_dim) ** -0.5

    @property
    def norms_per_block(self) -> tuple[str, ...]:
        return {"pre": ("input_layernorm", "post_attention_layernorm"),
                "sandwich": ("input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm",
                             "post_feedforward_layernorm"),
                "post": ("post_attention_layernorm", "post_feedforward_layernorm")}[self.norm_layout]

    @property
    def n_applied_layers(self) -> int:
        """Block applications per forward (each needs its own KV cache)."""
        return self.n_layers * (2 if self.layer_sharing else 1)

    def param_count(self) -> int:
        q, kv = self.n_heads * self.head_dim, self.n_kv_heads * self.head_dim
        attn = self.dim * (2 * q + 2 * kv) + (q + 2 * kv if self.attn_bias else 0)
        attn += {None: 0, "head": 2 * self.head_dim, "proj": q + kv}[self.qk_norm_learned]
        block = attn + 3 * self.dim * self.hidden_dim + len(self.norms_per_block) * self.dim
        emb = self.vocab_size * self.dim
        return emb * (1 if self.tie_embeddings else 2) + self.n_layers * block + self.dim

    def kv_bytes_per_token(self, bytes_per_el: int = 2) -> int:
        return 2 * self.n_applied_layers * self.n_kv_heads * self.head_dim * bytes_per_el

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def validate(self, where: str = "config", names: dict | None = None) -> ModelConfig:
        """Every field's type and range, in one place; UserError naming `where` and the field
        (by its name in the source file when `names` maps it, e.g. dim -> hidden_size)."""
        names = names or {}

        def key(name):
            return names.get(name, name)

        for name, hi in LIMITS.items():
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= hi:
                raise UserError(f"{where}: {key(name)} = {v!r}: expected an integer in [1, {hi}]")
        for name in ("norm_eps", "rope_theta", "floor_scale", "attn_scale"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                raise UserError(f"{where}: {key(name)} = {v!r}: expected a positive finite number")
        if self.norm_eps >= 1:
            raise UserError(f"{where}: {key('norm_eps')} = {self.norm_eps!r}: expected a small positive number (< 1)")
        for name in ("bos_token_id", "pad_token_id"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
                raise UserError(f"{where}: {key(name)} = {v!r}: expected a non-negative integer or null")
        bad = [e for e in self.eos_token_ids if isinstance(e, bool) or not isinstance(e, int) or not 0 <= e < self.vocab_size]
        if bad:
            raise UserError(f"{where}: eos_token_id {bad[0]!r}: expected token ids in [0, {self.vocab_size})")
        if self.param_count() > MAX_PARAMS:
            raise UserError(f"{where}: {self.param_count():,} parameters; this tool exports models up to "
                            f"{MAX_PARAMS:,}")
        if self.attention_chunk_size is not None and (isinstance(self.attention_chunk_size, bool) or not isinstance(
                self.attention_chunk_size, int) or self.attention_chunk_size < 1):
            raise UserError(f"{where}: attention_chunk_size = {self.attention_chunk_size!r}: expected a positive integer")
        if self.n_heads % self.n_kv_heads:
            raise UserError(f"n_heads {self.n_heads} is not a multiple of n_kv_heads {self.n_kv_heads}")
        if self.head_dim % 2:
            raise UserError(f"head_dim {self.head_dim} must be even for RoPE")
        if self.rope_layers is not None and len(self.rope_layers) != self.n_layers:
            raise UserError(f"no_rope_layers has {len(self.rope_layers)} entries for {self.n_layers} layers")
        if self.rope_layers is not None and any(x not in (0, 1) for x in self.rope_layers):
            raise UserError(f"{where}: no_rope_layers must hold 0 or 1 per layer")
        for name, allowed in (("qk_norm_learned", (None, "head", "proj")), ("norm_layout", ("pre", "sandwich", "post")),
                              ("mlp_act", ("silu", "gelu_tanh"))):
            if getattr(self, name) not in allowed:
                raise UserError(f"{where}: {name} = {getattr(self, name)!r}: expected one of {allowed}")
        if self.sliding_layers is not None:
            if len(self.sliding_layers) != self.n_layers or any(x not in (0, 1) for x in self.sliding_layers):
                raise UserError(f"{where}: layer_types must name one attention type per layer ({self.n_layers})")
            w = self.sliding_window
            if any(self.sliding_layers) and (isinstance(w, bool) or not isinstance(w, int) or w < 1):
                raise UserError(f"{where}: sliding_window = {w!r}: expected a positive integer")
        for name in ("query_pre_attn_scalar", "rope_local_theta"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0):
                raise UserError(f"{where}: {name} = {v!r}: expected a positive finite number")
        if self.rope_scaling is not None and self.rope_scaling.get("rope_type") == "linear":
            f = self.rope_scaling.get("factor")
            if isinstance(f, bool) or not isinstance(f, (int, float)) or not math.isfinite(f) or f <= 0:
                raise UserError(f"{where}: rope_scaling factor = {f!r}: expected a positive number")
        elif self.rope_scaling is not None:
            s = self.rope_scaling
            if s.get("rope_type") != "llama3":
                raise UserError(f"{where}: unsupported rope_scaling {str(s)[:120]}: only 'llama3' and 'linear' are implemented")
            for key, required in (("factor", True), ("original_max_position_embeddings", True),
                                  ("low_freq_factor", False), ("high_freq_factor", False)):
                v = s.get(key)
                if v is None and not required:
                    continue
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                    raise UserError(f"{where}: rope_scaling {key} = {v!r}: expected a positive number")
            if s.get("low_freq_factor", 1.0) == s.get("high_freq_factor", 4.0):
                raise UserError(f"{where}: rope_scaling low_freq_factor equals high_freq_factor")
        return self


# ---- HF config.json ----------------------------------------------------------------------

_SUPPORTED = {
    "LlamaForCausalLM": "llama",
    "Llama4ForCausalLM": "llama4_text",
    "MobileLLMForCausalLM": "mobilellm",
    "Qwen2ForCausalLM": "qwen2",
    "Qwen3ForCausalLM": "qwen3",
    "Gemma3ForCausalLM": "gemma3_text",
    "Olmo2ForCausalLM": "olmo2",
}
_MODEL_TYPES = {v: v for v in _SUPPORTED.values()}
# HF activation names -> ours
_ACTS = {"silu": "silu", "gelu_pytorch_tanh": "gelu_tanh", "gelu_tanh": "gelu_tanh"}
_HF_NAMES = {"vocab_size": "vocab_size", "dim": "hidden_size", "n_layers": "num_hidden_layers",
             "n_heads": "num_attention_heads", "n_kv_heads": "num_key_value_heads", "head_dim": "head_dim",
             "hidden_dim": "intermediate_size", "max_position_embeddings": "max_position_embeddings",
             "norm_eps": "rms_norm_eps", "rope_theta": "rope_theta"}


_REQUIRED = object()


class _Fields:
    """Typed reads of a config.json object: a wrong type is a UserError naming the file and the
    field, never a ValueError/TypeError traceback from deep inside."""

    def __init__(self, d, where: str):
        if not isinstance(d, dict):
            raise UserError(f"{where}: expected a JSON object")
        self.d, self.where = d, where

    def _get(self, key, default):
        if key in self.d and self.d[key] is not None:
            return self.d[key]
        if default is _REQUIRED:
            raise UserError(f"{self.where}: lacks required field {key!r}")
        return default

    def _bad(self, key, want: str):
        raise UserError(f"{self.where}: {key} = {self.d[key]!r}: expected {want}")

    def _present(self, key) -> bool:
        return key in self.d and self.d[key] is not None

    def int(self, key: str, default=_REQUIRED):
        v = self._get(key, default)
        if not self._present(key):
            return v
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        if isinstance(v, bool) or not isinstance(v, int):
            self._bad(key, "an integer")
        return v

    def num(self, key: str, default=_REQUIRED):
        v = self._get(key, default)
        if not self._present(key):
            return v
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            self._bad(key, "a number")
        return float(v)

    def bool(self, key: str, default: bool) -> bool:
        v = self._get(key, default)
        if not isinstance(v, bool):
            self._bad(key, "true or false")
        return v

    def ids(self, key: str) -> tuple[int, ...]:
        v = self._get(key, None)
        if v is None:
            return ()
        v = v if isinstance(v, list) else [v]
        if not all(isinstance(x, int) and not isinstance(x, bool) for x in v):
            self._bad(key, "a token id or a list of token ids")
        return tuple(v)

    def opt_id(self, key: str) -> int | None:
        v = self._get(key, None)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int)):
            self._bad(key, "a token id or null")
        return v

    def obj(self, key: str) -> dict | None:
        v = self._get(key, None)
        if v is not None and not isinstance(v, dict):
            self._bad(key, "a JSON object or null")
        return v

    def int_list(self, key: str, n: int) -> list[int] | None:
        v = self._get(key, None)
        if v is None:
            return None
        if not isinstance(v, list) or not all(isinstance(x, int) and not isinstance(x, bool) for x in v):
            self._bad(key, "a list of integers")
        if len(v) != n:
            raise UserError(f"{self.where}: {key} has {len(v)} entries for {n} layers")
        return v


def _rope(f: _Fields) -> tuple[float, dict | None]:
    """RoPE theta and scaling from either config generation (top-level vs `rope_parameters`)."""
    params = f.obj("rope_parameters") or {}
    scaling = f.obj("rope_scaling")
    theta = f.num("rope_theta", None)
    if theta is None:
        theta = _Fields(params, f"{f.where} rope_parameters").num("rope_theta", 10000.0)
    rope_type = params.get("rope_type", "default")
    if scaling is None and rope_type not in ("default", None):
        scaling = params
    if scaling is not None:
        scaling = dict(scaling)
        scaling["rope_type"] = scaling.get("rope_type", scaling.get("type"))
        if scaling["rope_type"] == "default":
            scaling = None
    return theta, scaling


def from_hf_config(d: dict, where: str = "config.json") -> ModelConfig:
    """Parse a HF config.json dict. Unsupported architectures and bad fields raise UserError (one line)."""
    f = _Fields(d, where)
    archs = d.get("architectures") or []
    if not isinstance(archs, list):
        f._bad("architectures", "a list of class names")
    model_type = d.get("model_type")
    if model_type in ("llama4", "gemma3") and "text_config" in d:
        raise UserError(f"multimodal configs (model_type {model_type!r}) are not supported; give the text model")
    arch = next((_SUPPORTED[a] for a in archs if isinstance(a, str) and a in _SUPPORTED), None)
    arch = arch or (_MODEL_TYPES.get(model_type) if isinstance(model_type, str) else None)
    if arch is None:
        raise UserError(f"unsupported architecture {archs or model_type!r}: expected one of {sorted(_SUPPORTED)}")
    for flag in ("attention_bias", "mlp_bias"):
        if d.get(flag):
            raise UserError(f"{flag}=true is not supported")
    act_key = "hidden_activation" if arch == "gemma3_text" and d.get("hidden_activation") else "hidden_act"
    act = d.get(act_key, "gelu_pytorch_tanh" if arch == "gemma3_text" else "silu")
    if not isinstance(act, str) or act not in _ACTS:
        raise UserError(f"{act_key} {act!r} is not supported (only {', '.join(sorted(_ACTS))})")
    for cap in ("final_logit_softcapping", "attn_logit_softcapping"):
        if d.get(cap) is not None:
            raise UserError(f"{cap} = {d[cap]!r} is not supported (Gemma 2 style soft-capping)")
    if d.get("use_sliding_window"):
        raise UserError("use_sliding_window=true (Qwen2/3 sliding layers) is not supported")
    dim, n_heads, n_layers, vocab = (f.int(k) for k in ("hidden_size", "num_attention_heads", "num_hidden_layers",
                                                        "vocab_size"))
    for key, field, v in (("hidden_size", "dim", dim), ("num_attention_heads", "n_heads", n_heads),
                          ("num_hidden_layers", "n_layers", n_layers), ("vocab_size", "vocab_size", vocab)):
        if not 1 <= v <= LIMITS[field]:  # before any division by it or loop over it
            raise UserError(f"{where}: {key} = {v}: expected an integer in [1, {LIMITS[field]}]")
    n_kv = f.int("num_key_value_heads", n_heads)
    head_dim = f.int("head_dim", dim // n_heads)
    params = f.obj("rope_parameters") or {}
    if arch == "gemma3_text" and isinstance(params.get("full_attention"), dict):
        # transformers 5: one RoPE parameter set per layer type
        theta, scaling = _rope(_Fields({"rope_parameters": params["full_attention"]}, f"{where} rope_parameters"))
        local = _Fields(params.get("sliding_attention") or {}, f"{where} rope_parameters.sliding_attention")
        local_theta = local.num("rope_theta", 10000.0)
    else:
        theta, scaling = _rope(f)
        local_theta = f.num("rope_local_base_freq", 10000.0)
    common = dict(
        vocab_size=vocab, dim=dim, n_layers=n_layers, n_heads=n_heads, n_kv_heads=n_kv, head_dim=head_dim,
        norm_eps=f.num("rms_norm_eps", 1e-6 if arch in ("gemma3_text", "qwen2", "qwen3") else 1e-5),
        rope_theta=theta, rope_scaling=scaling, mlp_act=_ACTS[act],
        max_position_embeddings=f.int("max_position_embeddings", 2048),
        bos_token_id=f.opt_id("bos_token_id"), eos_token_ids=f.ids("eos_token_id"),
        pad_token_id=f.opt_id("pad_token_id"),
    )
    if arch == "llama4_text":
        # Mirror transformers' defaults: absent moe_layers means every `interleave_moe_layer_step`-th
        # layer is MoE; absent no_rope_layers means every 4th layer is NoPE.
        step = f.int("interleave_moe_layer_step", 1)
        moe = d.get("moe_layers")
        if moe is None:
            moe = list(range(step - 1, n_layers, step)) if step > 0 else []
        if not isinstance(moe, list):
            f._bad("moe_layers", "a list of layer indices")
        if moe and f.int("num_local_experts", 16) > 0:
            raise UserError(f"Llama 4 with mixture-of-experts layers {moe[:4]}... is not supported (dense only)")
        rope_layers = f.int_list("no_rope_layers", n_layers) or None
        if rope_layers is None:
            interval = f.int("no_rope_layer_interval", 4)
            if interval < 1:
                f._bad("no_rope_layer_interval", "a positive integer")
            rope_layers = [int((i + 1) % interval != 0) for i in range(n_layers)]
        return ModelConfig(
            arch=arch, hidden_dim=f.int("intermediate_size_mlp"), rope_interleaved=True,
            qk_norm=f.bool("use_qk_norm", True), rope_layers=tuple(rope_layers),
            attn_temperature_tuning=f.bool("attn_temperature_tuning", True),
            floor_scale=f.num("floor_scale", 8192.0), attn_scale=f.num("attn_scale", 0.1),
            tie_embeddings=f.bool("tie_word_embeddings", True),
            attention_chunk_size=f.int("attention_chunk_size", 8192), **common,
        ).validate(where, {**_HF_NAMES, "hidden_dim": "intermediate_size_mlp"})
    if arch == "mobilellm":
        # The tying is done in MobileLLM's own code (share_embedding), whatever tie_word_embeddings says.
        tied = f.bool("share_embedding", True) or f.bool("tie_word_embeddings", False)
        return ModelConfig(
            arch=arch, hidden_dim=f.int("intermediate_size"), tie_embeddings=tied,
            layer_sharing=f.bool("layer_sharing", False), **common,
        ).validate(where, _HF_NAMES)
    if arch == "gemma3_text":
        types = d.get("layer_types")
        if types is None:  # older configs: every `sliding_window_pattern`-th layer is global
            pattern = f.int("sliding_window_pattern", 6)
            types = ["full_attention" if (i + 1) % pattern == 0 else "sliding_attention" for i in range(n_layers)]
        if not isinstance(types, list) or len(types) != n_layers or not all(
                t in ("sliding_attention", "full_attention") for t in types):
            raise UserError(f"{where}: layer_types must list 'sliding_attention' or 'full_attention' for each of {n_layers} layers")
        common.update(
            qk_norm_learned="head", norm_plus_one=True, norm_layout="sandwich", scale_embeddings=True,
            query_pre_attn_scalar=f.num("query_pre_attn_scalar", float(head_dim)),
            sliding_window=f.int("sliding_window", 4096),
            sliding_layers=tuple(int(t == "sliding_attention") for t in types), rope_local_theta=local_theta)
    elif arch in ("qwen2", "qwen3", "olmo2"):
        common.update(attn_bias=arch == "qwen2",
                      qk_norm_learned={"qwen3": "head", "olmo2": "proj"}.get(arch),
                      norm_layout="post" if arch == "olmo2" else "pre")
    tied_default = arch in ("gemma3_text",)
    return ModelConfig(
        arch=arch, hidden_dim=f.int("intermediate_size"),
        tie_embeddings=f.bool("tie_word_embeddings", tied_default), **common,
    ).validate(where, _HF_NAMES)


# ---- presets (MODEL_FACTS.md) --------------------------------------------------------------

_LLAMA3_EOS = (128001, 128008, 128009)


def _r1(n_layers: int, dim: int, n_heads: int, n_kv: int, mlp: int) -> ModelConfig:
    return ModelConfig(
        arch="llama4_text", vocab_size=128256, dim=dim, n_layers=n_layers, n_heads=n_heads, n_kv_heads=n_kv,
        head_dim=64, hidden_dim=mlp, rope_theta=8e6, rope_interleaved=True, qk_norm=True,
        rope_layers=(1,) * n_layers, attn_temperature_tuning=True, tie_embeddings=True,
        max_position_embeddings=32768, attention_chunk_size=32768, bos_token_id=128000, eos_token_ids=_LLAMA3_EOS, pad_token_id=127999,
    )


def _mobilellm(n_layers: int, dim: int, n_heads: int, n_kv: int, mlp: int) -> ModelConfig:
    return ModelConfig(
        arch="mobilellm", vocab_size=32000, dim=dim, n_layers=n_layers, n_heads=n_heads, n_kv_heads=n_kv,
        head_dim=dim // n_heads, hidden_dim=mlp, rope_theta=1e4, tie_embeddings=True,
        max_position_embeddings=2048, bos_token_id=1, eos_token_ids=(2,),
    )


def _qwen(arch: str, n_layers: int, dim: int, n_heads: int, n_kv: int, head_dim: int, mlp: int, **kw) -> ModelConfig:
    return ModelConfig(
        arch=arch, vocab_size=151936, dim=dim, n_layers=n_layers, n_heads=n_heads, n_kv_heads=n_kv, head_dim=head_dim,
        hidden_dim=mlp, norm_eps=1e-6, rope_theta=1e6, tie_embeddings=True, attn_bias=arch == "qwen2",
        qk_norm_learned="head" if arch == "qwen3" else None, bos_token_id=151643, eos_token_ids=(151645, 151643),
        pad_token_id=151643, **kw)


def _gemma3(n_layers: int, dim: int, n_heads: int, n_kv: int, head_dim: int, mlp: int, window: int,
            query_scalar: float, **kw) -> ModelConfig:
    # Five sliding-window layers, then one global, repeating (HF layer_types / sliding_window_pattern 6).
    return ModelConfig(
        arch="gemma3_text", vocab_size=262144, dim=dim, n_layers=n_layers, n_heads=n_heads, n_kv_heads=n_kv,
        head_dim=head_dim, hidden_dim=mlp, norm_eps=1e-6, rope_theta=1e6, rope_local_theta=1e4, tie_embeddings=True,
        qk_norm_learned="head", norm_plus_one=True, norm_layout="sandwich", mlp_act="gelu_tanh", scale_embeddings=True,
        query_pre_attn_scalar=query_scalar, sliding_window=window,
        sliding_layers=tuple(int((i + 1) % 6 != 0) for i in range(n_layers)),
        bos_token_id=2, eos_token_ids=(1, 106), pad_token_id=0, **kw)


def _olmo2(n_layers: int, dim: int, n_heads: int, mlp: int, vocab: int = 100352, **kw) -> ModelConfig:
    return ModelConfig(
        arch="olmo2", vocab_size=vocab, dim=dim, n_layers=n_layers, n_heads=n_heads, n_kv_heads=n_heads,
        head_dim=dim // n_heads, hidden_dim=mlp, norm_eps=1e-6, rope_theta=5e5, tie_embeddings=False,
        qk_norm_learned="proj", norm_layout="post", **kw)


PRESETS: dict[str, ModelConfig] = {
    "r1-140m": _r1(15, 576, 9, 3, 2048),
    "r1-360m": _r1(15, 1024, 16, 4, 4096),
    "r1-950m": _r1(22, 1536, 24, 6, 6144),
    "mobilellm-125m": _mobilellm(30, 576, 9, 3, 1536),
    "mobilellm-350m": _mobilellm(32, 960, 15, 5, 2560),
    "mobilellm-600m": _mobilellm(40, 1152, 18, 6, 3072),
    "mobilellm-1b": _mobilellm(54, 1280, 20, 5, 3584),
    "mobilellm-1.5b": _mobilellm(54, 1600, 25, 5, 4352),
    # The models MobileLLM-R1 is compared with (published shapes; MODEL_FACTS.md / their config.json).
    "qwen3-0.6b": _qwen("qwen3", 28, 1024, 16, 8, 128, 3072, max_position_embeddings=40960),
    "qwen2.5-0.5b": _qwen("qwen2", 24, 896, 14, 2, 64, 4864, max_position_embeddings=32768),
    "gemma3-270m": _gemma3(18, 640, 4, 1, 256, 2048, window=512, query_scalar=256.0, max_position_embeddings=32768),
    "olmo2-1b": _olmo2(16, 2048, 16, 8192, max_position_embeddings=4096, bos_token_id=100257,
                       eos_token_ids=(100257,), pad_token_id=100277),
}
# Layer-shared variants: same unique blocks, each applied twice.
PRESETS.update({f"{k}-layer-share": dataclasses.replace(v, layer_sharing=True)
                for k, v in list(PRESETS.items()) if k.startswith("mobilellm")})
# Tiny configs with real structure, for tests and quick demos.
PRESETS["tiny-r1"] = dataclasses.replace(
    _r1(2, 64, 4, 2, 128), head_dim=16, vocab_size=128256, max_position_embeddings=4096)
PRESETS["tiny-llama"] = ModelConfig(
    arch="llama", vocab_size=512, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=16, hidden_dim=128,
    tie_embeddings=True, max_position_embeddings=4096, bos_token_id=1, eos_token_ids=(2,))
# Tiny versions of the compared models, with their real vocabularies (so real tokenizers fit). The
# Gemma one has a window of 8, so that the window matters inside a test sequence, a query scalar
# unlike its head_dim (in the real 270M they are equal), and a global layer among sliding ones.
PRESETS["tiny-qwen3"] = _qwen("qwen3", 2, 64, 4, 2, 32, 128, max_position_embeddings=4096)
PRESETS["tiny-qwen2"] = _qwen("qwen2", 2, 64, 4, 2, 16, 128, max_position_embeddings=4096)
PRESETS["tiny-gemma3"] = dataclasses.replace(
    _gemma3(3, 64, 4, 2, 32, 128, window=8, query_scalar=24.0, max_position_embeddings=4096),
    sliding_layers=(1, 1, 0))
PRESETS["tiny-olmo2"] = _olmo2(2, 64, 4, 128, vocab=32000, max_position_embeddings=4096, bos_token_id=1,
                               eos_token_ids=(2,))
