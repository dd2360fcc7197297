"""The localiser: it names the op where a lowered model goes wrong, for faults injected at the target.

Faults are injected the way a buggy target would: a subclass of the Android target whose prepare()
mutates its structural copy (replacing tensors and modules, never touching the reference's):
  scale  one 4-bit group scale x2 in layers.1.mlp.down_proj
  swap   layers.1 replaced by layers.0's weights
  kv     layers.1's attention writes its KV cache one position late (p0 + 1)
An eager stand-in for the probe program checks the rule on all of them in seconds; the slow tests
lower through ExecuTorch / XNNPACK (one lowering each, ~20-60 s on 2 cores). Acceptance (`extra`):
the swap fault lowered, the probe program against a real export (same logits), and R1-140M's
layer shapes, where one group scale x2 is the subtlest fault (6e-3 against a 2e-3 bound).
"""

import dataclasses
import functools

import pytest
import torch

from conftest import calib

from mobilellm_export.presets import PRESETS
from mobilellm_export.model import Transformer, random_weights
from mobilellm_export.quant.quantize import quantize
from mobilellm_export.quant.recipe import load_recipe
from mobilellm_export.backends import ExportSpec, Target
from mobilellm_export.backends.executorch import program as android
from mobilellm_export.backends.executorch.xnnpack import Android
from mobilellm_export.nn_utils import structural_copy
from mobilellm_export.verify import localise as loc

CFG = dataclasses.replace(PRESETS["tiny-llama"], n_layers=2)  # 512 ids: lowering stays quick
SPEC = ExportSpec(config=CFG, max_context=128, max_seq_len=32, eos_ids=(2,), bos_id=1, threads=2)
TOKENS = torch.randint(3, CFG.vocab_size, (64,), generator=torch.Generator().manual_seed(1)).tolist()  # 2 chunks


@pytest.fixture(scope="module")
def reference():
    """The 4bit quantized eager reference (8da4w g32 linears, shared int8 embedding/head), and its
    logits on TOKENS, to show that localising leaves it as it was."""
    m = Transformer(CFG, max_context=SPEC.max_context)
    m.load_weights(random_weights(CFG, 0))
    quantize(m.eval(), load_recipe("4bit"), calib(m))
    with torch.no_grad():
        logits = m(torch.tensor([TOKENS]), torch.tensor([0]))
    return m, logits


# ---- faults, each on the prepared copy only ---------------------------------------------------

def scale_fault(p, layer=1):
    lin = p.layers[layer].mlp.down_proj
    w = lin.weight  # torchao IntxUnpackedToInt8Tensor: qdata int8 [out, in], scale [out, in / 32]
    scale = w.scale.clone()
    scale[5, scale.shape[1] // 2] *= 2
    faulty = type(w)(w.qdata, scale, w.zero_point, w.target_dtype, w.block_size, w.dtype, w.activation_quantization)
    lin.weight = torch.nn.Parameter(faulty, requires_grad=False)


def swap_fault(p):
    p.layers[1] = structural_copy(p.layers[0])


class LateKVCache(android.CustomKVCacheAttention):
    """Writes k/v at p0 + 1 and attends from p0: every query sees the previous token's key as its own."""

    def attend(self, q, k, v, start_pos):
        B, S, H, D = q.shape
        p0 = start_pos[0].item()
        torch._check(p0 >= 0)
        torch._check(p0 + 1 + S <= self.max_context)
        torch.ops.llama.update_cache(k.contiguous(), self.k_cache, p0 + 1)
        torch.ops.llama.update_cache(v.contiguous(), self.v_cache, p0 + 1)
        out = torch.ops.llama.custom_sdpa(q.contiguous(), self.k_cache, self.v_cache, p0, None, 0.0, True, self.scale)
        return out.reshape(B, -1, H * D)


def kv_fault(p):
    cache = structural_copy(p.caches[1])
    cache.__class__ = LateKVCache
    p.caches[1] = cache


FAULTS = {"scale": (scale_fault, "layers.1.mlp"), "swap": (swap_fault, "layers.1.self_attn"),
          "kv": (kv_fault, "layers.1.self_attn")}


class Faulty(Android):
    def __init__(self, fault=None):
        self.fault = fault

    def prepare(self, model, spec):
        p = super().prepare(model, spec)
        if self.fault:
            self.fault(p)
        return p


class EagerFaulty(Faulty):
    """The probe program's stand-in: the prepared model itself, run eagerly (no lowering)."""

    def probe(self, prepared, spec, work_dir):
        m = structural_copy(prepared)
        m.probe, m.full_logits = True, True
        return lambda tokens: loc._run(m, tokens, spec.max_seq_len)


def check(r, expected, reference):
    model, logits = reference
    names = [p["name"] for p in r["points"]]
    assert names == ["embed_tokens", "layers.0.self_attn", "layers.0.mlp", "layers.1.self_attn", "layers.1.mlp",
                     "lm_head"]
    assert r["tokens"] == len(TOKENS)
    if expected is None:
        assert r["first"] is None and "no op diverges" in r["message"], r["message"]
    else:
        assert (r["first"], r["layer"], r["op"]) == (expected, 1, expected.rsplit(".", 1)[1]), r["message"]
        assert r["error"] > r["bound"] and expected.rsplit(".", 1)[0] in r["message"]
    # Teacher forcing: ops outside the faulty layer stay within their bound, even after the fault.
    for p in r["points"]:
        if not p["name"].startswith("layers.1") or expected is None:
            assert p["error"] <= p["bound"], (p, r["message"])
    # The reference is as it was: same flags, same modules, same logits.
    assert not model.probe and model.full_logits and type(model.caches[1]).__name__ == "KVCacheAttention"
    with torch.no_grad():
        assert torch.equal(model(torch.tensor([TOKENS]), torch.tensor([0])), logits)


# ---- fast -------------------------------------------------------------------------------------

def test_divergence_rule():
    tol, ratio = loc.TOLERANCE, loc.RATIO
    assert loc.first_divergence([0.0, 1e-7, 4e-4, 2e-7], [1e-7] * 4) is None  # rounding flips stay under
    assert loc.first_divergence([0.0, 1e-7, 5e-3, 0.5, 2e-7], [1e-7] * 5) == 2  # first, not the largest
    # a sensitive op (high floor) may differ more before it counts; past ratio x floor it does
    assert loc.first_divergence([tol * 3], [tol / 2]) is None
    assert loc.first_divergence([tol / 2 * ratio * 1.1], [tol / 2]) == 0
    assert loc.first_divergence([tol * 0.99, tol * 1.01], [0.0, 0.0]) == 1


def test_probe_outputs_and_teacher_forcing():
    m = Transformer(CFG, max_context=64)
    m.load_weights(random_weights(CFG, 3))
    t, pos = torch.tensor([TOKENS[:9]]), torch.tensor([0])
    with torch.no_grad():
        plain = m(t, pos)
        m.probe = True
        logits, h = m(t, pos)
        assert torch.equal(logits, plain) and h.shape == (1 + 2 * CFG.n_layers, 1, 9, CFG.dim)
        assert torch.equal(h[0], m.embed_tokens(t))
        assert torch.allclose(m.lm_head(m.norm(h[-1])), plain)
        # teacher-forced on its own stream: nothing changes; on a stream changed at point k: only
        # the op that reads point k (k + 1) changes, every other op sees the teacher's values
        assert torch.equal(m(t, pos, h)[1], h)
        k = 2
        bent = h.clone()
        bent[k] += 0.5
        _, out = m(t, pos, bent)
        changed = [i for i in range(h.shape[0]) if not torch.equal(out[i], h[i])]
        assert changed == [k + 1]
    shared = Transformer(dataclasses.replace(CFG, layer_sharing=True), max_context=64)
    assert [n for n, _, _ in shared.probe_names()][1:5] == ["layers.0@1.self_attn", "layers.0@1.mlp",
                                                            "layers.0@2.self_attn", "layers.0@2.mlp"]


def test_target_without_probe_gives_none(reference):
    class NoProbe(Target):
        name = "none"

    assert loc.localise(NoProbe(), reference[0], SPEC, TOKENS) is None


@pytest.mark.parametrize("fault", [None, *FAULTS])
def test_eager_stand_in(reference, fault):
    fn, expected = FAULTS[fault] if fault else (None, None)
    check(loc.localise(EagerFaulty(fn), reference[0], SPEC, TOKENS), expected, reference)


def test_artifact_that_differs_from_its_probe_program(reference):
    """A fault only the shipped artifact has (the probe program, lowered again from the prepared
    model, is clean): no op diverges, and the artifact check says where to look instead."""
    from mobilellm_export.runtimes.eager import EagerRunner

    model = reference[0]
    for fault, differs in ((None, False), (scale_fault, True)):
        shipped = EagerRunner(Faulty(fault).prepare(model, SPEC), max_seq_len=SPEC.max_seq_len)
        r = loc.localise(EagerFaulty(), model, SPEC, TOKENS, artifact=shipped)
        assert r["first"] is None
        assert (r["artifact_diff"] > loc.SAME) == differs and ("only the artifact file" in r["message"]) == differs


# ---- through ExecuTorch -----------------------------------------------------------------------

@pytest.mark.extra  # make test-all: the conformance suite localises a seeded fault for every target
@pytest.mark.slow
@pytest.mark.parametrize("fault", [pytest.param(None, marks=pytest.mark.extra), "scale",
                                   pytest.param("kv", marks=pytest.mark.extra)])  # one fault in CI's budget
def test_android(reference, fault, tmp_path):
    fn, expected = FAULTS[fault] if fault else (None, None)
    r = loc.localise(Faulty(fn), reference[0], SPEC, TOKENS, work_dir=tmp_path)
    print(fault, r["message"])
    check(r, expected, reference)
    assert not list(tmp_path.iterdir())  # the probe program is gone


@pytest.mark.extra
def test_android_swapped_layer(reference, tmp_path):
    r = loc.localise(Faulty(swap_fault), reference[0], SPEC, TOKENS, work_dir=tmp_path)
    print("swap", r["message"])
    check(r, "layers.1.self_attn", reference)


@pytest.mark.extra
def test_android_probe_program_computes_what_the_artifact_does(reference, tmp_path):
    from mobilellm_export.runtimes.executorch import ExecuTorchRunner

    target = Android()
    target.export(target.prepare(reference[0], SPEC), SPEC, tmp_path)
    shipped = ExecuTorchRunner(tmp_path / target.ENTRY)  # picks up model.ptd beside it
    r = loc.localise(target, reference[0], SPEC, TOKENS, artifact=shipped)
    assert r["first"] is None and r["artifact_diff"] == 0.0, r["message"]


@pytest.mark.extra
@pytest.mark.parametrize("fault", [None, "scale"])
def test_android_r1_140m_shapes(fault, tmp_path):
    """R1-140M's layer shapes (dim 576, MLP 2048, 9/3 heads, QK-norm, a NoPE layer), 4 layers, 512
    ids: one group scale in 64 is the subtlest fault here (error ~6e-3 of the MLP's output)."""
    cfg = dataclasses.replace(PRESETS["r1-140m"], n_layers=4, vocab_size=512, rope_layers=(1, 1, 1, 0), bos_token_id=1,
                              eos_token_ids=(2,), pad_token_id=None)
    spec = dataclasses.replace(SPEC, config=cfg)
    m = Transformer(cfg, max_context=spec.max_context)
    m.load_weights(random_weights(cfg, 0))
    quantize(m.eval(), load_recipe("4bit"), calib(m))
    r = loc.localise(Faulty(fault and functools.partial(scale_fault, layer=2)), m, spec, TOKENS, work_dir=tmp_path)
    print(fault, r["message"])
    assert r["first"] == (fault and "layers.2.mlp"), r["message"]
