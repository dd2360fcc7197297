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
            t = targets[i:i + CHUNK]  # the last position of a window has no target
            self._tally((la.exp() * (la - lb)).sum(-1).clamp_min(0), a.argmax(-1) == b.argmax(-1), (a - b).abs(),
                        float(a.abs().max()), la[:t.shape[0]].gather(-1, t[:, None])[:, 0], lb, t)

    def _tally(self, kl: torch.Tensor, agree: torch.Tensor, diff: torch.Tensor, ref_scale: float,
               ref_target_lp: torch.Tensor, test_lp: torch.Tensor, t: torch.Tensor) -> None:
        """One chunk's per-position KL and top-1 agreement, its logit differences, the reference's
        largest |logit|, and the log-probabilities both give the chunk's next tokens `t`."""
        self.kl.append(kl)
        self.agree.append(agree)
        self.max_abs = max(self.max_abs, float(diff.max()))
        self.max_ref = max(self.max_ref, ref_scale)
        self.sum_abs += float(diff.sum(dtype=torch.float64))
        self.n_el += diff.numel()
        n = t.shape[0]
        if n:
            self.nll_ref -= float(ref_target_lp[:n].sum(dtype=torch.float64))
            self.nll_test -= float(test_lp[:n].gather(-1, t[:, None]).sum(dtype=torch.float64))
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


class TopK:
    """One runner's logits over S positions, compressed: the k largest logits and their token ids,
    the log-sum-exp of each row and the log-probability of each next token (S - 1 of them). What
    `verify --quick` keeps of a reference (a few hundred KB instead of S x vocab floats)."""

    def __init__(self, idx: torch.Tensor, logit: torch.Tensor, lse: torch.Tensor, target: torch.Tensor):
        self.idx, self.logit, self.lse, self.target = idx, logit, lse, target

    @classmethod
    def of(cls, logits: torch.Tensor, tokens: list[int], k: int) -> TopK:
        logits = logits.float()
        logit, idx = logits.topk(min(k, logits.shape[-1]), dim=-1)  # sorted: idx[:, 0] is the argmax
        lse = logits.logsumexp(-1)
        nxt = torch.tensor(tokens[1:], dtype=torch.long)
        target = logits[:-1].gather(-1, nxt[:, None])[:, 0] - lse[:-1]
        return cls(idx.to(torch.int32), logit, lse, target)

    def rows(self, i: int, j: int) -> TopK:
        return TopK(self.idx[i:j], self.logit[i:j], self.lse[i:j], self.target[i:j])


def kl_top(ref: TopK, test: torch.Tensor) -> torch.Tensor:
    """KL(ref || test) per position with `ref` known only on its top k tokens: the KL between the two
    distributions over k + 1 outcomes (each top token, and 'any other token'). Merging outcomes never
    raises a KL (the data-processing inequality), so this is a lower bound of the full KL, equal to it
    when the other tokens carry no probability; a bound it exceeds is exceeded by the full KL too."""
    lp = ref.logit - ref.lse[:, None]
    lq = test.float().log_softmax(-1).gather(-1, ref.idx.long())
    p = lp.exp()
    head = (p * (lp - lq)).sum(-1)
    tail_p = (1 - p.sum(-1)).clamp_min(0)
    tail_q = (1 - lq.exp().sum(-1)).clamp_min(1e-30)
    tail = torch.where(tail_p > 0, tail_p * (tail_p.clamp_min(1e-30).log() - tail_q.log()), torch.zeros_like(tail_p))
    return (head + tail).clamp_min(0)


class TopKPairStats(PairStats):
    """PairStats with a compressed reference (`TopK`): KL by `kl_top` (a lower bound), top-1 from the
    reference's argmax, perplexity from its stored next-token log-probabilities, and the logit
    differences over the reference's top k tokens only."""

    def add(self, ref: TopK, test: torch.Tensor, tokens: list[int]) -> None:
        targets = torch.tensor(tokens[1:])
        for i in range(0, test.shape[0], CHUNK):
            r, b = ref.rows(i, i + CHUNK), test[i:i + CHUNK].float()
            t = targets[i:i + CHUNK]
            self._tally(kl_top(r, b), r.idx[:, 0].long() == b.argmax(-1), (r.logit - b.gather(-1, r.idx.long())).abs(),
                        float(r.logit.abs().max()), r.target, b[:t.shape[0]].log_softmax(-1), t)


def compare(ref: list[torch.Tensor], test: list[torch.Tensor], wins: list[list[int]]) -> dict:
    """The same metrics over logits already in memory (tests, small inputs)."""
    s = PairStats()
    for a, b, w in zip(ref, test, wins):
        s.add(a, b, w)
    return s.result()
