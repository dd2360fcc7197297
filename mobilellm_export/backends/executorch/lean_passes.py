"""A lowering without the retraces that cannot change the program: XNNPACK's per-partition passes
whose ops a partition lacks, and a decomposition whose ops the graph lacks.

XNNPACK's preprocess runs 17 graph passes on every partition, and each ends in a full fake-tensor
retrace of the partition whether it matched anything or not. A decoder layer has no convolution,
batch norm, PReLU, padding, concatenation, upsampling, softmax, ReLU, max, copy or dim-order op, so 11
of them only retrace, and two of those first export pattern models in every new process. Most
partitions have no [add]mm either (their linears stay `linear`) and no op with only constant inputs
to fold.

`lean_xnnpack_passes()` swaps in a pass manager that leaves out a known pass only when none of the
ops it rewrites occurs in the partition (TRIGGERS), or when a test of the partition says it cannot
change it (PREDICATES: constant folding); every other pass, including any this file does not know,
runs as before. One pass, PropagateCustomMetaPass, only copies a meta tag and then retraces to carry
it: its copy is made in place instead (IN_PLACE).

`lean_edge_passes()` does the same for the op-replacement passes of the edge conversion and of
`to_executorch` (each a full retrace of the whole program, ~1.2 s of tiny-llama's 26 s lowering):
`aten.t` to `t_copy`, view ops left by functionalization to their copies, memory-format ops to
dim-order ops, and the portable dim-order legalization, each only where its ops occur.

`lean_decompositions()` does the same for `to_edge_transform_and_lower`'s decompositions. For a
partitioner with an op check (XNNPACK's), ExecuTorch decomposes three times: functionalize, decompose
all but the ops the partitioner keeps, then decompose with the full table what the check refused.
When the check refused nothing, that third full retrace finds no op of its table in the graph and
changes nothing: 6.1 of 40 s for tiny-llama (323 nodes in, the same 323 out). ExecuTorch itself skips
a decomposition on that condition on its other path (`contains_any_call_fn_target_op`); this applies
it to every decomposition with a table, and never to `run_decompositions({})`, which functionalizes.

The .pte and .ptd are byte-identical to a stock lowering (tests/targets/test_android.py compares
them), which is what makes leaving any of them out safe. All together, stock -> lean in one process
after a warm-up (benchmarks/results/lowering_time.json, 4bit-fast, 2026-12-08): tiny-llama 38.6 ->
19.6 s, tiny-gemma3 82.0 -> 34.3 s, SmolLM2-135M 605 -> 273 s (0.451), the same bytes each time.
"""

from __future__ import annotations

import contextlib

# pass class name -> edge ops (name prefixes) the pass rewrites or fuses; without one, it is a retrace only.
TRIGGERS = {
    "ConvertToUpsampleBilinear2d": ("aten.upsample_bilinear2d", "aten._unsafe_index", "aten.index"),
    "ConvertToSDPAPass": ("aten._softmax", "aten.softmax", "aten.scaled_dot_product_attention"),
    "FuseBatchNormPass": ("aten.native_batch_norm", "aten._native_batch_norm_legit"),
    "DecomposeBatchNorm": ("aten.native_batch_norm", "aten._native_batch_norm_legit"),
    "FuseActivationPass": ("aten.relu", "aten.hardtanh"),
    "DecomposeConcatenate": ("aten.cat",),
    "Conv1dUnsqueezePass": ("aten.convolution",),
    "PReLUReshapePass": ("aten._prelu_kernel",),
    "InsertPadQDQPass": ("aten.constant_pad_nd",),
    "RemoveGetItemPass": ("aten.max_pool2d_with_indices", "aten.max.dim"),
    "RemoveRedundantCopyPass": ("aten._to_copy",),
    "DimOrderOpsRevertPass": ("dim_order_ops.",),  # _to_dim_order_copy, _empty_dim_order, _clone_dim_order
    # [add]mm -> linear; its fallback transform rewrites only addmm and mm too
    "ConvertToLinearPass": ("aten.mm", "aten.addmm", "aten.bmm"),
}


def _op_names(graph_module) -> set[str]:
    return {getattr(n.target, "__name__", str(n.target)) for n in _call_nodes(graph_module)}


def _copy_custom_meta(graph_module) -> None:
    """What PropagateCustomMetaPass does before its closing retrace: each quantize/dequantize node
    takes its parent's `meta["custom"]` (our external-data tag). The retrace changes no op, and a
    retrace carries every node's meta over as it is, so the result is the same without it."""
    import torch
    from executorch.backends.xnnpack.utils.quant_utils import is_dequant, is_quant

    for n in graph_module.graph.nodes:
        if (is_quant(n) or is_dequant(n)) and n.args and isinstance(n.args[0], torch.fx.Node):
            if "custom" in n.args[0].meta:
                n.meta["custom"] = n.args[0].meta["custom"]


def _foldable(graph_module) -> bool:
    """ConstPropPass folds an op whose every input is a constant during its retrace: a literal or a
    get_attr tensor (a placeholder, weights included, is a fake tensor there). A chain of them starts
    with one whose inputs are all such, so without one the pass folds nothing."""
    import torch
    from torch.utils import _pytree

    for n in graph_module.graph.nodes:
        if n.op == "call_function":
            leaves = _pytree.tree_leaves((n.args, n.kwargs))
            if all(not isinstance(a, torch.fx.Node) or a.op == "get_attr" for a in leaves):
                return True
    return False


# pass class name -> the same change made in place, without the pass's full retrace
IN_PLACE = {"PropagateCustomMetaPass": _copy_custom_meta}
# pass class name -> can it change a graph module, where a list of ops cannot say
PREDICATES = {"ConstPropPass": _foldable}


def acts(pass_class, graph_module) -> bool:
    """Can `pass_class` change `graph_module`? Unknown passes: assumed so."""
    if pass_class.__name__ in PREDICATES:
        return PREDICATES[pass_class.__name__](graph_module)
    triggers = TRIGGERS.get(pass_class.__name__)
    return triggers is None or any(op.startswith(t) for op in _op_names(graph_module) for t in triggers)


@contextlib.contextmanager
def lean_lowering():
    """While lowering: neither a pass nor a decomposition that has nothing to act on."""
    with lean_xnnpack_passes(), lean_decompositions(), lean_edge_passes():
        yield


def _size_reads():
    import torch

    # In the default table, but a retrace records them again as they were: they only read a
    # symbolic size (the dynamic seq_len's, in every program here).
    aten = torch.ops.aten
    return {aten.sym_size.int, aten.sym_stride.int, aten.sym_numel.default, aten.sym_storage_offset.default}


@contextlib.contextmanager
def lean_decompositions():
    """While lowering: a decomposition none of whose ops occurs in the program returns it as it is."""
    from executorch.exir.graph_module import contains_any_call_fn_target_op
    from torch.export import ExportedProgram

    stock, size_reads = ExportedProgram.run_decompositions, _size_reads()

    def run_decompositions(self, decomp_table=None, *args, **kwargs):
        # {} or None (the default table) functionalize or decompose by default: always run
        if decomp_table and not args and not kwargs:
            rewrites = [op for op in decomp_table if op not in size_reads]
            if not contains_any_call_fn_target_op(self.graph_module, rewrites):
                return self
        return stock(self, decomp_table, *args, **kwargs)

    ExportedProgram.run_decompositions = run_decompositions
    try:
        yield
    finally:
        ExportedProgram.run_decompositions = stock


@contextlib.contextmanager
def lean_xnnpack_passes():
    """While lowering: XNNPACK's preprocess runs only the passes that can act on each partition."""
    from executorch.backends.xnnpack import xnnpack_preprocess

    stock = xnnpack_preprocess.XNNPACKPassManager

    class LeanPassManager(stock):
        def transform(self):
            # Each pass is judged on the graph as it is when its turn comes, so an op that an earlier
            # pass introduces still brings in the pass that rewrites it.
            ep, passes = self.exported_program, self.passes
            try:
                for p in passes:
                    if p.__name__ in IN_PLACE:
                        IN_PLACE[p.__name__](ep.graph_module)
                    elif acts(p, ep.graph_module):
                        self._exported_program, self.passes = ep, [p]
                        ep = super().transform()
            finally:
                self.passes = passes
            return ep

    xnnpack_preprocess.XNNPACKPassManager = LeanPassManager
    try:
        yield
    finally:
        xnnpack_preprocess.XNNPACKPassManager = stock


def _edge_triggers() -> dict:
    """Edge pass class -> can it change this graph module? (Each pass's own `call_operator` test,
    read from ExecuTorch 1.5: every other op it hands back unchanged.)"""
    import torch
    from executorch.exir.passes.dim_order_ops_registry import DimOrderOpsMap
    from executorch.exir.passes.legalize_portable_dim_order_pass import LegalizePortableDimOrderPass

    def legalizes(gm) -> bool:
        # it copies an input to the default dim order only where that input is not in it already
        for n in _call_nodes(gm):
            if n.target in LegalizePortableDimOrderPass._target_ops:
                a = n.args[0] if n.args else None
                if isinstance(a, torch.fx.Node) and "val" not in a.meta:
                    return True  # nothing to judge by: let the pass decide
                v = a.meta["val"] if isinstance(a, torch.fx.Node) else a
                if isinstance(v, torch.Tensor) and tuple(int(d) for d in v.dim_order()) != tuple(range(v.dim())):
                    return True
        return False

    return {
        "NormalizeTransposePass": lambda gm: any(n.target == torch.ops.aten.t.default for n in _call_nodes(gm)),
        "ReplaceBrokenOpsWithFunctionalOpsPass": lambda gm: any(getattr(n.target, "is_view", False)
                                                                for n in _call_nodes(gm)),
        "MemoryFormatOpsPass": lambda gm: any(n.target in DimOrderOpsMap for n in _call_nodes(gm)),
        "LegalizePortableDimOrderPass": legalizes,
    }


def _call_nodes(graph_module) -> list:
    """The call_function nodes of a graph module and of every graph module nested in it."""
    import torch

    return [n for m in graph_module.modules() if isinstance(m, torch.fx.GraphModule)
            for n in m.graph.nodes if n.op == "call_function"]


@contextlib.contextmanager
def lean_edge_passes():
    """While lowering: the edge op-replacement passes run only on a program holding an op they rewrite."""
    from executorch.exir.pass_base import ExportPass, PassResult
    from executorch.exir.passes import legalize_portable_dim_order_pass, memory_format_ops_pass
    from executorch.exir.passes import normalize_transpose_pass, replace_broken_ops_with_function_ops_pass

    triggers = _edge_triggers()
    classes = [getattr(mod, name) for mod, name in (
        (normalize_transpose_pass, "NormalizeTransposePass"),
        (replace_broken_ops_with_function_ops_pass, "ReplaceBrokenOpsWithFunctionalOpsPass"),
        (memory_format_ops_pass, "MemoryFormatOpsPass"),
        (legalize_portable_dim_order_pass, "LegalizePortableDimOrderPass"))]
    own = {cls: cls.__dict__.get("call") for cls in classes}

    def make(cls):
        stock, acts_on = own[cls] or ExportPass.call, triggers[cls.__name__]

        def call(self, graph_module):
            if acts_on(graph_module):
                return stock(self, graph_module)
            return PassResult(graph_module, False)
        return call

    for cls in classes:
        cls.call = make(cls)
    try:
        yield
    finally:
        for cls, stock in own.items():
            if stock is None:
                del cls.call
            else:
                cls.call = stock
