"""Rewrites of the float model before rounding (entry-point group `mobilellm_export.transforms`).

A transform is an object (or a class, instantiated once) with
    name: str
    needs_hessian: bool             does it read calibration Hessians?
    consumers(model) -> names       the linears whose Hessians it reads (needed when needs_hessian)
    apply(model, H, **params) -> facts for the report (a JSON-able dict)
    check_recipe(recipe, params, where)   optional: raise UserError if the recipe cannot take it
quantize() applies a recipe's transforms in order (Recipe.transform_steps): those before the first
one that reads Hessians rewrite the model before calibration, so the Hessians and every rounding
choice see the rewritten model; the rest run after calibration and must keep H (linear name ->
X^T X / n) in step with the weights they change, as smooth does.

Built-ins: `rotate` and `smooth` (recipe keys `rotate = true`, `smooth = alpha`). Others come from
installed distributions and are named in a recipe by `[[transform]]` tables: `name = "..."` plus
the transform's own parameters, passed to apply().
"""

from __future__ import annotations

from mobilellm_export.quant.registry import Registry
from mobilellm_export.quant.transforms.rotate import Rotate
from mobilellm_export.quant.transforms.smooth import Smooth

TRANSFORMS = Registry("mobilellm_export.transforms", "transform", ("name", "needs_hessian", "apply"),
                      [Rotate(), Smooth()])
BUILTIN_KEYS = ("rotate", "smooth")  # recipe top-level keys, applied in this order, before [[transform]]s
