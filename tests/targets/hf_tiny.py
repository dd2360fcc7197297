"""Tiny random models of every architecture, built by `transformers` (the independent reference) and
saved as Hugging Face folders that our HF source loads. Shapes follow the `tiny-*` presets, with the
512-id vocabulary of tests/data/tiny-tokenizer (bos 1, eos 2, pad 0)."""

from __future__ import annotations

from pathlib import Path

import torch

TOKENIZER = Path(__file__).resolve().parents[1] / "data" / "tiny-tokenizer"
V = 512
_IDS = {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}


def _config(arch: str):
    import transformers as tf

    rope = {"rope_type": "default", "rope_theta": 1e4}
    # initializer_range 0.2, not 0.02: logits peaked like a trained model's (max |logit| ~10, not ~0.1),
    # so that KL and top-1 see a lowering error (near-uniform logits hide one).
    common = dict(vocab_size=V, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  initializer_range=0.2,
                  num_key_value_heads=2, rms_norm_eps=1e-5, max_position_embeddings=4096, **_IDS)
    if arch == "tiny-r1":  # MobileLLM-R1's layout: interleaved RoPE, weightless QK-norm, tied, dense
        return tf.Llama4TextConfig(**{**common, "intermediate_size": 96}, intermediate_size_mlp=128, head_dim=16,
                                   rope_theta=8e6, use_qk_norm=True, no_rope_layers=[1, 1], moe_layers=[],
                                   num_local_experts=0, tie_word_embeddings=True, attention_chunk_size=32768,
                                   attn_temperature_tuning=True)
    if arch == "tiny-llama":
        return tf.LlamaConfig(**common, head_dim=16, rope_parameters=rope, tie_word_embeddings=True)
    if arch == "tiny-qwen3":
        return tf.Qwen3Config(**common, head_dim=32, rope_parameters=rope, tie_word_embeddings=True)
    if arch == "tiny-qwen2":
        return tf.Qwen2Config(**common, rope_parameters=rope, tie_word_embeddings=True)
    if arch == "tiny-gemma3":  # a window of 8 inside the test sequences, a query scalar unlike head_dim
        return tf.Gemma3TextConfig(
            **{**common, "num_hidden_layers": 3}, head_dim=32, query_pre_attn_scalar=24, sliding_window=8,
            layer_types=["sliding_attention", "sliding_attention", "full_attention"],
            rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 1e4},
                             "full_attention": {"rope_type": "default", "rope_theta": 1e6}})
    if arch == "tiny-olmo2":
        return tf.Olmo2Config(**{**common, "num_key_value_heads": 4}, rope_parameters=rope, tie_word_embeddings=False)
    raise KeyError(arch)


ARCHS = ("tiny-r1", "tiny-llama", "tiny-qwen3", "tiny-qwen2", "tiny-gemma3", "tiny-olmo2")


def build(arch: str, folder: Path):
    """(transformers model, the HF folder it was saved to). Norms and biases are perturbed (HF
    initialises them to 1 / 0), so a misplaced norm or a dropped bias shows in the logits."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    cfg = _config(arch)
    cfg._attn_implementation = "eager"
    hf = AutoModelForCausalLM.from_config(cfg).eval()
    with torch.no_grad():
        for n, p in hf.named_parameters():
            if "norm" in n or n.endswith("bias"):
                p.add_(0.2 * torch.randn_like(p))
    hf.save_pretrained(folder)
    return hf, folder
