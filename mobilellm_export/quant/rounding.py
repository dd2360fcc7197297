"""Choosing the integers of a symmetric weight grid: scale search and GPTQ error feedback.

The format is fixed by the runtime (XNNPACK: symmetric int4 in groups of 32 with bf16 scales, or
int8 per channel); only *which* integers and scales fill it is ours to choose. Every function
returns (q, scale): q int8 [N, K] within the grid, scale [N, K/g] already rounded to its storage
dtype, because the error that matters is the one computed with the scale the runtime reads.

- `minmax`: torchao's rule, scale = max|w| / ((qmax - qmin) / 2). For int4 that is max/7.5, and the
  largest positive weight rounds to 8 and is clipped to 7.
- `mse`: per group, the scale (from a grid of clipping ratios, then one least-squares refinement)
  that minimises the squared error, weighted by the input's second moment E[x_j^2] when
  calibration gave one (errors on channels the activations never drive cost nothing).
- `hqq`: torchao's half-quadratic scale-only search (unweighted).
- `gptq`: quantize column by column and push each column's error onto the columns not yet
  quantized, through the inverse Hessian of the layer's calibration inputs (Frantar et al. 2022).
  Group scales are chosen with `mse` (or `minmax`) on the error-updated weights as each group starts.
"""

from __future__ import annotations

import torch

QRANGE = {4: (-8, 7), 8: (-128, 127)}
_DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
SCALE_METHODS = ("minmax", "mse", "hqq")


def _stored(s: torch.Tensor, scale_dtype: str) -> torch.Tensor:
    """The scale as the runtime reads it (bf16 rounding), kept in fp32 for the arithmetic; never 0."""
    return s.clamp_min(torch.finfo(torch.float32).tiny * 2 ** 30).to(_DTYPES[scale_dtype]).float()


def _inv(s: torch.Tensor, scale_dtype: str) -> torch.Tensor:
    """1 / scale as torchao's quantize_affine computes it: in the scale's own dtype (bf16 rounds it)."""
    return (1.0 / s.to(_DTYPES[scale_dtype])).float()


def _quant(wg: torch.Tensor, s: torch.Tensor, bits: int, scale_dtype: str) -> torch.Tensor:
    """Nearest integers on scales `s`, exactly as torchao rounds: times the reciprocal, half to even."""
    lo, hi = QRANGE[bits]
    return (wg * _inv(s, scale_dtype).unsqueeze(-1)).round().clamp(lo, hi)


def _grouped(w: torch.Tensor, group: int) -> torch.Tensor:
    n, k = w.shape
    g = group or k
    return w.float().reshape(n, k // g, g)


def minmax_scale(wg: torch.Tensor, bits: int, scale_dtype: str) -> torch.Tensor:
    lo, hi = QRANGE[bits]
    return _stored(wg.abs().amax(-1) / ((hi - lo) / 2), scale_dtype)


def mse_scale(wg: torch.Tensor, bits: int, scale_dtype: str, h: torch.Tensor | None = None,
              ratios: int = 24) -> torch.Tensor:
    """Per group of `wg` [..., G, g], the stored scale minimising sum_j h_j (w_j - s q_j)^2.

    Candidates: max|w| / d for d from qmax - 1.5 (mild clipping) to |qmin| (the largest magnitude
    exact when it is negative, as llama.cpp's Q4_0 rule), then one least-squares step for the best.
    """
    lo, hi = QRANGE[bits]
    h = torch.ones_like(wg) if h is None else h.expand_as(wg)

    def err(s):
        return (h * (wg - _quant(wg, s, bits, scale_dtype) * s.unsqueeze(-1)) ** 2).sum(-1)

    amax = wg.abs().amax(-1)
    best_s = minmax_scale(wg, bits, scale_dtype)
    best_e = err(best_s)
    for d in torch.linspace(hi - 1.5, -lo + 0.25, ratios).tolist():
        s = _stored(amax / d, scale_dtype)
        e = err(s)
        better = e < best_e
        best_s, best_e = torch.where(better, s, best_s), torch.where(better, e, best_e)
    # Least squares for the scale given the chosen integers, kept where it lowers the error.
    q = _quant(wg, best_s, bits, scale_dtype)
    den = (h * q * q).sum(-1)
    ls = _stored(torch.where(den > 0, (h * wg * q).sum(-1) / den.clamp_min(1e-30), best_s), scale_dtype)
    return torch.where(err(ls) < best_e, ls, best_s)


def hqq_scale(wg: torch.Tensor, bits: int, scale_dtype: str) -> torch.Tensor:
    from torchao.quantization.quant_primitives import _choose_qparams_and_quantize_scale_only_hqq

    n, groups, g = wg.shape
    lo, hi = QRANGE[bits]
    _, s = _choose_qparams_and_quantize_scale_only_hqq(wg.reshape(n, groups * g), [1, g], lo, hi)
    return _stored(s.reshape(n, groups), scale_dtype)


def choose_scale(wg, bits, scale_dtype, method, h=None):
    if method == "minmax":
        return minmax_scale(wg, bits, scale_dtype)
    if method == "mse":
        return mse_scale(wg, bits, scale_dtype, h)
    if method == "hqq":
        return hqq_scale(wg, bits, scale_dtype)
    raise ValueError(f"unknown scale method {method!r} (known: {', '.join(SCALE_METHODS)})")


def round_weight(w: torch.Tensor, bits: int, group: int, scale_dtype: str, method: str = "minmax",
                 hdiag: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Round-to-nearest on the chosen scales. `hdiag` [K]: the inputs' E[x^2] (weights the mse search)."""
    wg = _grouped(w, group)
    h = None if hdiag is None else _grouped(hdiag[None, :], group)
    s = choose_scale(wg, bits, scale_dtype, method, h)
    return _quant(wg, s, bits, scale_dtype).reshape(w.shape).to(torch.int8), s


def gptq(w: torch.Tensor, H: torch.Tensor, bits: int, group: int, scale_dtype: str, method: str = "mse",
         damp: float = 0.01, block: int = 128, act_order: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """GPTQ with lazy block updates, on CPU in fp32.

    H [K, K]: the layer inputs' second moment (X^T X / n) from calibration. With `act_order`,
    columns are visited by decreasing H_jj; the group scales are then fixed up front from the
    un-updated weights (static groups), since a group's columns are no longer visited together.
    """
    W = w.detach().float().clone()
    n, k = W.shape
    g = group or k
    H = H.detach().float().clone()
    dead = torch.diag(H) == 0  # inputs never driven: any integer is exact there
    H[dead, dead] = 1
    W[:, dead] = 0
    lo, hi = QRANGE[bits]
    scales = torch.empty(n, k // g)
    static = act_order
    hdiag = torch.diag(H).clone()  # E[x_j^2]: weights the scale search (undamped)
    if static:
        scales = choose_scale(_grouped(W, g), bits, scale_dtype, method, _grouped(hdiag[None, :], g))
    perm = torch.argsort(hdiag, descending=True) if act_order else torch.arange(k)
    W, H = W[:, perm], H[perm][:, perm]
    H.diagonal().add_(damp * torch.diag(H).mean())
    L = torch.linalg.cholesky(H)
    Hinv = torch.linalg.cholesky(torch.cholesky_inverse(L), upper=True)
    Q = torch.zeros_like(W)
    col_scale = torch.empty(n, k)  # the scale each (permuted) column was quantized with
    for i1 in range(0, k, block):
        i2 = min(i1 + block, k)
        W1, Err1, Hinv1 = W[:, i1:i2].clone(), torch.zeros(n, i2 - i1), Hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = i1 + i
            if not static and col % g == 0:  # a new group: its scale from the weights as updated so far
                grp = W1[:, i:i + g] if i + g <= i2 - i1 else torch.cat([W1[:, i:], W[:, i2:col + g]], 1)
                hd = hdiag[col:col + g]  # no act_order here: columns in their own order
                scales[:, col // g] = choose_scale(grp[:, None, :], bits, scale_dtype, method, hd[None, None, :])[:, 0]
            s = scales[:, perm[col] // g] if static else scales[:, col // g]
            col_scale[:, col] = s
            q = (W1[:, i] * _inv(s, scale_dtype)).round().clamp(lo, hi)
            Q[:, i1 + i] = q
            err = (W1[:, i] - q * s) / Hinv1[i, i]
            W1[:, i:] -= err[:, None] * Hinv1[i, i:][None, :]
            Err1[:, i] = err
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]
    inv = torch.argsort(perm)
    return Q[:, inv].to(torch.int8), scales
