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

from mobilellm_export.quant.recipe import WeightQuant
from mobilellm_export.quant.rounding import ROUNDING


def choose(w: torch.Tensor, wq: WeightQuant, group: int, H: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The integers and scales of weight `w` under `wq` (group: the effective group, 0 = per channel),
    by the registered rounding method `wq.rounding` (quant/rounding/). `H`: the layer inputs'
    X^T X / n; GPTQ needs it, the mse search is weighted by its diagonal."""
    return ROUNDING.get(wq.rounding).choose(w, H, wq, group)


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


# ---- weight-only references: the stored integers, float activations ---------------------------------

def quantized(w) -> tuple[torch.Tensor, torch.Tensor, int, int] | None:
    """(int8 integers [N, K], float scales [N, K // group], bits, group) of a torchao weight, else None."""
    if not hasattr(w, "qdata"):
        return None
    q, s = w.qdata, w.scale.float().reshape(w.qdata.shape[0], -1)
    bits = 4 if w.target_dtype == torch.int4 else 8
    return q, s, bits, q.shape[1] // s.shape[1]


class DequantLinear(nn.Module):
    """A quantized linear as a weight-only runtime computes it: the stored integers times their
    scales, rounded once to `scale_dtype` (the dtype the runtime stores them in: fp32 for ONNX
    Runtime's MatMulNBits, fp16 for Core ML), with float activations."""

    def __init__(self, linear: nn.Linear, scale_dtype: torch.dtype = torch.float32):
        super().__init__()
        self.source = [linear]  # the torchao linear whose integers export serialises (a list: not a submodule)
        q, s, _, _ = quantized(linear.weight)
        self.register_buffer("weight", dequant(q, s.to(scale_dtype)), persistent=False)
        self.bias = linear.bias  # Qwen2's q/k/v biases stay float

    def forward(self, x):
        return nn.functional.linear(x, self.weight, self.bias)


def weight_only_reference(model, scale_dtype: torch.dtype = torch.float32):
    """A structural copy whose quantized linears compute with float activations (DequantLinear, scales
    rounded to `scale_dtype`); the embedding lookup is unchanged (it already dequantizes)."""
    from mobilellm_export.nn_utils import replace_modules, structural_copy

    ref = structural_copy(model)
    replace_modules(ref, lambda m: DequantLinear(m, scale_dtype)
                    if isinstance(m, nn.Linear) and quantized(m.weight) else None)
    return ref.eval()
