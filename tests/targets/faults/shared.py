"""Faults in the shared path: code the float model, the quantized reference and the artifact (or
the last two) all go through, so the pair the lowering checks compare is wrong together.

Each is a patch of one function, active inside `with fault.active():`, the way a bug in that
function would be. The loader faults make the float model wrong too (only an independent
reader of the same files can see them); the quantize-side ones leave the float model right and
make the quantized reference and its artifact equally wrong (only float -> artifact can see them,
and on random weights only against a baseline). They are the shared-path rows of issue 27's
table; `benchmarks/shared_path_faults.py` runs them through the gate on every target.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

ONE_LAYER = 1  # the block the one-layer faults touch (the tiny models have 2)


@dataclass(frozen=True)
class SharedFault:
    name: str
    where: str  # "loader" | "quantize"
    recipe: str  # the recipe whose path it sits in (its clean baseline uses the same one)
    description: str
    patches: Callable[[], list[tuple[object, str, object]]]  # [(owner, attribute, replacement)]
    source: str = "folder"  # the tiny model it is exported from: "folder" (HF, R1 layout) or "gguf" (llama)

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        saved = []
        try:
            for owner, attr, new in self.patches():
                saved.append((owner, attr, getattr(owner, attr)))
                setattr(owner, attr, new)
            yield
        finally:
            for owner, attr, old in reversed(saved):
                setattr(owner, attr, old)


# ---- loader -----------------------------------------------------------------------------------------

def _rope_theta_default():
    from mobilellm_export.checkpoints import hf

    right = hf.from_hf_config
    return [(hf, "from_hf_config", lambda *a, **k: dataclasses.replace(right(*a, **k), rope_theta=1e4))]


def _gguf_unpermute_skipped():
    """llama.cpp's interleaved Q/K row order kept: RoPE then rotates the wrong pairs of every head."""
    from mobilellm_export.checkpoints import gguf

    return [(gguf, "_unpermute", lambda w, n_heads: w)]


_UNSET = object()


def _bos_wrong_field():
    """The BOS policy read from `add_eos_token` where `add_bos_token` belongs (absent there, so the
    policy falls through to the post-processor and template rules): prompts, calibration and the
    evaluation windows all lose their BOS, and bundle.json records the same wrong policy."""
    from mobilellm_export.text import tokenizer as tmod

    right = tmod.Tokenizer.bos_policy

    def bos_policy(self, fallback_id=None):
        cfg, saved = self.config, self.config.get("add_bos_token", _UNSET)
        cfg.pop("add_bos_token", None)
        if "add_eos_token" in cfg:
            cfg["add_bos_token"] = cfg["add_eos_token"]
        try:
            return right(self, fallback_id)
        finally:
            cfg.pop("add_bos_token", None)
            if saved is not _UNSET:
                cfg["add_bos_token"] = saved
    return [(tmod.Tokenizer, "bos_policy", bos_policy)]


# ---- quantize ---------------------------------------------------------------------------------------

def _smooth_wrong_norm():
    """Layer ONE_LAYER's two norm groups trade producers: the scales for q/k/v's inputs are divided
    out of the MLP's norm and the MLP's out of the attention's."""
    smooth = importlib.import_module("mobilellm_export.quant.transforms.smooth")
    right = smooth.groups

    def groups(model):
        out = right(model)
        i = {label: n for n, (label, _, _) in enumerate(out)}
        a, m = i[f"layers.{ONE_LAYER}.input"], i[f"layers.{ONE_LAYER}.post_attention"]
        (la, pa, ca), (lm, pm, cm) = out[a], out[m]
        out[a], out[m] = (la, pm, ca), (lm, pa, cm)
        return out
    return [(smooth, "groups", groups)]


def _rotation_sign():
    """After a correct rotation, layer ONE_LAYER's q/k/v read the stream through R with its first
    column's sign flipped (W diag(g) R D, D = diag(-1, 1, ..., 1)): one sign wrong in one layer."""
    rotate = importlib.import_module("mobilellm_export.quant.transforms.rotate")
    right = rotate.rotate

    @torch.no_grad()
    def rotated(model, seed=0):
        facts = right(model, seed)
        attn = model.layers[ONE_LAYER].self_attn
        for lin in (attn.q_proj, attn.k_proj, attn.v_proj):
            lin.weight[:, 0].neg_()
        return facts
    return [(rotate, "rotate", rotated)]


def _act_order_kept():
    """GPTQ's integers returned in act-order (the columns sorted by decreasing H_jj), with the
    permutation never undone: every GPTQ linear's columns scrambled by its own input statistics."""
    gptq = importlib.import_module("mobilellm_export.quant.rounding.gptq")  # the package re-exports the function
    right = gptq.gptq

    def permuted(w, H, *a, act_order=False, **k):
        q, s = right(w, H, *a, act_order=act_order, **k)
        if not act_order:
            return q, s
        hdiag = torch.diag(H.detach().float()).clone()
        hdiag[hdiag == 0] = 1  # as gptq() sets dead inputs
        return q[:, torch.argsort(hdiag, descending=True)], s
    return [(gptq, "gptq", permuted)]


def _tied_head_transposed():
    """The tied head's integers chosen on the grid of the transposed table: each column of [V, D]
    rounded to 8 bits on its own scale (the per-channel axis of the [D, V] layout) before the
    format's own per-row rounding. The embedding reads the same integers (stored once)."""
    from mobilellm_export import pipeline
    from mobilellm_export.quant import quantize as qmod

    right = qmod.quantize

    @torch.no_grad()
    def quantize(model, recipe, calibrate=None, status=lambda msg: None):
        facts = right(model, recipe, calibrate, status)
        w = model.lm_head.weight
        if not hasattr(w, "qdata"):
            raise ValueError("tied_head_transposed needs a quantized head")
        table = w.dequantize()
        col = table.abs().amax(0, keepdim=True).clamp_min(1e-12) / 127  # per column of [V, D]
        table = (table / col).round().clamp(-128, 127) * col
        row = w.scale.float().reshape(w.qdata.shape[0], -1)[:, :1]
        w.qdata.copy_((table / row).round().clamp(-128, 127).to(w.qdata.dtype))
        facts["weights_sha256"], facts["reference_sha256"] = qmod.digest(model), qmod.reference_digest(model)
        return facts
    return [(qmod, "quantize", quantize), (pipeline, "quantize", quantize)]  # pipeline binds its own name


SHARED_FAULTS = [
    SharedFault("rope_theta_default", "loader", "4bit",
                "RoPE theta read from a key the config does not have (1e4 for R1's 8e6)", _rope_theta_default),
    SharedFault("gguf_qk_unpermute_skipped", "loader", "4bit",
                "GGUF Q/K rows left in llama.cpp's interleaved order (the un-permute skipped)",
                _gguf_unpermute_skipped, source="gguf"),
    SharedFault("bos_policy_wrong_field", "loader", "4bit",
                "the BOS policy read from add_eos_token instead of add_bos_token", _bos_wrong_field),
    SharedFault("smooth_wrong_norm", "quantize", "4bit",
                f"layer {ONE_LAYER}'s SmoothQuant scales folded into the other norm of the block", _smooth_wrong_norm),
    SharedFault("rotation_sign_flipped", "quantize", "8bit",
                f"one sign of the rotation flipped in layer {ONE_LAYER}'s q/k/v", _rotation_sign),
    SharedFault("gptq_act_order_not_undone", "quantize", "4bit",
                "GPTQ's act-order column permutation not undone", _act_order_kept),
    SharedFault("tied_head_transposed", "quantize", "4bit",
                "the tied head's integers rounded on the transposed table's per-channel grid first",
                _tied_head_transposed),
]
BY_NAME = {f.name: f for f in SHARED_FAULTS}
