"""`lean_edge_passes()` (backends/executorch/lean_passes.py): an edge op-replacement pass is left out
only where the program holds none of the ops it rewrites, judged against the stock pass itself.

The whole-lowering check (the same .pte and .ptd bytes as a stock lowering) is
tests/targets/test_android.py::test_lean_lowering_writes_the_same_bytes_as_every_xnnpack_pass.
"""

import torch
from executorch.exir.passes.normalize_transpose_pass import NormalizeTransposePass
from executorch.exir.passes.replace_broken_ops_with_function_ops_pass import ReplaceBrokenOpsWithFunctionalOpsPass

from mobilellm_export.backends.executorch.lean_passes import lean_edge_passes


class Net(torch.nn.Module):
    def __init__(self, transpose: bool):
        super().__init__()
        self.transpose, self.w = transpose, torch.nn.Parameter(torch.randn(8, 8))

    def forward(self, x):
        w = self.w.t() if self.transpose else self.w  # aten.t: what NormalizeTransposePass rewrites
        return torch.relu(x @ w)


def _graph(transpose: bool):
    ep = torch.export.export(Net(transpose), (torch.randn(2, 8),), strict=False)
    return ep.run_decompositions({}).graph_module


def _ops(gm) -> list[str]:
    return [str(n.target) for n in gm.graph.nodes if n.op == "call_function"]


def test_a_pass_with_its_op_in_the_graph_runs_as_stock():
    gm = _graph(transpose=True)
    assert "aten.t.default" in _ops(gm)
    stock = _ops(NormalizeTransposePass()(_graph(transpose=True)).graph_module)
    with lean_edge_passes():
        lean = NormalizeTransposePass()(gm).graph_module
    assert _ops(lean) == stock and "aten.t_copy.default" in stock  # rewritten, as stock does


def test_a_pass_without_its_op_is_left_out_and_stock_would_change_nothing():
    for cls in (NormalizeTransposePass, ReplaceBrokenOpsWithFunctionalOpsPass):
        gm = _graph(transpose=False)
        before = _ops(gm)
        stock = cls()(_graph(transpose=False))
        with lean_edge_passes():
            lean = cls()(gm)
        assert lean.graph_module is gm and not lean.modified  # left out: no retrace
        assert _ops(stock.graph_module) == before  # the retrace it saves rewrites nothing


def test_the_stock_passes_come_back_on_exit():
    with lean_edge_passes():
        assert "call" in NormalizeTransposePass.__dict__
    assert "call" not in NormalizeTransposePass.__dict__  # inherited from ExportPass again
    gm = _graph(transpose=False)
    assert NormalizeTransposePass()(gm).graph_module is not gm  # a stock retrace


class Folds(torch.nn.Module):
    def __init__(self, constant_op: bool):
        super().__init__()
        self.constant_op, self.w = constant_op, torch.nn.Parameter(torch.randn(4))

    def forward(self, x):
        # arange(4): inputs all literals, what ConstPropPass folds; the weight is a placeholder (not folded)
        return x * self.w + (torch.arange(4, dtype=torch.float32) if self.constant_op else 0.0)


def test_constant_folding_is_left_out_only_where_nothing_folds():
    from executorch.exir.passes.const_prop_pass import ConstPropPass

    from mobilellm_export.backends.executorch.lean_passes import acts

    for constant_op in (True, False):
        ep = torch.export.export(Folds(constant_op), (torch.randn(4),), strict=False).run_decompositions({})
        before = _ops(ep.graph_module)
        after = _ops(ConstPropPass()(ep.graph_module).graph_module)
        assert acts(ConstPropPass, ep.graph_module) is constant_op
        assert (after != before) is constant_op  # the stock pass: folds arange, else changes nothing
