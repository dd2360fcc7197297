"""`lean_decompositions()` (backends/executorch/lean_passes.py): a decomposition is left out only
when it could not change the program, judged against torch's own `run_decompositions`.

The whole-lowering check (the same .pte and .ptd bytes as a stock lowering) is
tests/targets/test_android.py::test_lean_lowering_writes_the_same_bytes_as_every_xnnpack_pass.
"""

import torch
from torch.export import default_decompositions

from mobilellm_export.backends.executorch.lean_passes import lean_decompositions


class Net(torch.nn.Module):
    def __init__(self, op):
        super().__init__()
        self.op, self.w = op, torch.nn.Parameter(torch.randn(8))

    def forward(self, x):
        return self.op(x * self.w) + x.shape[1]  # shape[1]: a sym_size read of the dynamic dim


def _program(op):
    seq = torch.export.Dim("seq", min=2, max=16)
    ep = torch.export.export(Net(op), (torch.randn(1, 4, 8),), dynamic_shapes=({1: seq},), strict=False)
    return ep.run_decompositions({})  # functional, as ExecuTorch's first step leaves it


def _ops(ep):
    return sorted(str(n.target) for n in ep.graph.nodes if n.op == "call_function")


def test_a_table_with_none_of_the_programs_ops_returns_the_program_as_torch_would():
    table = {k: v for k, v in default_decompositions().items() if k is not torch.ops.aten.silu.default}
    ep = _program(torch.nn.functional.silu)
    # mul, silu, add and a size read (in the table, but only read): none rewritten once silu is out
    stock = _program(torch.nn.functional.silu).run_decompositions(table)
    with lean_decompositions():
        lean = ep.run_decompositions(table)
    assert lean is ep  # left out: no retrace
    assert _ops(lean) == _ops(stock)  # and torch's retrace changes nothing either
    assert {"aten.silu.default", "aten.sym_size.int"} <= set(_ops(ep))


def test_a_table_op_in_the_program_is_decomposed():
    ep = _program(torch.nn.functional.silu)  # silu is in the default table
    with lean_decompositions():
        out = ep.run_decompositions(default_decompositions())
    assert out is not ep and "aten.silu.default" not in _ops(out) and "aten.sigmoid.default" in _ops(out)


def test_functionalization_and_the_default_table_always_run():
    ep = _program(torch.relu)
    with lean_decompositions():
        assert ep.run_decompositions({}) is not ep
        assert ep.run_decompositions() is not ep


def test_the_stock_method_is_back_afterwards():
    stock = torch.export.ExportedProgram.run_decompositions
    with lean_decompositions():
        assert torch.export.ExportedProgram.run_decompositions is not stock
    assert torch.export.ExportedProgram.run_decompositions is stock
