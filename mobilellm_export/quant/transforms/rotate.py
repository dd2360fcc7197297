"""Residual-stream rotation (QuaRot / SpinQuant's R1, without online Hadamards): flatter activations, exactly.

int8 per-token activations lose most where a few channels dwarf the rest. An orthogonal R spreads
every channel over all of them, and a pre-norm decoder computes the same function in the rotated
basis when every matrix that reads or writes the residual stream absorbs R:

    norm gains folded into their consumers, then set to 1 (RMS(xR) = RMS(x) R needs unit gains)
    q/k/v, gate/up:           W <- W diag(g) R          (read the normed stream)
    o_proj, down_proj:        W <- R^T W                (write it)
    embedding (= tied head):  E <- E R                  (stored once, still tied)
    final norm, tied head:    pre_head = R^T diag(g) R  (a float D x D linear before the head)
    final norm, own head:     W <- W diag(g) R

The final norm's gain cannot fold into a tied head without untying it, so it goes into a small
float linear (D^2 weights: 1.3 MB on SmolLM2). Quantized to 8da8w it measured worse than no
rotation at all (SmolLM2 `8bit`, eager KL 0.0334 against 0.0206 unrotated and 0.0099 with it float).
down_proj's input (after the elementwise SiLU product) is not rotated: per-channel smoothing
(transforms/smooth.py) is what commutes with that product.

R is a randomized Hadamard: random signs times (a seeded random orthogonal m x m) (x) H_{2^k} for
D = m 2^k, so each channel spreads evenly over 2^k others. Seeded: verify rebuilds the same model.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from mobilellm_export.errors import UserError
from mobilellm_export.model import Transformer


def hadamard(n: int) -> torch.Tensor:
    """The orthonormal Sylvester Hadamard matrix of order n (a power of two)."""
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h / math.sqrt(n)


def rotation(dim: int, seed: int = 0) -> torch.Tensor:
    """A seeded orthogonal [dim, dim] float64 matrix: random signs x (random orthogonal (x) Hadamard)."""
    g = torch.Generator().manual_seed(seed)
    p = dim & -dim  # the largest power of two dividing dim
    q, r = torch.linalg.qr(torch.randn(dim // p, dim // p, generator=g, dtype=torch.float64))
    q = q * torch.sign(torch.diag(r))
    signs = torch.randint(0, 2, (dim,), generator=g).double() * 2 - 1
    return signs[:, None] * torch.kron(q.contiguous(), hadamard(p))


def check(model: Transformer) -> None:
    if model.cfg.norm_layout != "pre":
        raise UserError(f"recipe key rotate needs pre-norm blocks; this model's are {model.cfg.norm_layout!r} "
                        f"(a norm on the residual writes does not commute with a rotation)")


@torch.no_grad()
def rotate(model: Transformer, seed: int = 0) -> dict:
    """Rotate `model`'s residual stream in place (same function); returns facts for the report."""
    check(model)
    R = rotation(model.cfg.dim, seed)

    def reads(lin: nn.Linear, gain: torch.Tensor) -> None:
        lin.weight.copy_((lin.weight.double() * gain.double()[None, :]) @ R)

    def writes(lin: nn.Linear) -> None:
        lin.weight.copy_(R.T @ lin.weight.double())
        if lin.bias is not None:
            lin.bias.copy_(lin.bias.double() @ R)

    for blk in model.layers:  # each block object once (MobileLLM's shared blocks apply twice)
        attn, mlp = blk.self_attn, blk.mlp
        for norm, consumers in ((blk.input_layernorm, (attn.q_proj, attn.k_proj, attn.v_proj)),
                                (blk.post_attention_layernorm, (mlp.gate_proj, mlp.up_proj))):
            gain = norm.gain().detach().clone()
            for lin in consumers:
                reads(lin, gain)
            norm.weight.fill_(0.0 if norm.plus_one else 1.0)
        writes(attn.o_proj)
        writes(mlp.down_proj)
    emb = model.embed_tokens.weight
    emb.copy_(emb.double() @ R)
    gain = model.norm.gain().detach().double().clone()
    model.norm.weight.fill_(0.0 if model.norm.plus_one else 1.0)
    if model.cfg.tie_embeddings:  # the head is E R already: the gain goes into a linear before it
        pre = nn.Linear(model.cfg.dim, model.cfg.dim, bias=False).to(emb.dtype)
        pre.weight.copy_(R.T @ torch.diag(gain) @ R)  # symmetric: its own transpose
        model.pre_head = pre
    else:
        reads(model.lm_head, gain)
    return {"seed": seed, "dim": model.cfg.dim, "hadamard_order": model.cfg.dim & -model.cfg.dim}


class Rotate:
    """The recipe key `rotate = true`: runs before calibration (the Hessians see the rotated model)."""
    name = "rotate"
    needs_hessian = False

    def check_recipe(self, recipe, params: dict, where: str) -> None:
        if not (recipe.linear.quantized and recipe.linear.activations == "int8_dynamic"):
            raise UserError(f"{where}: rotate flattens activations for int8 dynamic activation "
                            f"quantization; [linear] has none")
        if recipe.auto is not None:  # the search would score blocks of the unrotated model, whose
            # linears do not even read the same basis
            raise UserError(f"{where}: rotate and [auto] together are not supported yet")

    def apply(self, model: Transformer, H: dict | None, seed: int = 0) -> dict:
        return rotate(model, seed)
