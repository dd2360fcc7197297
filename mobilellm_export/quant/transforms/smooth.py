"""Activation smoothing (SmoothQuant, Xiao et al. 2023): move outlier channels into the weights, exactly.

int8 per-token activation quantization loses most on tokens where a few channels dwarf the rest:
its step is set by the token's range. Where a linear's input comes from something that can scale
its output channels for free (an RMSNorm's weight; up_proj's rows, for down_proj's input), dividing
channel j by s_j there and multiplying column j of every consumer by s_j computes the same function
with flatter activations and slightly harder weights:

    s_j = rms(x_j)^alpha / max_i |W_ij|^(1 - alpha)      (rms from calibration: sqrt(H_jj))

o_proj is left alone (its input is attention's output; under GQA a v_proj row feeds several heads).
The Hessians of the consumers change with their inputs: H' = H / (s s^T).
"""

from __future__ import annotations

import torch

from mobilellm_export.errors import UserError
from mobilellm_export.model import Transformer


def groups(model: Transformer) -> list[tuple[str, object, list[str]]]:
    """(label, producer, consumer linear names) per smoothable input of each block."""
    out = []
    layout = model.cfg.norm_layout
    for i, blk in enumerate(model.layers):
        p = f"layers.{i}"
        if layout != "post":  # OLMo 2's post-norm blocks feed attention and MLP the raw residual stream
            out.append((f"{p}.input", blk.input_layernorm,
                        [f"{p}.self_attn.q_proj", f"{p}.self_attn.k_proj", f"{p}.self_attn.v_proj"]))
            mlp_norm = blk.pre_feedforward_layernorm if layout == "sandwich" else blk.post_attention_layernorm
            out.append((f"{p}.post_attention", mlp_norm, [f"{p}.mlp.gate_proj", f"{p}.mlp.up_proj"]))
        out.append((f"{p}.mlp_hidden", blk.mlp.up_proj, [f"{p}.mlp.down_proj"]))
    return out


@torch.no_grad()
def smooth(model: Transformer, H: dict[str, torch.Tensor], alpha: float) -> dict:
    """Rescale `model` in place (same function) and `H` to match; returns facts for the report."""
    lin = dict((n, m) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear))
    ratios = []
    for _, producer, consumers in groups(model):
        h = H[consumers[0]]
        rms = torch.diag(h).clamp_min(1e-12).sqrt()
        wmax = torch.stack([lin[c].weight.abs().amax(0) for c in consumers]).amax(0).clamp_min(1e-8)
        s = (rms ** alpha / wmax ** (1 - alpha)).clamp_min(1e-5)
        s = s / s.max()  # scale-free: only the ratios move error between activations and weights
        s = s / torch.exp(torch.log(s).mean())  # geometric mean 1: neither side drifts in magnitude
        if isinstance(producer, torch.nn.Linear):
            producer.weight.div_(s[:, None])  # up_proj's rows: down_proj's input channels
        elif producer.plus_one:  # Gemma's gain is 1 + w
            producer.weight.copy_((1.0 + producer.weight) / s - 1.0)
        else:
            producer.weight.div_(s)  # an RMSNorm's gain
        for c in consumers:
            lin[c].weight.mul_(s[None, :])
        hs = h / (s[:, None] * s[None, :])
        for c in consumers:
            H[c] = hs
        ratios.append(float(s.max() / s.min()))
    return {"alpha": alpha, "groups": len(ratios), "max_ratio": round(max(ratios), 2) if ratios else None}


class Smooth:
    """The recipe key `smooth = alpha`: runs after calibration and keeps the Hessians in step."""
    name = "smooth"
    needs_hessian = True

    def consumers(self, model: Transformer) -> set[str]:
        return {c for _, _, cs in groups(model) for c in cs}

    def check_recipe(self, recipe, params: dict, where: str) -> None:
        if not (recipe.linear.quantized and recipe.linear.activations == "int8_dynamic"):
            raise UserError(f"{where}: smooth flattens activations for int8 dynamic activation "
                            f"quantization; [linear] has none")

    def apply(self, model: Transformer, H: dict, alpha: float) -> dict:
        return smooth(model, H, alpha)
