"""Quantization parts outside mobilellm-export, registered by entry point (see pyproject.toml).

- `floor`: round toward -inf on the recipe's scales. Valid integers on the same grid, just worse
  than nearest (up to a whole step of error instead of half), so its digest differs from nearest's.
- `absmax`: scale = max|w| / qmax, so the largest magnitude is never clipped (minmax uses
  (qmax - qmin) / 2 and clips the largest positive int4 weight from 8 to 7).
- `census`: a transform that changes nothing and reports how many linears it saw.
"""

import torch

from mobilellm_export.quant.rounding import grid
from mobilellm_export.quant.rounding.scales import choose_scale


class Floor:
    name = "floor"
    needs_hessian = False

    def choose(self, w, H, wq, group):
        wg = grid.grouped(w, group)
        h = None if H is None else grid.grouped(torch.diag(H)[None, :], group)
        s = choose_scale(wg, wq.bits, wq.scale_dtype, wq.scales, h)
        lo, hi = grid.QRANGE[wq.bits]
        q = torch.floor(wg * grid.inv(s, wq.scale_dtype).unsqueeze(-1)).clamp(lo, hi)
        return q.reshape(w.shape).to(torch.int8), s


class AbsMax:
    name = "absmax"
    needs_hessian = False

    def scale(self, wg, bits, scale_dtype, h=None):
        return grid.stored(wg.abs().amax(-1) / grid.QRANGE[bits][1], scale_dtype)


class Census:
    name = "census"
    needs_hessian = False

    def apply(self, model, H, note=""):
        return {"linears": sum(isinstance(m, torch.nn.Linear) for m in model.modules()), "note": note}
