"""Eager PyTorch runner: the float reference and the torchao-quantized reference."""

from __future__ import annotations

import torch

from mobilellm_export.model import Transformer
from mobilellm_export.runtimes import Runner


class EagerRunner(Runner):
    def __init__(self, model: Transformer, name: str = "eager", max_seq_len: int = 512):
        super().__init__()
        self.model, self.name, self.max_seq_len = model.eval(), name, max_seq_len

    def reset(self) -> None:
        self.pos = 0  # stale cache entries beyond pos are never attended to

    @torch.inference_mode()
    def _forward(self, tokens: list[int], start: int) -> torch.Tensor:
        return self.model(torch.tensor([tokens]), torch.tensor([start]))[0]

    @torch.inference_mode()
    def score(self, tokens: list[int]) -> torch.Tensor:
        self.reset()
        out = [self._forward(tokens[i:i + self.max_seq_len], i) for i in range(0, len(tokens), self.max_seq_len)]
        self.pos = len(tokens)
        return out[0] if len(out) == 1 else torch.cat(out)  # one window: no 262 MB copy
