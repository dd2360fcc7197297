"""ModelConfig: one dataclass of flags for the whole Llama / MobileLLM / MobileLLM-R1 family.

Parsed from a HF `config.json` (either transformers generation), GGUF metadata, or a preset.
Differences between the architectures are flags (QK-norm, RoPE layout, layer sharing...), never
subclasses, so one `Transformer` serves them all.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from .errors import UserError

# What this tool exports: phone-sized decoders. Bounds are generous (a 1,000-layer or 65,536-wide
# config is refused in microseconds instead of hanging while a model of that size is planned).
LIMITS = {"vocab_size": 1 << 21, "dim": 1 << 16, "n_layers": 1024, "n_heads": 1024, "n_kv_heads": 1024,
          "head_dim": 4096, "hidden_dim": 1 << 20, "max_position_embeddings": 1 << 24}
MAX_PARAMS = 50_000_000_000


@dataclass(frozen=True)
class ModelConfig:
    arch: str  # "llama" | "llama4_text" | "mobilellm": where the config came from, for reports
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

    # ---- derived -------------------------------------------------------------------------
    def uses_rope(self, layer: int) -> bool:
        return self.rope_layers is None or bool(self.rope_layers[layer])

    @property
    def n_applied_layers(self) -> int:
        """Block applications per forward (each needs its own KV cache)."""
        return self.n_layers * (2 if self.layer_sharing else 1)

    def param_count(self) -> int:
        attn = self.dim * self.head_dim * (2 * self.n_heads + 2 * self.n_kv_heads)
        block = attn + 3 * self.dim * self.hidden_dim + 2 * self.dim
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
        if self.rope_scaling is not None:
            s = self.rope_scaling
            if s.get("rope_type") != "llama3":
                raise UserError(f"{where}: unsupported rope_scaling {str(s)[:120]}: only 'llama3' is implemented")
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
}
_MODEL_TYPES = {"llama": "llama", "llama4_text": "llama4_text", "mobilellm": "mobilellm"}
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
    if model_type == "llama4" and "text_config" in d:
        raise UserError("multimodal Llama 4 configs (model_type 'llama4') are not supported; give the text model")
    arch = next((_SUPPORTED[a] for a in archs if isinstance(a, str) and a in _SUPPORTED), None)
    arch = arch or (_MODEL_TYPES.get(model_type) if isinstance(model_type, str) else None)
    if arch is None:
        raise UserError(f"unsupported architecture {archs or model_type!r}: expected one of {sorted(_SUPPORTED)}")
    for flag in ("attention_bias", "mlp_bias"):
        if d.get(flag):
            raise UserError(f"{flag}=true is not supported")
    act = d.get("hidden_act", "silu")
    if act != "silu":
        raise UserError(f"hidden_act {act!r} is not supported (only silu)")
    dim, n_heads, n_layers, vocab = (f.int(k) for k in ("hidden_size", "num_attention_heads", "num_hidden_layers",
                                                        "vocab_size"))
    for key, field, v in (("hidden_size", "dim", dim), ("num_attention_heads", "n_heads", n_heads),
                          ("num_hidden_layers", "n_layers", n_layers), ("vocab_size", "vocab_size", vocab)):
        if not 1 <= v <= LIMITS[field]:  # before any division by it or loop over it
            raise UserError(f"{where}: {key} = {v}: expected an integer in [1, {LIMITS[field]}]")
    n_kv = f.int("num_key_value_heads", n_heads)
    head_dim = f.int("head_dim", dim // n_heads)
    theta, scaling = _rope(f)
    common = dict(
        vocab_size=vocab, dim=dim, n_layers=n_layers, n_heads=n_heads, n_kv_heads=n_kv, head_dim=head_dim,
        norm_eps=f.num("rms_norm_eps", 1e-5), rope_theta=theta, rope_scaling=scaling,
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
    return ModelConfig(
        arch=arch, hidden_dim=f.int("intermediate_size"),
        tie_embeddings=f.bool("tie_word_embeddings", False), **common,
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


PRESETS: dict[str, ModelConfig] = {
    "r1-140m": _r1(15, 576, 9, 3, 2048),
    "r1-360m": _r1(15, 1024, 16, 4, 4096),
    "r1-950m": _r1(22, 1536, 24, 6, 6144),
    "mobilellm-125m": _mobilellm(30, 576, 9, 3, 1536),
    "mobilellm-350m": _mobilellm(32, 960, 15, 5, 2560),
    "mobilellm-600m": _mobilellm(40, 1152, 18, 6, 3072),
    "mobilellm-1b": _mobilellm(54, 1280, 20, 5, 3584),
    "mobilellm-1.5b": _mobilellm(54, 1600, 25, 5, 4352),
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
