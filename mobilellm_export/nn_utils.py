"""Module swaps that share weights: what `prepare()` and the simulations build on."""

from __future__ import annotations

import copy


def structural_copy(model):
    """A copy of the module tree that shares every parameter and buffer tensor with `model`.

    `prepare()` swaps modules in this copy, so the reference model stays as it was without a
    second copy of the weights (a deep copy of a 950M model costs gigabytes).
    """
    memo = {}

    def clone(mod):
        if id(mod) in memo:
            return memo[id(mod)]
        new = copy.copy(mod)
        memo[id(mod)] = new
        new.__dict__ = dict(mod.__dict__)
        new._parameters, new._buffers = dict(mod._parameters), dict(mod._buffers)
        new._modules = {k: (clone(m) if m is not None else None) for k, m in mod._modules.items()}
        return new

    return clone(model)


def replace_modules(root, fn) -> None:
    """Replace, in place, every submodule m of `root` for which fn(m) returns a module."""
    for mod in list(root.modules()):
        for key, child in list(mod._modules.items()):
            new = fn(child) if child is not None else None
            if new is not None:
                mod._modules[key] = new
