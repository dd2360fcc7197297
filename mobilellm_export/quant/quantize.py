"""Apply a Recipe to the reference Transformer with torchao, once.

The result is the *quantized reference*: an eager model holding exactly the integers and scales
every target serialises, so float->quantized and quantized->lowered errors are measured apart.
"""

from __future__ import annotations

import fnmatch

import torch
import torch.nn as nn

from mobilellm_export.errors import UserError
from mobilellm_export.model import Transformer
from mobilellm_export.quant.recipe import Recipe, WeightQuant, effective_group, same_grid  # noqa: F401 (re-exported)
from mobilellm_export.quant.simulate import choose
from mobilellm_export.quant.transforms import TRANSFORMS

_SCALE_DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


def _linear_config(w: WeightQuant, group: int):
    from torchao.quantization import Int8DynamicActivationIntxWeightConfig, IntxWeightOnlyConfig
    from torchao.quantization.granularity import PerAxis, PerGroup

    gran = PerGroup(group) if group else PerAxis(0)
    dtype = torch.int4 if w.bits == 4 else torch.int8
    # Per-channel scales are kept fp32 (XNNPACK's qc8w/qc4w); only blockwise scales are bf16 there.
    scale_dtype = _SCALE_DTYPES[w.scale_dtype] if group else torch.float32
    if w.activations == "int8_dynamic":
        return Int8DynamicActivationIntxWeightConfig(weight_dtype=dtype, weight_granularity=gran,
                                                     weight_scale_dtype=scale_dtype)
    return IntxWeightOnlyConfig(weight_dtype=dtype, granularity=gran, scale_dtype=scale_dtype)


class TiedQuantEmbedding(nn.Module):
    """Embedding lookup that reads the quantized lm_head's own integers and scales.

    With a tied matrix and one quantization grid for both uses, the integers are stored once:
    row t of the embedding is row t of the head's weight, dequantized. (A separate embedding
    quantizer would store a second, identical copy.) Targets swap this for their runtime's op.
    """

    def __init__(self, head: nn.Linear):
        super().__init__()
        self._head = [head]  # a plain list: the head stays registered once, under lm_head

    @property
    def weight(self):
        return self._head[0].weight  # torchao IntxUnpackedToInt8Tensor: qdata int8 [V, D], scale [V, D/g]

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        w = self.weight
        rows, scale = w.qdata[tokens].float(), w.scale[tokens].float()
        group = w.block_size[-1]
        return (rows.unflatten(-1, (-1, group)) * scale.unsqueeze(-1)).flatten(-2)


def digest(model: nn.Module) -> str:
    """sha256 over every quantized weight's integers and scales (`weights_sha256`, as bundles since
    schema 2 record it). The float parameters beside them (norm gains a smoothing or rotation
    rescaled, a rotation's pre-head) are not in it: `reference_digest` covers those too."""
    import hashlib

    h = hashlib.sha256()
    for fqn, m in model.named_modules():
        w = getattr(m, "weight", None)
        if hasattr(w, "qdata") and not isinstance(m, TiedQuantEmbedding):
            h.update(fqn.encode())
            h.update(w.qdata.contiguous().numpy().tobytes())
            h.update(w.scale.float().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def reference_digest(model: nn.Module) -> str:
    """sha256 over every parameter of the quantized reference, quantized (integers, scales, zero
    points) or float: equal digests, equal reference weights."""
    import hashlib

    h = hashlib.sha256()
    for name, p in model.named_parameters():
        h.update(name.encode())
        parts = [getattr(p, n) for n in p.tensor_data_names] if hasattr(p, "tensor_data_names") else [p.detach()]
        for t in parts:
            h.update(str(t.dtype).encode())
            h.update(t.contiguous().view(torch.uint8).numpy().tobytes())  # raw bytes: numpy has no bf16
    return h.hexdigest()[:16]


def quantize(model: Transformer, recipe: Recipe, calibrate=None, status=lambda msg: None) -> dict:
    """Quantize `model` in place. Returns facts for the report (fallback layers, counts, calibration).

    `calibrate(names) -> (H per linear name, facts)` runs the float model over calibration text; it
    is called once, before any weight changes, when the recipe's rounding needs it.
    """
    import time

    from torchao.quantization import IntxWeightOnlyConfig, quantize_
    from torchao.quantization.granularity import PerAxis, PerGroup

    facts = {"fallbacks": [], "quantized_linears": 0, "tied_stored": "once"}
    if recipe.is_float:
        return facts
    # The recipe's rewrites of the float model (quant/transforms/), in order. Those before the first
    # that reads Hessians (rotate) run before calibration: the Hessians and every choice below see
    # their model. The rest (smooth) run after it and keep H in step with the weights they change.
    steps = [(TRANSFORMS.get(name), params) for name, params in recipe.transform_steps()]
    first_h = next((i for i, (t, _) in enumerate(steps) if t.needs_hessian), len(steps))
    for t, params in steps[:first_h]:
        status(t.name)
        facts[t.name] = t.apply(model, None, **params)
    tied = model.cfg.tie_embeddings
    share = tied and recipe.head.quantized and same_grid(recipe.embedding, recipe.head)
    if tied and not share and (recipe.head.quantized or recipe.embedding.quantized):
        # Different grids for lookup and head: two matrices, stored separately.
        model.lm_head.weight = nn.Parameter(model.embed_tokens.weight.detach().clone())
        facts["tied_stored"] = "twice"
    by_config: dict[tuple, list[str]] = {}
    linears = [fqn for fqn, m in model.named_modules() if isinstance(m, nn.Linear)]
    for ov in recipe.overrides:  # a pattern that matches nothing is a typo, not a no-op
        if not any(fnmatch.fnmatchcase(f, ov["match"]) for f in linears):
            raise UserError(f"recipe {recipe.name}: [[override]] match = {ov['match']!r} matches no linear "
                            f"(e.g. {linears[0]!r})")
    for fqn, m in model.named_modules():
        if not isinstance(m, nn.Linear) or fqn == "pre_head":  # the rotation's pre-head stays float
            continue
        w = recipe.weight_for(fqn)
        if not w.quantized:
            continue
        g = effective_group(w, m.in_features)
        if g != w.group_size:
            facts["fallbacks"].append({"layer": fqn, "in_features": m.in_features, "group_size": g,
                                       "wanted": w.group_size})
        by_config.setdefault((w, g), []).append(fqn)
    H: dict[str, torch.Tensor] = {}
    calibrated = {f for (w, _), fqns in by_config.items() if w.calibrated for f in fqns}
    for t, _ in steps[first_h:]:
        if t.needs_hessian:
            calibrated |= set(t.consumers(model))
    if calibrated:
        if calibrate is None:
            raise UserError(f"recipe {recipe.name} rounds with calibration ({recipe.linear.rounding}, "
                            f"{recipe.linear.scales} scales) but no calibration text was given")
        H, facts["calibration"] = calibrate(calibrated)
        H = dict(H)  # transforms (smooth) rescale entries: never the caller's dict
    for t, params in steps[first_h:]:
        status(t.name)
        facts[t.name] = t.apply(model, H, **params)
    t0 = time.perf_counter()
    with torch.no_grad():
        # The head first: quantizing the largest matrix makes float temporaries of its size, and
        # early on fewer quantized copies exist beside them (the float weights go as they are
        # replaced, when nothing else holds them).
        n_linears, done = sum(len(fqns) for (w, _), fqns in by_config.items() if not w.plain), 0
        for (w, g), fqns in sorted(by_config.items(), key=lambda kv: "lm_head" not in kv[1]):
            names = set(fqns)
            chosen = {}
            for f in ([] if w.plain else fqns):
                done += 1
                status(f"{w.rounding} rounding, linear {done}/{n_linears} ({f})")
                chosen[f] = choose(model.get_submodule(f).weight.detach(), w, g, H.get(f))
            quantize_(model, _linear_config(w, g), filter_fn=lambda mod, fqn, names=names: fqn in names)
            for f, (q, s) in chosen.items():  # torchao built the tensor's format; the integers are ours
                t = model.get_submodule(f).weight
                t.qdata.copy_(q.view_as(t.qdata))
                t.scale.copy_(s.view_as(t.scale).to(t.scale.dtype))
            facts["quantized_linears"] += len(fqns)
        e = recipe.embedding
        if share:
            model.embed_tokens = TiedQuantEmbedding(model.lm_head)
        elif e.quantized:
            g = effective_group(e, model.cfg.dim)
            cfg = IntxWeightOnlyConfig(weight_dtype=torch.int4 if e.bits == 4 else torch.int8,
                                       granularity=PerGroup(g) if g else PerAxis(0),
                                       scale_dtype=torch.float32)
            quantize_(model, cfg, filter_fn=lambda mod, fqn: isinstance(mod, nn.Embedding))
    facts["rounding"] = sorted({f"{w.scales}+{w.rounding}{'+act_order' if w.act_order else ''}"
                                for (w, _) in by_config})
    facts["rounding_seconds"] = round(time.perf_counter() - t0, 2)
    facts["weights_sha256"] = digest(model)
    facts["reference_sha256"] = reference_digest(model)
    return facts
