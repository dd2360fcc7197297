"""The `ios` target's conversion: a stateful Core ML `.mlpackage` (ML program, iOS 18) with int4 per-block weights.

This is the only module that imports coremltools' converter. Path: the prepared model
(`StatefulDecoder`) -> `torch.export` (dynamic query and cache lengths) -> `run_decompositions({})`
-> `coremltools.convert(minimum_deployment_target=iOS18, compute_precision=FLOAT16)`.

The package follows the stateful contract of Hugging Face swift-transformers (`LanguageModel`):

    input   inputIds    int32 [1, q]            1 <= q <= max_seq_len (RangeDim: one function
                                                 serves prefill chunks and decode)
    input   causalMask  fp16  [1, 1, q, end]    additive (0 / -inf); end = tokens in the cache after
                                                 this call, so the write position is end - q
    output  logits      fp16  [1, q, vocab]
    state   keyCache    fp16  [layers, 1, kv_heads, max_context, head_dim]
    state   valueCache  fp16  same

Weights are the quantized reference's own integers: every torchao linear becomes
`torchao::dequantize_affine(qdata, [1, group], scale_fp16)`, which coremltools turns into one
`constexpr_blockwise_shift_scale` holding those int4 / int8 values (never re-quantized). The scales
are rounded once from bf16/fp32 to fp16, the dtype Core ML stores; `reference()` uses the same fp16
scales. The `4bit` recipe's 8-bit per-channel head is an int8 blockwise constexpr with
block = in_features (one fp16 scale per row); the tied embedding gathers rows from that very
constexpr (coremltools dedupes the two identical dequantize nodes), so the table is stored once.
Core ML has no int8 dynamic activations without on-Mac calibration, so `4bit` here is int4 weights
with fp16 activations and the reference is weight-only (same integers, float activations).

Core ML traps (coremltools 9.0) handled here: RMSNorm stays explicit ops, pre-scaled by max|x| so no
square overflows fp16 (`ScaledRMS`; the fused `rms_norm` lowering loses percent-level precision), K/V heads are repeated before SDPA
(`enable_gqa` is ignored), SDPA gets no `scale=` (the default 1/sqrt(head_dim) is the model's),
the mask is additive -inf (the caller's), and only linears are compressed (RoPE tables and norms
stay plain fp16 constants).

`--ios-compute-units ane` (Neural Engine, with the `4bit-ane` recipe): per-channel int4 (block = in_features), `cpuAndNeuralEngine`, state
dims padded to multiples of 32 (context and head_dim; #2631). Stateful models may still fall back to
CPU on the ANE (#2553, #2600).

The runner is `runners/coreml.py`: on Linux the MIL reference executor (`mil_exec.py`), on macOS
`MLModel.predict` with `MLState`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from mobilellm_export.errors import UserError
from mobilellm_export.model import RMS, Probe, Transformer
from mobilellm_export.quant.simulate import DequantLinear, dequant, quantized, weight_only_reference
from mobilellm_export.backends import ExportSpec
from mobilellm_export.backends.coreml import ENTRY, QRANGE  # noqa: F401 (re-exported)
from mobilellm_export.nn_utils import replace_modules, structural_copy

FP16_NORMAL_MIN = 2.0 ** -14  # 6.1e-5: smaller fp16 scales are subnormal (fewer significant bits)


def _torchao_ops() -> None:
    import torchao.quantization.quant_primitives  # noqa: F401  (registers torch.ops.torchao.dequantize_affine)


def _round_up(n: int, m: int) -> int:
    return -(-n // m) * m


# ---- the reference: the same integers at fp16 scales, float activations --------------------------------

class _RowLookup(nn.Module):
    """An embedding lookup reading rows of a dequantized matrix (the reference's tied head)."""

    def __init__(self, table: DequantLinear):
        super().__init__()
        self.table = [table]  # a list: the head stays registered once, under lm_head

    def forward(self, tokens):
        return F.embedding(tokens, self.table[0].weight)


def fp16_reference(model: Transformer) -> Transformer:
    """Weight-only: the stored integers times their scales rounded to fp16, float activations. A tied
    quantized embedding reads the head's dequantized rows (what the package's shared constexpr does).
    The other constants the package stores in fp16 (norm weights, RoPE tables) are rounded to fp16 here
    too, on the copy: the reference is what the package claims to compute with float activations."""
    from mobilellm_export.model import RMSNorm, Rotary
    from mobilellm_export.quant.quantize import TiedQuantEmbedding

    ref = weight_only_reference(model, torch.float16)
    for m in ref.modules():
        if isinstance(m, RMSNorm):
            m.weight = nn.Parameter(_fp16_exact(m.weight), requires_grad=False)
        elif isinstance(m, Rotary):
            m.cos, m.sin = _fp16_exact(m.cos), _fp16_exact(m.sin)
        elif isinstance(m, nn.Linear) and quantized(m.weight) is None and m.weight.is_floating_point():
            m.weight = nn.Parameter(_fp16_exact(m.weight), requires_grad=False)  # a float (unquantized) linear
    if isinstance(ref.embed_tokens, nn.Embedding) and quantized(ref.embed_tokens.weight) is None:
        ref.embed_tokens.weight = nn.Parameter(_fp16_exact(ref.embed_tokens.weight), requires_grad=False)
        if model.lm_head.weight is model.embed_tokens.weight:
            ref.lm_head.weight = ref.embed_tokens.weight  # tied float: still one tensor
    emb = ref.embed_tokens
    if isinstance(emb, TiedQuantEmbedding) and isinstance(ref.lm_head, DequantLinear):
        ref.embed_tokens = _RowLookup(ref.lm_head)
    elif quantized(getattr(emb, "weight", None)) is not None:  # an untied quantized embedding
        ref.embed_tokens = _DequantEmbedding(emb)
    return ref


class _DequantEmbedding(nn.Module):
    """An untied quantized embedding at fp16 scales; `source` keeps the torchao table export reads."""

    def __init__(self, emb: nn.Module):
        super().__init__()
        self.source = [emb]
        q, s, _, _ = quantized(emb.weight)
        self.register_buffer("weight", dequant(q, s.to(torch.float16)), persistent=False)

    def forward(self, tokens):
        return F.embedding(tokens, self.weight)


def _fp16_exact(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to(torch.float16).to(t.dtype)


def scale_facts(model: nn.Module) -> dict:
    """How the torchao scales fare as fp16 (summed over the prepared model's BlockwiseLinear modules):
    how many are subnormal (< 6.1e-5: fewer significant bits), flushed to zero, or overflow."""
    out = {"scales": 0, "scales_fp16_subnormal": 0, "scales_fp16_flushed_to_zero": 0, "scales_fp16_overflow": 0}
    for m in model.modules():
        for k, v in getattr(m, "scale_counts", {}).items():
            out[k] += v
    return out


# ---- the prepared model: Core ML's form of the same computation -----------------------------------------

class BlockwiseLinear(nn.Module):
    """A quantized linear as `torchao::dequantize_affine` over its int8-held integers and fp16 scales:
    coremltools converts that op into `constexpr_blockwise_shift_scale` with exactly these values."""

    def __init__(self, q: torch.Tensor, s: torch.Tensor, bits: int):
        super().__init__()
        _torchao_ops()
        self.register_buffer("qdata", q.contiguous(), persistent=False)
        s16 = s.to(torch.float16)
        self.register_buffer("scale", s16.contiguous(), persistent=False)
        self.scale_counts = {
            "scales": s.numel(), "scales_fp16_subnormal": int(((s16.abs() < FP16_NORMAL_MIN) & (s16 != 0)).sum()),
            "scales_fp16_flushed_to_zero": int(((s16 == 0) & (s != 0)).sum()),
            "scales_fp16_overflow": int(torch.isinf(s16).sum())}
        self.block, (self.qmin, self.qmax) = q.shape[1] // s.shape[1], QRANGE[bits]
        self.bits = bits
        self.bias = None  # Qwen2's q/k/v biases (float), set by `of`

    @classmethod
    def of(cls, lin: nn.Module) -> BlockwiseLinear | None:
        lin = lin.source[0] if isinstance(lin, DequantLinear) else lin
        qw = quantized(getattr(lin, "weight", None)) if isinstance(lin, nn.Linear) else None
        if qw is None:
            return None
        new = cls(qw[0], qw[1], qw[2])
        new.bias = lin.bias
        return new

    def dequantized(self) -> torch.Tensor:
        return torch.ops.torchao.dequantize_affine(self.qdata, [1, self.block], self.scale, None, torch.int8,
                                                   self.qmin, self.qmax, output_dtype=torch.float32)

    def forward(self, x):
        return F.linear(x, self.dequantized(), self.bias)


class SharedRowLookup(nn.Module):
    """The tied embedding: rows gathered from the head's own dequantize node (one constant)."""

    def __init__(self, head: BlockwiseLinear):
        super().__init__()
        self.head = [head]

    def forward(self, tokens):
        return F.embedding(tokens, self.head[0].dequantized())


class ScaledRMS(nn.Module):
    """RMS normalisation safe in fp16, as explicit ops: x / s with s = max(max|x|, 2^-7) keeps every square
    <= 1 (SmolLM2's residual stream passes 256, where x^2 overflows fp16: the fp16 executor names that
    `pow`), and x * rsqrt(mean(x^2) + eps) == (x/s) * rsqrt(mean((x/s)^2) + eps/s^2) exactly in real
    arithmetic. Not coremltools' fused `rms_norm` (#2821: percent-level error even in fp32)."""

    def __init__(self, norm: nn.Module):
        super().__init__()
        self.eps = norm.eps
        self.weight = getattr(norm, "weight", None)
        self.plus_one = getattr(norm, "plus_one", False)  # Gemma: the gain is 1 + w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        inv = 1.0 / xf.abs().amax(-1, keepdim=True).clamp(min=2.0 ** -7)
        y = xf * inv
        out = (y * torch.rsqrt((y * y).mean(-1, keepdim=True) + self.eps * inv * inv)).to(x.dtype)
        if self.weight is None:
            return out
        return out * (1.0 + self.weight) if self.plus_one else out * self.weight


class StateSlices(nn.Module):
    """One block application's attention over slices of the shared keyCache / valueCache states:
    write k, v at [layer, :, :, start:end], attend over [:end] with the caller's additive mask, K/V
    heads repeated before SDPA (coremltools ignores enable_gqa), default SDPA scale (no `scale=`)."""

    def __init__(self, root: StatefulDecoder, layer: int, n_heads: int, n_kv: int, head_dim: int,
                 scale: float | None = None, window: int | None = None):
        super().__init__()
        self.root = [root]  # a list: not a submodule (the states are registered once, on the root)
        self.layer, self.n_rep, self.head_dim, self.n_kv = layer, n_heads // n_kv, head_dim, n_kv
        # SDPA's default scale is head_dim ** -0.5; another (Gemma's query_pre_attn_scalar) pre-scales q
        self.q_factor = 1.0 if scale is None else scale * head_dim ** 0.5
        self.window = window  # a sliding layer (Gemma 3): the caller's causal mask, narrowed here
        self.register_buffer("kv_of_head", torch.arange(n_heads) // self.n_rep, persistent=False)

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        # a gather of kv head h // n_rep for each query head h (expand + reshape would make torch.export
        # guard the dynamic length against the full context)
        return t if self.n_rep == 1 else t.index_select(1, self.kv_of_head)

    def attend(self, q, k, v, start_pos=None):
        root = self.root[0]
        B, S, H, D = q.shape
        start, end = root.call["span"]
        kc, vc = root.keyCache, root.valueCache
        padded = kc.shape[-1] != D
        kt, vt = k.transpose(1, 2), v.transpose(1, 2)
        if padded:  # 4bit-ane: head_dim padded in the state; the padding stays zero
            kt, vt = (F.pad(t, (0, kc.shape[-1] - D)) for t in (kt, vt))
        kc[self.layer:self.layer + 1, :, :, start:end, :] = kt[None]
        vc[self.layer:self.layer + 1, :, :, start:end, :] = vt[None]
        keys, values = kc[self.layer, :, :, :end, :], vc[self.layer, :, :, :end, :]
        if padded:
            keys, values = keys[..., :D], values[..., :D]
        mask = root.call["mask"]
        # keys j with i - j >= window are masked too (query i at start + i); the caller's mask is
        # already causal, and coremltools 9.0 cannot convert the `&` that model.visible() uses
        if self.window is not None:
            j = torch.arange(end)[None, :]
            i = (start + torch.arange(end - start))[:, None]
            mask = mask.masked_fill((j <= i - self.window)[None, None], float("-inf"))
        if self.q_factor != 1.0:
            q = q * self.q_factor
        out = F.scaled_dot_product_attention(q.transpose(1, 2), self._heads(keys), self._heads(values),
                                             attn_mask=mask)
        return out.transpose(1, 2).reshape(B, S, H * D)


class StatefulDecoder(nn.Module):
    """The Transformer in swift-transformers' stateful form: forward(inputIds, causalMask) -> logits,
    KV caches as the mutable buffers keyCache / valueCache (Core ML states)."""

    def __init__(self, model: Transformer, pad_to: int = 1):
        super().__init__()
        cfg = model.cfg
        self.model = model
        self.max_context = model.max_context
        ctx, hd = _round_up(model.max_context, pad_to), _round_up(cfg.head_dim, pad_to)
        shape = (len(model.schedule), 1, cfg.n_kv_heads, ctx, hd)
        self.register_buffer("keyCache", torch.zeros(shape), persistent=False)
        self.register_buffer("valueCache", torch.zeros(shape), persistent=False)
        model.caches = nn.ModuleList(
            StateSlices(self, i, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.attn_scale_factor, cfg.window(block))
            for i, block in enumerate(model.schedule))
        self.call: dict = {}  # this call's (start, end) and mask, read by StateSlices (not tensor attributes)

    def forward(self, inputIds: torch.Tensor, causalMask: torch.Tensor):
        """-> logits [1, q, vocab]; with `model.probe` (the probe program, `probe_copy`) also the
        residual stream, one [1, q, dim] output per point of `probe_names()`: not one stacked
        tensor, since the frontend types them apart (an fp16 mask input makes the attention's
        outputs fp16, the embedding stays fp32) and its `stack` refuses mixed dtypes."""
        m = self.model
        S, end = inputIds.shape[1], causalMask.shape[-1]
        torch._check(end >= S)
        torch._check(end <= self.max_context)
        start = end - S
        self.call.update(span=(start, end), mask=causalMask)
        positions = torch.arange(start, end)
        h = m.embed(inputIds)
        probe = Probe() if m.probe else None
        if probe is not None:
            h = probe(h)
        # the span as a slice: start and end come from the input shapes
        for block, cache, (rope, cos, sin) in m.applied_blocks(
                lambda r: (r.cos[start:end][None, :, None, :], r.sin[start:end][None, :, None, :])):
            h = m.layers[block](h, rope, cos, sin, positions, None, cache, probe)
        if probe is None:
            return m.head(h)
        return (m.head(h), *probe.seen)


def decoder_copy(dec: StatefulDecoder) -> StatefulDecoder:
    """A structural copy of a prepared decoder (weights shared) that converts as `dec` does. A plain
    `structural_copy` does not: modules that reach others through a list (each cache's root decoder,
    the tied embedding's head, a reference's row table) would still point into `dec`, outside the
    tree torch.export traces, and it fails ("expected compiled_fn to be GraphModule", torch 2.13).
    Here they point at their copies; `dec` is left as it was."""
    new = structural_copy(dec)
    copies = {id(old): mod for (_, old), (_, mod) in zip(dec.named_modules(remove_duplicate=False),
                                                        new.named_modules(remove_duplicate=False))}
    for mod in new.modules():
        for key, value in list(vars(mod).items()):
            if isinstance(value, list) and value and all(isinstance(v, nn.Module) for v in value):
                setattr(mod, key, [copies.get(id(v), v) for v in value])
    new.call = {}
    return new


def probe_copy(dec: StatefulDecoder) -> StatefulDecoder:
    """A `decoder_copy` whose program also outputs the residual stream (verify.localise)."""
    new = decoder_copy(dec)
    new.model.probe, new.model.full_logits = True, True  # the decoder's logits are every position's anyway
    return new


def prepare(reference: Transformer, pad_to: int = 1) -> StatefulDecoder:
    """A StatefulDecoder over a structural copy of `reference` (its weights shared, not copied)."""
    from mobilellm_export.quant.quantize import TiedQuantEmbedding

    model = structural_copy(reference)
    heads: dict[int, BlockwiseLinear] = {}

    def swap(m):
        new = BlockwiseLinear.of(m)
        if new is not None:
            heads[id(m)] = new
        return new

    head = model.lm_head
    replace_modules(model, swap)
    replace_modules(model, lambda m: ScaledRMS(m) if isinstance(m, RMS) else None)
    emb = model.embed_tokens
    if isinstance(emb, (TiedQuantEmbedding, _RowLookup)):
        if id(head) not in heads:
            raise UserError("a shared quantized embedding needs a quantized head")
        model.embed_tokens = SharedRowLookup(heads[id(head)])
    elif isinstance(emb, _DequantEmbedding) or quantized(getattr(emb, "weight", None)) is not None:
        q, s, bits, _ = quantized(emb.source[0].weight if isinstance(emb, _DequantEmbedding) else emb.weight)
        table = BlockwiseLinear(q, s, bits)
        model.embed_tokens = SharedRowLookup(table)
        model.add_module("embed_table", table)
    return StatefulDecoder(model, pad_to).eval()


def eager_step(dec: StatefulDecoder, tokens: list[int], start: int) -> torch.Tensor:
    """One call of the prepared model, as the package is called: logits [len(tokens), vocab]."""
    ids = torch.tensor([tokens], dtype=torch.int32)
    with torch.no_grad():
        return dec(ids, causal_mask(len(tokens), start))[0]


def causal_mask(q: int, start: int, dtype=torch.float32) -> torch.Tensor:
    """[1, 1, q, start + q]: 0 where key j <= query position start + i, -inf elsewhere (never finfo.min,
    which is NaN in fp16)."""
    j = torch.arange(start + q)[None, :]
    i = start + torch.arange(q)[:, None]
    return torch.where(j <= i, 0.0, float("-inf")).to(dtype)[None, None]


# ---- conversion -------------------------------------------------------------------------------------------

def export_mlpackage(dec: StatefulDecoder, spec: ExportSpec, path: Path, *, compute_units: str = "cpuAndGPU",
                     status=lambda msg: None) -> dict:
    """torch.export -> run_decompositions({}) -> coremltools.convert -> save. Facts: timings, op counts,
    constexpr and state facts."""
    import warnings

    import coremltools as ct

    facts: dict = {}
    t0 = time.perf_counter()
    status("torch.export")
    end = torch.export.Dim("end", min=1, max=spec.max_context)
    if spec.max_seq_len == 1:  # a decode-only function: static q = 1
        ids, mask, q = torch.zeros((1, 1), dtype=torch.int32), causal_mask(1, 1), 1
        dims = {"inputIds": None, "causalMask": {3: end}}
    else:
        seq = torch.export.Dim("q", min=1, max=spec.max_seq_len)
        ids, mask = torch.zeros((1, 2), dtype=torch.int32), causal_mask(2, 1)
        q = ct.RangeDim(1, spec.max_seq_len, default=1)
        dims = {"inputIds": {1: seq}, "causalMask": {2: seq, 3: end}}
    with torch.no_grad(), warnings.catch_warnings():
        # the per-call mask lives in a dict on the root module (read by every StateSlices), not a buffer
        warnings.filterwarnings("ignore", message="The tensor attribute self.call")
        ep = torch.export.export(dec, (ids, mask), dynamic_shapes=dims, strict=False,
                                 prefer_deferred_runtime_asserts_over_guards=True)
        ep = ep.run_decompositions({})
    facts["runtime_asserts_dropped"] = _drop_runtime_asserts(ep)
    facts["export_s"] = round(time.perf_counter() - t0, 2)

    t0 = time.perf_counter()
    status("coremltools.convert (iOS18, fp16)")
    cache = tuple(dec.keyCache.shape)
    units = {"cpuAndGPU": ct.ComputeUnit.CPU_AND_GPU, "cpuAndNeuralEngine": ct.ComputeUnit.CPU_AND_NE}[compute_units]
    outputs = [ct.TensorType("logits", dtype=np.float16)]
    if dec.model.probe:  # the probe program (probe_copy): the residual stream too
        outputs += [ct.TensorType(f"hidden_{i}", dtype=np.float16) for i in range(len(dec.model.probe_names()))]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mlmodel = ct.convert(
            ep,
            inputs=[ct.TensorType("inputIds", shape=(1, q), dtype=np.int32),
                    ct.TensorType("causalMask", shape=(1, 1, q, ct.RangeDim(1, spec.max_context, default=1)),
                                  dtype=np.float16)],
            outputs=outputs,
            states=[ct.StateType(wrapped_type=ct.TensorType(shape=cache, dtype=np.float16), name="keyCache"),
                    ct.StateType(wrapped_type=ct.TensorType(shape=cache, dtype=np.float16), name="valueCache")],
            minimum_deployment_target=ct.target.iOS18,
            compute_precision=ct.precision.FLOAT16,
            compute_units=units,
            skip_model_load=True)
    facts["convert_s"] = round(time.perf_counter() - t0, 2)
    cfg = spec.config
    mlmodel.user_defined_metadata.update({
        "eos_ids": json.dumps(list(spec.eos_ids)), "max_context": str(spec.max_context),
        "max_seq_len": str(spec.max_seq_len), "vocab_size": str(cfg.vocab_size),
        "bos_id": json.dumps(spec.bos_id), "co.huggingface.exporters.name": cfg.arch})
    t0 = time.perf_counter()
    status("save .mlpackage")
    path = Path(path)
    mlmodel.save(str(path))
    reproducible(path)
    facts["save_s"] = round(time.perf_counter() - t0, 2)
    facts.update(program_facts(mlmodel._mil_program))
    facts["state_shape"] = list(cache)
    facts["compute_units"] = compute_units
    facts["mlpackage_bytes"] = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return facts


def reproducible(package: Path) -> None:
    """Make a saved .mlpackage a function of its content: coremltools names the package's items with
    random UUIDs (Manifest.json) and serialises protobuf maps in arbitrary order, so two conversions of
    one model differed in bytes. The UUIDs become uuid5 of each item's path, and the model spec is
    re-serialised deterministically (the same message, byte for byte the same)."""
    import uuid

    from coremltools.proto import Model_pb2

    manifest = package / "Manifest.json"
    m = json.loads(manifest.read_text())
    ids = {old: str(uuid.uuid5(uuid.NAMESPACE_URL, "mlpackage:" + e["path"])) for old, e in m["itemInfoEntries"].items()}
    m["itemInfoEntries"] = {ids[k]: v for k, v in sorted(m["itemInfoEntries"].items(), key=lambda kv: ids[kv[0]])}
    m["rootModelIdentifier"] = ids[m["rootModelIdentifier"]]
    manifest.write_text(json.dumps(m, indent=4, sort_keys=True) + "\n")
    root = next(e for e in m["itemInfoEntries"].values() if e["path"].endswith(".mlmodel"))
    spec_path = package / "Data" / root["path"]
    spec = Model_pb2.Model()
    spec.ParseFromString(spec_path.read_bytes())
    spec_path.write_bytes(spec.SerializeToString(deterministic=True))


def _drop_runtime_asserts(ep) -> int:
    """Remove the deferred shape asserts (`_assert_scalar` and the symbolic arithmetic feeding them)
    that coremltools' frontend cannot read. They come from `prefer_deferred_runtime_asserts_over_guards`:
    a view of the first `end` cache positions is contiguous only when end == max_context, and without
    deferring, torch.export would specialise on that. The ranges the asserts check are the inputs'
    declared RangeDims."""
    g = ep.graph_module.graph
    dropped = 0
    for node in list(g.nodes):
        if node.op == "call_function" and node.target in (torch.ops.aten._assert_scalar.default,
                                                          torch.ops.aten.sym_constrain_range_for_size.default):
            g.erase_node(node)
            dropped += 1
    g.eliminate_dead_code()
    ep.graph_module.recompile()
    return dropped


def program_facts(prog) -> dict:
    """Op counts by type, and what the constexpr ops hold (bits, block sizes, bytes)."""
    ops: dict[str, int] = {}
    from mobilellm_export.runtimes.mil import dtype_name

    constexpr: dict[str, int] = {}
    blocks: set[int] = set()
    for fn in prog.functions.values():
        for op in fn.operations:
            ops[op.op_type] = ops.get(op.op_type, 0) + 1
            if op.op_type == "constexpr_blockwise_shift_scale":
                key = dtype_name(op.data.sym_type)
                constexpr[key] = constexpr.get(key, 0) + 1
                blocks.add(int(op.data.shape[-1] // op.scale.shape[-1]))
    return {"ops": ops, "op_count": sum(ops.values()), "constexpr": constexpr, "blocks": sorted(blocks)}


# ---- the target -------------------------------------------------------------------------------------------

