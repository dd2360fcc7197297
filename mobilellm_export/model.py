"""The reference Transformer for Llama / MobileLLM v1 / MobileLLM-R1 (Llama-4 dense) / SmolLM2, and
the models R1 is compared with: Qwen2/2.5, Qwen3, Gemma 3 and OLMo 2.

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

from mobilellm_export.config import ModelConfig
from mobilellm_export.errors import UserError


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
    """RMS normalisation with a learned gain: `weight` (Llama), or `1 + weight` in fp32 before the
    cast back (Gemma, `plus_one`)."""

    def __init__(self, dim: int, eps: float, plus_one: bool = False):
        super().__init__(dim, eps)
        self.plus_one = plus_one
        self.weight = nn.Parameter(torch.zeros(dim) if plus_one else torch.ones(dim))

    def gain(self) -> torch.Tensor:
        return 1.0 + self.weight.float() if self.plus_one else self.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.plus_one:
            xf = x.float()
            return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps) * self.gain()).to(x.dtype)
        return super().forward(x) * self.weight


def rope_frequencies(cfg: ModelConfig, max_context: int, local: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin tables of shape [max_context, head_dim // 2] (fp32). `local`: the sliding layers'
    own base (Gemma 3), which takes no scaling."""
    theta = cfg.rope_local_theta if local else cfg.rope_theta
    inv_freq = 1.0 / (theta ** (torch.arange(0, cfg.head_dim, 2, dtype=torch.float64) / cfg.head_dim))
    if cfg.rope_scaling is not None and not local and cfg.rope_scaling.get("rope_type") == "linear":
        inv_freq = inv_freq / cfg.rope_scaling["factor"]  # positions divided by the factor
    elif cfg.rope_scaling is not None and not local:  # Llama 3.1-style long-context frequency scaling
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

    def __init__(self, cfg: ModelConfig, max_context: int, local: bool = False):
        super().__init__()
        self.interleaved = cfg.rope_interleaved
        cos, sin = rope_frequencies(cfg, max_context, local)
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


def visible(kpos: torch.Tensor, qpos: torch.Tensor, window: int | None) -> torch.Tensor:
    """Which keys each query sees: causal, and within `window` keys (itself included) on a sliding
    layer. kpos [1, K], qpos [S, 1] -> bool [S, K]; every target builds its mask from this."""
    allowed = kpos <= qpos
    return allowed if window is None else allowed & (kpos > qpos - window)


class KVCacheAttention(nn.Module):
    """Static KV cache + causal attention: the reference (eager PyTorch) implementation.

    attend(q, k, v, start_pos) takes q/k/v as [B, S, H, D] for positions start_pos..start_pos+S-1
    and returns [B, S, n_heads * D]. Targets replace this module.

    scale: softmax scale (Gemma's query_pre_attn_scalar ** -0.5, else head_dim ** -0.5).
    window: a sliding layer's window (query p sees keys p-window+1..p), kept in a full-length cache
    under a mask: the cache is as long as the context, and the mask is what makes the layer local.
    """

    def __init__(self, max_batch: int, max_context: int, n_heads: int, n_kv_heads: int, head_dim: int,
                 dtype: torch.dtype, scale: float | None = None, window: int | None = None):
        super().__init__()
        self.max_context, self.n_rep = max_context, n_heads // n_kv_heads
        self.scale, self.window = scale if scale is not None else head_dim ** -0.5, window
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
        kpos, qpos = torch.arange(p0 + S, device=q.device)[None, :], (p0 + torch.arange(S, device=q.device))[:, None]
        mask = visible(kpos, qpos, self.window)
        out = F.scaled_dot_product_attention(
            q.transpose(1, 2), keys.to(q.dtype), values.to(q.dtype), attn_mask=mask, enable_gqa=self.n_rep > 1,
            scale=self.scale)
        return out.transpose(1, 2).reshape(B, -1, H * D)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        q_width, kv_width = cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim
        self.q_proj = nn.Linear(cfg.dim, q_width, bias=cfg.attn_bias)
        self.k_proj = nn.Linear(cfg.dim, kv_width, bias=cfg.attn_bias)
        self.v_proj = nn.Linear(cfg.dim, kv_width, bias=cfg.attn_bias)
        self.o_proj = nn.Linear(q_width, cfg.dim, bias=False)
        self.use_rope = cfg.uses_rope(layer)
        # as in HF Llama-4: only on RoPE layers
        self.qk_norm = RMS(cfg.head_dim, cfg.norm_eps) if cfg.qk_norm and self.use_rope else None
        # Qwen3 / Gemma 3 (per head) and OLMo 2 (per projection): learned, before RoPE
        self.learned_qk_norm = cfg.qk_norm_learned
        if cfg.qk_norm_learned is not None:
            per_head = cfg.qk_norm_learned == "head"
            self.q_norm = RMSNorm(cfg.head_dim if per_head else q_width, cfg.norm_eps, cfg.norm_plus_one)
            self.k_norm = RMSNorm(cfg.head_dim if per_head else kv_width, cfg.norm_eps, cfg.norm_plus_one)
        self.temperature_tuning = cfg.attn_temperature_tuning and not self.use_rope
        self.floor_scale, self.attn_scale = cfg.floor_scale, cfg.attn_scale

    def forward(self, x, rope: Rotary, cos, sin, positions, start_pos, cache: KVCacheAttention):
        B = x.shape[0]
        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        if self.learned_qk_norm == "proj":
            q, k = self.q_norm(q), self.k_norm(k)
        q = q.view(B, -1, self.n_heads, self.head_dim)
        k = k.view(B, -1, self.n_kv_heads, self.head_dim)
        v = v.view(B, -1, self.n_kv_heads, self.head_dim)
        if self.learned_qk_norm == "head":
            q, k = self.q_norm(q), self.k_norm(k)
        if self.use_rope:
            q, k = rope(q, cos, sin), rope(k, cos, sin)
        if self.qk_norm is not None:
            q, k = self.qk_norm(q), self.qk_norm(k)
        if self.temperature_tuning:  # Llama-4 NoPE layers: longer context -> sharper queries
            scale = torch.log1p(torch.floor((positions.float() + 1.0) / self.floor_scale)) * self.attn_scale + 1.0
            q = (q * scale[None, :, None, None]).to(q.dtype)
        return self.o_proj(cache.attend(q, k, v, start_pos))


class MLP(nn.Module):
    """Gated MLP: SwiGLU (silu) or Gemma's GeGLU (tanh-approximated GELU)."""

    def __init__(self, dim: int, hidden: int, act: str = "silu"):
        super().__init__()
        self.gate_proj = nn.Linear(dim, hidden, bias=False)
        self.up_proj = nn.Linear(dim, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, dim, bias=False)
        self.act = act

    def forward(self, x):
        g = self.gate_proj(x)
        g = F.silu(g) if self.act == "silu" else F.gelu(g, approximate="tanh")
        return self.down_proj(g * self.up_proj(x))


class Block(nn.Module):
    """One decoder block; where its norms sit is `cfg.norm_layout`:
    pre (Llama)       h = x + attn(in(x));          out = h + mlp(post_attn(h))
    sandwich (Gemma)  h = x + post_attn(attn(in(x))); out = h + post_ff(mlp(pre_ff(h)))
    post (OLMo 2)     h = x + post_attn(attn(x));    out = h + post_ff(mlp(h))
    """

    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.layout = cfg.norm_layout

        def norm():
            return RMSNorm(cfg.dim, cfg.norm_eps, cfg.norm_plus_one)

        if self.layout != "post":
            self.input_layernorm = norm()
        self.self_attn = Attention(cfg, layer)
        self.post_attention_layernorm = norm()
        if self.layout == "sandwich":
            self.pre_feedforward_layernorm = norm()
        self.mlp = MLP(cfg.dim, cfg.hidden_dim, cfg.mlp_act)
        if self.layout != "pre":
            self.post_feedforward_layernorm = norm()

    def forward(self, x, rope, cos, sin, positions, start_pos, cache, probe: Probe | None = None):
        a = self.self_attn(x if self.layout == "post" else self.input_layernorm(x), rope, cos, sin, positions,
                           start_pos, cache)
        h = x + (a if self.layout == "pre" else self.post_attention_layernorm(a))
        if probe is not None:
            h = probe(h)
        if self.layout == "pre":
            out = h + self.mlp(self.post_attention_layernorm(h))
        elif self.layout == "sandwich":
            out = h + self.post_feedforward_layernorm(self.mlp(self.pre_feedforward_layernorm(h)))
        else:
            out = h + self.post_feedforward_layernorm(self.mlp(h))
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
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps, cfg.norm_plus_one)
        self.lm_head = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        # A float D x D linear between the final norm and the head: set only by the residual-stream
        # rotation (quant/rotate.py), which needs somewhere to put the final norm's gain.
        self.pre_head: nn.Linear | None = None
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
            KVCacheAttention(self.max_batch, self.max_context, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, self.dtype,
                             cfg.attn_scale_factor, cfg.window(layer))
            for layer in self.schedule)
        self.rope = Rotary(cfg, self.max_context)
        # Gemma 3's sliding layers rotate with their own base
        self.rope_local = Rotary(cfg, self.max_context, local=True) if any(
            cfg.local_rope(i) for i in range(cfg.n_layers)) else None

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
        h = self.embed(tokens)
        probe = Probe(teacher) if self.probe or teacher is not None else None
        if probe is not None:
            h = probe(h)
        for block_idx, cache, (rope, cos, sin) in self.applied_blocks(lambda r: r.tables(positions)):
            h = self.layers[block_idx](h, rope, cos, sin, positions, input_pos, cache, probe)
        if not self.full_logits:
            h = h[:, -1:, :]
        logits = self.head(h).float()
        return (logits, torch.stack(probe.seen)) if probe is not None else logits

    def head(self, h: torch.Tensor) -> torch.Tensor:
        """The final norm and the head (with the rotation's pre-head linear, when there is one)."""
        x = self.norm(h)
        return self.lm_head(x if self.pre_head is None else self.pre_head(x))

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.embed_tokens(tokens)
        if self.cfg.scale_embeddings:  # Gemma: sqrt(dim), rounded to the activation dtype as HF does
            h = h * torch.tensor(self.cfg.dim ** 0.5, dtype=h.dtype)
        return h

    def applied_blocks(self, tables):
        """(block index, cache, (rope, cos, sin)) per block application, in order. Gemma 3's sliding
        layers take the local-base rope. `tables(rope)` gives its (cos, sin) for the positions run:
        a target may need them as a slice rather than an index."""
        ropes = [(r, *tables(r)) for r in (self.rope, self.rope_local) if r is not None]
        return [(b, cache, ropes[int(self.cfg.local_rope(b))]) for b, cache in zip(self.schedule, self.caches)]

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
    qw, kvw = cfg.n_heads * hd, cfg.n_kv_heads * hd
    shapes = {"embed_tokens.weight": (V, D)}
    for i in range(cfg.n_layers):
        p = f"layers.{i}."
        a = p + "self_attn."
        # Llama-family names in this order: random_weights draws them in it, so existing presets keep
        # their weights; the other architectures' extra tensors follow.
        if cfg.norm_layout != "post":
            shapes[p + "input_layernorm.weight"] = (D,)
        shapes.update({a + "q_proj.weight": (qw, D), a + "k_proj.weight": (kvw, D), a + "v_proj.weight": (kvw, D),
                       a + "o_proj.weight": (D, qw), p + "post_attention_layernorm.weight": (D,),
                       p + "mlp.gate_proj.weight": (cfg.hidden_dim, D), p + "mlp.up_proj.weight": (cfg.hidden_dim, D),
                       p + "mlp.down_proj.weight": (D, cfg.hidden_dim)})
        if cfg.attn_bias:
            shapes.update({a + "q_proj.bias": (qw,), a + "k_proj.bias": (kvw,), a + "v_proj.bias": (kvw,)})
        if cfg.qk_norm_learned is not None:
            per_head = cfg.qk_norm_learned == "head"
            shapes.update({a + "q_norm.weight": (hd if per_head else qw,), a + "k_norm.weight": (hd if per_head else kvw,)})
        if cfg.norm_layout == "sandwich":
            shapes[p + "pre_feedforward_layernorm.weight"] = (D,)
        if cfg.norm_layout != "pre":
            shapes[p + "post_feedforward_layernorm.weight"] = (D,)
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
        if name.endswith("norm.weight"):  # a gain near 1: w, or Gemma's 1 + w
            sd[name] = (0.0 if cfg.norm_plus_one else 1.0) + 0.1 * torch.randn(shape, generator=g)
        elif name.endswith(".bias"):
            sd[name] = 0.1 * torch.randn(shape, generator=g)
        else:
            scale = 4.0 * cfg.dim ** -0.5 if name in ("embed_tokens.weight", "lm_head.weight") else shape[-1] ** -0.5
            sd[name] = torch.randn(shape, generator=g) * scale
    return sd
