"""Rounding methods: which integers fill a weight's grid (entry-point group `mobilellm_export.rounding`).

A method is an object (or a class, instantiated once) with
    name: str               what a recipe's `rounding = "..."` says
    needs_hessian: bool     does it need calibration (H = the layer inputs' X^T X / n)?
    choose(w [N, K] float, H [K, K] | None, wq: WeightQuant, group: int)
        -> (q int8 [N, K] within grid.QRANGE[wq.bits], scales [N, K / group, or 1 if group is 0])
with the scales already rounded to `wq.scale_dtype` (grid.stored) and `wq.scales` naming the scale
search to use (scales.SCALES). H may be given to a method that does not need it. A method that reads
`wq.act_order` says so with `supports_act_order = True`. None changes the format's size or speed.

Built-ins: `nearest` (nearest.py) and `gptq` (gptq.py). Others come from installed distributions:

    [project.entry-points."mobilellm_export.rounding"]
    floor = "my_package:Floor"
"""

from __future__ import annotations

from mobilellm_export.quant.registry import Registry
from mobilellm_export.quant.rounding import scales
from mobilellm_export.quant.rounding.grid import QRANGE
# The functions by their old names (quant/rounding.py was one module), for benchmarks and tests;
# `gptq` here is the function, which shadows its module: import the class from .gptq directly.
from mobilellm_export.quant.rounding.gptq import GPTQ, gptq
from mobilellm_export.quant.rounding.nearest import Nearest, round_weight
from mobilellm_export.quant.rounding.scales import SCALES, choose_scale

ROUNDING = Registry("mobilellm_export.rounding", "rounding method", ("name", "needs_hessian", "choose"),
                    [Nearest(), GPTQ()])
SCALE_METHODS = tuple(s.name for s in scales.BUILTIN)  # the built-ins; SCALES.names() adds plugins

__all__ = ["ROUNDING", "SCALES", "SCALE_METHODS", "QRANGE", "choose_scale", "gptq", "round_weight"]
