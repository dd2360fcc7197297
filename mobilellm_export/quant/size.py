"""Bytes of a model under a recipe: what 4bit-auto plans against (a backend adds its own overhead)."""

from __future__ import annotations

import dataclasses

from mobilellm_export.quant.recipe import Recipe, WeightQuant, effective_group, same_grid


def block_linears(cfg) -> dict[str, tuple[int, int]]:
    """A decoder block's linears (names as in model.Transformer) -> (out_features, in_features)."""
    d, hd, h = cfg.dim, cfg.head_dim, cfg.hidden_dim
    return {"self_attn.q_proj": (cfg.n_heads * hd, d), "self_attn.k_proj": (cfg.n_kv_heads * hd, d),
            "self_attn.v_proj": (cfg.n_kv_heads * hd, d), "self_attn.o_proj": (d, cfg.n_heads * hd),
            "mlp.gate_proj": (h, d), "mlp.up_proj": (h, d), "mlp.down_proj": (d, h)}


def weight_bytes(n_rows: int, n_cols: int, w: WeightQuant) -> float:
    """Bytes of one [n_rows, n_cols] matrix in format `w`: integers plus block scales (fp32 when float)."""
    if not w.quantized:
        return n_rows * n_cols * 4
    groups = n_rows * (n_cols // w.group_size if w.group_size else 1)
    return n_rows * n_cols * w.bits / 8 + groups * (2 if w.scale_dtype == "bf16" else 4)


def block_bytes(cfg, recipe: Recipe) -> float:
    """Bytes of the decoder blocks' linears under `recipe` (overrides and group fallbacks applied)."""
    def cost(n: int, k: int, w: WeightQuant) -> float:  # at the group the linear really gets
        return weight_bytes(n, k, dataclasses.replace(w, group_size=effective_group(w, k)) if w.quantized else w)

    return sum(cost(n, k, recipe.weight_for(f"layers.{i}.{name}")) for i in range(cfg.n_layers)
               for name, (n, k) in block_linears(cfg).items())


def estimate_bytes(cfg, recipe: Recipe) -> int:
    """Rough artifact size: weights at their bit widths plus block scales (bf16/fp32).

    A tied matrix counts once when float or when lookup and head share one quantized grid (the
    bundle stores it once, in model.ptd), and twice otherwise.
    """
    d = cfg.dim
    emb = weight_bytes(cfg.vocab_size, d, recipe.embedding)
    head = weight_bytes(cfg.vocab_size, d, recipe.head)
    float_tied = not recipe.embedding.quantized and not recipe.head.quantized
    if cfg.tie_embeddings and (float_tied or (recipe.head.quantized and same_grid(recipe.embedding, recipe.head))):
        head = 0
    # fp32 norms, q/k norms and biases: whatever the config counts that is neither a linear nor a table
    linears = sum(n * k for _ in range(cfg.n_layers) for n, k in block_linears(cfg).values())
    small = cfg.param_count() - linears - cfg.vocab_size * d * (1 if cfg.tie_embeddings else 2)
    if recipe.rotate and cfg.tie_embeddings:  # the rotation's float pre-head (quant/transforms/rotate.py)
        small += d * d
    return int(block_bytes(cfg, recipe) + small * 4 + emb + head)
