"""The reference Transformer for Llama / MobileLLM v1 / MobileLLM-R1 (Llama-4 dense) / SmolLM2.

One model, driven by ModelConfig flags. State-dict names are HF Llama names without the
`model.` prefix (`layers.N.self_attn.q_proj.weight`, `layers.N.mlp.gate_proj.weight`, ...).

The KV cache and attention kernel live together in `KVCacheAttention` modules held in
`Transformer.caches` (one per block application), RoPE in one `Rotary` module and norms in
`RMS`/`RMSNorm` modules. Targets swap those modules for their own runtime's version (ExecuTorch
custom ops, Core ML state slices, ONNX past/present) instead of adding target branches here.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import ModelConfig
from .errors import UserError


class RMS(nn.Module):
    """Weightless RMS normalisation over the last dim (Llama-4 QK-norm; RMSNorm without weight).

    Computed in fp32 whatever the model dtype, as HF does, and written as explicit ops (Core ML's
    fused rms_norm rescales and loses precision). Targets may swap it for an equivalent form.
    """

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.dim, self.eps = dim, eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype)


class RMSNorm(RMS):
    def __init__(self, dim: int, eps: float):
        super().__init__(dim, eps)
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) * self.weight


def rope_frequencies(cfg: ModelConfig, max_context: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin tables of shape [max_context, head_dim // 2] (fp32)."""
    inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, cfg.head_dim, 2, dtype=torch.float64) / cfg.head_dim))
    if cfg.rope_scaling is not None:  # Llama 3.1-style long-context frequency scaling
        s = cfg.rope_scaling
        factor, lo, hi = s["factor"], s.get("low_freq_factor", 1.0), s.get("high_freq_factor", 4.0)
        old = s["original_max_position_embeddings"]
        wavelen = 2 * math.pi / inv_freq
        smooth = (old / wavelen - lo) / (hi - lo)
        scaled = torch.where(wavelen > old / lo, inv_freq / factor, inv_freq)
        mid = (wavelen <= old / lo) & (wavelen >= old / hi)
        inv_freq = torch.where(mid, (1 - smooth) * inv_freq / factor + smooth * inv_freq, scaled)
    angles = torch.outer(torch.arange(max_context, dtype=torch.float64), inv_freq)
    return angles.cos().float(), angles.sin().float()


class Rotary(nn.Module):
    """RoPE: cos/sin tables at full head width, and the rotation itself.

    interleaved: pairs (0,1), (2,3)... (Llama-4 / Meta's complex form; tables repeated per pair).
    Else rotate_half (HF Llama layout; tables repeated per half). `tables(positions)` is computed
    once per forward; `forward(x, cos, sin)` rotates q or k, x: [B, S, H, D] -> same, in x's dtype.
    """

    def __init__(self, cfg: ModelConfig, max_context: int):
        super().__init__()
        self.interleaved = cfg.rope_interleaved
        cos, sin = rope_frequencies(cfg, max_context)
        cos, sin = (t.repeat_interleave(2, -1) if self.interleaved else torch.cat((t, t), -1) for t in (cos, sin))
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    def tables(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.cos[positions][None, :, None, :], self.sin[positions][None, :, None, :]

    def swapped(self, x: torch.Tensor) -> torch.Tensor:
        """The partner of each element with its sign: (-x1, x0, ...) or cat(-x[D/2:], x[:D/2])."""
        if self.interleaved:
            xr = x.unflatten(-1, (-1, 2))
            return torch.stack((-xr[..., 1], xr[..., 0]), dim=-1).flatten(-2)
        half = x.shape[-1] // 2
        return torch.cat((-x[..., half:], x[..., :half]), dim=-1)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        return (xf * cos + self.swapped(xf) * sin).to(x.dtype)


def to_rotate_half(cfg: ModelConfig, sd: dict[str, torch.Tensor]) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """Re-express an interleaved-RoPE checkpoint (Llama-4 / R1) in the rotate_half layout.

    Permuting q_proj and k_proj rows within each head (pair (2i, 2i+1) -> (i, i + D/2)) changes no
    output: attention scores are dot products over the head dimension and QK-norm is an RMS over
    it, both invariant to one permutation applied to q and k alike. Exported graphs then need only
    contiguous slices for RoPE (what llama.cpp does for these models too).
    """
    if not cfg.rope_interleaved:
        return cfg, sd
    out = dict(sd)
    for k, v in sd.items():
        if k.endswith(("self_attn.q_proj.weight", "self_attn.k_proj.weight")):
            heads = v.shape[0] // cfg.head_dim
            out[k] = v.reshape(heads, cfg.head_dim // 2, 2, -1).transpose(1, 2).reshape(v.shape).contiguous()
    return dataclasses.replace(cfg, rope_interleaved=False), out


class KVCacheAttention(nn.Module):
    """Static KV cache + causal attention: the reference (eager PyTorch) implementation.

    attend(q, k, v, start_pos) takes q/k/v as [B, S, H, D] for positions start_pos..start_pos+S-1
    and returns [B, S, n_heads * D]. Targets replace this module.
    """

    def __init__(self, max_batch: int, max_context: int, n_heads: int, n_kv_heads: int, head_dim: int,
                 dtype: torch.dtype):
        super().__init__()
        self.max_context, self.n_rep = max_context, n_heads // n_kv_heads
        shape = (max_batch, n_kv_heads, max_context, head_dim)
        self.register_buffer("k_cache", torch.zeros(shape, dtype=dtype), persistent=False)
        self.register_buffer("v_cache", torch.zeros(shape, dtype=dtype), persistent=False)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, start_pos: torch.Tensor) -> torch.Tensor:
        B, S, H, D = q.shape
        p0 = start_pos[0].item()
        torch._check(p0 >= 0)
        torch._check(p0 + S <= self.max_context)
        self.k_cache[:B, :, p0:p0 + S] = k.transpose(1, 2).to(self.k_cache.dtype)
        self.v_cache[:B, :, p0:p0 + S] = v.transpose(1, 2).to(self.v_cache.dtype)
        keys, values = self.k_cache[:B, :, :p0 + S], self.v_cache[:B, :, :p0 + S]
        # query i (absolute p0+i) sees keys 0..p0+i
        mask = torch.arange(p0 + S, device=q.device)[None, :] <= (p0 + torch.arange(S, device=q.device))[:, None]
        out = F.scaled_dot_product_attention(
            q.transpose(1, 2), keys.to(q.dtype), values.to(q.dtype), attn_mask=mask, enable_gqa=self.n_rep > 1)
        return out.transpose(1, 2).reshape(B, -1, H * D)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.q_proj = nn.Linear(cfg.dim, cfg.n_heads * cfg.head_dim, bias=False)
        self.k_proj = nn.Linear(cfg.dim, cfg.n_kv_heads * cfg.head_dim, bias=False)
        self.v_proj = nn.Linear(cfg.dim, cfg.n_kv_heads * cfg.head_dim, bias=False)
        self.o_proj = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.dim, bias=False)
        self.use_rope = cfg.uses_rope(layer)
        # as in HF Llama-4: only on RoPE layers
        self.qk_norm = RMS(cfg.head_dim, cfg.norm_eps) if cfg.qk_norm and self.use_rope else None
        self.temperature_tuning = cfg.attn_temperature_tuning and not self.use_rope
        self.floor_scale, self.attn_scale = cfg.floor_scale, cfg.attn_scale

    def forward(self, x, rope: Rotary, cos, sin, positions, start_pos, cache: KVCacheAttention):
        B = x.shape[0]
        q = self.q_proj(x).view(B, -1, self.n_heads, self.head_dim)
        k = self.k_proj(x).view(B, -1, self.n_kv_heads, self.head_dim)
        v = self.v_proj(x).view(B, -1, self.n_kv_heads, self.head_dim)
        if self.use_rope:
            q, k = rope(q, cos, sin), rope(k, cos, sin)
        if self.qk_norm is not None:
            q, k = self.qk_norm(q), self.qk_norm(k)
        if self.temperature_tuning:  # Llama-4 NoPE layers: longer context -> sharper queries
            scale = torch.log1p(torch.floor((positions.float() + 1.0) / self.floor_scale)) * self.attn_scale + 1.0
            q = (q * scale[None, :, None, None]).to(q.dtype)
        return self.o_proj(cache.attend(q, k, v, start_pos))


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.gate_proj = nn.Linear(dim, hidden, bias=False)
        self.up_proj = nn.Linear(dim, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, dim, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.self_attn = Attention(cfg, layer)
        self.post_attention_layernorm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.mlp = MLP(cfg.dim, cfg.hidden_dim)

    def forward(self, x, rope, cos, sin, positions, start_pos, cache, probe: Probe | None = None):
        h = x + self.self_attn(self.input_layernorm(x), rope, cos, sin, positions, start_pos, cache)
        if probe is not None:
            h = probe(h)
        out = h + self.mlp(self.post_attention_layernorm(h))
        return out if probe is None else probe(out)


class Probe:
    """Records the residual stream after each op (embedding, every attention, every MLP). With a
    teacher (another implementation's recorded stream), each op then reads the teacher's value
    instead of its own, so every output is this model's op applied to the other's input."""

    def __init__(self, teacher: torch.Tensor | None = None):
        self.seen: list[torch.Tensor] = []
        self.teacher = teacher

    def __call__(self, h: torch.Tensor) -> torch.Tensor:
        self.seen.append(h)
        return h if self.teacher is None else self.teacher[len(self.seen) - 1].to(h.dtype)


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig, max_context: int = 2048, max_batch: int = 1,
                 dtype: torch.dtype = torch.float32):
        super().__init__()
        if cfg.attention_chunk_size and max_context > cfg.attention_chunk_size:
            # Chunked attention (Llama-4 RoPE layers) is not implemented; below the chunk it is plain causal.
            raise UserError(f"max context {max_context} exceeds the model's attention chunk "
                            f"{cfg.attention_chunk_size}; use --max-context <= {cfg.attention_chunk_size}")
        self.cfg, self.max_context, self.max_batch, self.dtype = cfg, max_context, max_batch, dtype
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.layers = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        # MobileLLM layer sharing repeats each block immediately; each application has its own cache.
        self.schedule = [i for i in range(cfg.n_layers) for _ in range(2 if cfg.layer_sharing else 1)]
        # Exported decoders return only the last position's logits (what a runner samples from);
        # verification and perplexity use all of them.
        self.full_logits = True
        # Probe (verify/localise.py): forward also returns the residual stream after the embedding
        # and after every attention and MLP application, stacked: one extra output of an exported
        # program, so a lowered artifact can be compared with the reference layer by layer.
        self.probe = False
        self.to(dtype)
        self.make_state()

    def make_state(self) -> None:
        """(Re)build what is not a weight: KV caches and RoPE tables (fp32 whatever the model dtype)."""
        cfg = self.cfg
        self.caches = nn.ModuleList(
            KVCacheAttention(self.max_batch, self.max_context, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, self.dtype)
            for _ in self.schedule)
        self.rope = Rotary(cfg, self.max_context)

    @classmethod
    def from_weights(cls, cfg: ModelConfig, state_dict: dict[str, torch.Tensor], max_context: int = 2048,
                     dtype: torch.dtype = torch.float32) -> Transformer:
        """A model whose parameters *are* the given tensors (no copy, no random init): what keeps a
        950M export from holding the weights twice."""
        with torch.device("meta"):
            model = cls(cfg, max_context=max_context, dtype=torch.float32)
        model.load_weights(state_dict, assign=True)
        model.to(dtype)
        model.dtype = dtype
        model.make_state()
        return model.eval()

    def forward(self, tokens: torch.Tensor, input_pos: torch.Tensor, teacher: torch.Tensor | None = None):
        """tokens [B, S] int64, input_pos [1] int64 (start position) -> logits [B, S or 1, vocab] fp32.

        With `probe`: (logits, hidden [1 + 2 * n_applied_layers, B, S, D]) in `probe_names()` order.
        teacher (same shape as hidden; implies probe): each op, and the head, reads its input from
        it (see `Probe`): one pass gives every op's own result on another implementation's inputs."""
        S = tokens.shape[1]
        positions = input_pos[0] + torch.arange(S, device=tokens.device)
        cos, sin = self.rope.tables(positions)
        h = self.embed_tokens(tokens)
        probe = Probe(teacher) if self.probe or teacher is not None else None
        if probe is not None:
            h = probe(h)
        for block_idx, cache in zip(self.schedule, self.caches):
            h = self.layers[block_idx](h, self.rope, cos, sin, positions, input_pos, cache, probe)
        if not self.full_logits:
            h = h[:, -1:, :]
        logits = self.lm_head(self.norm(h)).float()
        return (logits, torch.stack(probe.seen)) if probe is not None else logits

    def probe_names(self) -> list[tuple[str, int | None, str]]:
        """(name, block, op) of each probed hidden state: the embedding, then per block application
        its attention and MLP residuals. A shared block's second application is named `layers.N@2`."""
        out = [("embed_tokens", None, "embed_tokens")]
        seen: dict[int, int] = {}
        for block in self.schedule:
            seen[block] = seen.get(block, 0) + 1
            tag = f"layers.{block}" + (f"@{seen[block]}" if self.cfg.layer_sharing else "")
            out += [(f"{tag}.self_attn", block, "self_attn"), (f"{tag}.mlp", block, "mlp")]
        return out

    def load_weights(self, state_dict: dict[str, torch.Tensor], assign: bool = False) -> None:
        """Strict load with one-line errors for missing/extra/misshapen tensors."""
        sd = check_state_dict(self.cfg, state_dict)
        self.load_state_dict(sd, strict=False, assign=assign)
        if self.cfg.tie_embeddings:  # assign replaces the Parameter objects: tie them again
            self.lm_head.weight = self.embed_tokens.weight


def expected_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """The weights a config needs, by name, written out rather than read off a model: checking a
    checkpoint's index against it takes microseconds even for a config that claims a million
    layers (tests/test_sources.py checks it against the Transformer's own state_dict)."""
    D, V, hd = cfg.dim, cfg.vocab_size, cfg.head_dim
    shapes = {"embed_tokens.weight": (V, D)}
    for i in range(cfg.n_layers):
        p = f"layers.{i}."
        shapes.update({  # in module order: random_weights draws them in this order
            p + "input_layernorm.weight": (D,),
            p + "self_attn.q_proj.weight": (cfg.n_heads * hd, D), p + "self_attn.k_proj.weight": (cfg.n_kv_heads * hd, D),
            p + "self_attn.v_proj.weight": (cfg.n_kv_heads * hd, D), p + "self_attn.o_proj.weight": (D, cfg.n_heads * hd),
            p + "post_attention_layernorm.weight": (D,),
            p + "mlp.gate_proj.weight": (cfg.hidden_dim, D), p + "mlp.up_proj.weight": (cfg.hidden_dim, D),
            p + "mlp.down_proj.weight": (D, cfg.hidden_dim)})
    shapes["norm.weight"] = (D,)
    if not cfg.tie_embeddings:
        shapes["lm_head.weight"] = (V, D)
    return shapes


def check_shapes(cfg: ModelConfig, shapes: dict[str, tuple[int, ...]], where: str = "checkpoint") -> None:
    """Names and shapes (e.g. read from file headers, before any data) against the config."""
    expected = expected_shapes(cfg)
    names = {k for k in shapes if not (cfg.tie_embeddings and k == "lm_head.weight")}
    missing, extra = sorted(set(expected) - names), sorted(names - set(expected))
    if missing:
        raise UserError(f"{where} is missing {len(missing)} tensor(s), e.g. {missing[0]!r}")
    if extra:
        raise UserError(f"{where} has {len(extra)} unexpected tensor(s), e.g. {extra[0]!r}")
    for k in names:
        if tuple(shapes[k]) != tuple(expected[k]):
            raise UserError(f"tensor {k!r} has shape {tuple(shapes[k])}, config expects {tuple(expected[k])}")
    if cfg.tie_embeddings and "lm_head.weight" in shapes and tuple(shapes["lm_head.weight"]) != expected["embed_tokens.weight"]:
        raise UserError(f"tensor 'lm_head.weight' has shape {tuple(shapes['lm_head.weight'])}, "
                        f"config expects {expected['embed_tokens.weight']}")


def check_state_dict(cfg: ModelConfig, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The weights this config needs, exactly; UserError naming the first problem otherwise."""
    check_shapes(cfg, {k: tuple(v.shape) for k, v in state_dict.items()})
    sd = dict(state_dict)
    if cfg.tie_embeddings:
        sd.pop("lm_head.weight", None)  # tied: the head is the embedding (a stored copy is accepted)
    return sd


def random_weights(cfg: ModelConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    """Seeded random weights for presets and tests.

    Linears are scaled by 1/sqrt(fan_in) so activations stay O(1) through depth; the (tied)
    embedding by 4/sqrt(dim) so logits spread like a trained model's (std ~4) instead of being
    near-uniform, which would make top-1 and greedy agreement meaningless.
    """
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for name, shape in expected_shapes(cfg).items():
        if name.endswith("norm.weight"):
            sd[name] = 1.0 + 0.1 * torch.randn(shape, generator=g)
        else:
            scale = 4.0 * cfg.dim ** -0.5 if name in ("embed_tokens.weight", "lm_head.weight") else shape[-1] ** -0.5
            sd[name] = torch.randn(shape, generator=g) * scale
    return sd
