"""Parity maths between two sets of logits: KL, top-1 agreement, perplexity, logit differences.

At the bottom of the package, so that quantization (quant/auto.py scores its trials by KL) and
verification share one definition without quant importing verify.
"""

from __future__ import annotations

import math

import torch

CHUNK = 128  # positions per KL/softmax block: bounds the temporaries to a few [128, vocab] tensors


class PairStats:
    """Running sums for one (reference, test) pair of runners."""

    def __init__(self):
        self.kl: list[torch.Tensor] = []  # per position, fp32 (kept: p99 and the per-position plots)
        self.agree: list[torch.Tensor] = []  # per position, bool: same top-1 token
        self.nll_ref = self.nll_test = 0.0
        self.n_nll = 0
        self.max_abs = 0.0
        self.max_ref = 0.0  # max |reference logit|: the scale of a relative max-difference bound
        self.sum_abs = 0.0
        self.n_el = 0

    def add(self, ref: torch.Tensor, test: torch.Tensor, tokens: list[int]) -> None:
        """ref/test: [S, vocab] logits of one window; tokens: its S ids (position i predicts i+1)."""
        targets = torch.tensor(tokens[1:])
        for i in range(0, ref.shape[0], CHUNK):
            a, b = ref[i:i + CHUNK].float(), test[i:i + CHUNK].float()
            la, lb = a.log_softmax(-1), b.log_softmax(-1)
            self.kl.append((la.exp() * (la - lb)).sum(-1).clamp_min(0))
            self.agree.append(a.argmax(-1) == b.argmax(-1))
            diff = (a - b).abs()
            self.max_abs = max(self.max_abs, float(diff.max()))
            self.max_ref = max(self.max_ref, float(a.abs().max()))
            self.sum_abs += float(diff.sum(dtype=torch.float64))
            self.n_el += diff.numel()
            t = targets[i:i + CHUNK]  # the last position of a window has no target
            n = t.shape[0]
            if n:
                self.nll_ref -= float(la[:n].gather(-1, t[:, None]).sum(dtype=torch.float64))
                self.nll_test -= float(lb[:n].gather(-1, t[:, None]).sum(dtype=torch.float64))
                self.n_nll += n

    def kl_per_position(self) -> torch.Tensor:
        return torch.cat(self.kl) if self.kl else torch.zeros(0)

    def positions(self) -> dict:
        """Per-position KL and top-1 agreement (0/1), as lists: report-positions.json and the plots."""
        agree = torch.cat(self.agree) if self.agree else torch.zeros(0, dtype=torch.bool)
        return {"kl": [float(f"{x:.4g}") for x in self.kl_per_position().tolist()], "top1": agree.int().tolist()}

    def result(self) -> dict:
        kl = self.kl_per_position()
        ppl_ref, ppl_test = math.exp(self.nll_ref / self.n_nll), math.exp(self.nll_test / self.n_nll)
        return {
            "positions": int(kl.numel()),
            "kl_mean": float(kl.mean()),
            "kl_p99": float(kl.quantile(0.99)),
            "top1": float(torch.cat(self.agree).float().mean()),
            "ppl_ref": ppl_ref,
            "ppl_test": ppl_test,
            "ppl_delta": ppl_test / ppl_ref - 1.0,
            "max_abs_logit": self.max_abs,
            "max_abs_logit_rel": self.max_abs / self.max_ref if self.max_ref else None,
            "mean_abs_logit": self.sum_abs / self.n_el,
        }


def compare(ref: list[torch.Tensor], test: list[torch.Tensor], wins: list[list[int]]) -> dict:
    """The same metrics over logits already in memory (tests, small inputs)."""
    s = PairStats()
    for a, b, w in zip(ref, test, wins):
        s.add(a, b, w)
    return s.result()
