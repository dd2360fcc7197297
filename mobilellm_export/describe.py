"""`inspect`: a human summary of a checkpoint and the artifact sizes each recipe would give."""

from __future__ import annotations

from .quant.recipe import available, estimate_bytes, load_recipe
from .sources import Checkpoint


def describe(ck: Checkpoint) -> str:
    c = ck.config
    rope = "interleaved" if c.rope_interleaved else "rotate_half"
    nope = [i for i in range(c.n_layers) if not c.uses_rope(i)]
    lines = [
        f"source        {ck.source} ({ck.kind})",
        f"architecture  {c.arch}: {c.n_layers} layers{' x2 (layer sharing)' if c.layer_sharing else ''}, "
        f"dim {c.dim}, MLP {c.hidden_dim}, heads {c.n_heads}/{c.n_kv_heads} (head_dim {c.head_dim})",
        f"parameters    {c.param_count():,} ({'tied' if c.tie_embeddings else 'untied'} embeddings; "
        f"embedding {c.vocab_size * c.dim:,})",
        f"attention     RoPE {rope} theta {c.rope_theta:g}"
        + (f", scaling {c.rope_scaling['rope_type']}" if c.rope_scaling else "")
        + (", QK-norm" if c.qk_norm else "") + (f", NoPE layers {nope}" if nope else ""),
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
