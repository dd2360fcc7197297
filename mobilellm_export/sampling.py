"""Token generation over anything with `prefill(tokens) -> logits` / `decode(token) -> logits`.

Eager models and runtime artifacts share this loop, so greedy agreement between them is measured
with the same code that users run.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch


@dataclass
class Sampling:
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    seed: int = 0


def sample(logits: torch.Tensor, s: Sampling, g: torch.Generator | None = None) -> int:
    """logits: [vocab] fp32."""
    if s.temperature <= 0:
        return int(logits.argmax())
    probs = torch.softmax(logits / s.temperature, dim=-1)
    if s.top_p < 1.0:  # nucleus: keep the smallest prefix of sorted probs whose mass reaches top_p
        p, idx = probs.sort(descending=True)
        keep = p.cumsum(0) - p < s.top_p
        probs = torch.zeros_like(probs).scatter_(0, idx[keep], p[keep])
    return int(torch.multinomial(probs, 1, generator=g))


def generate(runner, prompt: list[int], max_new_tokens: int, sampling: Sampling = Sampling(),
             eos_ids: tuple[int, ...] = ()) -> Iterator[int]:
    """Yield new token ids; stops at any id in eos_ids (not yielded) or after max_new_tokens."""
    g = torch.Generator().manual_seed(sampling.seed)
    runner.reset()
    logits = runner.prefill(prompt)
    for _ in range(max_new_tokens):
        tok = sample(logits, sampling, g)
        if tok in eos_ids:
            return
        yield tok
        logits = runner.decode(tok)
