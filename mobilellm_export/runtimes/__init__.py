"""Runners: every artifact (eager float, eager quantized, .pte, ...) behind one small interface.

    reset()                       forget the KV cache
    prefill(tokens) -> logits     tokens from position 0 (after reset) or after what was fed; last logits [vocab]
    decode(token) -> logits       one more token; logits [vocab] fp32
    score(tokens) -> logits       all positions [S, vocab] for a fresh sequence (parity, perplexity)

Parity and latency are computed once, for any pair of runners. An `AppRunner` is the other kind:
a runtime's own generation loop (its tokenizer, prefill, sampling), the code the mobile apps wrap;
`run` and the app-side latency use it.
"""

from __future__ import annotations

import torch


class Runner:
    name = "runner"
    max_seq_len = 1 << 30  # longest single prefill call; longer prompts are chunked
    # Why timing this runner says nothing about the runtime's speed (a numeric reference standing in
    # for a runtime this machine lacks), or None: latency then reports the reason instead of a row.
    not_a_speed_reference: str | None = None

    def reset(self) -> None:
        raise NotImplementedError

    def _forward(self, tokens: list[int], start: int) -> torch.Tensor:
        """Run tokens at positions start.. ; return logits [len, vocab] or [1, vocab] (last only)."""
        raise NotImplementedError

    def __init__(self):
        self.pos = 0

    def prefill(self, tokens: list[int]) -> torch.Tensor:
        logits = None
        for i in range(0, len(tokens), self.max_seq_len):
            chunk = tokens[i:i + self.max_seq_len]
            logits = self._forward(chunk, self.pos)[-1]
            self.pos += len(chunk)
        return logits

    def decode(self, token: int) -> torch.Tensor:
        logits = self._forward([token], self.pos)[-1]
        self.pos += 1
        return logits

    def score(self, tokens: list[int]) -> torch.Tensor:
        """Logits for every position. Default: token by token (works for last-logits-only artifacts)."""
        self.reset()
        return torch.stack([self.decode(t) for t in tokens])


class AppRunner:
    """A runtime's own text-in, text-out generation loop (e.g. ExecuTorch's C++ TextLLMRunner).

    generate() returns stats with the keys `text`, `prompt_tokens`, `generated_tokens` (all new
    tokens, the first one from prefill included), `prefill_tok_s`, `decode_tok_s` and `ttft_ms`
    (None where the runtime's clock could not time a phase). The prompt is passed as text, BOS
    included where the bundle's BOS policy wants one: the runtime is never asked to add BOS. It is
    the runner text (`Tokenizer.runner_text`: pre-normalized), tokenized with the bundle's
    tokenizer.json as it is, as the apps give it to their runtime.
    """

    max_context: int
    # Whether generate(reset=False) continues from the cache the last call left (the prompt and the
    # tokens it fed, the last sampled one excepted): a chat then prefills only each turn's new text.
    keeps_cache: bool = False

    def reset(self) -> None:
        raise NotImplementedError

    def generate(self, prompt: str, max_new_tokens: int, temperature: float = 0.0, on_text=None,
                 quiet: bool = False, reset: bool = True) -> dict:
        raise NotImplementedError
