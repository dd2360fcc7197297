"""The reference Transformer against `transformers` (independent implementation), fp32.

Prefill of 1..64 tokens and 32 single-token decode steps through the KV cache, for
LlamaForCausalLM (rotate_half, tied) and dense Llama4ForCausalLM (interleaved RoPE, QK-norm),
and a MobileLLM layer-sharing config against blocks applied twice written here independently.
"""

import pytest
import torch
from transformers import Llama4ForCausalLM, Llama4TextConfig, LlamaConfig, LlamaForCausalLM
from transformers.cache_utils import DynamicCache

from mobilellm_export.checkpoints.hf_config import from_hf_config
from mobilellm_export.model import Transformer
from mobilellm_export.checkpoints.hf import canonical_name

TOL = 1e-4


def _hf_llama():
    cfg = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-5, rope_theta=10000.0,
                      max_position_embeddings=256, tie_word_embeddings=True)
    return cfg


def _hf_llama4(no_rope_layers=(1, 1, 1)):
    return Llama4TextConfig(
        vocab_size=256, hidden_size=64, intermediate_size=96, intermediate_size_mlp=128, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, rms_norm_eps=1e-5, rope_theta=500.0,
        use_qk_norm=True, no_rope_layers=list(no_rope_layers), moe_layers=[], num_local_experts=0,
        tie_word_embeddings=True, max_position_embeddings=256, attention_chunk_size=8192,
        attn_temperature_tuning=True, floor_scale=4, attn_scale=0.1)  # small floor: temperature varies


def _pair(hf_cfg, model_cls):
    torch.manual_seed(0)
    hf_cfg._attn_implementation = "eager"
    hf = model_cls(hf_cfg).eval()
    with torch.no_grad():  # HF initialises norms to 1: perturb them so a misplaced norm would show
        for n, p in hf.named_parameters():
            if "norm" in n:
                p.add_(0.2 * torch.randn_like(p))
    ours = Transformer(from_hf_config(hf_cfg.to_dict()), max_context=128).eval()
    ours.load_weights({canonical_name(k): v for k, v in hf.state_dict().items()})
    return hf, ours


CASES = {
    "llama": lambda: _pair(_hf_llama(), LlamaForCausalLM),
    "llama4-r1": lambda: _pair(_hf_llama4(), Llama4ForCausalLM),
    "llama4-nope": lambda: _pair(_hf_llama4((1, 0, 1)), Llama4ForCausalLM),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("S", [1, 5, 64])
def test_prefill_matches_transformers(case, S):
    hf, ours = CASES[case]()
    tokens = torch.randint(0, 256, (1, S), generator=torch.Generator().manual_seed(S))
    with torch.no_grad():
        ref = hf(tokens).logits
        got = ours(tokens, torch.tensor([0]))
    assert (ref - got).abs().max().item() <= TOL


@pytest.mark.parametrize("case", list(CASES))
def test_decode_through_kv_cache_matches_transformers(case):
    hf, ours = CASES[case]()
    g = torch.Generator().manual_seed(1)
    prompt = torch.randint(0, 256, (1, 7), generator=g)
    steps = torch.randint(0, 256, (32,), generator=g)
    cache = DynamicCache(config=hf.config)
    with torch.no_grad():
        ref = hf(prompt, past_key_values=cache, use_cache=True).logits
        got = ours(prompt, torch.tensor([0]))
        worst = (ref - got).abs().max().item()
        for i, t in enumerate(steps):
            ref = hf(t.view(1, 1), past_key_values=cache, use_cache=True).logits
            got = ours(t.view(1, 1), torch.tensor([7 + i]))
            worst = max(worst, (ref - got).abs().max().item())
    assert worst <= TOL


def test_qk_norm_and_interleaving_matter():
    """Guard against a reference that is wrong the same way as the model: flags change the output."""
    import dataclasses

    hf, ours = CASES["llama4-r1"]()
    tokens = torch.randint(0, 256, (1, 16), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        base = ours(tokens, torch.tensor([0]))
        for layer in ours.layers:
            layer.self_attn.qk_norm = None
        assert (ours(tokens, torch.tensor([0])) - base).abs().max() > 1e-2
        half = Transformer(dataclasses.replace(ours.cfg, rope_interleaved=False), max_context=128).eval()
        half.load_weights(ours.state_dict())  # same weights read in the rotate_half layout
        assert (half(tokens, torch.tensor([0])) - base).abs().max() > 1e-2


def _independent_layer_share_forward(sd, cfg, tokens):
    """MobileLLM layer sharing written from scratch: every block applied twice in a row, full causal."""
    import torch.nn.functional as F

    def rmsn(x, w):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + cfg.norm_eps) * w

    S, hd = tokens.shape[1], cfg.head_dim
    inv = 1.0 / (cfg.rope_theta ** (torch.arange(0, hd, 2).double() / hd))
    ang = torch.outer(torch.arange(S).double(), inv).float()
    cos, sin = torch.cat([ang.cos()] * 2, -1), torch.cat([ang.sin()] * 2, -1)

    def rot(x):  # x [B, H, S, D]
        x1, x2 = x[..., : hd // 2], x[..., hd // 2:]
        return x * cos + torch.cat([-x2, x1], -1) * sin

    h = sd["embed_tokens.weight"][tokens]
    for i in range(cfg.n_layers):
        p = f"layers.{i}."
        for _ in range(2):
            x = rmsn(h, sd[p + "input_layernorm.weight"])
            q = (x @ sd[p + "self_attn.q_proj.weight"].T).view(1, S, cfg.n_heads, hd).transpose(1, 2)
            k = (x @ sd[p + "self_attn.k_proj.weight"].T).view(1, S, cfg.n_kv_heads, hd).transpose(1, 2)
            v = (x @ sd[p + "self_attn.v_proj.weight"].T).view(1, S, cfg.n_kv_heads, hd).transpose(1, 2)
            rep = cfg.n_heads // cfg.n_kv_heads
            k, v = rot(k).repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
            a = F.scaled_dot_product_attention(rot(q), k, v, is_causal=True)
            h = h + a.transpose(1, 2).reshape(1, S, -1) @ sd[p + "self_attn.o_proj.weight"].T
            x = rmsn(h, sd[p + "post_attention_layernorm.weight"])
            g = F.silu(x @ sd[p + "mlp.gate_proj.weight"].T) * (x @ sd[p + "mlp.up_proj.weight"].T)
            h = h + g @ sd[p + "mlp.down_proj.weight"].T
    return rmsn(h, sd["norm.weight"]) @ sd["embed_tokens.weight"].T


def test_mobilellm_layer_sharing_matches_independent_reference():
    from mobilellm_export.model import random_weights

    cfg = from_hf_config(dict(
        architectures=["MobileLLMForCausalLM"], model_type="mobilellm", vocab_size=300, hidden_size=64,
        intermediate_size=96, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
        share_embedding=True, tie_word_embeddings=False, layer_sharing=True, rope_theta=10000.0))
    assert cfg.layer_sharing and cfg.tie_embeddings and cfg.n_applied_layers == 6
    sd = random_weights(cfg, seed=5)
    ours = Transformer(cfg, max_context=96).eval()
    ours.load_weights(sd)
    tokens = torch.randint(0, 300, (1, 40), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = _independent_layer_share_forward(sd, cfg, tokens)
        prefill = ours(tokens[:, :33], torch.tensor([0]))
        steps = [ours(tokens[:, i:i + 1], torch.tensor([i])) for i in range(33, 40)]
    got = torch.cat([prefill] + steps, dim=1)
    assert (ref - got).abs().max().item() <= TOL


def test_rotate_half_conversion_of_interleaved_checkpoint_is_exact():
    """R1 weights permuted to rotate_half (what every export runs) give the same logits as HF layout."""
    from mobilellm_export.presets import PRESETS
    from mobilellm_export.model import random_weights, to_rotate_half

    cfg = PRESETS["tiny-r1"]
    sd = random_weights(cfg, seed=3)
    ref = Transformer(cfg, max_context=64).eval()
    ref.load_weights(sd)
    cfg2, sd2 = to_rotate_half(cfg, sd)
    assert cfg.rope_interleaved and not cfg2.rope_interleaved
    conv = Transformer(cfg2, max_context=64).eval()
    conv.load_weights(sd2)
    tokens = torch.randint(0, cfg.vocab_size, (1, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a = torch.cat([ref(tokens[:, :30], torch.tensor([0])), ref(tokens[:, 30:], torch.tensor([30]))], 1)
        b = torch.cat([conv(tokens[:, :30], torch.tensor([0])), conv(tokens[:, 30:], torch.tensor([30]))], 1)
    # exact up to fp32 rounding: relative to the logit range (|logits| ~ 10 with random_weights)
    assert (a - b).abs().max().item() <= 1e-6 * a.abs().max().item()
    assert not torch.equal(sd["layers.0.self_attn.q_proj.weight"], sd2["layers.0.self_attn.q_proj.weight"])
