"""The bounds an artifact is judged by, and the one rule that merges them.

    recipe [thresholds]  ->  the backend's own lowering bounds (Backend.thresholds)  ->  --threshold

The types (`Thresholds`, `Gate`) are recipe data and live in quant/recipe.py, below this layer; the
recipe-level defaults are the dataclass defaults there. A runtime's lowering bounds have one owner,
its backend's class, so no recipe names a target. Only the command line loosens a bound.
"""

from __future__ import annotations

import dataclasses

from mobilellm_export.errors import UserError
from mobilellm_export.quant.recipe import Recipe, Thresholds


def parse_overrides(items: tuple[str, ...]) -> dict[str, float]:
    """`--threshold NAME=VALUE` items -> {name: value}; one line for a bad one."""
    names = {f.name for f in dataclasses.fields(Thresholds)}
    out = {}
    for item in items:
        key, _, val = item.partition("=")
        if key not in names or not val:
            raise UserError(f"--threshold {item!r}: expected NAME=VALUE with NAME in {', '.join(sorted(names))}")
        try:
            out[key] = float(val)
        except ValueError:
            raise UserError(f"--threshold {item!r}: {val!r} is not a number") from None
    return out


def thresholds_for(recipe: Recipe, backend, overrides: dict[str, float] | tuple[str, ...] = ()) -> Thresholds:
    """The recipe's thresholds, then the backend's lowering bounds for it, then the overrides."""
    th = backend.thresholds(recipe.thresholds, recipe)
    if isinstance(overrides, tuple):
        overrides = parse_overrides(overrides)
    return dataclasses.replace(th, **overrides)
