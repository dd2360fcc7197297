"""Round to nearest on the scales the recipe's search chose (torchao's own rule with `minmax`)."""

from __future__ import annotations

import torch

from mobilellm_export.quant.rounding.grid import grouped, nearest
from mobilellm_export.quant.rounding.scales import choose_scale


def round_weight(w: torch.Tensor, bits: int, group: int, scale_dtype: str, method: str = "minmax",
                 hdiag: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Round-to-nearest on the chosen scales. `hdiag` [K]: the inputs' E[x^2] (weights the mse search)."""
    wg = grouped(w, group)
    h = None if hdiag is None else grouped(hdiag[None, :], group)
    s = choose_scale(wg, bits, scale_dtype, method, h)
    return nearest(wg, s, bits, scale_dtype).reshape(w.shape).to(torch.int8), s


class Nearest:
    name = "nearest"
    needs_hessian = False

    def choose(self, w, H, wq, group):
        return round_weight(w, wq.bits, group, wq.scale_dtype, wq.scales, None if H is None else torch.diag(H))
