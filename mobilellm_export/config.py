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
