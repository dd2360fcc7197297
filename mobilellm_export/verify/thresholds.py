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


def tool_bounds(recipe: Recipe) -> Recipe:
    """A bundle's recipe judged by the tool's bounds, never its own: a bundle is untrusted (a pull
    request can change it), so its recorded [thresholds] and [gate] are provenance only. The bounds
    are those of the shipped recipe of that name, or the tool's defaults for a name it does not ship.
    The recipe's quantization settings stay: they say how to rebuild the reference, and a wrong one
    only makes the reference disagree with the artifact."""
    from mobilellm_export.quant.recipe import Gate, shipped

    ours = shipped(recipe.name)
    return dataclasses.replace(recipe, thresholds=ours.thresholds if ours else Thresholds(),
                               gate=ours.gate if ours else Gate())


def loosened(tool: Thresholds, used: Thresholds) -> dict[str, list]:
    """{name: [tool's bound, bound used]} for each bound the command line made looser."""
    out = {}
    for f in dataclasses.fields(Thresholds):
        a, b = getattr(tool, f.name), getattr(used, f.name)
        if a == b:
            continue
        # a minimum loosens downwards, every other bound (KL, perplexity, |logit|, floor factor and
        # slacks) upwards; a bound that was absent (None) is only ever added, i.e. tightened
        looser = a is not None and (b is None or (b < a if f.name.endswith("_min") else b > a))
        if looser:
            out[f.name] = [a, b]
    return out
