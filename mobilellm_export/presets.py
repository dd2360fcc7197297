"""Named model shapes (published architectures with seeded random weights, and tiny test shapes) and
the per-family generation defaults a bundle records for its apps.

Shapes follow each model's published config.json.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from mobilellm_export.config import ModelConfig

# Said wherever a preset is used (inspect, export): its text is noise, and users have exported one
# expecting MobileLLM-R1 and chatted with it.
RANDOM_WEIGHTS = "random weights: for shapes and speed, not for text (use smollm2-135m or a real checkpoint)"

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
    # The models MobileLLM-R1 is compared with (the published shapes of their config.json).
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


# ---- generation defaults, per family --------------------------------------------------------------

# MobileLLM-R1's model-card system prompts (`--system math` / `code`).
SYSTEM_PROMPTS = {
    "math": "Please reason step by step, and put your final answer within \\boxed{}.",
    "code": ("You are a helpful and harmless assistant. You should think step-by-step before responding to "
             "the instruction below.\n\nPlease use python programming language only.\n\nYou must use ```python "
             "for just the final solution code block with the following format:\n```python\n# Your code here\n```\n"),
}


@dataclass(frozen=True)
class GenerationDefaults:
    """What a bundle tells its apps to sample with, and the system prompts it offers."""
    temperature: float = 0.0  # greedy
    top_p: float = 1.0
    system_prompts: dict = dataclasses.field(default_factory=dict)


# MobileLLM-R1's evaluation settings (its model card); every other family decodes greedily.
_FAMILY_DEFAULTS = {"llama4_text": GenerationDefaults(temperature=0.6, top_p=0.95, system_prompts=SYSTEM_PROMPTS)}


def generation_defaults(arch: str) -> GenerationDefaults:
    return _FAMILY_DEFAULTS.get(arch, GenerationDefaults())
