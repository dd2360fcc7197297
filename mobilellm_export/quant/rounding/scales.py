"""Scale searches: the stored scale of each group of a weight (entry-point group `mobilellm_export.scales`).

A search is an object with `name`, `needs_hessian` (does it want calibration statistics?) and
`scale(wg [N, G, g], bits, scale_dtype, h [.., G, g] | None) -> scales [N, G]`, already rounded to
`scale_dtype` (grid.stored). `h` holds the inputs' E[x_j^2] per weight column when calibration ran.

- `minmax`: torchao's rule, scale = max|w| / ((qmax - qmin) / 2). For int4 that is max/7.5, and the
  largest positive weight rounds to 8 and is clipped to 7.
- `mse`: per group, the scale (from a grid of clipping ratios, then one least-squares refinement)
  that minimises the squared error, weighted by E[x_j^2] when calibration gave it (errors on
  channels the activations never drive cost nothing).
- `hqq`: torchao's half-quadratic scale-only search (unweighted).
"""

from __future__ import annotations

import torch

from mobilellm_export.quant.registry import Registry
from mobilellm_export.quant.rounding.grid import QRANGE, nearest, stored


class MinMax:
    name = "minmax"
    needs_hessian = False

    def scale(self, wg, bits, scale_dtype, h=None):
        lo, hi = QRANGE[bits]
        return stored(wg.abs().amax(-1) / ((hi - lo) / 2), scale_dtype)


class MSE:
    """Candidates: max|w| / d for d from qmax - 1.5 (mild clipping) to |qmin| (the largest magnitude
    exact when it is negative, as llama.cpp's Q4_0 rule), then one least-squares step for the best."""
    name = "mse"
    needs_hessian = True  # works without, but is meant to be weighted by the inputs
    ratios = 24

    def scale(self, wg, bits, scale_dtype, h=None):
        lo, hi = QRANGE[bits]
        h = torch.ones_like(wg) if h is None else h.expand_as(wg)

        def err(s):
            return (h * (wg - nearest(wg, s, bits, scale_dtype) * s.unsqueeze(-1)) ** 2).sum(-1)

        amax = wg.abs().amax(-1)
        best_s = MinMax().scale(wg, bits, scale_dtype)
        best_e = err(best_s)
        for d in torch.linspace(hi - 1.5, -lo + 0.25, self.ratios).tolist():
            s = stored(amax / d, scale_dtype)
            e = err(s)
            better = e < best_e
            best_s, best_e = torch.where(better, s, best_s), torch.where(better, e, best_e)
        # Least squares for the scale given the chosen integers, kept where it lowers the error.
        q = nearest(wg, best_s, bits, scale_dtype)
        den = (h * q * q).sum(-1)
        ls = stored(torch.where(den > 0, (h * wg * q).sum(-1) / den.clamp_min(1e-30), best_s), scale_dtype)
        return torch.where(err(ls) < best_e, ls, best_s)


class HQQ:
    name = "hqq"
    needs_hessian = False

    def scale(self, wg, bits, scale_dtype, h=None):
        from torchao.quantization.quant_primitives import _choose_qparams_and_quantize_scale_only_hqq

        n, groups, g = wg.shape
        lo, hi = QRANGE[bits]
        _, s = _choose_qparams_and_quantize_scale_only_hqq(wg.reshape(n, groups * g), [1, g], lo, hi)
        return stored(s.reshape(n, groups), scale_dtype)


BUILTIN = (MinMax(), MSE(), HQQ())
SCALES = Registry("mobilellm_export.scales", "scale search", ("name", "needs_hessian", "scale"), BUILTIN)


def choose_scale(wg: torch.Tensor, bits: int, scale_dtype: str, method: str, h: torch.Tensor | None = None):
    """The stored scales of the groups `wg` [N, G, g] by the search named `method`."""
    return SCALES.get(method).scale(wg, bits, scale_dtype, h)
