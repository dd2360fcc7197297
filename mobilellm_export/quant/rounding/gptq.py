"""GPTQ (Frantar et al. 2022): quantize column by column and push each column's error onto the
columns not yet quantized, through the inverse Hessian of the layer's calibration inputs.

Group scales come from the recipe's scale search (`mse` in the shipped recipes) on the
error-updated weights as each group starts, or, with `act_order`, up front (static groups).
"""

from __future__ import annotations

import torch

from mobilellm_export.quant.rounding.grid import QRANGE, grouped, inv
from mobilellm_export.quant.rounding.scales import choose_scale


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
        scales = choose_scale(grouped(W, g), bits, scale_dtype, method, grouped(hdiag[None, :], g))
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
            q = (W1[:, i] * inv(s, scale_dtype)).round().clamp(lo, hi)
            Q[:, i1 + i] = q
            err = (W1[:, i] - q * s) / Hinv1[i, i]
            W1[:, i:] -= err[:, None] * Hinv1[i, i:][None, :]
            Err1[:, i] = err
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]
    inv_perm = torch.argsort(perm)
    return Q[:, inv_perm].to(torch.int8), scales


class GPTQ:
    name = "gptq"
    needs_hessian = True
    supports_act_order = True  # reads WeightQuant.act_order

    def choose(self, w, H, wq, group):
        if H is None:
            raise ValueError("gptq needs the layer's calibration Hessian")
        return gptq(w, H, wq.bits, group, wq.scale_dtype, wq.scales, act_order=wq.act_order)
