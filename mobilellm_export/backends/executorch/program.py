"""The ExecuTorch program of the `android` target (xnnpack.py): module swaps, export and lowering.

This is the only module that imports ExecuTorch's exporter.

    prepare(model)                       a structural copy with ExecuTorch custom-op KV caches, a
                                         shared quantized embedding on ExecuTorch's embedding ops,
                                         and XNNPACK-friendly forms of RMS and RoPE
    export_pte(model, cfg, path, ...)    torch.export -> XNNPACK lowering -> .pte (+ facts dict);
                                         with data_file, all weights go to one .ptd beside it,
                                         where a tied embedding/head is stored once

The graph follows what ExecuTorch's own LLM exporter produces with
`use_kv_cache=True, use_sdpa_with_kv_cache=True, enable_dynamic_shape=True`: inputs
`tokens [1, S] int64` (1 <= S <= max_seq_len) and `input_pos [1] int64`, output the last
position's logits `[1, 1, vocab]` fp32, KV caches as mutable buffers `[B, max_context, n_kv, D]`
written by `llama::update_cache` and read by `llama::custom_sdpa` (causal from start_pos, GQA
handled inside the kernel). Linears (float or torchao 8da4w / 8da8w) are delegated to XNNPACK,
which runs exactly the recipe's arithmetic (int8 dynamic per-token activations): the reference is
the quantized model itself.
"""

from __future__ import annotations

import collections
import contextlib
import math
import time
import warnings
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from mobilellm_export.backends.executorch.lean_passes import lean_edge_passes, lean_lowering
from mobilellm_export.config import ModelConfig
from mobilellm_export.errors import UserError
from mobilellm_export.model import MLP, RMS, KVCacheAttention, RMSNorm, Rotary, Transformer, visible
from mobilellm_export.nn_utils import replace_modules, structural_copy


def _register_ops() -> None:
    import executorch.exir.passes._quant_patterns_and_replacements  # noqa: F401  (embedding_byte/4bit defs)
    import executorch.extension.llm.custom_ops.custom_ops  # noqa: F401  (llama::custom_sdpa, update_cache)
    import executorch.kernels.quantized  # noqa: F401  (quantized_decomposed::embedding_4bit, ...)


class TiedEmbeddingLookup(nn.Module):
    """The tied embedding on ExecuTorch's quantized embedding kernels, over the very bytes that
    XNNPACK serialises for the quantized lm_head, so the two uses dedupe to one copy in the .ptd.

    int8 per channel: int8 [V, D] + fp32 [V] scales (XNNPACK qc8w). int4 groupwise: XNNPACK's
    qb4w packing (value + 8, even column in the low nibble) + bf16 [V, D/g] scales. The 4-bit
    kernel reads the even column from the high nibble, so each output pair is swapped back.
    """

    def __init__(self, tied):
        super().__init__()
        _register_ops()
        w = tied.weight
        q, scale = w.qdata, w.scale
        V, D = q.shape
        self.four_bit = w.target_dtype == torch.int4
        if self.four_bit:
            u = (q.to(torch.int16) + 8).to(torch.uint8)
            self.register_buffer("packed", ((u[:, 1::2] << 4) | u[:, 0::2]).contiguous())
            self.register_buffer("scales", scale.to(torch.bfloat16).contiguous())
        else:
            if scale.shape[-1] != 1:
                raise UserError("a shared 8-bit embedding/head needs per-channel scales (group_size = 0)")
            self.register_buffer("packed", q.contiguous().clone())
            self.register_buffer("scales", scale.float().reshape(V).contiguous())

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        ops = torch.ops.quantized_decomposed
        if not self.four_bit:
            return ops.embedding_byte.default(self.packed, self.scales, None, -128, 127, tokens)
        h = ops.embedding_4bit.dtype(self.packed, self.scales, None, -8, 7, tokens, dtype=torch.float32)
        return torch.stack((h[..., 1::2], h[..., 0::2]), dim=-1).flatten(-2)


class CustomKVCacheAttention(nn.Module):
    """KV cache + attention on ExecuTorch's `llama::update_cache` / `llama::custom_sdpa` ops.

    Caches are [B, max_context, n_kv_heads, head_dim] (sequence-major, as the ops expect). The ops
    also have CPU kernels in PyTorch, so the prepared model still runs eagerly.

    A sliding-window layer (Gemma 3) keeps the full-length cache and passes custom_sdpa a [S,
    max_context] additive mask built from the positions; the kernel then attends over the whole
    cache (is_causal=False), so the window costs mask work, never correctness past the window.
    """

    def __init__(self, max_batch: int, max_context: int, n_heads: int, n_kv_heads: int, head_dim: int,
                 dtype: torch.dtype, scale: float | None = None, window: int | None = None):
        super().__init__()
        _register_ops()
        self.max_context, self.n_heads, self.head_dim = max_context, n_heads, head_dim
        self.scale = scale if scale is not None else head_dim ** -0.5
        self.window = window
        shape = (max_batch, max_context, n_kv_heads, head_dim)
        self.register_buffer("k_cache", torch.zeros(shape, dtype=dtype), persistent=False)
        self.register_buffer("v_cache", torch.zeros(shape, dtype=dtype), persistent=False)

    @classmethod
    def from_reference(cls, ref: KVCacheAttention, n_heads: int) -> CustomKVCacheAttention:
        B, n_kv, C, D = ref.k_cache.shape
        return cls(B, C, n_heads, n_kv, D, ref.k_cache.dtype, ref.scale, ref.window)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, start_pos: torch.Tensor) -> torch.Tensor:
        B, S, H, D = q.shape
        p0 = start_pos[0].item()
        torch._check(p0 >= 0)
        torch._check(p0 < self.max_context)
        torch._check(p0 + S <= self.max_context)
        dt = self.k_cache.dtype
        torch.ops.llama.update_cache(k.to(dt).contiguous(), self.k_cache, p0)
        torch.ops.llama.update_cache(v.to(dt).contiguous(), self.v_cache, p0)
        mask = None
        if self.window is not None:
            kpos = torch.arange(self.max_context, device=q.device)[None, :]
            qpos = p0 + torch.arange(S, device=q.device)[:, None]
            allowed = visible(kpos, qpos, self.window)
            mask = torch.zeros(allowed.shape, dtype=dt, device=q.device).masked_fill(~allowed, float("-inf"))
        out = torch.ops.llama.custom_sdpa(q.to(dt).contiguous(), self.k_cache, self.v_cache, p0, mask, 0.0,
                                          mask is None, self.scale)
        return out.to(q.dtype).reshape(B, -1, H * D)


class LinearMeanRMS(nn.Module):
    """RMS / RMSNorm with the mean of squares as a linear against a constant 1/D row: XNNPACK
    delegates linears of any rank, but mean(-1) only on 4-D inputs (one partition per layer)."""

    def __init__(self, norm: RMS):
        super().__init__()
        self.eps = norm.eps
        self.register_buffer("mean_row", torch.full((1, norm.dim), 1.0 / norm.dim), persistent=False)
        self.weight = norm.weight if isinstance(norm, RMSNorm) else None
        self.plus_one = isinstance(norm, RMSNorm) and norm.plus_one

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        yf = xf * torch.rsqrt(F.linear(xf * xf, self.mean_row) + self.eps)
        if self.plus_one:  # Gemma: (1 + w) in fp32 before the cast, as RMSNorm does
            return (yf * (1.0 + self.weight.float())).to(x.dtype)
        y = yf.to(x.dtype)
        return y * self.weight if self.weight is not None else y


class MatmulRotary(Rotary):
    """RoPE whose partner-swap is a matmul with a signed permutation (exact: one nonzero +-1 per
    column) instead of slices: XNNPACK cannot slice tensors of dynamic length."""

    def __init__(self, rope: Rotary):
        nn.Module.__init__(self)
        self.interleaved = rope.interleaved
        self.register_buffer("cos", rope.cos, persistent=False)
        self.register_buffer("sin", rope.sin, persistent=False)
        D = rope.cos.shape[-1]
        self.register_buffer("rot", rope.swapped(torch.eye(D)), persistent=False)  # x @ rot == swapped(x)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        return (xf * cos + (xf @ self.rot) * sin).to(x.dtype)


class TanhGeGLU(nn.Module):
    """Gemma's GeGLU with the tanh GELU written out. XNNPACK delegates `aten.gelu` but computes the
    exact (erf) form whatever `approximate` says: tiny-gemma3's .pte was 4.6e-5 x max |logit| off the
    eager model, and swapping the eager GELU for erf reproduced that. tanh, mul and add are exact ops."""

    K = math.sqrt(2.0 / math.pi)

    def __init__(self, mlp: MLP):
        super().__init__()
        self.gate_proj, self.up_proj, self.down_proj = mlp.gate_proj, mlp.up_proj, mlp.down_proj

    def forward(self, x):
        g = self.gate_proj(x)
        g = 0.5 * g * (1.0 + torch.tanh(self.K * (g + 0.044715 * g * g * g)))
        return self.down_proj(g * self.up_proj(x))


def prepare(model: Transformer) -> Transformer:
    """A copy of `model` (sharing its weights) on ExecuTorch's ops; `model` itself is not changed.

    Works on float or torchao-quantized models. Returns only the last position's logits.
    """
    from mobilellm_export.quant.quantize import TiedQuantEmbedding

    _register_ops()
    model = structural_copy(model)
    n_heads = model.cfg.n_heads

    def swap(m):
        if isinstance(m, TiedQuantEmbedding):
            return TiedEmbeddingLookup(m)
        if isinstance(m, KVCacheAttention):
            return CustomKVCacheAttention.from_reference(m, n_heads)
        if isinstance(m, RMS):
            return LinearMeanRMS(m)
        if isinstance(m, Rotary) and not isinstance(m, MatmulRotary):
            return MatmulRotary(m)
        if isinstance(m, MLP) and m.act == "gelu_tanh":
            return TanhGeGLU(m)
        return None

    replace_modules(model, swap)
    model.full_logits = False
    return model.eval()


def _tag_constants_pass(keep: set[str], tag: str):
    """Mark every weight placeholder (not user inputs, not KV caches) for the external data file,
    including those XNNPACK consumes (`delegate_constant_tag`)."""
    from executorch.exir.pass_base import PassResult

    def tag_pass(gm):
        for n in gm.graph.nodes:
            if n.op == "placeholder" and n.name not in keep:
                n.meta.setdefault("custom", {})["delegate_constant_tag"] = tag
        return PassResult(gm, True)

    return tag_pass


def _inferred_view_pass(gm):
    """Write the one symbolic size of a reshape as -1 (inferred) instead of the traced sequence length.

    torch.export records `view(B, -1, H, D)` with the symbolic length spelled out, and XNNPACK's
    partitioner refuses symbolic sizes, though its reshape takes one inferred dim. The q/k/v and
    attention-output reshapes then split each layer into three XNNPACK partitions around portable
    view_copy ops; with -1 a layer is one partition (R1-140M: 18 delegate calls instead of 49,
    decode ~4 % faster). The size is unchanged: numel fixes it.
    """
    from executorch.exir.dialects._ops import ops as exir_ops
    from executorch.exir.pass_base import PassResult

    changed = False
    for n in gm.graph.nodes:
        if n.op != "call_function" or n.target != exir_ops.edge.aten.view_copy.default:
            continue
        shape = list(n.args[1])
        symbolic = [i for i, d in enumerate(shape) if not isinstance(d, int)]
        if len(symbolic) == 1 and -1 not in shape:
            shape[symbolic[0]] = -1
            n.args = (n.args[0], shape, *n.args[2:])
            changed = True
    if changed:
        gm.recompile()
    return PassResult(gm, changed)


def _op_name(node) -> str:
    t = node.target
    if "auto_functionalized" in getattr(t, "__name__", ""):  # in-place custom op (llama.update_cache)
        return str(node.args[0])  # "llama.update_cache.default"
    return getattr(t, "__name__", None) or str(t)


def _delegation_facts(graph_module) -> dict:
    """What XNNPACK took and what stays on ExecuTorch's own kernels (top-level graph after lowering)."""
    delegate_calls = 0
    non_delegated: collections.Counter = collections.Counter()
    symint_ops = 0
    for node in graph_module.graph.nodes:
        if node.op != "call_function":
            continue
        name = _op_name(node)
        if "executorch_call_delegate" in name:
            delegate_calls += 1
        elif name == "getitem" or name.endswith("sym_size.int") or "_assert" in name:
            continue
        elif getattr(node.target, "__module__", None) in ("_operator", "operator"):
            symint_ops += 1  # scalar arithmetic on sizes/positions (executorch_prim ops)
        else:
            non_delegated[name] += 1
    delegated: collections.Counter = collections.Counter()
    for _, mod in graph_module.named_modules():
        if hasattr(mod, "original_module"):  # LoweredBackendModule keeps the lowered subgraph
            for n in mod.original_module.graph.nodes:
                if n.op == "call_function" and _op_name(n) != "getitem":
                    delegated[_op_name(n)] += 1
    return {"delegate_calls": delegate_calls, "delegated_ops": dict(delegated),
            "non_delegated_ops": dict(non_delegated), "symint_ops": symint_ops}


def _check_quantized_linears(model: nn.Module) -> None:
    """Fail early, in one line, on torchao weights XNNPACK cannot take (instead of an assert deep in
    XNNPACK's preprocess): blockwise weight scales need a group size that is a multiple of 32. A 4-bit
    weight with one scale per row counts as one group of in_features there (ExecuTorch 1.5's
    QuantParams maps only 8-bit rows to per-channel), so it needs the same."""
    for fqn, mod in model.named_modules():
        if not isinstance(mod, nn.Linear):
            continue
        block = getattr(mod.weight, "block_size", None)
        if block is None:
            continue
        group = int(block[-1])
        four_bit = getattr(mod.weight, "target_dtype", None) == torch.int4
        if group % 32 and (group != mod.in_features or four_bit):
            what = "per-channel 4-bit weights over" if group == mod.in_features else "group size"
            raise UserError(f"{fqn}: quantized with {what} {group} inputs; XNNPACK needs a multiple of 32 "
                            f"(quantize this linear at 8 bits: a recipe [[override]] with bits = 8)")


def export_pte(model: Transformer, cfg: ModelConfig, path: str | Path, *, max_seq_len: int = 128,
               max_context: int = 2048, eos_ids: tuple[int, ...] | None = None, bos_id: int | None = None,
               data_file: str | None = None, status=lambda msg: None, lean: bool = True) -> dict:
    """Export a (prepared or not) Transformer to an XNNPACK .pte at `path`; return facts about it.

    `max_context` must equal the model's cache length (the caches are built with the model).
    `lean=False` runs every XNNPACK pass on every partition (lean_passes.py; the output is the same).
    """
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import (EdgeCompileConfig, ExecutorchBackendConfig, to_edge_transform_and_lower)
    from executorch.exir.passes import MemoryPlanningPass
    from executorch.exir.passes.sym_shape_eval_pass import ConstraintBasedSymShapeEvalPass

    _register_ops()
    if model.max_context != max_context:
        raise UserError(f"model caches hold {model.max_context} positions, export asked for max_context={max_context}")
    if not 1 <= max_seq_len <= max_context:
        raise UserError(f"max_seq_len {max_seq_len} must be in [1, max_context={max_context}]")
    _check_quantized_linears(model)
    if not isinstance(model.caches[0], CustomKVCacheAttention):
        model = prepare(model)
    eos = list(cfg.eos_token_ids if eos_ids is None else eos_ids)
    facts: dict = {}

    t0 = time.perf_counter()
    status("torch.export")
    tokens = torch.tensor([[1, 2]], dtype=torch.long)
    input_pos = torch.tensor([0], dtype=torch.long)
    seq = torch.export.Dim("seq_len", min=1, max=max_seq_len)
    with torch.no_grad():
        # Not decomposed here: to_edge_transform_and_lower's first step is run_decompositions({}), which
        # functionalizes and flattens torchao's weight subclasses; a second full retrace changed no byte.
        ep = torch.export.export(model, (tokens, input_pos), dynamic_shapes=({1: seq}, None), strict=False)
    facts["export_s"] = time.perf_counter() - t0

    constant_methods = {
        "get_max_seq_len": max_seq_len,
        "get_max_context_len": max_context,
        "get_eos_ids": eos,
        "get_vocab_size": cfg.vocab_size,
        "get_n_layers": cfg.n_applied_layers,
        "use_kv_cache": True,
        "use_sdpa_with_kv_cache": True,
        "enable_dynamic_shape": True,
    }
    if bos_id is not None:
        constant_methods["get_bos_id"] = bos_id

    t0 = time.perf_counter()
    status("XNNPACK partition + lowering")
    passes = [_inferred_view_pass]
    if data_file:
        # All weights, the program's and XNNPACK's, go to one named-data file, where identical bytes
        # are stored once: a tied embedding/head (fp32, or quantized on one grid) then costs one copy.
        # (A single .pte cannot share them: program constants and delegate data live apart.)
        from torch.export.graph_signature import InputKind

        sig = ep.graph_signature
        mutated = set(sig.buffers_to_mutate.values())
        keep = {s.arg.name for s in sig.input_specs
                if s.kind == InputKind.USER_INPUT or (s.kind == InputKind.BUFFER and s.target in mutated)}
        passes.append(_tag_constants_pass(keep, Path(data_file).stem))
    with lean_lowering() if lean else contextlib.nullcontext():
        edge = to_edge_transform_and_lower(
            ep, transform_passes=passes, partitioner=[XnnpackPartitioner()],
            compile_config=EdgeCompileConfig(_check_ir_validity=False),
            constant_methods=constant_methods)
    facts["lower_s"] = time.perf_counter() - t0
    facts.update(_delegation_facts(edge.exported_program().graph_module))

    t0 = time.perf_counter()
    status("to_executorch + serialize")
    with warnings.catch_warnings(), lean_edge_passes() if lean else contextlib.nullcontext():
        # Expected: the KV caches are mutable buffers whose initial contents are not serialized
        # (custom_sdpa never reads past start_pos + S, so their initial state is irrelevant).
        warnings.filterwarnings("ignore", message="Mutation on a buffer in the model is detected")
        et = edge.to_executorch(ExecutorchBackendConfig(
            extract_delegate_segments=True,
            do_quant_fusion_and_const_prop=True,
            # Inputs come from the caller (not planned); KV caches are mutable buffers, planned
            # (alloc_mutable_buffers defaults to True) and kept across calls of one loaded method.
            memory_planning_pass=MemoryPlanningPass(alloc_graph_input=False),
            # Size dynamic activations from the S <= max_seq_len bound, not from the example input.
            sym_shape_eval_pass=ConstraintBasedSymShapeEvalPass(),
            external_constants=(lambda node: Path(data_file).stem) if data_file else False,
        ))
    facts["to_executorch_s"] = time.perf_counter() - t0
    plan = et.executorch_program.execution_plan
    forward = next(p for p in plan if p.name == "forward")
    facts["planned_bytes"] = list(forward.non_const_buffer_sizes)

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = et.buffer
    path.write_bytes(data)
    facts["pte_bytes"] = len(data)
    if data_file:
        et.write_tensor_data_to_file(str(path.parent))
        ptd = path.parent / data_file
        if not ptd.is_file():
            raise RuntimeError(f"ExecuTorch did not write {ptd}")
        facts["ptd_bytes"] = ptd.stat().st_size
    facts["constant_methods"] = constant_methods
    return facts


def shares_tied_table(model: Transformer) -> bool:
    """One matrix serves lookup and head: float tied, or one quantized grid (a shared lookup)."""
    from mobilellm_export.quant.quantize import TiedQuantEmbedding

    emb = model.embed_tokens
    return model.cfg.tie_embeddings and (isinstance(emb, (TiedQuantEmbedding, TiedEmbeddingLookup))
                                         or model.lm_head.weight is getattr(emb, "weight", None))


