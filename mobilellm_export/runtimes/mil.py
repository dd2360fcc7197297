"""A reference executor for Core ML ML programs on Linux: the saved `.mlpackage`'s MIL program, run op by
op in torch. It is how this project checks a Core ML package's numbers without a Mac.

    prog = load_program("model.mlpackage")      # milproto.load + coremltools' validation and type inference
    ex = MILExecutor(prog, mode="fp32")          # or "fp16": values rounded to fp16 where Core ML computes fp16
    out = ex.run({"inputIds": ..., "causalMask": ...})   # states kept in ex.states across calls

Modes. fp32: every fp16 tensor (casts to fp16, fp16 states, fp16 constants) is computed and kept in fp32,
so the package's arithmetic is checked apart from fp16 rounding. fp16: each op computes in fp32 and
rounds its fp16 outputs to fp16 (fp32 accumulation inside matmul / reductions / attention, as GPUs
and the ANE do), states hold fp16 values, and the first op whose output holds an inf or NaN that its
inputs did not is recorded in `ex.first_nonfinite` (name, type).

Only the ops our exporter emits are implemented (`OPS`); any other op is an `UnsupportedOp` error naming
it, raised before anything runs. Each op is tested in `tests/test_mil_exec.py` against coremltools' own
value_inference or torch.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from mobilellm_export.errors import UserError


class UnsupportedOp(UserError):
    pass


FLOAT_DTYPES = {"fp16", "fp32", "fp64"}
INT_TORCH = {"int8": torch.int8, "uint8": torch.uint8, "int16": torch.int16, "uint16": torch.int32,
             "int32": torch.int32, "int64": torch.int64, "uint32": torch.int64, "bool": torch.bool}
INT_RANGE = {"int8": (-128, 127), "uint8": (0, 255), "int16": (-32768, 32767), "uint16": (0, 65535),
             "int32": (-2 ** 31, 2 ** 31 - 1), "uint32": (0, 2 ** 32 - 1), "int4": (-8, 7), "uint4": (0, 15)}


def dtype_name(t) -> str:
    """'fp16', 'int32', 'bool', ... of a MIL builtin type (a tensor's element type)."""
    from coremltools.converters.mil.mil import types

    if types.is_tensor(t) or types.is_state(t):
        t = t.get_primitive() if types.is_tensor(t) else t.wrapped_type().get_primitive()
    return types.builtin_to_string(t)


_ITEMS = (("model.mlmodel", "com.apple.CoreML/model.mlmodel", "com.apple.CoreML", "CoreML Model Specification"),
          ("weights", "com.apple.CoreML/weights", "com.apple.CoreML", "CoreML Model Weights"))


def package_model_file(path: str | Path) -> Path:
    """The root model file of an .mlpackage, found through its Manifest.json, which must keep every
    item inside the package's Data folder. coremltools' own reader (ModelPackage) follows whatever path
    the manifest names, even outside the bundle, and saves the manifest back when it is done: a
    verifier neither reads outside a bundle nor writes into one."""
    from mobilellm_export.errors import load_json

    path = Path(path)
    data = (path / "Data").resolve()
    m = load_json(path / "Manifest.json", f"{path.name}/Manifest.json", 1 << 20)
    entries, root = m.get("itemInfoEntries"), m.get("rootModelIdentifier")
    if not isinstance(entries, dict) or not isinstance(root, str) or not isinstance(entries.get(root), dict):
        raise UserError(f"{path.name}/Manifest.json names no root model among its items")
    for key, item in entries.items():
        rel = item.get("path") if isinstance(item, dict) else None
        if (not isinstance(rel, str) or not rel or "\x00" in rel or Path(rel).is_absolute() or ".." in Path(rel).parts
                or not (data / rel).resolve().is_relative_to(data)):
            raise UserError(f"{path.name}/Manifest.json item {str(key)[:40]!r} points outside the package: {str(rel)[:80]!r}")
    # Past the paths, the manifest is exactly what coremltools writes (only the item ids are free): a
    # device's Core ML reads it too, and an item moved to another file inside the package would
    # have the phone load what verify never read.
    items = [(i.get("name"), i.get("path"), i.get("author"), i.get("description")) for i in entries.values()]
    if (m.get("fileFormatVersion") != "1.0.0" or set(m) != {"fileFormatVersion", "itemInfoEntries", "rootModelIdentifier"}
            or entries[root].get("name") != "model.mlmodel" or len(items) != len(_ITEMS)
            or any(set(i) != {"name", "path", "author", "description"} for i in entries.values())
            or any(items.count(want) != 1 for want in _ITEMS)):
        raise UserError(f"{path.name}/Manifest.json is not the manifest coremltools writes (version 1.0.0, the model "
                        f"specification as root, its weights folder, nothing else)")
    model = data / entries[root]["path"]
    if not model.is_file():
        raise UserError(f"{path.name}/Manifest.json's root model {entries[root]['path']!r} is not a file in the package")
    return model


def read_spec(path: str | Path):
    """The Core ML model spec of an .mlpackage, read from the file its manifest names (see above)."""
    from coremltools.proto import Model_pb2

    from mobilellm_export.errors import read_bytes

    model = package_model_file(path)
    spec = Model_pb2.Model()
    try:
        spec.ParseFromString(read_bytes(model, "Core ML model", 1 << 30))
    except UserError:
        raise
    except Exception as e:  # protobuf's DecodeError and friends
        raise UserError(f"{Path(path).name} is not a readable Core ML package: {str(e).splitlines()[0] if str(e) else e}") from None
    return spec


def load_program(path: str | Path):
    """The MIL program of a saved .mlpackage, loaded by coremltools (`milproto.load`, which runs each op's
    type inference as it builds it), then validated and type-checked again op by op."""
    from coremltools.converters.mil.frontend.milproto.load import load

    path = Path(path)
    if not (path / "Manifest.json").is_file():
        raise UserError(f"{path} is not an .mlpackage (no Manifest.json)")
    spec = read_spec(path)
    try:
        prog = load(spec, spec.specificationVersion, file_weights_dir=str(path / "Data" / "com.apple.CoreML" / "weights"))
        prog.validate(check_essential_scope=True)
    except UserError:
        raise
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"coremltools rejects the program in {path.name}: {first}"[:400]) from None
    type_check(prog)
    return prog


def type_check(prog) -> None:
    """Re-run each op's type inference and compare with the types recorded in the program."""
    from coremltools.converters.mil.mil import types

    for fn in prog.functions.values():
        for op in fn.operations:
            if op.op_type == "const":
                continue
            try:
                inferred = op.type_inference()
            except Exception as e:
                raise UserError(f"op {op.name} ({op.op_type}) fails coremltools' type inference: "
                                f"{str(e).splitlines()[0] if str(e) else type(e).__name__}"[:400]) from None
            inferred = inferred if isinstance(inferred, tuple) else (inferred,)
            for var, t in zip(op.outputs, inferred):
                if types.is_tensor(t) and types.is_tensor(var.sym_type):
                    same = dtype_name(t) == dtype_name(var.sym_type) and len(t.get_shape()) == len(var.shape)
                    if same:
                        same = all(not isinstance(a, (int, np.integer)) or not isinstance(b, (int, np.integer)) or a == b
                                   for a, b in zip(t.get_shape(), var.shape))
                    if not same:
                        raise UserError(f"op {op.name} ({op.op_type}): recorded type {var.sym_type.__type_info__()} "
                                        f"but coremltools infers {t.__type_info__()}")


# ---- helpers --------------------------------------------------------------------------------------------

def _ints(v) -> list[int]:
    return [int(x) for x in np.asarray(v).reshape(-1)]


def _axis(a: int, rank: int) -> int:
    return a + rank if a < 0 else a


def _slices(shape, begin, end, stride=None, begin_mask=None, end_mask=None, squeeze_mask=None):
    """Per axis: a python slice (positive stride), an index tensor (negative stride) or an int (squeezed),
    following MIL slice_by_index semantics (masks ignore begin / end; negative indices count from the end)."""
    rank = len(shape)
    stride = _ints(stride) if stride is not None else [1] * rank
    bm = list(np.asarray(begin_mask).reshape(-1)) if begin_mask is not None else [False] * rank
    em = list(np.asarray(end_mask).reshape(-1)) if end_mask is not None else [False] * rank
    sm = list(np.asarray(squeeze_mask).reshape(-1)) if squeeze_mask is not None else [False] * rank
    begin, end = _ints(begin), _ints(end)
    out = []
    for i, n in enumerate(shape):
        s = stride[i]
        if s == 0:
            raise ValueError("slice stride 0")
        b = None if bm[i] else begin[i]
        e = None if em[i] else end[i]
        if sm[i]:
            bb = begin[i] + n if begin[i] < 0 else begin[i]
            out.append(bb)
            continue
        if s > 0:
            out.append(slice(b, e, s))
        else:
            out.append(torch.tensor(list(range(n))[slice(b, e, s)], dtype=torch.long))
    return out


def _apply_slices(x: torch.Tensor, sl) -> torch.Tensor:
    # tensors first (index_select per axis keeps the others' meaning), then ints and slices
    for ax, s in enumerate(sl):
        if isinstance(s, torch.Tensor):
            x = x.index_select(ax, s)
            sl = list(sl)
            sl[ax] = slice(None)
    return x[tuple(sl)]


def _cast_int(x: torch.Tensor, name: str) -> torch.Tensor:
    """An integer cast as Core ML stores it: floats truncate toward zero, then wrap to the type's width."""
    if x.dtype.is_floating_point:
        x = torch.trunc(x)
    x = x.to(torch.int64)
    lo, hi = INT_RANGE[name]
    span = hi - lo + 1
    return ((x - lo) % span + lo).to(torch.int64)


# ---- ops: fn(ex, op, a) -> tensor or tuple; `a(name)` gives an input (tensor, or None if absent) ---------

def _binary(f):
    return lambda ex, op, a: f(a("x"), a("y"))


def _gelu(x: torch.Tensor, mode: str) -> torch.Tensor:
    """MIL gelu's three modes, from their formulas in coremltools' op definition."""
    if mode == "EXACT":
        return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))
    if mode == "TANH_APPROXIMATION":
        return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))
    if mode == "SIGMOID_APPROXIMATION":
        return x * torch.sigmoid(1.702 * x)
    raise UnsupportedOp(f"gelu mode {mode!r} is not implemented")


def _real_div(x, y):
    if not x.dtype.is_floating_point and not y.dtype.is_floating_point:
        return torch.div(x, y, rounding_mode="trunc")
    return x / y


def _floor_div(x, y):
    return torch.div(x, y, rounding_mode="floor")


def _reduce(f):
    def run(ex, op, a):
        x, axes, keep = a("x"), a("axes"), a("keep_dims")
        keep = bool(keep) if keep is not None else False
        dims = tuple(range(x.dim())) if axes is None else tuple(_axis(d, x.dim()) for d in _ints(axes))
        return f(x, dims, keep)
    return run


def _cast(ex, op, a):
    x, to = a("x"), str(op.dtype.val)
    if to in FLOAT_DTYPES:
        return x.to(torch.float32)
    if to == "bool":
        return x != 0
    return _cast_int(x, to)


def _gather(ex, op, a):
    x, idx, axis = a("x"), a("indices"), int(a("axis") if a("axis") is not None else 0)
    batch_dims = int(a("batch_dims") or 0)
    if batch_dims:
        raise UnsupportedOp(f"op {op.name} (gather): batch_dims={batch_dims} is not implemented")
    axis = _axis(axis, x.dim())
    n = x.shape[axis]
    idx = idx.to(torch.long)
    if ((idx < -n) | (idx >= n)).any():
        raise IndexError(f"op {op.name} (gather): index out of range [{-n}, {n})")
    idx = torch.where(idx < 0, idx + n, idx)
    out = x.index_select(axis, idx.reshape(-1))
    return out.reshape([*x.shape[:axis], *idx.shape, *x.shape[axis + 1:]])


def _slice_by_index(ex, op, a):
    x = a("x")
    sl = _slices(x.shape, a("begin"), a("end"), a("stride"), a("begin_mask"), a("end_mask"), a("squeeze_mask"))
    return _apply_slices(x, sl)  # a view: no op writes into its inputs (slice_update copies, states are replaced)


def _slice_update(ex, op, a):
    x, upd = a("x"), a("update")
    sl = _slices(x.shape, a("begin"), a("end"), a("stride"), a("begin_mask"), a("end_mask"), a("squeeze_mask"))
    if any(isinstance(s, torch.Tensor) for s in sl):
        raise UnsupportedOp(f"op {op.name} (slice_update): negative strides are not implemented")
    out = x.clone()
    target = out[tuple(sl)]
    if tuple(target.shape) != tuple(upd.shape):
        raise ValueError(f"op {op.name} (slice_update): update {tuple(upd.shape)} does not fit the slice {tuple(target.shape)}")
    out[tuple(sl)] = upd.to(out.dtype)
    return out


def _concat(ex, op, a):
    vals = [v.reshape(1) if v.dim() == 0 else v for v in a("values")]  # MIL concatenates scalars as [1]
    axis = _axis(int(a("axis")), vals[0].dim())
    if bool(a("interleave")):
        return torch.stack(vals, axis + 1).flatten(axis, axis + 1)
    return torch.cat(vals, axis)


def _reshape(ex, op, a):
    x, shape = a("x"), _ints(a("shape"))
    shape = [x.shape[i] if d == 0 else d for i, d in enumerate(shape)]
    return x.reshape(shape)


def _expand_dims(ex, op, a):
    x = a("x")
    rank = x.dim() + len(_ints(a("axes")))
    for ax in sorted(_axis(d, rank) for d in _ints(a("axes"))):
        x = x.unsqueeze(ax)
    return x


def _squeeze(ex, op, a):
    x, axes = a("x"), a("axes")
    if axes is None:
        return x.squeeze()
    for ax in sorted((_axis(d, x.dim()) for d in _ints(axes)), reverse=True):
        if x.shape[ax] != 1:
            raise ValueError(f"op {op.name} (squeeze): axis {ax} has size {x.shape[ax]}")
        x = x.squeeze(ax)
    return x


def _matmul(ex, op, a):
    x, y = a("x").float(), a("y").float()
    if bool(a("transpose_x")):
        x = x.transpose(-1, -2)
    if bool(a("transpose_y")):
        y = y.transpose(-1, -2)
    return torch.matmul(x, y)


def _linear(ex, op, a):
    b = a("bias")
    return torch.nn.functional.linear(a("x").float(), a("weight").float(), None if b is None else b.float())


def _sdpa(ex, op, a):
    q, k, v, mask = a("query").float(), a("key").float(), a("value").float(), a("attn_mask")
    scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = scores + (torch.where(mask, 0.0, float("-inf")) if mask.dtype == torch.bool else mask.float())
    return torch.matmul(torch.softmax(scores, -1), v)


def _blockwise(ex, op, a):
    """constexpr_blockwise_shift_scale: (data - offset) * scale, each scale (and offset) covering a block of
    data.shape[i] / scale.shape[i] along every axis i."""
    data, scale, offset = a("data"), a("scale"), a("offset")

    def expand(t):
        for ax, (n, m) in enumerate(zip(data.shape, t.shape)):
            if n % m:
                raise ValueError(f"op {op.name}: scale dim {m} does not divide data dim {n}")
            t = t.repeat_interleave(n // m, dim=ax)
        return t

    d = data.to(torch.float32)
    if offset is not None:
        d = d - expand(offset.to(torch.float32))
    return d * expand(scale.float())


def _pad(ex, op, a):
    """MIL pad: `pad` holds (before, after) pairs for the last len(pad) / 2 dims, first dim first."""
    x, pads = a("x"), _ints(a("pad"))
    mode = str(op.mode.val) if op.mode is not None else "constant"
    if mode != "constant":
        raise UnsupportedOp(f"op {op.name} (pad): mode {mode!r} is not implemented")
    pairs = [pads[i:i + 2] for i in range(0, len(pads), 2)]
    torch_pads = [p for pair in reversed(pairs) for p in pair]  # torch: last dim first
    value = float(a("constant_val")) if a("constant_val") is not None else 0.0
    return torch.nn.functional.pad(x, torch_pads, value=value)


def _range_1d(ex, op, a):
    start, end, step = (a(k).item() for k in ("start", "end", "step"))
    dt = torch.float32 if any(isinstance(v, float) for v in (start, end, step)) else torch.int64
    return torch.arange(start, end, step, dtype=dt)


def _read_state(ex, op, a):
    return ex.states[op.input.name]


def _update_state(ex, op, a):
    v = a("value")
    ex.states[op.state.name] = v.clone()
    return v


OPS = {
    "add": _binary(torch.add), "sub": _binary(torch.sub), "mul": _binary(torch.mul),
    "real_div": _binary(_real_div), "floor_div": _binary(_floor_div),
    "pow": _binary(torch.pow), "maximum": _binary(torch.maximum), "minimum": _binary(torch.minimum),
    "equal": _binary(torch.eq), "not_equal": _binary(torch.ne), "less": _binary(torch.lt),
    "less_equal": _binary(torch.le), "greater": _binary(torch.gt), "greater_equal": _binary(torch.ge),
    "logical_and": _binary(torch.logical_and), "logical_or": _binary(torch.logical_or),
    "select": lambda ex, op, a: torch.where(a("cond").bool(), a("a"), a("b")),
    "rsqrt": lambda ex, op, a: torch.rsqrt(a("x") + float(a("epsilon") if a("epsilon") is not None else 1e-12)),
    "sqrt": lambda ex, op, a: torch.sqrt(a("x")),
    "abs": lambda ex, op, a: torch.abs(a("x")),
    "inverse": lambda ex, op, a: 1.0 / (a("x") + float(a("epsilon") if a("epsilon") is not None else 1e-4)),
    "clip": lambda ex, op, a: torch.clamp(a("x"), float(a("alpha")), float(a("beta"))),
    "exp": lambda ex, op, a: torch.exp(a("x")),
    "silu": lambda ex, op, a: a("x") * torch.sigmoid(a("x")),
    "gelu": lambda ex, op, a: _gelu(a("x"), str(a("mode")) if a("mode") is not None else "EXACT"),
    "sigmoid": lambda ex, op, a: torch.sigmoid(a("x")),
    "softmax": lambda ex, op, a: torch.softmax(a("x"), _axis(int(a("axis")), a("x").dim())),
    "reduce_mean": _reduce(lambda x, d, k: x.float().mean(d, keepdim=k)),
    "reduce_sum": _reduce(lambda x, d, k: x.sum(d, keepdim=k)),
    "reduce_max": _reduce(lambda x, d, k: x.amax(d, keepdim=k)),
    "cast": _cast, "gather": _gather, "slice_by_index": _slice_by_index, "slice_update": _slice_update,
    "concat": _concat, "reshape": _reshape, "expand_dims": _expand_dims, "squeeze": _squeeze,
    "transpose": lambda ex, op, a: a("x").permute(*[_axis(p, a("x").dim()) for p in _ints(a("perm"))]),
    "tile": lambda ex, op, a: a("x").repeat(*_ints(a("reps"))),
    "shape": lambda ex, op, a: torch.tensor(list(a("x").shape), dtype=torch.int64),
    "stack": lambda ex, op, a: torch.stack(a("values"), _axis(int(a("axis")), a("values")[0].dim() + 1)),
    "range_1d": _range_1d, "pad": _pad,
    "matmul": _matmul, "linear": _linear, "scaled_dot_product_attention": _sdpa,
    "constexpr_blockwise_shift_scale": _blockwise,
    "read_state": _read_state, "coreml_update_state": _update_state,
}


# ---- the executor ---------------------------------------------------------------------------------------

class MILExecutor:
    def __init__(self, prog, mode: str = "fp32", function: str = "main"):
        if mode not in ("fp32", "fp16"):
            raise UserError(f"executor mode {mode!r}: choose fp32 or fp16")
        self.mode, self.fn = mode, prog.functions[function]
        ops = list(self.fn.operations)
        missing = sorted({op.op_type for op in ops if op.op_type != "const" and op.op_type not in OPS})
        if missing:
            raise UnsupportedOp(f"the reference executor does not implement the MIL op {missing[0]!r}"
                                + (f" (nor {', '.join(missing[1:])})" if len(missing) > 1 else ""))
        self.ops = [op for op in ops if op.op_type != "const"]
        self.out_dtypes = [[dtype_name(v.sym_type) for v in op.outputs] for op in self.ops]
        self.consts: dict[str, torch.Tensor] = {}
        self.last_use: dict[str, int] = {}
        for i, op in enumerate(self.ops):
            for v in _input_vars(op):
                self.last_use[v.name] = i
        for v in self.fn.outputs:
            self.last_use[v.name] = len(self.ops)
        self.state_vars = {name: v for name, v in self.fn.inputs.items() if _is_state(v)}
        self.input_vars = {name: v for name, v in self.fn.inputs.items() if not _is_state(v)}
        self.states: dict[str, torch.Tensor] = {}
        self.first_nonfinite: tuple[str, str] | None = None
        self.reset()

    def reset(self) -> None:
        for name, v in self.state_vars.items():
            shape = v.sym_type.wrapped_type().get_shape()
            self.states[name] = torch.zeros([int(d) for d in shape], dtype=torch.float32)
        self.first_nonfinite = None

    # values ---------------------------------------------------------------------------------------------
    def _const(self, var) -> torch.Tensor:
        t = self.consts.get(var.name)
        if t is None:
            val = var.val
            name = dtype_name(var.sym_type) if var.sym_type is not None else "fp32"
            arr = np.asarray(val)
            if arr.dtype.kind == "U" or arr.dtype.kind == "S" or arr.dtype == object:
                return val  # a string attribute (e.g. cast's dtype)
            if name in FLOAT_DTYPES or arr.dtype.kind == "f":
                t = torch.from_numpy(arr.astype(np.float32))
            elif name == "bool":
                t = torch.from_numpy(arr.astype(bool))
            else:
                t = torch.from_numpy(arr.astype(np.int64))
            self.consts[var.name] = t
        return t

    def _value(self, var, env):
        if var.name in env:
            return env[var.name]
        if var.val is not None:
            return self._const(var)
        raise RuntimeError(f"value {var.name} used before it is computed")

    def run(self, inputs: dict[str, np.ndarray | torch.Tensor]) -> dict[str, torch.Tensor]:
        env: dict[str, torch.Tensor] = {}
        for name, v in self.input_vars.items():
            if name not in inputs:
                raise UserError(f"the program needs the input {name!r}")
            x = torch.as_tensor(np.asarray(inputs[name]))
            dt = dtype_name(v.sym_type)
            env[name] = self._round(self._typed(x, dt), dt)
        for i, op in enumerate(self.ops):

            def a(key, op=op):
                v = op.inputs.get(key)
                if v is None:
                    return None
                if isinstance(v, (list, tuple)):
                    return [self._value(x, env) for x in v]
                return self._value(v, env)

            if op.op_type.startswith("constexpr_") and op.outputs[0].name in self.consts:
                env[op.outputs[0].name] = self.consts[op.outputs[0].name]  # decompressed once per executor
                continue
            try:
                out = OPS[op.op_type](self, op, a)
            except UserError:
                raise
            except Exception as e:
                raise RuntimeError(f"op {op.name} ({op.op_type}) failed: {e}") from e
            outs = out if isinstance(out, tuple) else (out,)
            for var, t, dt in zip(op.outputs, outs, self.out_dtypes[i]):
                t = self._typed(t, dt)
                self._check_shape(op, var, t)
                if dt in FLOAT_DTYPES:
                    t = self._round(t, dt)
                    if self.mode == "fp16" and self.first_nonfinite is None and not bool(torch.isfinite(t).all()):
                        ins = [x for x in _input_vars(op) if x.name in env]
                        if all(bool(torch.isfinite(env[x.name]).all()) for x in ins
                               if env[x.name].dtype.is_floating_point):
                            self.first_nonfinite = (op.name, op.op_type)
                env[var.name] = t
                if op.op_type.startswith("constexpr_"):
                    self.consts[var.name] = t
            for v in _input_vars(op):  # free what no later op reads
                if self.last_use.get(v.name) == i and v.name in env and v.name not in self.fn.inputs:
                    del env[v.name]
            if op.op_type == "coreml_update_state" and self.mode == "fp16":
                self.states[op.state.name] = self._round(self.states[op.state.name], "fp16")
        return {v.name: env[v.name] for v in self.fn.outputs}

    def _typed(self, t: torch.Tensor, dt: str) -> torch.Tensor:
        if dt in FLOAT_DTYPES:
            return t.to(torch.float32)
        if dt == "bool":
            return t.bool()
        return t.to(torch.int64)

    def _round(self, t: torch.Tensor, dt: str) -> torch.Tensor:
        if dt == "fp16" and self.mode == "fp16":
            return t.to(torch.float16).to(torch.float32)
        return t

    @staticmethod
    def _check_shape(op, var, t: torch.Tensor) -> None:
        shape = var.shape
        if len(shape) != t.dim() or any(isinstance(d, (int, np.integer)) and d != n for d, n in zip(shape, t.shape)):
            raise RuntimeError(f"op {op.name} ({op.op_type}) produced shape {tuple(t.shape)}, the program says "
                               f"{tuple(shape)}")


def _is_state(var) -> bool:
    from coremltools.converters.mil.mil import types

    return types.is_state(var.sym_type)


def _input_vars(op):
    for v in op.inputs.values():
        if isinstance(v, (list, tuple)):
            yield from v
        else:
            yield v
