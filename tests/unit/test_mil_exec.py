"""The MIL reference executor, op by op, against definitions it does not share code with: coremltools'
own value_inference (the op built on constant inputs) where the op has one, else torch's equivalent op
or coremltools' `decompress`. Inputs are random and include broadcasting, negative axes and indices,
masks, strides and empty slices."""

import coremltools as ct  # a hard dependency (pyproject.toml): no skip if it is missing
import numpy as np
import pytest
import torch
from coremltools.converters.mil import Builder as mb
from coremltools.converters.mil.mil import Function, Program, types

from mobilellm_export.runtimes.mil import OPS, MILExecutor, UnsupportedOp

IOS18 = ct.target.iOS18
RNG = np.random.default_rng(0)
NP2MIL = {np.dtype(np.float32): types.fp32, np.dtype(np.float16): types.fp16, np.dtype(np.int32): types.int32,
          np.dtype(np.bool_): types.bool}


def program(op: str, inputs: dict, **attrs) -> Program:
    """A one-op program: `inputs` are function inputs (placeholders), `attrs` constants."""
    specs = {k: mb.placeholder(shape=v.shape, dtype=NP2MIL[v.dtype]) for k, v in inputs.items()}
    prog = Program()
    with Function(specs, opset_version=IOS18) as f:
        args = {k: f.inputs[k] for k in inputs}
        if all(k.startswith("v") and k[1:].isdigit() for k in args) and args:  # concat / stack: a tuple
            args = {"values": tuple(args[k] for k in sorted(args))}
        out = getattr(mb, op)(**args, **attrs)
        f.set_outputs([out] if not isinstance(out, (list, tuple)) else list(out))
    prog.add_function("main", f)
    return prog


def run(op: str, inputs: dict, mode="fp32", **attrs) -> np.ndarray:
    prog = program(op, inputs, **attrs)
    out = MILExecutor(prog, mode).run(inputs)
    return next(iter(out.values())).numpy()


def vi(op: str, inputs: dict, **attrs):
    """coremltools' value_inference: the same op on constant inputs."""
    got = {}
    prog = Program()
    with Function({"d": mb.placeholder(shape=(1,))}, opset_version=IOS18) as f:
        kw = dict(inputs)
        if any(k.startswith("v") and k[1:].isdigit() for k in kw):
            kw = {"values": tuple(kw[k] for k in sorted(kw))}
        v = getattr(mb, op)(**kw, **attrs)
        got["val"] = v.val
        f.set_outputs([f.inputs["d"]])
    assert got["val"] is not None, f"{op} has no value_inference for these inputs"
    return np.asarray(got["val"])


def check_vi(op, inputs, atol=1e-6, **attrs):
    mine, ref = run(op, inputs, **attrs), vi(op, inputs, **attrs)
    assert mine.shape == ref.shape, (op, mine.shape, ref.shape)
    np.testing.assert_allclose(mine.astype(np.float64), ref.astype(np.float64), rtol=1e-5, atol=atol)


def f32(*shape, lo=-2.0, hi=2.0):
    return RNG.uniform(lo, hi, shape).astype(np.float32)


@pytest.mark.parametrize("op", ["add", "sub", "mul", "real_div", "maximum", "minimum", "equal", "not_equal",
                                "less", "less_equal", "greater", "greater_equal"])
def test_binary_broadcasting(op):
    x, y = f32(2, 3, 4), f32(3, 1)
    if op in ("equal", "not_equal"):
        y = x[0, :, :1].copy()  # some equal entries
    check_vi(op, {"x": x, "y": y})


def test_pow_and_int_division():
    check_vi("pow", {"x": f32(3, 5, lo=0.1), "y": np.float32(2.0) * np.ones((5,), np.float32)})
    x, y = np.array([7, -7, 8, 9], np.int32), np.array([2, 2, 3, 9], np.int32)
    assert run("real_div", {"x": x, "y": y}).tolist() == [3, -3, 2, 1]  # int32 real_div: as Core ML types it
    check_vi("real_div", {"x": np.array([8, 9, 6], np.int32), "y": np.array([2, 3, 6], np.int32)})


def test_select_broadcasts_cond():
    cond = RNG.uniform(size=(3, 1)) > 0.5
    check_vi("select", {"cond": cond, "a": f32(3, 4), "b": f32(4)})


@pytest.mark.parametrize("op,ref", [
    ("sqrt", torch.sqrt), ("exp", torch.exp), ("silu", torch.nn.functional.silu), ("sigmoid", torch.sigmoid)])
def test_unary(op, ref):
    x = f32(4, 6, lo=0.01 if op == "sqrt" else -3)
    np.testing.assert_allclose(run(op, {"x": x}), ref(torch.from_numpy(x)).numpy(), rtol=1e-6, atol=1e-6)


def test_abs_and_clip():
    check_vi("abs", {"x": f32(3, 4)})
    check_vi("inverse", {"x": f32(3, 4, lo=0.1)})  # default epsilon 1e-4
    check_vi("inverse", {"x": f32(3, 4, lo=0.1)}, epsilon=np.float32(0.5))
    check_vi("clip", {"x": f32(3, 4)}, alpha=np.float32(-0.5), beta=np.float32(0.75))


def test_rsqrt_epsilon():
    x = f32(4, 6, lo=0.0, hi=1.0)
    x[0, 0] = 0.0
    want = 1.0 / np.sqrt(x.astype(np.float64) + 1e-3)
    np.testing.assert_allclose(run("rsqrt", {"x": x}, epsilon=1e-3), want, rtol=1e-5)


def test_softmax_negative_axis():
    x = f32(2, 3, 5)
    np.testing.assert_allclose(run("softmax", {"x": x}, axis=-2), torch.softmax(torch.from_numpy(x), -2).numpy(),
                               rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("op", ["reduce_mean", "reduce_sum", "reduce_max"])
@pytest.mark.parametrize("axes,keep", [([-1], True), ([0, -1], False), ([1], False)])
def test_reductions(op, axes, keep):
    check_vi(op, {"x": f32(2, 3, 4)}, axes=axes, keep_dims=keep)


def test_cast_truncates_and_rounds():
    x = np.array([[-2.7, -0.5, 0.4, 3.9, 100.2]], np.float32)
    check_vi("cast", {"x": x}, dtype="int32")
    assert run("cast", {"x": x}, dtype="int32").tolist() == [[-2, 0, 0, 3, 100]]
    # fp16: kept fp32 in fp32 mode, rounded in fp16 mode
    y = np.array([1.0001, 60000.0, 1e-8], np.float32)
    assert run("cast", {"x": y}, dtype="fp16").tolist() == pytest.approx(y.tolist())
    got = run("cast", {"x": y}, mode="fp16", dtype="fp16")
    np.testing.assert_array_equal(got, y.astype(np.float16).astype(np.float32))


def test_gather_negative_axis_and_indices():
    x = f32(4, 5, 3)
    idx = np.array([[0, -1], [2, 4]], np.int32)
    check_vi("gather", {"x": x, "indices": idx}, axis=-2)
    np.testing.assert_array_equal(run("gather", {"x": x, "indices": idx}, axis=-2),
                                  np.take(x, idx % 5, axis=1))


@pytest.mark.parametrize("kw", [
    dict(begin=[0, 1, -3], end=[2, -1, 4]),
    dict(begin=[1, 0, 0], end=[0, 0, 0], end_mask=[True, True, True]),
    dict(begin=[0, 0, 0], end=[2, 3, 4], stride=[1, 2, 3]),
    dict(begin=[1, -1, 3], end=[0, 0, 0], stride=[1, -1, -2], end_mask=[True, True, True]),
    dict(begin=[1, 0, 0], end=[2, 3, 4], squeeze_mask=[True, False, False]),
    dict(begin=[0, 2, 1], end=[2, 2, 4]),  # empty along axis 1
])
def test_slice_by_index(kw):
    check_vi("slice_by_index", {"x": f32(2, 3, 4)}, **kw)


def test_slice_update_against_torch():
    x, upd = f32(2, 5, 4), f32(2, 2, 4)
    want = torch.from_numpy(x.copy())
    want[:, 2:4, :] = torch.from_numpy(upd)
    got = run("slice_update", {"x": x, "update": upd}, begin=[0, -3, 0], end=[2, -1, 4])
    np.testing.assert_array_equal(got, want.numpy())
    # masks and strides
    upd2 = f32(2, 3, 2)
    want = torch.from_numpy(x.copy())
    want[:, 0:5:2, 1::2] = torch.from_numpy(upd2)
    got = run("slice_update", {"x": x, "update": upd2}, begin=[0, 0, 1], end=[0, 5, 0], stride=[1, 2, 2],
              begin_mask=[True, False, False], end_mask=[True, False, True])
    np.testing.assert_array_equal(got, want.numpy())


def test_concat_and_stack():
    a, b = f32(2, 3), f32(2, 1)
    check_vi("concat", {"v0": a, "v1": b}, axis=-1)
    # interleave: the documented example (coremltools 9.0's value_inference ignores `interleave`)
    x1, x2 = np.array([[1, 2], [3, 4], [5, 6]], np.float32), np.array([[7, 8], [9, 10], [11, 12]], np.float32)
    assert run("concat", {"v0": x1, "v1": x2}, axis=0, interleave=True).tolist() == \
        [[1, 2], [7, 8], [3, 4], [9, 10], [5, 6], [11, 12]]
    np.testing.assert_array_equal(run("concat", {"v0": a, "v1": f32(2, 0)}, axis=1), a)  # an empty part
    check_vi("stack", {"v0": a, "v1": f32(2, 3)}, axis=-1)


def test_shape_ops():
    x = f32(2, 3, 4)
    check_vi("reshape", {"x": x}, shape=[0, -1, 2])
    check_vi("expand_dims", {"x": x}, axes=[0, -1])
    check_vi("squeeze", {"x": f32(1, 3, 1)}, axes=[-1])
    check_vi("transpose", {"x": x}, perm=[2, 0, 1])
    check_vi("tile", {"x": x}, reps=[1, 2, 3])
    check_vi("shape", {"x": x})
    check_vi("range_1d", {}, start=np.int32(2), end=np.int32(11), step=np.int32(3))
    check_vi("pad", {"x": x}, pad=np.array([1, 0, 0, 3], np.int32), constant_val=np.float32(0.5))
    check_vi("pad", {"x": x}, pad=np.array([0, 0, 2, 1, 0, 0], np.int32))


@pytest.mark.parametrize("tx,ty", [(False, False), (False, True), (True, False)])
def test_matmul_broadcast_transpose(tx, ty):
    x = f32(2, 1, 3, 4) if not tx else f32(2, 1, 4, 3)
    y = f32(5, 4, 6) if not ty else f32(5, 6, 4)
    got = run("matmul", {"x": x, "y": y}, transpose_x=tx, transpose_y=ty)
    tx_, ty_ = torch.from_numpy(x), torch.from_numpy(y)
    want = torch.matmul(tx_.transpose(-1, -2) if tx else tx_, ty_.transpose(-1, -2) if ty else ty_)
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-5, atol=1e-6)


def test_linear_with_bias():
    x, w, b = f32(2, 3, 4), f32(5, 4), f32(5)
    got = run("linear", {"x": x}, weight=w, bias=b)
    want = torch.nn.functional.linear(*(torch.from_numpy(t) for t in (x, w, b)))
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mask_kind", ["float", "bool", "none"])
def test_sdpa_against_torch(mask_kind):
    q, k, v = f32(1, 4, 3, 8), f32(1, 4, 6, 8), f32(1, 4, 6, 8)
    inputs = {"query": q, "key": k, "value": v}
    tmask = None
    if mask_kind == "float":
        m = np.where(RNG.uniform(size=(1, 1, 3, 6)) > 0.3, 0.0, -np.inf).astype(np.float32)
        m[..., 0] = 0.0
        inputs["attn_mask"], tmask = m, torch.from_numpy(m)
    elif mask_kind == "bool":
        m = RNG.uniform(size=(3, 6)) > 0.3
        m[:, 0] = True
        inputs["attn_mask"], tmask = m, torch.from_numpy(m)
    got = run("scaled_dot_product_attention", inputs)
    want = torch.nn.functional.scaled_dot_product_attention(torch.from_numpy(q), torch.from_numpy(k),
                                                            torch.from_numpy(v), attn_mask=tmask)
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype,offset", [("int4", False), ("int8", True), ("uint4", True)])
def test_constexpr_blockwise_shift_scale_against_decompress(dtype, offset):
    from coremltools.converters.mil.mil.ops.defs.iOS18.compression import constexpr_blockwise_shift_scale as cbss

    np_dt = types.nptype_from_builtin(types.string_to_builtin(dtype))
    lo, hi = {"int4": (-8, 7), "int8": (-128, 127), "uint4": (0, 15)}[dtype]
    data = RNG.integers(lo, hi + 1, size=(8, 64)).astype(np_dt)
    scale = RNG.uniform(1e-3, 1.0, size=(4, 2)).astype(np.float16)  # blocks of 2 rows x 32 columns
    off = RNG.integers(lo, hi + 1, size=(4, 2)).astype(np_dt) if offset else None
    prog = Program()
    with Function({"d": mb.placeholder(shape=(1,))}, opset_version=IOS18) as f:
        w = mb.constexpr_blockwise_shift_scale(data=data, scale=scale, **({"offset": off} if offset else {}))
        f.set_outputs([mb.add(x=w, y=np.float16(0))])
    prog.add_function("main", f)
    # fp32 mode: the exact product of the stored integers and fp16 scales (independent float64 formula)
    got = next(iter(MILExecutor(prog).run({"d": np.zeros(1, np.float32)}).values())).numpy()
    d64 = data.astype(np.float64) - (0 if off is None else np.repeat(np.repeat(off, 2, 0), 32, 1).astype(np.float64))
    np.testing.assert_array_equal(got, (d64 * np.repeat(np.repeat(scale, 2, 0), 32, 1)).astype(np.float32))
    # fp16 mode: as Core ML materialises it, coremltools' own decompress (fp16 result)
    got16 = next(iter(MILExecutor(prog, "fp16").run({"d": np.zeros(1, np.float32)}).values())).numpy()
    np.testing.assert_array_equal(got16, cbss.decompress(data, scale, off).astype(np.float32))


def test_states_persist_across_calls_and_reset():
    prog = Program()
    with Function({"x": mb.placeholder(shape=(2, 3), dtype=types.fp16),
                   "s": mb.state_tensor_placeholder(shape=(2, 3), dtype=types.fp16)}, opset_version=IOS18) as f:
        cur = mb.read_state(input=f.inputs["s"])
        new = mb.add(x=cur, y=f.inputs["x"])
        mb.coreml_update_state(state=f.inputs["s"], value=new)
        f.set_outputs([mb.mul(x=new, y=np.float16(2))])
    prog.add_function("main", f)
    ex = MILExecutor(prog)
    x = f32(2, 3)
    out1 = next(iter(ex.run({"x": x}).values())).numpy()
    out2 = next(iter(ex.run({"x": x}).values())).numpy()
    np.testing.assert_allclose(out1, 2 * x, rtol=1e-6)
    np.testing.assert_allclose(out2, 4 * x, rtol=1e-6)
    ex.reset()
    np.testing.assert_allclose(next(iter(ex.run({"x": x}).values())).numpy(), 2 * x, rtol=1e-6)


def test_fp16_mode_names_the_first_overflowing_op():
    prog = Program()
    with Function({"x": mb.placeholder(shape=(4,), dtype=types.fp16)}, opset_version=IOS18) as f:
        a = mb.mul(x=f.inputs["x"], y=np.float16(2), name="safe")
        b = mb.mul(x=a, y=np.float16(300), name="overflows")
        c = mb.mul(x=b, y=np.float16(0.5), name="after")
        f.set_outputs([c])
    prog.add_function("main", f)
    x = np.array([1, 100, 200, 3], np.float32)
    ex32 = MILExecutor(prog, "fp32")
    assert np.isfinite(next(iter(ex32.run({"x": x}).values())).numpy()).all() and ex32.first_nonfinite is None
    ex16 = MILExecutor(prog, "fp16")
    out = next(iter(ex16.run({"x": x}).values())).numpy()
    assert np.isinf(out).any()
    assert ex16.first_nonfinite == ("overflows", "mul")


def test_unknown_op_is_named():
    assert "sin" not in OPS
    with pytest.raises(UnsupportedOp, match="'sin'"):
        MILExecutor(program("sin", {"x": f32(3)}))


@pytest.mark.parametrize("mode,ref", [
    ("EXACT", lambda x: torch.nn.functional.gelu(x)),
    ("TANH_APPROXIMATION", lambda x: torch.nn.functional.gelu(x, approximate="tanh")),  # Gemma's GeGLU
    ("SIGMOID_APPROXIMATION", lambda x: x * torch.sigmoid(1.702 * x))])
def test_gelu_modes(mode, ref):
    x = f32(4, 6, lo=-5, hi=5)
    got = next(iter(MILExecutor(program("gelu", {"x": x}, mode=mode), "fp32").run({"x": x}).values())).numpy()
    np.testing.assert_allclose(got, ref(torch.from_numpy(x)).numpy(), rtol=1e-5, atol=1e-6)
