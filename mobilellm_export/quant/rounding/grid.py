"""The weight grid every method fills: symmetric integers in [qmin, qmax] times a stored scale.

The format is fixed by the runtime (XNNPACK: symmetric int4 in groups of 32 with bf16 scales, or
int8 per channel); only *which* integers and scales fill it is ours to choose. Scales are kept in
fp32 but already rounded to their storage dtype: the error that matters is the one computed with
the scale the runtime reads. Plugins use these helpers to round exactly as torchao does.
"""

from __future__ import annotations

import torch

QRANGE = {4: (-8, 7), 8: (-128, 127)}
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


def stored(s: torch.Tensor, scale_dtype: str) -> torch.Tensor:
    """The scale as the runtime reads it (bf16 rounding), kept in fp32 for the arithmetic; never 0."""
    return s.clamp_min(torch.finfo(torch.float32).tiny * 2 ** 30).to(DTYPES[scale_dtype]).float()


def inv(s: torch.Tensor, scale_dtype: str) -> torch.Tensor:
    """1 / scale as torchao's quantize_affine computes it: in the scale's own dtype (bf16 rounds it)."""
    return (1.0 / s.to(DTYPES[scale_dtype])).float()


def nearest(wg: torch.Tensor, s: torch.Tensor, bits: int, scale_dtype: str) -> torch.Tensor:
    """Nearest integers on scales `s`, exactly as torchao rounds: times the reciprocal, half to even."""
    lo, hi = QRANGE[bits]
    return (wg * inv(s, scale_dtype).unsqueeze(-1)).round().clamp(lo, hi)


def grouped(w: torch.Tensor, group: int) -> torch.Tensor:
    """[N, K] -> [N, K / group, group] in fp32 (group 0: one group per row)."""
    n, k = w.shape
    g = group or k
    return w.float().reshape(n, k // g, g)
