"""Seeded faults: real export bugs injected into an otherwise correct Android export.

The code under test is the *target* (what lowers and serialises the model), never the reference:
each fault changes what the artifact computes or says, while the eager reference the gate compares
it with stays correct. A fault is applied at one of three levels:

    prepare   a function of the prepared model (`Android.prepare`'s structural copy), which shares
              its weight tensors with the reference: so a fault replaces modules and tensors,
              never writes into one (tests/test_faults.py checks the reference is untouched)
    export    a function of the ExportSpec the target lowers with: the artifact's own metadata
              (its constant methods) then differ from what bundle.json says
    file      a function of a finished bundle folder, edited after a clean export and re-hashed
              into bundle.json with the project's own manifest writer, so every sha256 check
              passes and only the semantic checks can see it

`gross` faults are bugs the gate must catch; `near` ones sit close to the thresholds, to find the
smallest fault it sees.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

SCALED_LINEAR = "layers.1.mlp.down_proj"  # the linear whose scales the scale faults touch
ONE_LAYER = 1  # the block (and cache) the one-layer faults touch


@dataclass(frozen=True)
class Fault:
    name: str
    level: str  # "prepare" | "export" | "file"
    severity: str  # "gross" | "near"
    description: str
    apply: Callable  # prepare: fn(prepared) -> None; export: fn(spec) -> spec; file: fn(bundle_dir) -> None
    recipe: str = "4bit"  # the recipe whose export it corrupts (its clean baseline uses the same one)


# ---- building blocks: replace, never modify in place --------------------------------------------

def _parent(root: nn.Module, fqn: str) -> tuple[nn.Module, str]:
    *path, leaf = fqn.split(".")
    mod = root
    for p in path:
        mod = getattr(mod, p)
    return mod, leaf


def _copy(mod: nn.Module) -> nn.Module:
    """A copy of `mod` with its own attribute/parameter/buffer dicts (tensors still shared)."""
    from mobilellm_export.nn_utils import structural_copy

    return structural_copy(mod)


def quantized_weight(w, **data):
    """The torchao quantized tensor `w` with some of its data tensors (qdata, scale, zero_point)
    replaced: a new tensor object, `w` unchanged."""
    args = [data.get(n, getattr(w, n)) for n in w.tensor_data_names]
    return type(w)(*args, *[getattr(w, n) for n in w.tensor_attribute_names])


def replace_weight(root: nn.Module, fqn: str, fn: Callable) -> None:
    """Swap the linear at `fqn` for a copy whose weight is fn(old weight)."""
    parent, leaf = _parent(root, fqn)
    new = _copy(getattr(parent, leaf))
    new.weight = nn.Parameter(fn(new.weight), requires_grad=False)
    setattr(parent, leaf, new)


def _scales(mul: Callable) -> Callable:
    def fn(w):
        return quantized_weight(w, scale=mul(w.scale.clone()))
    return fn


def _times(factor: float) -> Callable:
    return _scales(lambda s: (s.float() * factor).to(s.dtype))


def _one_group(factor: float) -> Callable:
    def mul(s):
        s[0, 0] = (s[0, 0].float() * factor).to(s.dtype)
        return s
    return _scales(mul)


# ---- RoPE ------------------------------------------------------------------------------------

def _rotary(prepared, **cfg_changes):
    """A MatmulRotary built from the model's config with some fields changed."""
    from mobilellm_export.model import Rotary
    from mobilellm_export.backends.executorch.program import MatmulRotary

    cfg = dataclasses.replace(prepared.cfg, **cfg_changes)
    return MatmulRotary(Rotary(cfg, prepared.max_context))


def rope_sin_cos_swapped(prepared) -> None:
    rope = _rotary(prepared)
    rope.cos, rope.sin = rope.sin, rope.cos
    prepared.rope = rope


def rope_interleaved_layout(prepared) -> None:
    # The weights are in rotate_half layout (to_rotate_half); the artifact rotates pairs (2i, 2i+1).
    prepared.rope = _rotary(prepared, rope_interleaved=True)


def rope_theta(factor: float) -> Callable:
    def fn(prepared) -> None:
        prepared.rope = _rotary(prepared, rope_theta=prepared.cfg.rope_theta * factor)
    return fn


# ---- attention and KV cache --------------------------------------------------------------------

def _kv(cache, shift: int = 0, scale_mul: float = 1.0):
    """A copy of a prepared CustomKVCacheAttention that writes k/v `shift` slots late and/or
    scales the scores; with a shift its caches hold `shift` more slots so the write stays in range."""
    from mobilellm_export.backends.executorch.program import CustomKVCacheAttention

    class Faulty(CustomKVCacheAttention):
        def attend(self, q, k, v, start_pos):
            B, S, H, D = q.shape
            p0 = start_pos[0].item()
            torch._check(p0 >= 0)
            torch._check(p0 + shift + S <= self.k_cache.shape[1])
            dt = self.k_cache.dtype
            torch.ops.llama.update_cache(k.to(dt).contiguous(), self.k_cache, p0 + shift)
            torch.ops.llama.update_cache(v.to(dt).contiguous(), self.v_cache, p0 + shift)
            out = torch.ops.llama.custom_sdpa(q.to(dt).contiguous(), self.k_cache, self.v_cache, p0, None, 0.0,
                                              True, self.scale)
            return out.to(q.dtype).reshape(B, -1, H * D)

    B, C, n_kv, D = cache.k_cache.shape
    new = Faulty(B, C + shift, cache.n_heads, n_kv, D, cache.k_cache.dtype)
    new.max_context = cache.max_context
    new.scale = cache.scale * scale_mul
    return new


def kv_shift(layers: list[int] | None) -> Callable:
    def fn(prepared) -> None:
        for i in (range(len(prepared.caches)) if layers is None else layers):
            prepared.caches[i] = _kv(prepared.caches[i], shift=1)
    return fn


def attention_scale(factor: float) -> Callable:
    def fn(prepared) -> None:
        for i in range(len(prepared.caches)):
            prepared.caches[i] = _kv(prepared.caches[i], scale_mul=factor)
    return fn


def qk_norm_dropped(prepared) -> None:
    dropped = 0
    for block in prepared.layers:
        if block.self_attn.qk_norm is not None:
            attn = _copy(block.self_attn)
            attn.qk_norm = None
            block.self_attn = attn
            dropped += 1
    if not dropped:
        raise ValueError("qk_norm_dropped needs a model with QK-norm (an R1-shaped config)")


# ---- norms -------------------------------------------------------------------------------------

def final_norm_dropped(prepared) -> None:
    prepared.norm = nn.Identity()


def rms_eps(factor: float) -> Callable:
    def fn(prepared) -> None:
        from mobilellm_export.nn_utils import replace_modules
        from mobilellm_export.backends.executorch.program import LinearMeanRMS

        def swap(m):
            if isinstance(m, LinearMeanRMS):
                new = _copy(m)
                new.eps = m.eps * factor
                return new
            return None
        replace_modules(prepared, swap)
    return fn


# ---- weights and their layout --------------------------------------------------------------------

def layer_from_other_layer(prepared) -> None:
    # Block ONE_LAYER + 1 computes with block ONE_LAYER's weights (e.g. a name-mapping bug).
    prepared.layers[ONE_LAYER + 1] = _copy(prepared.layers[ONE_LAYER])


def embedding_nibbles_flipped(prepared) -> None:
    from mobilellm_export.backends.executorch.program import TiedEmbeddingLookup

    emb = prepared.embed_tokens
    if not (isinstance(emb, TiedEmbeddingLookup) and emb.four_bit):
        raise ValueError("embedding_nibbles_flipped needs a shared 4-bit embedding (recipe 4bit-fast)")
    new = _copy(emb)
    p = emb.packed
    new.packed = ((p & 0x0F) << 4) | (p >> 4)  # high and low nibble exchanged
    prepared.embed_tokens = new


def head_rows_shifted(prepared) -> None:
    # The head reads the shared table one row off: the logit of token t comes from row t - 1.
    def fn(w):
        return quantized_weight(w, **{n: getattr(w, n).roll(1, 0) for n in w.tensor_data_names})
    replace_weight(prepared, "lm_head", fn)


# ---- export level: the artifact's metadata lie ------------------------------------------------------

def eos_ids_wrong(spec):
    return dataclasses.replace(spec, eos_ids=tuple(e + 1 for e in spec.eos_ids))


def max_seq_len_halved(spec):
    return dataclasses.replace(spec, max_seq_len=max(1, spec.max_seq_len // 2))


# ---- file level: a bundle file from elsewhere, re-hashed ------------------------------------------------

def other_tokenizer(bundle: Path) -> None:
    """tokenizer.json from another model of the same size: the same 512 ids, other merges and pieces."""
    from .harness import make_tokenizer

    make_tokenizer(Path(bundle), reversed_words=True, with_config=False)


def bos_policy_flipped(bundle: Path) -> None:
    p = Path(bundle) / "tokenizer_config.json"
    cfg = json.loads(p.read_text())
    cfg["add_bos_token"] = not cfg.get("add_bos_token", False)
    p.write_text(json.dumps(cfg))


FAULTS: list[Fault] = [
    Fault("rope_sin_cos_swapped", "prepare", "gross", "RoPE tables swapped: cos where sin belongs",
          rope_sin_cos_swapped),
    Fault("rope_interleaved_layout", "prepare", "gross",
          "RoPE rotates interleaved pairs while the weights are in rotate_half layout", rope_interleaved_layout),
    Fault("qk_norm_dropped", "prepare", "gross", "QK-norm left out of every attention", qk_norm_dropped),
    Fault("kv_write_plus1_all", "prepare", "gross", "every layer writes K/V at position + 1", kv_shift(None)),
    Fault("attention_scale_x1.25", "prepare", "gross", "attention scale 1.25 / sqrt(head_dim)",
          attention_scale(1.25)),
    Fault("layer_scales_x2", "prepare", "gross", f"every group scale of {SCALED_LINEAR} doubled",
          lambda m: replace_weight(m, SCALED_LINEAR, _times(2.0))),
    Fault("layer_from_other_layer", "prepare", "gross", f"block {ONE_LAYER + 1} runs block {ONE_LAYER}'s weights",
          layer_from_other_layer),
    Fault("final_norm_dropped", "prepare", "gross", "the final RMSNorm left out", final_norm_dropped),
    Fault("embedding_nibbles_flipped", "prepare", "gross",
          "shared 4-bit embedding packed with high and low nibbles exchanged", embedding_nibbles_flipped,
          recipe="4bit-fast"),
    Fault("head_rows_shifted", "prepare", "gross", "tied head reads the table one row off", head_rows_shifted),
    Fault("eos_ids_wrong", "export", "gross", "the .pte's get_eos_ids is every EOS id + 1", eos_ids_wrong),
    Fault("max_seq_len_lies", "export", "gross",
          "the .pte takes and reports half the max_seq_len bundle.json promises", max_seq_len_halved),
    Fault("tokenizer_from_other_model", "file", "gross",
          "tokenizer.json of another 512-id model (other merges), re-hashed", other_tokenizer),
    Fault("bos_policy_flipped", "file", "gross", "tokenizer_config.json add_bos_token flipped, re-hashed",
          bos_policy_flipped),
    Fault("layer_scales_x1.1", "prepare", "near", f"every group scale of {SCALED_LINEAR} x 1.1",
          lambda m: replace_weight(m, SCALED_LINEAR, _times(1.1))),
    Fault("one_group_scale_x2", "prepare", "near", f"one group scale (row 0, group 0) of {SCALED_LINEAR} doubled",
          lambda m: replace_weight(m, SCALED_LINEAR, _one_group(2.0))),
    Fault("rope_theta_plus1pct", "prepare", "near", "RoPE theta x 1.01", rope_theta(1.01)),
    Fault("rope_theta_minus1pct", "prepare", "near", "RoPE theta x 0.99", rope_theta(0.99)),
    Fault("kv_write_plus1_one_layer", "prepare", "near", f"layer {ONE_LAYER} alone writes K/V at position + 1",
          kv_shift([ONE_LAYER])),
    Fault("rms_eps_x1000", "prepare", "near", "every RMS norm's eps x 1000", rms_eps(1000.0)),
    # Smaller still, to bracket the smallest fault the gate sees.
    Fault("layer_scales_x1.03", "prepare", "near", f"every group scale of {SCALED_LINEAR} x 1.03",
          lambda m: replace_weight(m, SCALED_LINEAR, _times(1.03))),
    Fault("layer_scales_x1.01", "prepare", "near", f"every group scale of {SCALED_LINEAR} x 1.01",
          lambda m: replace_weight(m, SCALED_LINEAR, _times(1.01))),
    Fault("rope_theta_plus0.3pct", "prepare", "near", "RoPE theta x 1.003", rope_theta(1.003)),
    Fault("rope_theta_plus0.1pct", "prepare", "near", "RoPE theta x 1.001", rope_theta(1.001)),
    Fault("rms_eps_x100", "prepare", "near", "every RMS norm's eps x 100", rms_eps(100.0)),
    Fault("rms_eps_x10", "prepare", "near", "every RMS norm's eps x 10", rms_eps(10.0)),
]

BY_NAME = {f.name: f for f in FAULTS}
assert len(BY_NAME) == len(FAULTS)
