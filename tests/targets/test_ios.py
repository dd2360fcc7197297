"""The iOS target on tiny-r1: the package's weights against the reference's integers, the MIL reference
executor against the eager `reference()` through chunked prefill and decode, and broken packages that
must fail. R1-140M and SmolLM2 run in the `slow` suite."""

import dataclasses
import json
import shutil

import coremltools as ct  # a hard dependency (pyproject.toml): no skip if it is missing
import numpy as np
import pytest
import torch

from mobilellm_export.checkpoints import build_model
from mobilellm_export.quant.quantize import quantize
from mobilellm_export.quant.recipe import load_recipe
from mobilellm_export.quant.simulate import DequantLinear
from mobilellm_export.runtimes.coreml import MILRunner
from mobilellm_export.runtimes.eager import EagerRunner
from mobilellm_export.checkpoints import load
from mobilellm_export.backends import ExportSpec
from mobilellm_export.backends.coreml.target import IOS
from mobilellm_export.runtimes.mil import MILExecutor, load_program
from conftest import LLAMA3_TOKENIZER, calib

CTX, SEQ = 256, 16
PACKAGE_SPEC = "Data/com.apple.CoreML/model.mlmodel"


def _export(out, preset="tiny-r1", quant="4bit", scale_layer=None, ck=None, nearest=False):
    ck = ck or load(preset, tokenizer=str(LLAMA3_TOKENIZER))
    model = build_model(ck, CTX)
    if scale_layer is not None:  # seeded fault: activations beyond fp16's range
        with torch.no_grad():
            model.layers[scale_layer].mlp.up_proj.weight.mul_(1e5)
    recipe = load_recipe(quant)
    if scale_layer is not None:  # smoothing would fold the seeded 1e5 into norm gains and up_proj's
        recipe = dataclasses.replace(recipe, smooth=0.0)  # rows, moving where fp16 first overflows
    if nearest:  # the same format with round-to-nearest integers: which integers fill it is not
        # what the executor check is about, and GPTQ on a real-size model costs ~40 s of CI
        plain = dataclasses.replace(recipe.linear, scales="minmax", rounding="nearest", act_order=False)
        recipe = dataclasses.replace(recipe, linear=plain)
    quantize(model, recipe, calib(model))
    target = IOS()
    spec = ExportSpec(config=model.cfg, max_context=CTX, max_seq_len=SEQ, eos_ids=(1,), bos_id=0)
    target.check(recipe, spec)
    ref = target.reference(model)
    art = target.export(target.prepare(ref, spec), spec, out)
    return model, ref, out / art.entry, art


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return _export(tmp_path_factory.mktemp("ios4"))


def compare(ref, runner, n_prefill=37, n_decode=32, seed=0):
    """max |Δlogit| and max |logit| over a chunked prefill (chunks of SEQ) and single-token decode steps."""
    g = torch.Generator().manual_seed(seed)
    toks = torch.randint(0, ref.cfg.vocab_size, (n_prefill + n_decode,), generator=g).tolist()
    eager = EagerRunner(ref, max_seq_len=SEQ)
    eager.reset()
    runner.reset()
    diff = peak = 0.0
    steps = [toks[i:min(i + SEQ, n_prefill)] for i in range(0, n_prefill, SEQ)] + [[t] for t in toks[n_prefill:]]
    pos = 0
    for chunk in steps:
        want = eager._forward(chunk, pos)
        got = runner._forward(chunk, pos)
        assert got.shape == want.shape
        diff, peak = max(diff, (got - want).abs().max().item()), max(peak, want.abs().max().item())
        pos += len(chunk)
    return diff, peak


def _decompressed(prog) -> dict[str, np.ndarray]:
    """Every constexpr weight, decoded by an independent float64 formula from the stored integers and
    fp16 scales (no offsets are expected: the weights are symmetric)."""
    out = {}
    for op in prog.functions["main"].operations:
        if op.op_type == "constexpr_blockwise_shift_scale":
            assert op.offset is None
            data, scale = op.data.val.astype(np.float64), op.scale.val
            assert scale.dtype == np.float16
            for ax, (n, m) in enumerate(zip(data.shape, scale.shape)):
                scale = np.repeat(scale, n // m, axis=ax)
            out[op.outputs[0].name] = data * scale.astype(np.float64)
    return out


def test_package_weights_equal_reference_dequantized_weights(tiny):
    """Each quantized linear of the reference (integers x fp16 scales) is exactly one constexpr of the
    package, and the tied embedding gathers from the head's own constexpr: stored once."""
    model, ref, pkg, art = tiny
    prog = load_program(pkg)
    weights = _decompressed(prog)
    linears = {n: m for n, m in ref.named_modules() if isinstance(m, DequantLinear)}
    assert len(linears) == len(weights) == 2 * 7 + 1
    unmatched = dict(weights)
    for name, lin in linears.items():
        w = lin.weight.double().numpy()
        hits = [k for k, v in unmatched.items() if v.shape == w.shape and np.array_equal(v, w)]
        assert len(hits) == 1, f"{name}: {len(hits)} exact matches"
        del unmatched[hits[0]]
    # 4-bit linears hold int4 blocks of 32; the 8-bit head is int8 with one block per row
    from coremltools.converters.mil.mil import types

    kinds = {op.outputs[0].name: (types.builtin_to_string(op.data.dtype), op.data.shape[1] // op.scale.shape[1])
             for op in prog.functions["main"].operations if op.op_type == "constexpr_blockwise_shift_scale"}
    assert sorted(set(kinds.values())) == [("int4", 32), ("int8", 64)]
    head = next(k for k, v in kinds.items() if v[0] == "int8")
    gathers = [op for op in prog.functions["main"].operations if op.op_type == "gather" and op.x.name == head]
    assert len(gathers) == 1 and art.facts["constexpr"] == {"int4": 14, "int8": 1}
    # RoPE tables and norms are plain constants
    consts = [op for op in prog.functions["main"].operations if op.op_type == "const" and "rope" in op.name]
    assert consts and all(op.outputs[0].val.dtype == np.float16 for op in consts)


def test_executor_fp32_matches_reference(tiny):
    _, ref, pkg, _ = tiny
    diff, peak = compare(ref, MILRunner(pkg, SEQ, CTX))
    assert diff <= 1e-3 * peak, (diff, peak)


def test_package_contract(tiny):
    _, _, pkg, art = tiny
    spec = ct.utils.load_spec(str(pkg))
    ins = {i.name: i for i in spec.description.input}
    assert list(ins) == ["inputIds", "causalMask"] and [o.name for o in spec.description.output] == ["logits"]
    assert [s.name for s in spec.description.state] == ["keyCache", "valueCache"]
    ids = ins["inputIds"].type.multiArrayType
    assert ids.dataType == ct.proto.FeatureTypes_pb2.ArrayFeatureType.INT32
    assert [(r.lowerBound, r.upperBound) for r in ids.shapeRange.sizeRanges] == [(1, 1), (1, SEQ)]
    mask = ins["causalMask"].type.multiArrayType
    assert mask.dataType == ct.proto.FeatureTypes_pb2.ArrayFeatureType.FLOAT16
    assert [(r.lowerBound, r.upperBound) for r in mask.shapeRange.sizeRanges] == [(1, 1), (1, 1), (1, SEQ), (1, CTX)]
    st = spec.description.state[0].type.stateType.arrayType
    assert list(st.shape) == [2, 1, 2, CTX, 16] and st.dataType == ct.proto.FeatureTypes_pb2.ArrayFeatureType.FLOAT16
    meta = dict(spec.description.metadata.userDefined)
    assert json.loads(meta["eos_ids"]) == [1] and int(meta["max_context"]) == CTX
    assert spec.specificationVersion >= 9  # iOS 18


def _save_spec(pkg, spec):
    (pkg / PACKAGE_SPEC).write_bytes(spec.SerializeToString())


def _ops(spec):
    fn = spec.mlProgram.functions["main"]
    return fn.block_specializations[fn.opset].operations


def _op_named(spec, name):
    return next(o for o in _ops(spec) if o.attributes["name"].immediateValue.tensor.strings.values[0] == name)


def _flip_transpose_y(spec, matmul_name):
    """Flip a matmul's transpose_y, inline or in the const op it names; returns the old value."""
    arg = _op_named(spec, matmul_name).inputs["transpose_y"].arguments[0]
    value = arg.value if arg.HasField("value") else _op_named(spec, arg.name).attributes["val"]
    bools = value.immediateValue.tensor.bools.values
    old = bools[0]
    bools[0] = not old
    return old


def _first_linear(pkg, square: bool) -> str:
    """The name of the first matmul on a (square / non-square) constexpr weight: layer 0's q_proj or
    k_proj (op names carry coremltools' global counters, so they are looked up, not assumed)."""
    for op in load_program(pkg).functions["main"].operations:
        w = op.inputs.get("y") if op.op_type == "matmul" else None
        if w is not None and w.op is not None and w.op.op_type == "constexpr_blockwise_shift_scale":
            if (w.shape[0] == w.shape[1]) == square:
                return op.name
    raise AssertionError("no such matmul")


def _with_flipped_matmul(pkg, tmp_path, square):
    """A copy of the package whose first square / non-square linear has transpose_y flipped."""
    matmul_name = _first_linear(pkg, square)
    bad = tmp_path / "bad.mlpackage"
    shutil.copytree(pkg, bad)
    spec = ct.utils.load_spec(str(bad))
    assert _flip_transpose_y(spec, matmul_name) is True
    _save_spec(bad, spec)
    return bad


def test_transposed_linear_weight_fails_verification(tiny, tmp_path):
    """Flip transpose_y on a square linear (q_proj of layer 0): shapes still agree, numbers do not."""
    _, ref, pkg, _ = tiny
    bad = _with_flipped_matmul(pkg, tmp_path, square=True)
    diff, peak = compare(ref, MILRunner(bad, SEQ, CTX), n_prefill=20, n_decode=2)
    assert diff > 0.05 * peak, (diff, peak)


def test_shape_breaking_mutation_fails_type_inference(tiny, tmp_path):
    """transpose_y flipped on a non-square weight (k_proj): coremltools' type inference rejects it before
    anything runs, naming the op."""
    bad = _with_flipped_matmul(tiny[2], tmp_path, square=False)
    from mobilellm_export.errors import UserError

    with pytest.raises(UserError, match=_first_linear(tiny[2], square=False)):
        load_program(bad)


def test_int4_compressed_rope_tables_give_a_large_error(tiny, tmp_path):
    """coremltools' own global int4 compression (what a naive config does) also hits the RoPE tables."""
    import coremltools.optimize.coreml as cto

    _, ref, pkg, _ = tiny
    m = ct.models.MLModel(str(pkg), skip_model_load=True)
    cfg = cto.OptimizationConfig(global_config=cto.OpLinearQuantizerConfig(
        mode="linear_symmetric", dtype="int4", granularity="per_block", block_size=16, weight_threshold=1024))
    bad = cto.linear_quantize_weights(m, cfg)
    path = tmp_path / "rope4.mlpackage"
    bad.save(str(path))
    prog = load_program(path)
    rope = [op for op in prog.functions["main"].operations
            if op.op_type == "constexpr_blockwise_shift_scale" and "rope" in op.name]
    assert rope, "the seeded fault did not compress the RoPE tables"
    diff, peak = compare(ref, MILRunner(path, SEQ, CTX), n_prefill=37, n_decode=4)
    assert diff > 10 * 1e-3 * peak, (diff, peak)  # ten times the verification bound (measured: ~4 %)


def test_fp16_overflow_is_named(tmp_path):
    """Layer 1's MLP up_proj scaled by 1e5: fp32 mode still tracks the reference, the fp16 mode reports the
    first op whose fp16 output overflows, inside layer 1."""
    _, ref, pkg, _ = _export(tmp_path, scale_layer=1)
    ex = MILExecutor(load_program(pkg), mode="fp16")
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, ref.cfg.vocab_size, (1, 8), generator=g).numpy().astype(np.int32)
    from mobilellm_export.runtimes.coreml import causal_mask_np

    ex.run({"inputIds": ids, "causalMask": causal_mask_np(8, 0)})
    assert ex.first_nonfinite is not None
    name, op_type = ex.first_nonfinite
    prog = load_program(pkg)
    order = [op.name for op in prog.functions["main"].operations]
    # after every layer-0 op (its o_proj is the 5th constexpr-fed matmul), at or after layer 1's up_proj
    matmuls = [op.name for op in prog.functions["main"].operations if op.op_type == "matmul"]
    assert order.index(name) >= order.index(matmuls[7 + 5]), (name, op_type)
    ex32 = MILExecutor(prog, mode="fp32")
    ex32.run({"inputIds": ids, "causalMask": causal_mask_np(8, 0)})
    assert ex32.first_nonfinite is None


@pytest.mark.slow
def test_cli_export_writes_a_verified_bundle(tmp_path):
    from test_sources import run_cli

    res = run_cli(*["--model", "tiny-r1", "--tokenizer", str(LLAMA3_TOKENIZER / "tokenizer.json"), "--target", "ios",
                   "--quant", "4bit", "--out", str(tmp_path), "--eval-tokens", "48",
                   "--max-context", "128", "--max-seq-len", "16",
                   "--threshold", "top1_min=0.5"])  # random weights on 48 tokens: quantization, not lowering
    assert res.returncode == 0, res.stderr[-2000:]
    d = tmp_path / "tiny-r1-ios-4bit"
    manifest = json.loads((d / "bundle.json").read_text())
    files = manifest["files"]
    assert "model.mlpackage/Manifest.json" in files and any(f.endswith("weight.bin") for f in files)
    rep = json.loads((d / "report.json").read_text())
    assert rep["passed"] is True
    lowering = [c for c in rep["checks"] if c["suite"] == "lowering"]
    assert lowering and all(c["ok"] for c in lowering)
    # latency by default: the float row only. The MIL executor is a numeric reference, and timing it
    # (tens of minutes on SmolLM2) would say nothing about a device.
    assert "float eager" in rep["latency"] and not any("mlpackage" in k for k in rep["latency"]), rep["latency"]


# In the slow suite, so in CI: R1-140M (QK-norm, the 128K tied vocabulary) and SmolLM2 (30 layers),
# measured 80 s and 122 s (export ~95 s of SmolLM2's, executor load + 35 calls ~25 s).
@pytest.mark.slow
@pytest.mark.parametrize("preset", ["r1-140m", "smollm2"])
@pytest.mark.extra  # real sizes, ~200 s: make test-all; the conformance suite checks iOS at tiny sizes
def test_executor_fp32_matches_reference_real_sizes(preset, tmp_path, request):
    ck = request.getfixturevalue("smollm2") if preset == "smollm2" else None
    _, ref, pkg, art = _export(tmp_path, preset=preset, ck=ck, nearest=True)
    diff, peak = compare(ref, MILRunner(pkg, SEQ, CTX))
    print(f"\n{preset}: max|dlogit| {diff:.4g}, max|logit| {peak:.4g}, ratio {diff / peak:.3g}; "
          f"{art.facts['mlpackage_bytes'] / 1e6:.1f} MB, {art.facts['op_count']} ops, {art.facts['constexpr']}")
    assert diff <= 1e-3 * peak, (diff, peak)
