"""`4bit-auto`: per decoder block, the weight format that buys the most quality per byte, under a size budget.

1. Sensitivity, measured: for every block and every candidate format (e.g. 4-bit g128, 4-bit g32,
   8-bit per channel), that block alone is quantized (simulated, with the recipe's rounding) and
   the KL to the float model is scored on calibration windows. The head and embedding stay as the
   recipe says.
2. Choice: a multiple-choice knapsack. For a price lambda each block takes the format minimising
   KL + lambda * bytes; lambda is bisected to the cheapest plan whose bytes fit the budget.
   Predicted KL = the sum of the chosen blocks' KLs (additive: blocks are scored alone).
3. The result is an ordinary recipe: one `[[override]]` per block that left the base format, so
   bundle.json records it and `verify` re-applies it without searching again.

Every format is one XNNPACK runs (8da4w at a group multiple of 32, 8da8w per channel), so mixed
plans lower like any other recipe.
"""

from __future__ import annotations

import dataclasses
import time

import torch

from ..errors import UserError
from . import simulate
from .apply import effective_group
from .recipe import Recipe, WeightQuant, block_linears, estimate_bytes, weight_bytes


def option_quant(base: WeightQuant, option: str) -> WeightQuant:
    """'4:128' -> the base linear format at 4 bits, group 128; '8:0' -> 8 bits per channel."""
    bits, group = (int(x) for x in option.split(":"))
    return dataclasses.replace(base, bits=bits, group_size=group, scale_dtype="bf16" if group else "fp32")


def _kl(ref: torch.Tensor, test: torch.Tensor) -> float:
    a, b = ref.float().log_softmax(-1), test.float().log_softmax(-1)
    return float((a.exp() * (a - b)).sum(-1).mean())


def search(model, recipe: Recipe, cfg, H: dict, wins: list[list[int]], budget_bytes: float,
           progress=lambda msg: None) -> tuple[Recipe, dict]:
    return plan(recipe, cfg, sensitivity(model, recipe, cfg, H, wins, progress), budget_bytes)


@torch.inference_mode()
def sensitivity(model, recipe: Recipe, cfg, H: dict, wins: list[list[int]], progress=lambda msg: None) -> dict:
    """KL to the float model and bytes of every (block, format) pair, each block quantized alone."""
    t0 = time.perf_counter()
    options = list(recipe.auto.options)
    linears = dict((n, m) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear))
    shapes = block_linears(cfg)

    def logits():
        return [model(torch.tensor([w]), torch.tensor([0]))[0] for w in wins]

    ref = logits()
    kl = [[0.0] * len(options) for _ in range(cfg.n_layers)]
    size = [[0.0] * len(options) for _ in range(cfg.n_layers)]
    for j, opt in enumerate(options):
        wq = option_quant(recipe.linear, opt)
        for i in range(cfg.n_layers):
            names = [f"layers.{i}.{n}" for n in shapes]
            # the group each linear really gets (a group that does not divide in_features falls back)
            eff = {n: dataclasses.replace(wq, group_size=effective_group(wq, linears[n].in_features)) for n in names}
            chosen = {n: (*simulate.choose(linears[n].weight.detach(), eff[n], eff[n].group_size, H.get(n)), eff[n])
                      for n in names}
            with simulate.simulated(linears, chosen):
                test = logits()
            kl[i][j] = sum(_kl(a, b) * a.shape[0] for a, b in zip(ref, test)) / sum(a.shape[0] for a in ref)
            size[i][j] = sum(weight_bytes(*shapes[n.split(".", 2)[2]], eff[n]) for n in names)
            progress(f"sensitivity {opt}: block {i + 1}/{cfg.n_layers}")
    return {"options": options, "kl": kl, "size": size, "trial_tokens": sum(map(len, wins)),
            "seconds": round(time.perf_counter() - t0, 1)}


def plan(recipe: Recipe, cfg, sens: dict, budget_bytes: float) -> tuple[Recipe, dict]:
    """The cheapest-in-KL plan whose weights fit `budget_bytes` (Lagrangian knapsack over blocks)."""
    options, kl, size = sens["options"], sens["kl"], sens["size"]
    shapes = block_linears(cfg)
    plain = dataclasses.replace(recipe, overrides=())
    base = {name: dataclasses.replace(recipe.linear, group_size=effective_group(recipe.linear, k))
            for name, (_, k) in shapes.items()}
    base_blocks = cfg.n_layers * sum(weight_bytes(n, k, base[name]) for name, (n, k) in shapes.items())
    fixed = estimate_bytes(cfg, plain) - base_blocks  # embedding, head, norms: not searched
    room = budget_bytes - fixed

    def plan(lam: float) -> list[int]:
        return [min(range(len(options)), key=lambda j: kl[i][j] + lam * size[i][j]) for i in range(cfg.n_layers)]

    def total(p: list[int]) -> float:
        return sum(size[i][j] for i, j in enumerate(p))

    cheapest = [min(range(len(options)), key=lambda j: size[i][j]) for i in range(cfg.n_layers)]
    if total(cheapest) > room:
        raise UserError(f"--size-mb {budget_bytes / 1e6:.1f}: the smallest plan of recipe {recipe.name} "
                        f"({', '.join(options)}) needs {(total(cheapest) + fixed) / 1e6:.1f} MB of weights")
    lo, hi = 0.0, 1.0
    while total(plan(hi)) > room:
        hi *= 4
    for _ in range(60):  # smallest lambda whose plan fits: the most quality the budget buys
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if total(plan(mid)) <= room else (mid, hi)
    best = plan(hi)
    base_opt = f"{recipe.linear.bits}:{recipe.linear.group_size}"
    overrides = []
    for i, j in enumerate(best):
        if options[j] != base_opt:
            wq = option_quant(recipe.linear, options[j])
            overrides.append({"match": f"layers.{i}.*", "bits": wq.bits, "group_size": wq.group_size,
                              "scale_dtype": wq.scale_dtype})
    resolved = dataclasses.replace(recipe, overrides=tuple(recipe.overrides) + tuple(overrides),
                                   auto=dataclasses.replace(recipe.auto, resolved=True))
    j_base = options.index(base_opt) if base_opt in options else None
    facts = {
        "budget_mb": round(budget_bytes / 1e6, 3), "weights_mb": round((total(best) + fixed) / 1e6, 3),
        "options": options, "trial_tokens": sens["trial_tokens"],
        "blocks": [{"block": i, "format": options[j], "kl_alone": {o: round(kl[i][k], 6) for k, o in enumerate(options)}}
                   for i, j in enumerate(best)],
        "kept_8bit": [i for i, j in enumerate(best) if options[j].startswith("8:")],
        "predicted_kl_sum": round(sum(kl[i][j] for i, j in enumerate(best)), 5),
        "predicted_kl_sum_base": None if j_base is None else round(sum(kl[i][j_base] for i in range(cfg.n_layers)), 5),
        "seconds": sens["seconds"],
    }
    return resolved, facts
