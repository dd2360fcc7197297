"""`inspect`: a human summary of a checkpoint and the artifact sizes each recipe would give."""

from __future__ import annotations

from mobilellm_export.quant.recipe import available, load_recipe
from mobilellm_export.quant.size import estimate_bytes
from mobilellm_export.checkpoints import Checkpoint
from mobilellm_export.presets import RANDOM_WEIGHTS


def _global(c) -> list[int]:
    return [i for i in range(c.n_layers) if not c.sliding_layers[i]]


def describe(ck: Checkpoint) -> str:
    c = ck.config
    rope = "interleaved" if c.rope_interleaved else "rotate_half"
    nope = [i for i in range(c.n_layers) if not c.uses_rope(i)]
    lines = [
        f"source        {ck.source} ({ck.kind})",
        *([f"weights       {RANDOM_WEIGHTS}"] if ck.kind == "preset" else []),
        f"architecture  {c.arch}: {c.n_layers} layers{' x2 (layer sharing)' if c.layer_sharing else ''}, "
        f"dim {c.dim}, MLP {c.hidden_dim}, heads {c.n_heads}/{c.n_kv_heads} (head_dim {c.head_dim})",
        f"parameters    {c.param_count():,} ({'tied' if c.tie_embeddings else 'untied'} embeddings; "
        f"embedding {c.vocab_size * c.dim:,})",
        f"attention     RoPE {rope} theta {c.rope_theta:g}"
        + (f", scaling {c.rope_scaling['rope_type']}" if c.rope_scaling else "")
        + (", QK-norm" if c.qk_norm else "") + (f", NoPE layers {nope}" if nope else "")
        + ({"head": ", learned q/k norm per head", "proj": ", learned q/k norm over the projection"}.get(
            c.qk_norm_learned, "")) + (", q/k/v biases" if c.attn_bias else "")
        + (f", scale {c.query_pre_attn_scalar:g}^-0.5" if c.query_pre_attn_scalar else ""),
        *([f"sliding       window {c.sliding_window} on {sum(c.sliding_layers)} of {c.n_layers} layers"
           + (f" (RoPE theta {c.rope_local_theta:g}); full attention on {_global(c)}" if c.rope_local_theta else "")]
          if c.sliding_layers and any(c.sliding_layers) else []),
        f"block         {c.norm_layout}-norm ({len(c.norms_per_block)} norms{', 1 + w' if c.norm_plus_one else ''}), "
        f"{'GeGLU (tanh GELU)' if c.mlp_act == 'gelu_tanh' else 'SwiGLU'} MLP"
        + (", embeddings x sqrt(dim)" if c.scale_embeddings else ""),
        f"context       {c.max_position_embeddings} positions; KV cache {c.kv_bytes_per_token() / 1000:.1f} KB/token fp16",
    ]
    t = ck.tokenizer
    if t is None:
        lines.append(f"tokenizer     none (vocab {c.vocab_size}); pass --tokenizer for text")
    else:
        lines.append(f"tokenizer     {t.vocab_size} ids, bos {t.bos_id}, eos {t.eos_id}, "
                     f"chat template {'yes' if t.chat_template else 'no'}")
    lines.append(f"eos ids       {list(c.eos_token_ids)}")
    lines.append("estimated artifact size:")
    for name in available():
        r = load_recipe(name)
        size = "--size-mb" if r.auto is not None else f"{estimate_bytes(c, r) / 1e6:8.1f} MB"
        lines.append(f"  {name:<10} {size:>11s}   {r.description}")
    return "\n".join(lines)
