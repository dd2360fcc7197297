"""The `onnx` target's graph: an int4 ONNX graph for ONNX Runtime (CPU; `onnxruntime-android` / `-objc` on phones),
in the form ORT GenAI's model builder emits, so `onnxruntime-genai` loads the bundle as it is.

This is the only module that builds ONNX. The graph is written node by node with `onnx.helper`
from the quantized reference's own integers, not traced: the fast ORT ops (`MatMulNBits`,
`GroupQueryAttention` with the KV cache and RoPE inside, `SkipSimplifiedLayerNormalization`,
`GatherBlockQuantized`) are contrib ops with no torch counterpart, so `torch.onnx.export` would
give aten-level MatMul/Softmax/Concat graphs to pattern-match and rewrite afterwards: more code
than the ~15 nodes per block written out here, and a rewrite that fails silently is a slow graph.

    inputs   input_ids int64 [batch, seq], attention_mask int64 [batch, total],
             past_key_values.N.key|value fp32 [batch, kv_heads, past, head_dim]
    outputs  logits fp32 [batch, seq, vocab], present.N.key|value
             (the probe graph only, for verify.localise: the residual stream after the embedding
             and after every attention and MLP application, each [batch, seq, dim], named after the
             node output that holds it: `export_onnx(probe=True)` returns their names)

Per block: SimplifiedLayerNorm (Skip- form carries the residual) -> one packed q|k|v MatMulNBits ->
[QK-norm: SimplifiedLayerNorm over head_dim with unit weight, *before* RoPE: RoPE is a rotation
within each head, so the RMS it divides by is the same on either side] -> GroupQueryAttention
(RoPE from cos/sin tables, causal, KV cache shared past/present buffer) -> o_proj -> MLP.

Weights: every quantized linear is `MatMulNBits` (symmetric: no zero points, the op's default
2^(bits-1) offset) holding exactly the reference's integers and its scales in fp32 (bf16 scales
widen exactly). A per-channel 8-bit head repeats its scale over blocks of 32 (exact). The tied
embedding is `GatherBlockQuantized` over the head's own packed bytes. `accuracy_level` 4 (int8
activations per block of K: ORT's fast CPU path) is the default; `accuracy=fp32` is level 1.
`reference()` is therefore weight-only: the same integers with float activations.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from mobilellm_export.errors import UserError
from mobilellm_export.model import Transformer, rope_frequencies
from mobilellm_export.quant.simulate import DequantLinear, quantized, weight_only_reference  # noqa: F401  (re-exported)
from mobilellm_export.backends import ExportSpec

MS = "com.microsoft"
OPSET = 21
BLOCK = 32  # MatMulNBits block for per-channel weights (their scale repeats over blocks)
from mobilellm_export.backends.onnxruntime import ACCURACY, DATA, MODEL  # noqa: F401 (the file names, re-exported)


# ---- the reference: the same integers, float activations -----------------------------------------

def _source(lin: nn.Module) -> nn.Module:
    """The torchao linear behind a reference's DequantLinear (export reads its integers)."""
    return lin.source[0] if isinstance(lin, DequantLinear) else lin


# ---- weights as ONNX Runtime stores them ------------------------------------------------------------

def pack_nbits(q: torch.Tensor, s: torch.Tensor, bits: int) -> tuple[np.ndarray, np.ndarray, int]:
    """MatMulNBits' B [N, blocks, block * bits / 8] uint8 and scales [N, blocks] fp32 for integers q
    [N, K] with scales s [N, K / group]. Values are stored offset by 2^(bits-1) (the op's default zero
    point); 4-bit pairs put the even column in the low nibble. Per-channel scales (one per row) are
    repeated over blocks of 32; K is zero-padded to whole blocks (a padded 0 dequantizes to 0)."""
    n, k = q.shape
    group = k // s.shape[1]
    block = BLOCK if s.shape[1] == 1 else group
    if block < 16 or block & (block - 1):
        raise UserError(f"MatMulNBits needs power-of-two blocks >= 16; this weight has groups of {group}")
    blocks = -(-k // block)
    scales = s.expand(n, blocks) if s.shape[1] == 1 else s
    u = (q.to(torch.int16) + (1 << (bits - 1))).to(torch.uint8)
    if blocks * block != k:
        u = torch.nn.functional.pad(u, (0, blocks * block - k), value=1 << (bits - 1))
    if bits == 4:
        u = u[:, 0::2] | (u[:, 1::2] << 4)
    return (u.reshape(n, blocks, block * bits // 8).numpy(), scales.float().contiguous().numpy(), block)


# ---- the graph ----------------------------------------------------------------------------------------

class _Graph:
    def __init__(self):
        self.nodes, self.inits, self.seen = [], [], set()

    def init(self, name: str, value) -> str:
        from onnx import numpy_helper

        if name not in self.seen:
            self.seen.add(name)
            self.inits.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def const(self, values, dtype=np.int64) -> str:
        arr = np.asarray(values, dtype=dtype)
        return self.init(f"const.{arr.dtype}.{'_'.join(map(str, arr.ravel())) or 'scalar'}.{arr.ndim}", arr)

    def node(self, op: str, inputs: list[str], name: str, n_out: int = 1, outputs: list[str] | None = None,
             domain: str = "", **attrs) -> str | list[str]:
        from onnx import helper

        outputs = outputs or [f"{name}/out{i}" for i in range(n_out)]
        self.nodes.append(helper.make_node(op, inputs, outputs, name=name, domain=domain or None, **attrs))
        return outputs[0] if len(outputs) == 1 else outputs


class _Builder:
    """The ONNX graph of a (quantized) Transformer, in ORT GenAI's naming."""

    def __init__(self, model: Transformer, spec: ExportSpec, accuracy_level: int, probe: bool = False):
        self.m, self.cfg, self.spec, self.level = model, model.cfg, spec, accuracy_level
        # Probe graph: the residual stream's values in `probe_names()` order become graph outputs.
        # They are values the graph computes anyway (the embedding, the residual sums that
        # SkipSimplifiedLayerNormalization carries or the post-norm Adds): no node is added.
        self.probe, self.stream = probe, []
        self.g = _Graph()
        self.facts = {"matmul_nbits": 0, "matmul_float": 0, "head_scale_repeat_bytes": 0}
        self.tied_head: tuple | None = None  # the head's MatMulNBits weights, when the embedding reads them
        self.tied_float = False  # a float table serving lookup and head

    # linears ------------------------------------------------------------------------------------------
    @staticmethod
    def _one_format(linears: list[nn.Linear]) -> bool:
        """Can these linears be packed into one MatMul (all float, or one bit width and group)?"""
        fmts = set()
        for lin in linears:
            q = quantized(_source(lin).weight)
            fmts.add(None if q is None else q[2:])
        return len(fmts) == 1

    def _weights(self, name: str, linears: list[nn.Linear]) -> tuple[str, ...]:
        """Initializers of one (possibly packed) linear: ("nbits", B, scales, bits, block, N, K) or
        ("float", W^T, N, K)."""
        linears = [_source(lin) for lin in linears]
        qs = [quantized(lin.weight) for lin in linears]
        k = linears[0].in_features
        if all(qs) and len({(b, grp) for _, _, b, grp in qs}) == 1:
            q = torch.cat([x[0] for x in qs]) if len(qs) > 1 else qs[0][0]
            s = torch.cat([x[1] for x in qs]) if len(qs) > 1 else qs[0][1]
            bits = qs[0][2]
            b, scales, block = pack_nbits(q, s, bits)
            if s.shape[1] == 1:
                self.facts["head_scale_repeat_bytes"] += scales.nbytes - s.numel() * 4
            return ("nbits", self.g.init(f"{name}.qweight", b), self.g.init(f"{name}.scales", scales),
                    bits, block, q.shape[0], k)
        if any(qs):
            raise UserError(f"{name}: packed linears must share one format")
        w = torch.cat([lin.weight.detach() for lin in linears]).float()
        return ("float", self.g.init(f"{name}.weight_t", w.t().contiguous().numpy()), w.shape[0], k)

    def linear(self, x: str, name: str, linears: list[nn.Linear], out: str | None = None,
               node: str | None = None) -> str:
        """`name` names the weights, `node` the node (they differ for a shared block's second use)."""
        w, node = self._weights(name, linears), node or name
        biases = [_source(lin).bias for lin in linears]
        mm_out = None if any(b is not None for b in biases) else ([out] if out else None)
        if w[0] == "nbits":
            _, b, scales, bits, block, n, k = w
            self.facts["matmul_nbits"] += 1
            y = self.g.node("MatMulNBits", [x, b, scales], node, outputs=mm_out, domain=MS,
                            K=k, N=n, bits=bits, block_size=block, accuracy_level=self.level)
        else:
            self.facts["matmul_float"] += 1
            y = self.g.node("MatMul", [x, w[1]], node, outputs=mm_out)
        if mm_out is not None or all(b is None for b in biases):
            return y
        bias = torch.cat([b.detach().float() if b is not None else torch.zeros(lin.out_features)
                          for b, lin in zip(biases, linears)])  # Qwen2: q, k and v biases, packed like them
        return self.g.node("Add", [y, self.g.init(f"{name}.bias", bias.numpy())], f"{node}/Bias",
                           outputs=[out] if out else None)

    # pieces -------------------------------------------------------------------------------------------
    @staticmethod
    def gain(norm) -> torch.Tensor:
        """A norm's effective weight: Gemma's 1 + w is folded into the stored one."""
        return norm.gain().detach().float()

    def norm(self, x: str, weight: torch.Tensor, name: str, eps: float) -> str:
        wname = self.g.init(f"{name}.weight", weight.detach().float().numpy())
        return self.g.node("SimplifiedLayerNormalization", [x, wname], name, axis=-1, epsilon=eps, stash_type=1)

    def skip_norm(self, x: str, residual: str, weight: torch.Tensor, name: str) -> tuple[str, str]:
        """(normed, x + residual): the residual add fused into the next norm."""
        w = self.g.init(f"{name}.weight", weight.detach().float().numpy())
        out = self.g.node("SkipSimplifiedLayerNormalization", [x, residual, w], name, n_out=4, domain=MS,
                          epsilon=self.cfg.norm_eps)
        return out[0], out[3]

    def embedding(self, ids: str) -> str:
        from mobilellm_export.quant.quantize import TiedQuantEmbedding

        emb, D = self.m.embed_tokens, self.cfg.dim
        if isinstance(emb, TiedQuantEmbedding):  # the head's own bytes: stored once
            head = self._weights("lm_head", [self.m.lm_head])
            if head[0] != "nbits":
                raise UserError("a shared quantized embedding needs a quantized head")
            _, b, scales, bits, block, n, k = head
            blocks = -(-k // block)
            # The head's B [V, blocks, block bytes] itself, quantized along its last axis: no reshape of
            # the big table (ORT would fold one into a second copy); only the scales get a unit axis.
            s3 = self.g.node("Reshape", [scales, self.g.const([n, blocks, 1])], "embed_tokens/Scales")
            rows = self.g.node("GatherBlockQuantized", [b, ids, s3], "embed_tokens/GatherBlockQuantized",
                               domain=MS, bits=bits, block_size=block, gather_axis=0, quantize_axis=2)
            self.tied_head = head
        else:
            wq = quantized(emb.weight)
            if wq is not None:
                q, s, bits, _ = wq
                b, scales, block = pack_nbits(q, s, bits)
                flat = self.g.init("embed_tokens.qweight", b.reshape(b.shape[0], -1))
                rows = self.g.node("GatherBlockQuantized", [flat, ids, self.g.init("embed_tokens.scales", scales)],
                                   "embed_tokens/GatherBlockQuantized", domain=MS, bits=bits, block_size=block,
                                   gather_axis=0, quantize_axis=1)
            else:
                w = emb.weight.detach().float()
                rows = self.g.node("Gather", [self.g.init("embed_tokens.weight", w.numpy()), ids],
                                   "embed_tokens/Gather")
                self.tied_float = self.m.lm_head.weight is emb.weight
            return rows
        padded = self.g.node("Reshape", [rows, self.g.const([0, 0, -1])], "embed_tokens/Flatten")
        if blocks * block == D:
            return padded
        return self.g.node("Slice", [padded, self.g.const([0]), self.g.const([D]), self.g.const([2])],
                           "embed_tokens/Slice")

    def head(self, x: str) -> str:
        if self.tied_head is not None:
            _, b, scales, bits, block, n, k = self.tied_head
            self.facts["matmul_nbits"] += 1
            return self.g.node("MatMulNBits", [x, b, scales], "lm_head", outputs=["logits"], domain=MS,
                               K=k, N=n, bits=bits, block_size=block, accuracy_level=self.level)
        if self.tied_float:
            # One stored matrix for lookup and head: Gemm reads [V, D] transposed in place.
            flat = self.g.node("Reshape", [x, self.g.const([-1, self.cfg.dim])], "lm_head/Flatten")
            y = self.g.node("Gemm", [flat, "embed_tokens.weight"], "lm_head/Gemm", transB=1)
            lead = self.g.node("Slice", [self.g.node("Shape", [x], "lm_head/Shape"), self.g.const([0]),
                                         self.g.const([2]), self.g.const([0])], "lm_head/Lead")
            shape = self.g.node("Concat", [lead, self.g.const([self.cfg.vocab_size])], "lm_head/OutShape", axis=0)
            return self.g.node("Reshape", [y, shape], "lm_head/Reshape", outputs=["logits"])
        return self.linear(x, "lm_head", [self.m.lm_head], out="logits")

    def attention(self, x: str, block: int, app: int, seqlens: str, total: str) -> str:
        cfg, attn = self.cfg, self.m.layers[block].self_attn
        w, p = f"layers.{block}.attn", f"layers.{app}.attn"  # weights by block, nodes by application
        projs = [attn.q_proj, attn.k_proj, attn.v_proj]
        if self._one_format(projs):
            qkv = self.linear(x, f"{w}.qkv_proj", projs, node=f"{p}.qkv_proj")
        else:  # e.g. a mixed-precision plan: three MatMuls, packed after
            parts = [self.linear(x, f"{w}.{n}", [m], node=f"{p}.{n}") for n, m in zip(("q_proj", "k_proj", "v_proj"), projs)]
            qkv = self.g.node("Concat", parts, f"{p}/PackQKV", axis=-1)
        if attn.learned_qk_norm is not None:
            qkv = self.learned_qk_norm(qkv, attn, w, p)
        if attn.qk_norm is not None:
            # Weightless QK-norm: q and k heads share the unit weight and epsilon, so one per-head norm
            # over the q|k heads together, 3 nodes a layer: decode is latency-bound on small ops.
            # BranchwiseRMSNorm (ORT 1.31) norms each head of the packed [B, S, H * D] without the two
            # Reshapes SimplifiedLayerNormalization needs. GQA's own q/k-norm inputs would fold it
            # into attention, but ORT 1.31's CPU kernel refuses them (CUDA and WebGPU only).
            qk_width, kd = (cfg.n_heads + cfg.n_kv_heads) * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim
            qk, v = self.g.node("Split", [qkv, self.g.const([qk_width, kd])], f"{p}/Split", n_out=2, axis=-1)
            qk = self.heads_norm(qk, None, cfg.n_heads + cfg.n_kv_heads, f"{p}/qk_norm")
            qkv = self.g.node("Concat", [qk, v], f"{p}/Pack", axis=-1)
        qkv_in = [qkv, "", ""]
        past = [f"past_key_values.{app}.key", f"past_key_values.{app}.value"]
        present = [f"present.{app}.key", f"present.{app}.value"]
        window = cfg.window(block)
        tables = ["cos_cache_local", "sin_cache_local"] if cfg.local_rope(block) else ["cos_cache", "sin_cache"]
        # GQA's local_window_size w: each query sees the last w keys, itself included, as HF's window.
        out = self.g.node("GroupQueryAttention", qkv_in + past + [seqlens, total, *tables],
                          f"{p}/GroupQueryAttention", outputs=[f"{p}/GroupQueryAttention/out0", *present], domain=MS,
                          num_heads=cfg.n_heads, kv_num_heads=cfg.n_kv_heads, scale=cfg.attn_scale_factor,
                          do_rotary=int(attn.use_rope), rotary_interleaved=0,
                          local_window_size=window if window is not None else -1)
        return self.linear(out[0], f"{w}.o_proj", [attn.o_proj], node=f"{p}.o_proj")

    def learned_qk_norm(self, qkv: str, attn, w: str, p: str) -> str:
        """Qwen3 / Gemma 3 (each head) and OLMo 2 (the whole projection): learned q and k norms
        before GQA's RoPE, two norms since their weights differ."""
        cfg = self.cfg
        qw, kw = cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim
        q, k, v = self.g.node("Split", [qkv, self.g.const([qw, kw, kw])], f"{p}/Split", n_out=3, axis=-1)
        normed = []
        for x, mod, heads, tag in ((q, attn.q_norm, cfg.n_heads, "q_norm"), (k, attn.k_norm, cfg.n_kv_heads, "k_norm")):
            gain = self.g.init(f"{w}.{tag}.weight", self.gain(mod).numpy())
            if attn.learned_qk_norm == "head":
                x = self.heads_norm(x, gain, heads, f"{p}/{tag}")
            else:
                x = self.g.node("SimplifiedLayerNormalization", [x, gain], f"{p}/{tag}", axis=-1,
                                epsilon=cfg.norm_eps, stash_type=1)
            normed.append(x)
        return self.g.node("Concat", [*normed, v], f"{p}/Pack", axis=-1)

    def heads_norm(self, x: str, gain: str | None, heads: int, name: str) -> str:
        """An RMS norm over each of `heads` heads of the packed [B, S, heads * D] `x`, in one node;
        `gain` ([D], shared by the heads) or None for a weightless norm."""
        return self.g.node("BranchwiseRMSNorm", [x] + ([gain] if gain else []), name, domain=MS,
                           num_branches=heads, epsilon=self.cfg.norm_eps)

    def mlp(self, x: str, block: int, app: int) -> str:
        mlp, w, p = self.m.layers[block].mlp, f"layers.{block}.mlp", f"layers.{app}.mlp"
        if self._one_format([mlp.gate_proj, mlp.up_proj]):
            # One MatMul for gate|up, as for q|k|v: decode is latency-bound on small ops, and level 4
            # quantizes the input once. Measured 1.08x decode on R1-140M shapes; it pays for QK-norm.
            both = self.linear(x, f"{w}.gate_up_proj", [mlp.gate_proj, mlp.up_proj], node=f"{p}.gate_up_proj")
            h = _source(mlp.gate_proj).out_features
            gate, up = self.g.node("Split", [both, self.g.const([h, h])], f"{p}/Split", n_out=2, axis=-1)
        else:  # e.g. a mixed-precision plan
            gate = self.linear(x, f"{w}.gate_proj", [mlp.gate_proj], node=f"{p}.gate_proj")
            up = self.linear(x, f"{w}.up_proj", [mlp.up_proj], node=f"{p}.up_proj")
        if mlp.act == "gelu_tanh":  # Gemma's GeGLU: ORT's fused tanh-approximated GELU
            act = self.g.node("FastGelu", [gate], f"{p}/FastGelu", domain=MS)
        else:
            act = self.g.node("Mul", [gate, self.g.node("Sigmoid", [gate], f"{p}/Sigmoid")], f"{p}/SiLU")
        return self.linear(self.g.node("Mul", [act, up], f"{p}/Mul"), f"{w}.down_proj", [mlp.down_proj],
                           node=f"{p}.down_proj")

    def pre_norm_blocks(self, residual: str, seqlens: str, total: str) -> tuple[str, str]:
        """Pre-norm (Llama) and sandwich (Gemma 3) blocks: each residual add is fused into the norm
        that follows it. Returns the last block's (output, residual) for the final norm."""
        cfg = self.cfg
        x, pending = None, None
        for app, block in enumerate(self.m.schedule):
            layer, tag = self.m.layers[block], f"layers.{app}"
            if pending is None:
                x = self.norm(residual, self.gain(layer.input_layernorm), f"{tag}/input_norm", cfg.norm_eps)
            else:  # the residual sum: the previous application's MLP output
                x, residual = self.skip_norm(pending, residual, self.gain(layer.input_layernorm), f"{tag}/input_norm")
                self.stream.append(residual)
            attn = self.attention(x, block, app, seqlens, total)
            if cfg.norm_layout == "sandwich":  # Gemma: the attention and MLP outputs are normed too
                attn = self.norm(attn, self.gain(layer.post_attention_layernorm), f"{tag}/post_attention_norm",
                                 cfg.norm_eps)
                x, residual = self.skip_norm(attn, residual, self.gain(layer.pre_feedforward_layernorm),
                                             f"{tag}/pre_feedforward_norm")
                pending = self.norm(self.mlp(x, block, app), self.gain(layer.post_feedforward_layernorm),
                                    f"{tag}/post_feedforward_norm", cfg.norm_eps)
            else:
                x, residual = self.skip_norm(attn, residual, self.gain(layer.post_attention_layernorm),
                                             f"{tag}/post_attention_norm")
                pending = self.mlp(x, block, app)
            self.stream.append(residual)  # after the attention
        return pending, residual

    def post_norm_blocks(self, residual: str, seqlens: str, total: str) -> str:
        """OLMo 2: attention and MLP read the raw residual stream; their outputs are normed, then added."""
        cfg = self.cfg
        for app, block in enumerate(self.m.schedule):
            layer, tag = self.m.layers[block], f"layers.{app}"
            a = self.norm(self.attention(residual, block, app, seqlens, total),
                          self.gain(layer.post_attention_layernorm), f"{tag}/post_attention_norm", cfg.norm_eps)
            residual = self.g.node("Add", [residual, a], f"{tag}/attn_residual")
            self.stream.append(residual)
            m = self.norm(self.mlp(residual, block, app), self.gain(layer.post_feedforward_layernorm),
                          f"{tag}/post_feedforward_norm", cfg.norm_eps)
            residual = self.g.node("Add", [residual, m], f"{tag}/mlp_residual")
            self.stream.append(residual)
        return residual

    def build(self):
        from onnx import TensorProto, helper

        cfg, spec, g = self.cfg, self.spec, self.g
        cos, sin = rope_frequencies(cfg, spec.max_context)
        g.init("cos_cache", cos.numpy())
        g.init("sin_cache", sin.numpy())
        if any(cfg.local_rope(i) for i in range(cfg.n_layers)):  # Gemma 3's sliding layers
            cos, sin = rope_frequencies(cfg, spec.max_context, local=True)
            g.init("cos_cache_local", cos.numpy())
            g.init("sin_cache_local", sin.numpy())
        # GQA's lengths from the 2-D mask, as ORT GenAI feeds it: seqlens_k = sum(mask) - 1, total = width.
        total_len = g.node("Gather", [g.node("Shape", ["attention_mask"], "mask/Shape"), g.const(1)], "mask/Gather",
                           axis=0)
        total = g.node("Cast", [total_len], "mask/total_seq_len", to=TensorProto.INT32)
        summed = g.node("ReduceSum", ["attention_mask", g.const([1])], "mask/ReduceSum", keepdims=0)
        seqlens = g.node("Cast", [g.node("Sub", [summed, g.const([1])], "mask/Sub")], "mask/seqlens_k",
                         to=TensorProto.INT32)
        residual = self.embedding("input_ids")
        if cfg.scale_embeddings:  # Gemma
            residual = g.node("Mul", [residual, g.const(np.float32(cfg.dim ** 0.5), np.float32)], "embed_tokens/Scale")
        self.stream.append(residual)
        if cfg.norm_layout == "post":
            residual = self.post_norm_blocks(residual, seqlens, total)
            x = self.norm(residual, self.gain(self.m.norm), "final_norm", cfg.norm_eps)
        else:
            pending = self.pre_norm_blocks(residual, seqlens, total)
            x, last = self.skip_norm(*pending, self.gain(self.m.norm), "final_norm")
            self.stream.append(last)  # the last application's MLP output
        if self.m.pre_head is not None:  # the residual rotation's float D x D (quant/rotate.py)
            x = self.linear(x, "pre_head", [self.m.pre_head])
        self.head(x)

        f32, i64 = TensorProto.FLOAT, TensorProto.INT64
        kv = ["batch_size", cfg.n_kv_heads, "past_sequence_length", cfg.head_dim]
        kv_out = ["batch_size", cfg.n_kv_heads, "total_sequence_length", cfg.head_dim]
        n = len(self.m.schedule)
        inputs = [helper.make_tensor_value_info("input_ids", i64, ["batch_size", "sequence_length"]),
                  helper.make_tensor_value_info("attention_mask", i64, ["batch_size", "total_sequence_length"])]
        outputs = [helper.make_tensor_value_info("logits", f32, ["batch_size", "sequence_length", cfg.vocab_size])]
        for i in range(n):
            for part in ("key", "value"):
                inputs.append(helper.make_tensor_value_info(f"past_key_values.{i}.{part}", f32, kv))
                outputs.append(helper.make_tensor_value_info(f"present.{i}.{part}", f32, kv_out))
        if self.probe:
            if len(self.stream) != 1 + 2 * n or len(set(self.stream)) != len(self.stream):
                raise RuntimeError(f"probe graph: {len(self.stream)} residual values for {n} block applications")
            outputs += [helper.make_tensor_value_info(name, f32, ["batch_size", "sequence_length", cfg.dim])
                        for name in self.stream]
        graph = helper.make_graph(g.nodes, "mobilellm_export", inputs, outputs, g.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid(MS, 1)],
                                  producer_name="mobilellm-export")
        model.ir_version = 10
        return model


def metadata_props(spec: ExportSpec) -> dict[str, str]:
    """What the runtimes' LLM loops need, in the model file itself (verify re-reads it)."""
    return {"eos_ids": json.dumps(list(spec.eos_ids)), "max_context": str(spec.max_context),
            "max_seq_len": str(spec.max_seq_len), "vocab_size": str(spec.config.vocab_size),
            "bos_id": json.dumps(spec.bos_id)}


def export_onnx(model: Transformer, spec: ExportSpec, out_dir: Path, accuracy: str = "int8",
                status=lambda msg: None, probe: bool = False) -> dict:
    """Write model.onnx (+ model.onnx.data, all weights) into out_dir; return facts about it.

    probe: the same graph with the residual stream as extra outputs (verify.localise); the facts
    then name them, in `Transformer.probe_names()` order, as "probe_outputs"."""
    import onnx

    t0 = time.perf_counter()
    status("building the ONNX graph")
    b = _Builder(model, spec, ACCURACY[accuracy], probe=probe)
    proto = b.build()
    for k, v in metadata_props(spec).items():
        proto.metadata_props.add(key=k, value=v)
    facts = {"build_s": time.perf_counter() - t0, **b.facts, "accuracy_level": ACCURACY[accuracy],
             "opset": OPSET}
    if probe:
        facts["probe_outputs"] = list(b.stream)
    t0 = time.perf_counter()
    status("saving")
    # No onnx.checker: it rejects SimplifiedLayerNormalization, which ORT registers in the default
    # domain itself. ORT's own load (verify's first step) checks the graph, contrib ops included.
    out_dir = Path(out_dir)
    onnx.save_model(proto, str(out_dir / MODEL), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=DATA, size_threshold=1024)  # shape constants stay inline
    facts["save_s"] = time.perf_counter() - t0
    ops: dict[str, int] = {}
    for n in proto.graph.node:
        ops[n.op_type] = ops.get(n.op_type, 0) + 1
    facts["ops"] = ops
    facts["onnx_bytes"] = (out_dir / MODEL).stat().st_size
    facts["data_bytes"] = (out_dir / DATA).stat().st_size
    return facts


# ---- the target --------------------------------------------------------------------------------------


# ---- runners -----------------------------------------------------------------------------------------


