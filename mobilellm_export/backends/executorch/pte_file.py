"""The constant methods of a .pte (get_max_seq_len, get_eos_ids, ...) read from the file itself.

A .pte is a FlatBuffer (`executorch/schema/program.fbs`, file identifier "ET12"). The LLM runner
metadata are execution plans without inputs whose outputs are constant Int/Bool/Double values.
Reading them here takes milliseconds and needs no runtime: importing ExecuTorch's Python runtime
costs seconds, which `verify`'s metadata checks should not pay before they can fail in one line.
`tests/test_android.py` checks this reader against ExecuTorch's own execution of the methods.

Only the fields needed are read: Program.execution_plan (field 1); ExecutionPlan.name (0),
values (2), inputs (3), outputs (4); EValue.val (union: type in slot 0, table in slot 1);
Int.int_val, Bool.bool_val, Double.double_val (field 0 each).
"""

from __future__ import annotations

import struct
from pathlib import Path

from mobilellm_export.errors import UserError

_INT, _BOOL, _DOUBLE = 2, 3, 4  # KernelTypes union tags (NONE = 0, Null = 1, ...)


class _Buf:
    def __init__(self, data: bytes, where: str):
        self.data, self.where = data, where

    def _unpack(self, fmt: str, pos: int):
        try:
            return struct.unpack_from(fmt, self.data, pos)[0]
        except struct.error:
            raise UserError(f"{self.where}: not a valid ExecuTorch program (truncated at byte {pos})") from None

    def field(self, table: int, index: int) -> int | None:
        """Absolute position of field `index` of the table at `table`, or None when absent."""
        vtable = table - self._unpack("<i", table)
        vt_size = self._unpack("<H", vtable)
        slot = 4 + 2 * index
        if slot + 2 > vt_size:
            return None
        off = self._unpack("<H", vtable + slot)
        return table + off if off else None

    def deref(self, pos: int) -> int:
        return pos + self._unpack("<I", pos)

    def vector(self, pos: int) -> tuple[int, int]:
        """(count, position of the first element) of the vector referenced at `pos`."""
        start = self.deref(pos)
        n = self._unpack("<I", start)
        if n > len(self.data):
            raise UserError(f"{self.where}: not a valid ExecuTorch program (vector of {n} entries)")
        return n, start + 4

    def string(self, pos: int) -> str:
        start = self.deref(pos)
        n = self._unpack("<I", start)
        return self.data[start + 4:start + 4 + n].decode("utf-8", "replace")


def constant_methods(path: str | Path) -> dict:
    """{method name: value or list of values} for every method that takes no input."""
    data = Path(path).read_bytes()
    b = _Buf(data, str(path))
    if data[4:8] != b"ET12":
        raise UserError(f"{path}: not an ExecuTorch program (no 'ET12' identifier)")
    program = b.deref(0)
    plans = b.field(program, 1)
    if plans is None:
        raise UserError(f"{path}: the program has no methods")
    out = {}
    n, first = b.vector(plans)
    for i in range(n):
        plan = b.deref(first + 4 * i)
        name_pos, values_pos, inputs_pos, outputs_pos = (b.field(plan, k) for k in (0, 2, 3, 4))
        if name_pos is None or values_pos is None or outputs_pos is None:
            continue
        if inputs_pos is not None and b.vector(inputs_pos)[0]:
            continue  # forward and other methods with inputs
        n_values, values = b.vector(values_pos)
        n_out, outs = b.vector(outputs_pos)
        results = []
        for j in range(n_out):
            idx = b._unpack("<i", outs + 4 * j)
            if not 0 <= idx < n_values:
                raise UserError(f"{path}: output {idx} of a method is not one of its {n_values} values")
            results.append(_value(b, b.deref(values + 4 * idx)))
        out[b.string(name_pos)] = results
    return out


def _value(b: _Buf, evalue: int):
    tag_pos, val_pos = b.field(evalue, 0), b.field(evalue, 1)
    tag = b._unpack("<B", tag_pos) if tag_pos is not None else 0
    if val_pos is None or tag not in (_INT, _BOOL, _DOUBLE):
        return None
    table = b.deref(val_pos)
    pos = b.field(table, 0)
    fmt = {_INT: "<q", _BOOL: "<?", _DOUBLE: "<d"}[tag]
    if pos is None:  # a default value is not stored
        return {_INT: 0, _BOOL: False, _DOUBLE: 0.0}[tag]
    return b._unpack(fmt, pos)
