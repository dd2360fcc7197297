"""ModelConfig: one dataclass of flags for the whole Llama / MobileLLM / MobileLLM-R1 family.

Parsed from a HF `config.json` (either transformers generation), GGUF metadata, or a preset.
Differences between the architectures are flags (QK-norm, RoPE layout, layer sharing...), never
subclasses, so one `Transformer` serves them all.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .errors import UserError


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

    def validate(self) -> ModelConfig:
        if self.n_heads % self.n_kv_heads:
            raise UserError(f"n_heads {self.n_heads} is not a multiple of n_kv_heads {self.n_kv_heads}")
        if self.head_dim % 2:
            raise UserError(f"head_dim {self.head_dim} must be even for RoPE")
        if self.rope_layers is not None and len(self.rope_layers) != self.n_layers:
            raise UserError(f"no_rope_layers has {len(self.rope_layers)} entries for {self.n_layers} layers")
        if self.rope_scaling is not None and self.rope_scaling.get("rope_type") != "llama3":
            raise UserError(f"unsupported rope_scaling {self.rope_scaling}: only 'llama3' is implemented")
        return self


# ---- HF config.json ----------------------------------------------------------------------

_SUPPORTED = {
    "LlamaForCausalLM": "llama",
    "Llama4ForCausalLM": "llama4_text",
    "MobileLLMForCausalLM": "mobilellm",
}
_MODEL_TYPES = {"llama": "llama", "llama4_text": "llama4_text", "mobilellm": "mobilellm"}


def _eos_ids(v) -> tuple[int, ...]:
    if v is None:
        return ()
    return tuple(v) if isinstance(v, (list, tuple)) else (int(v),)


def _rope(d: dict) -> tuple[float, dict | None]:
    """RoPE theta and scaling from either config generation (top-level vs `rope_parameters`)."""
    params = d.get("rope_parameters") or {}
    scaling = d.get("rope_scaling") or None
    theta = d.get("rope_theta", params.get("rope_theta", 10000.0))
    rope_type = params.get("rope_type", "default")
    if scaling is None and rope_type not in ("default", None):
        scaling = params
    if scaling is not None:
        scaling = dict(scaling)
        scaling["rope_type"] = scaling.get("rope_type", scaling.get("type"))
        if scaling["rope_type"] == "default":
            scaling = None
    return float(theta), scaling


def from_hf_config(d: dict) -> ModelConfig:
    """Parse a HF config.json dict. Unsupported architectures raise UserError (one line)."""
    archs = d.get("architectures") or []
    model_type = d.get("model_type")
    if model_type == "llama4" and "text_config" in d:
        raise UserError("multimodal Llama 4 configs (model_type 'llama4') are not supported; give the text model")
    arch = next((_SUPPORTED[a] for a in archs if a in _SUPPORTED), None) or _MODEL_TYPES.get(model_type)
    if arch is None:
        raise UserError(f"unsupported architecture {archs or model_type!r}: expected one of {sorted(_SUPPORTED)}")
    for flag in ("attention_bias", "mlp_bias"):
        if d.get(flag):
            raise UserError(f"{flag}=true is not supported")
    act = d.get("hidden_act", "silu")
    if act != "silu":
        raise UserError(f"hidden_act {act!r} is not supported (only silu)")
    try:
        dim, n_heads, n_layers = int(d["hidden_size"]), int(d["num_attention_heads"]), int(d["num_hidden_layers"])
        vocab = int(d["vocab_size"])
    except KeyError as e:
        raise UserError(f"config.json lacks required field {e.args[0]!r}") from None
    n_kv = int(d.get("num_key_value_heads") or n_heads)
    head_dim = int(d.get("head_dim") or dim // n_heads)
    theta, scaling = _rope(d)
    common = dict(
        vocab_size=vocab, dim=dim, n_layers=n_layers, n_heads=n_heads, n_kv_heads=n_kv, head_dim=head_dim,
        norm_eps=float(d.get("rms_norm_eps", 1e-5)), rope_theta=theta, rope_scaling=scaling,
        max_position_embeddings=int(d.get("max_position_embeddings", 2048)),
        bos_token_id=d.get("bos_token_id"), eos_token_ids=_eos_ids(d.get("eos_token_id")),
        pad_token_id=d.get("pad_token_id"),
    )
    if arch == "llama4_text":
        # Mirror transformers' defaults: absent moe_layers means every `interleave_moe_layer_step`-th
        # layer is MoE; absent no_rope_layers means every 4th layer is NoPE.
        step = int(d.get("interleave_moe_layer_step", 1))
        moe = d.get("moe_layers")
        if moe is None:
            moe = list(range(step - 1, n_layers, step)) if step > 0 else []
        if moe and int(d.get("num_local_experts", 16)) > 0:
            raise UserError(f"Llama 4 with mixture-of-experts layers {moe[:4]}... is not supported (dense only)")
        rope_layers = d.get("no_rope_layers") or None
        if rope_layers is None:
            interval = int(d.get("no_rope_layer_interval", 4))
            rope_layers = [int((i + 1) % interval != 0) for i in range(n_layers)]
        if "intermediate_size_mlp" not in d:
            raise UserError("Llama 4 config lacks intermediate_size_mlp (the dense MLP width)")
        return ModelConfig(
            arch=arch, hidden_dim=int(d["intermediate_size_mlp"]), rope_interleaved=True,
            qk_norm=bool(d.get("use_qk_norm", True)), rope_layers=tuple(int(x) for x in rope_layers),
            attn_temperature_tuning=bool(d.get("attn_temperature_tuning", True)),
            floor_scale=float(d.get("floor_scale", 8192)), attn_scale=float(d.get("attn_scale", 0.1)),
            tie_embeddings=bool(d.get("tie_word_embeddings", True)),
            attention_chunk_size=d.get("attention_chunk_size", 8192), **common,
        ).validate()
    if arch == "mobilellm":
        # The tying is done in MobileLLM's own code (share_embedding), whatever tie_word_embeddings says.
        tied = bool(d.get("share_embedding", True)) or bool(d.get("tie_word_embeddings", False))
        return ModelConfig(
            arch=arch, hidden_dim=int(d["intermediate_size"]), tie_embeddings=tied,
            layer_sharing=bool(d.get("layer_sharing", False)), **common,
        ).validate()
    return ModelConfig(
        arch=arch, hidden_dim=int(d["intermediate_size"]),
        tie_embeddings=bool(d.get("tie_word_embeddings", False)), **common,
    ).validate()


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
