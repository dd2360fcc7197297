"""HF `config.json` -> ModelConfig: the architectures this tool exports and the flags each one sets.

Typed reads: a wrong type, an unsupported architecture or an out-of-range size is one UserError
naming the file and the field, before anything is allocated.
"""

from __future__ import annotations

from mobilellm_export.config import LIMITS, ModelConfig
from mobilellm_export.errors import UserError


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
