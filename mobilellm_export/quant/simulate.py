"""Simulated quantization: the eager reference's arithmetic, cheap to apply and to undo.

A simulated linear computes with its chosen integers dequantized (q * scale, the stored scale
dtype) and, for `int8_dynamic` recipes, torchao's own int8 asymmetric per-token quant-dequant of
its input: exactly what torchao's eager 8da4w/8da8w tensors compute, without building them. The
4bit-auto search tries many (layer, format) pairs this way, and benchmarks rank methods on models
that are not our Transformer (anything with nn.Linear weights).
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn as nn

from . import rounding
from .recipe import WeightQuant


def choose(w: torch.Tensor, wq: WeightQuant, group: int, H: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The integers and scales of weight `w` under `wq` (group: the effective group, 0 = per channel).
    `H`: the layer inputs' X^T X / n; GPTQ needs it, the mse search is weighted by its diagonal."""
    if wq.rounding == "gptq":
        return rounding.gptq(w, H, wq.bits, group, wq.scale_dtype, wq.scales, act_order=wq.act_order)
    return rounding.round_weight(w, wq.bits, group, wq.scale_dtype, wq.scales, None if H is None else torch.diag(H))


def dequant(q: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    n, k = q.shape
    return (q.float().reshape(n, s.shape[1], -1) * s.float().unsqueeze(-1)).reshape(n, k)


def _act_qdq(mod, args):
    from torchao.quantization.quantize_.workflows.intx.intx_unpacked_to_int8_tensor import (
        _apply_int8_act_asym_per_token_quant_dequant)

    return (_apply_int8_act_asym_per_token_quant_dequant(args[0]),) + tuple(args[1:])


@contextlib.contextmanager
def simulated(linears: dict[str, nn.Linear], chosen: dict[str, tuple[torch.Tensor, torch.Tensor, WeightQuant]]):
    """Within the block, each named linear computes with its (q, scale) and the format's activations."""
    saved, hooks = {}, []
    try:
        for name, (q, s, wq) in chosen.items():
            m = linears[name]
            saved[name] = m.weight.data
            m.weight.data = dequant(q, s).to(m.weight.dtype)
            if wq.activations == "int8_dynamic":
                hooks.append(m.register_forward_pre_hook(_act_qdq))
        yield
    finally:
        for h in hooks:
            h.remove()
        for name, w in saved.items():
            linears[name].weight.data = w
