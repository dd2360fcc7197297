"""`Target.probe` for the `onnx` and `ios` targets: the localiser (verify/localise.py) through their real
lowerings, as tests/test_localise.py does for `android` through ExecuTorch.

Each target's probe program is its `export` lowering of the prepared model with the residual stream as
extra outputs: the ONNX graph with the embedding's and the residual sums' values as graph outputs (run
in ONNX Runtime), the Core ML program converted from a probing copy of the StatefulDecoder (run by
the MIL executor in fp32). Checked here, on tiny 4bit models (random weights, 64 tokens = 2 chunks):
  clean   no op diverges, and the shipped artifact's runner computes the probe program's last logits
  faults  injected into the prepared model before lowering, named at their layer and op:
            scale  one group scale x2 in layers.1.mlp.down_proj      -> layers.1.mlp
            norm   layers.1's input norm gain off on every other channel -> layers.1.self_attn
ONNX runs at accuracy fp32 (level 1: the weight-only reference's arithmetic). At the default int8
(level 4: activations quantized per block of 32) every op differs from that reference by ~1e-2, over
the localiser's fixed 2e-3 bound, so a clean int8 lowering is flagged at its first attention: the
int8 test checks only that the probe program computes what the int8 artifact does.
"""

import dataclasses
import functools

import pytest
import torch

from conftest import calib

from mobilellm_export.backends import ExportSpec
from mobilellm_export.backends.coreml.target import IOS
from mobilellm_export.backends.onnxruntime.target import Onnx
from mobilellm_export.model import Transformer, random_weights, to_rotate_half
from mobilellm_export.nn_utils import structural_copy
from mobilellm_export.presets import PRESETS
from mobilellm_export.quant.quantize import quantize
from mobilellm_export.quant.recipe import load_recipe
from mobilellm_export.verify import localise as loc

SMALL = dict(vocab_size=512, bos_token_id=1, eos_token_ids=(2,), pad_token_id=None)  # 512 ids: quick lowerings
CONFIGS = {
    "tiny-llama": PRESETS["tiny-llama"],
    "tiny-r1": dataclasses.replace(PRESETS["tiny-r1"], **SMALL),  # QK-norm, interleaved RoPE (as rotate_half)
    "tiny-llama-shared": dataclasses.replace(PRESETS["tiny-llama"], layer_sharing=True),  # each block twice
    "tiny-gemma3": dataclasses.replace(PRESETS["tiny-gemma3"], **SMALL),  # sandwich norms, scaled embedding
    "tiny-olmo2": dataclasses.replace(PRESETS["tiny-olmo2"], **SMALL),  # post-norm: explicit residual Adds
}
CTX, SEQ = 128, 32
TOKENS = torch.randint(3, 512, (64,), generator=torch.Generator().manual_seed(1)).tolist()  # 2 chunks of SEQ


@functools.cache
def quantized(preset: str):
    """(4bit quantized model in rotate_half layout as build_model gives it, spec, its logits on TOKENS)."""
    cfg, sd = to_rotate_half(CONFIGS[preset], random_weights(CONFIGS[preset], 0))
    m = Transformer.from_weights(cfg, sd, max_context=CTX)
    quantize(m, load_recipe("4bit"), calib(m))
    spec = ExportSpec(config=cfg, max_context=CTX, max_seq_len=SEQ, eos_ids=(2,), bos_id=1, threads=2)
    with torch.no_grad():
        logits = m(torch.tensor([TOKENS]), torch.tensor([0]))
    return m, spec, logits


def check(r, model, expected: str | None, logits):
    """localise's verdict r on `model` (the quantized model; the reference is derived from it)."""
    names = [n for n, _, _ in model.probe_names()] + ["lm_head"]
    assert [p["name"] for p in r["points"]] == names and r["tokens"] == len(TOKENS)
    if expected is None:
        assert r["first"] is None and "no op diverges" in r["message"], r["message"]
        assert all(p["error"] < 1e-5 for p in r["points"]), r["points"]  # fp32 rounding, not just under the bound
    else:
        layer, op = int(expected.split(".")[1]), expected.rsplit(".", 1)[1]
        assert (r["first"], r["layer"], r["op"]) == (expected, layer, op), r["message"]
        assert r["error"] > r["bound"]
        # teacher forcing: every op outside the faulty layer stays within its bound, even after it
        for p in r["points"]:
            if not p["name"].startswith(f"layers.{layer}."):
                assert p["error"] <= p["bound"], (p, r["message"])
    # the quantized model is as it was: flags, modules, logits
    assert not model.probe and model.full_logits
    with torch.no_grad():
        assert torch.equal(model(torch.tensor([TOKENS]), torch.tensor([0])), logits)


def scaled(w: torch.Tensor) -> torch.Tensor:
    """A copy of scales [out, groups] with one group's scale x2 (row 5, the middle group)."""
    s = w.clone()
    s[5, s.shape[1] // 2] *= 2
    return s


def with_gain_fault(norm):
    """A copy of a norm module whose gain is 1.5x on every other channel."""
    new = structural_copy(norm)
    w = norm.weight.detach().clone()
    w[::2] = w[::2] * 1.5 + (0.5 if getattr(norm, "plus_one", False) else 0.0)  # Gemma's 1 + w: shift too
    new.weight = torch.nn.Parameter(w, requires_grad=False)
    return new


# ---- onnx ---------------------------------------------------------------------------------------


def onnx_scale_fault(p):
    """The torchao linear behind the reference's DequantLinear, with one group scale x2: the graph
    builder reads its integers and scales (the eager DequantLinear is rebuilt from it too)."""
    from mobilellm_export.quant.simulate import DequantLinear

    src = p.layers[1].mlp.down_proj.source[0]
    w = src.weight
    faulty = type(w)(w.qdata, scaled(w.scale), w.zero_point, w.target_dtype, w.block_size, w.dtype,
                     w.activation_quantization)
    lin = structural_copy(src)
    lin.weight = torch.nn.Parameter(faulty, requires_grad=False)
    p.layers[1].mlp.down_proj = DequantLinear(lin)


def onnx_norm_fault(p):
    p.layers[1].input_layernorm = with_gain_fault(p.layers[1].input_layernorm)


class FaultyOnnx(Onnx):
    def __init__(self, fault=None, **options):
        super().__init__(**options)
        self.fault = fault

    def prepare(self, model, spec):
        p = super().prepare(model, spec)  # the reference itself: the fault goes on a copy
        if self.fault:
            p = structural_copy(p)
            self.fault(p)
        return p


def onnx_runner(target, model, spec, out):
    from mobilellm_export.runtimes.onnxruntime import OnnxRunner

    out.mkdir(parents=True, exist_ok=True)
    target.export(target.prepare(target.reference(model), spec), spec, out)
    return OnnxRunner(out / "model.onnx", threads=2, max_seq_len=SEQ, max_context=CTX,
                      cfg=dataclasses.asdict(spec.config))


@pytest.mark.parametrize("preset", list(CONFIGS))
def test_onnx_clean(preset, tmp_path):
    """Every layout the graph builder writes (pre-norm, QK-norm, shared blocks, sandwich, post-norm):
    its stream outputs are the residual stream at probe_names()' points, to fp32 rounding, and the
    shipped graph computes the probe graph's logits exactly."""
    model, spec, logits = quantized(preset)
    target = Onnx(accuracy="fp32")
    shipped = onnx_runner(target, model, spec, tmp_path / "bundle")
    (tmp_path / "work").mkdir()
    r = loc.localise(target, target.reference(model), spec, TOKENS, artifact=shipped, work_dir=tmp_path / "work")
    print(preset, r["message"])
    check(r, model, None, logits)
    assert r["artifact_diff"] == 0.0, r["message"]
    assert not list((tmp_path / "work").iterdir())  # the probe graph is gone


@pytest.mark.parametrize("fault, expected", [(onnx_scale_fault, "layers.1.mlp"),
                                             (onnx_norm_fault, "layers.1.self_attn")], ids=["scale", "norm"])
@pytest.mark.parametrize("preset", ["tiny-llama", "tiny-r1"])
def test_onnx_fault(preset, fault, expected):
    model, spec, logits = quantized(preset)
    target = FaultyOnnx(fault, accuracy="fp32")
    r = loc.localise(target, target.reference(model), spec, TOKENS)
    print(preset, r["message"])
    check(r, model, expected, logits)


def test_onnx_fault_only_in_the_shipped_graph(tmp_path):
    """The shipped graph has the scale fault, the probe graph (lowered again from a clean prepared
    model) has not: no op diverges, and the artifact check points at the artifact itself."""
    model, spec, logits = quantized("tiny-llama")
    shipped = onnx_runner(FaultyOnnx(onnx_scale_fault, accuracy="fp32"), model, spec, tmp_path)
    target = Onnx(accuracy="fp32")
    r = loc.localise(target, target.reference(model), spec, TOKENS, artifact=shipped)
    assert r["first"] is None and r["artifact_diff"] > loc.SAME and "only the artifact file" in r["message"], r
    check(r, model, None, logits)


def test_onnx_probe_graph_is_the_shipped_graph_plus_outputs(tmp_path):
    """The probe graph has the shipped graph's nodes, weights and outputs, and one output more per
    probe point: the residual values the graph computes anyway. The shipped graph is unchanged."""
    import onnx

    from mobilellm_export.backends.onnxruntime.graph import export_onnx

    model, spec, _ = quantized("tiny-llama-shared")
    ref = Onnx().reference(model)
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir(), (tmp_path / "p").mkdir()
    facts = export_onnx(ref, spec, tmp_path / "a")
    export_onnx(ref, spec, tmp_path / "b")
    pf = export_onnx(ref, spec, tmp_path / "p", probe=True)
    assert "probe_outputs" not in facts
    for f in ("model.onnx", "model.onnx.data"):  # the shipped graph is deterministic, byte for byte
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes()
    assert (tmp_path / "a" / "model.onnx.data").read_bytes() == (tmp_path / "p" / "model.onnx.data").read_bytes()
    shipped, probe = (onnx.load(str(tmp_path / d / "model.onnx"), load_external_data=False).graph for d in "ap")
    assert [n.SerializeToString() for n in shipped.node] == [n.SerializeToString() for n in probe.node]
    assert [i.SerializeToString() for i in shipped.initializer] == [i.SerializeToString() for i in probe.initializer]
    outs = [o.name for o in probe.output]
    assert outs[:len(shipped.output)] == [o.name for o in shipped.output]
    assert outs[len(shipped.output):] == pf["probe_outputs"] and len(pf["probe_outputs"]) == len(ref.probe_names())


def test_onnx_int8_probe_graph_computes_what_the_int8_artifact_does(tmp_path):
    """At accuracy level 4 (the default) the probe graph is lowered at level 4 too: same logits as the
    shipped graph. (Its ops differ from the float-activation reference by level 4's rounding, ~1e-2,
    over the localiser's bound: see the module docstring.)"""
    model, spec, _ = quantized("tiny-llama")
    target = Onnx()
    assert target.accuracy == "int8"
    shipped = onnx_runner(target, model, spec, tmp_path)
    r = loc.localise(target, target.reference(model), spec, TOKENS, artifact=shipped)
    assert r["artifact_diff"] == 0.0, r["message"]
    # the ops do differ by level 4's rounding (what keeps the int8 verdict from being clean)
    assert max(p["error"] for p in r["points"]) > 1e-3


# ---- ios ----------------------------------------------------------------------------------------


def ios_scale_fault(p):
    """The prepared decoder's BlockwiseLinear (int4 data, fp16 scales), one group scale x2."""
    lin = structural_copy(p.model.layers[1].mlp.down_proj)
    lin.scale = scaled(lin.scale)
    p.model.layers[1].mlp.down_proj = lin


def ios_norm_fault(p):
    p.model.layers[1].input_layernorm = with_gain_fault(p.model.layers[1].input_layernorm)


class FaultyIOS(IOS):
    def __init__(self, fault=None, keep=None, **options):
        super().__init__(**options)
        self.fault, self.keep = fault, keep

    def prepare(self, model, spec):
        p = super().prepare(model, spec)  # a StatefulDecoder over a structural copy
        if self.fault:
            self.fault(p)
        return p

    def probe(self, prepared, spec, work_dir):
        fn = super().probe(prepared, spec, work_dir)
        if self.keep is not None:  # what the probe package holds, before localise deletes it
            from mobilellm_export.runtimes.mil import load_program

            pkg = work_dir / "model.mlpackage"
            self.keep["weights"] = (pkg / "Data/com.apple.CoreML/weights/weight.bin").read_bytes()
            self.keep["outputs"] = [v.name for v in load_program(pkg).functions["main"].outputs]
        return fn


@pytest.mark.parametrize("preset", ["tiny-r1", "tiny-llama-shared"])
def test_ios_clean(preset, tmp_path):
    """QK-norm (tiny-r1) and blocks applied twice: no op diverges, the MIL executor computes the
    shipped package's logits as the probe package's, and the probe package stores the shipped
    weights, byte for byte."""
    from mobilellm_export.runtimes.coreml import MILRunner

    model, spec, logits = quantized(preset)
    kept = {}
    target = FaultyIOS(keep=kept)
    ref = target.reference(model)
    (tmp_path / "bundle").mkdir()
    target.export(target.prepare(ref, spec), spec, tmp_path / "bundle")
    pkg = tmp_path / "bundle" / "model.mlpackage"
    shipped = MILRunner(pkg, max_seq_len=SEQ, max_context=CTX)
    assert [v.name for v in shipped.executor.fn.outputs] == ["logits"]  # the shipped package: logits only
    (tmp_path / "work").mkdir()
    r = loc.localise(target, ref, spec, TOKENS, artifact=shipped, work_dir=tmp_path / "work")
    print(r["message"])
    check(r, model, None, logits)
    assert r["artifact_diff"] <= 1e-6, r["message"]
    assert kept["outputs"] == ["logits"] + [f"hidden_{i}" for i in range(len(model.probe_names()))]
    assert kept["weights"] == (pkg / "Data/com.apple.CoreML/weights/weight.bin").read_bytes()
    assert not list((tmp_path / "work").iterdir())


@pytest.mark.parametrize("fault, expected", [(ios_scale_fault, "layers.1.mlp"),
                                             (ios_norm_fault, "layers.1.self_attn")], ids=["scale", "norm"])
def test_ios_fault(fault, expected):
    model, spec, logits = quantized("tiny-llama")
    target = FaultyIOS(fault)
    r = loc.localise(target, target.reference(model), spec, TOKENS)
    print(r["message"])
    check(r, model, expected, logits)


def test_ios_probe_leaves_the_prepared_decoder_as_it_was(tmp_path):
    """probe() converts a copy: the prepared decoder's flags, caches' root and outputs stay."""
    from mobilellm_export.backends.coreml.convert import eager_step, probe_copy

    model, spec, _ = quantized("tiny-llama-shared")
    target = IOS()
    dec = target.prepare(target.reference(model), spec)
    before = eager_step(dec, TOKENS[:5], 0)
    copy = probe_copy(dec)
    assert copy.model.probe and not dec.model.probe
    assert all(c.root[0] is copy for c in copy.model.caches) and all(c.root[0] is dec for c in dec.model.caches)
    assert copy.model.embed_tokens.head[0] is copy.model.lm_head and dec.model.embed_tokens.head[0] is dec.model.lm_head
    with torch.no_grad():
        from mobilellm_export.backends.coreml.convert import causal_mask

        out = copy(torch.tensor([TOKENS[:5]], dtype=torch.int32), causal_mask(5, 0))
    assert len(out) == 1 + len(model.probe_names()) and torch.equal(out[0][0], before)
    assert torch.equal(eager_step(dec, TOKENS[:5], 0), before)
