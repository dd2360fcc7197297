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

from mobilellm_export.errors import UserError
from mobilellm_export import metrics
from mobilellm_export.quant import simulate
from mobilellm_export.quant.quantize import effective_group
from mobilellm_export.quant.recipe import Recipe, WeightQuant
from mobilellm_export.quant.size import block_bytes, block_linears, estimate_bytes, weight_bytes


def option_quant(base: WeightQuant, option: str) -> WeightQuant:
    """'4:128' -> the base linear format at 4 bits, group 128; '8:0' -> 8 bits per channel."""
    bits, group = (int(x) for x in option.split(":"))
    return dataclasses.replace(base, bits=bits, group_size=group, scale_dtype="bf16" if group else "fp32")


def with_head(recipe: Recipe, option: str) -> Recipe:
    """The recipe with its head in `option`. The recipe's own head format stays as it is; another
    one takes the linears' rounding, and a tied lookup follows it onto the same grid (one table)."""
    if option == f"{recipe.head.bits}:{recipe.head.group_size}":
        return recipe
    head = option_quant(dataclasses.replace(recipe.linear, activations=recipe.head.activations), option)
    emb = dataclasses.replace(recipe.embedding, bits=head.bits, group_size=head.group_size,
                              scale_dtype=head.scale_dtype)
    return dataclasses.replace(recipe, head=head, embedding=emb)


def search(model, recipe: Recipe, cfg, H: dict, wins: list[list[int]], budget_bytes: float,
           progress=lambda msg: None) -> tuple[Recipe, dict]:
    return plan(recipe, cfg, sensitivity(model, recipe, cfg, H, wins, progress), budget_bytes)


@torch.inference_mode()
def sensitivity(model, recipe: Recipe, cfg, H: dict, wins: list[list[int]], progress=lambda msg: None) -> dict:
    """KL to the float model and bytes of every (item, format) pair, each item quantized alone. Items:
    the decoder blocks (formats `auto.options`) and the head (`auto.head_options`; its bytes include
    the tied lookup table and everything else outside the blocks)."""
    t0 = time.perf_counter()
    linears = dict((n, m) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear))
    shapes = block_linears(cfg)
    plain = dataclasses.replace(recipe, overrides=())

    def logits():
        return [model(torch.tensor([w]), torch.tensor([0]))[0] for w in wins]

    def trial(chosen) -> float:
        with simulate.simulated(linears, chosen):
            return metrics.compare(ref, logits(), wins)["kl_mean"]

    def pick(name: str, wq: WeightQuant):
        wq = dataclasses.replace(wq, group_size=effective_group(wq, linears[name].in_features))  # as quantize()
        return (*simulate.choose(linears[name].weight.detach(), wq, wq.group_size, H.get(name)), wq)

    ref = logits()
    items = []
    for i in range(cfg.n_layers):
        item = {"item": f"layers.{i}", "options": {}}
        for opt in recipe.auto.options:
            wq = option_quant(recipe.linear, opt)
            chosen = {f"layers.{i}.{n}": pick(f"layers.{i}.{n}", wq) for n in shapes}
            item["options"][opt] = {"kl": trial(chosen),
                                    "bytes": sum(weight_bytes(*shapes[n.split(".", 2)[2]], c[2]) for n, c in chosen.items())}
            progress(f"sensitivity: block {i + 1}/{cfg.n_layers}, {opt}")
        items.append(item)
    head = {"item": "lm_head", "options": {}}
    for opt in recipe.auto.head_options:
        r = with_head(plain, opt)
        chosen = {"lm_head": pick("lm_head", r.head)}
        head["options"][opt] = {"kl": trial(chosen), "bytes": estimate_bytes(cfg, r) - block_bytes(cfg, r)}
        progress(f"sensitivity: head, {opt}")
    items.append(head)
    return {"items": items, "trial_tokens": sum(map(len, wins)), "seconds": round(time.perf_counter() - t0, 1)}


def plan(recipe: Recipe, cfg, sens: dict, budget_bytes: float) -> tuple[Recipe, dict]:
    """The least predicted KL whose bytes fit `budget_bytes`: a Lagrangian knapsack over the items
    (for a price lambda each item takes the format minimising KL + lambda * bytes; lambda bisected)."""
    items = sens["items"]

    def choice(lam: float) -> list[str]:
        return [min(it["options"], key=lambda o: it["options"][o]["kl"] + lam * it["options"][o]["bytes"])
                for it in items]

    def total(ch: list[str]) -> float:
        return sum(it["options"][o]["bytes"] for it, o in zip(items, ch))

    cheapest = [min(it["options"], key=lambda o: it["options"][o]["bytes"]) for it in items]
    if total(cheapest) > budget_bytes:
        raise UserError(f"--size-mb {budget_bytes / 1e6:.1f}: the smallest plan of recipe {recipe.name} needs "
                        f"{total(cheapest) / 1e6:.1f} MB of weights")
    lo, hi = 0.0, 1.0
    while total(choice(hi)) > budget_bytes:
        hi *= 4
    for _ in range(60):  # the smallest price whose plan fits: the most quality the budget buys
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if total(choice(mid)) <= budget_bytes else (mid, hi)
    best = choice(hi)
    resolved = with_head(recipe, best[-1])
    base_opt = f"{recipe.linear.bits}:{recipe.linear.group_size}"
    overrides = []
    for it, opt in zip(items[:-1], best[:-1]):
        if opt != base_opt:
            wq = option_quant(recipe.linear, opt)
            overrides.append({"match": f"{it['item']}.*", "bits": wq.bits, "group_size": wq.group_size,
                              "scale_dtype": wq.scale_dtype})
    resolved = dataclasses.replace(resolved, overrides=tuple(recipe.overrides) + tuple(overrides),
                                   auto=dataclasses.replace(recipe.auto, resolved=True))

    def predicted(ch):
        return round(sum(it["options"][o]["kl"] for it, o in zip(items, ch)), 5)

    base = [base_opt] * (len(items) - 1) + [f"{recipe.head.bits}:{recipe.head.group_size}"]
    facts = {
        "budget_mb": round(budget_bytes / 1e6, 3), "weights_mb": round(total(best) / 1e6, 3),
        "trial_tokens": sens["trial_tokens"], "seconds": sens["seconds"],
        "plan": [{"item": it["item"], "format": o, "kl_alone": {k: round(v["kl"], 6) for k, v in it["options"].items()}}
                 for it, o in zip(items, best)],
        "kept_8bit": [it["item"] for it, o in zip(items, best) if o.startswith("8:")],
        "head": best[-1],
        "predicted_kl_sum": predicted(best),
        "predicted_kl_sum_base": predicted(base) if all(o in it["options"] for it, o in zip(items, base)) else None,
    }
    return resolved, facts
