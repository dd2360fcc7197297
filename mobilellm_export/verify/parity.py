"""Parity metrics between runners over the same token windows, computed once for any pair.

Streamed: each window is scored by every runner, every pair's sums are updated, and the logits
are dropped before the next window. Memory does not grow with the number of tokens scored (a
128K vocabulary makes one 512-token window of logits 262 MB per runner); only one float per
position and pair is kept, for the p99 and the plots.

The float model is the largest thing in memory (fp32), so verification scores it first, alone,
and keeps its logits in a temporary file (`LogitStore`) while the quantized reference and the
artifact are scored: the two never have to be resident together.
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path

import torch

from ..generate import generate

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


class LogitStore:
    """A runner's logits, window by window, in files under `folder`: written once by `fill()`,
    then replayed in the same order by `score()` (so it stands in for the runner in `score`)."""

    def __init__(self, folder: str | Path, name: str):
        self.folder, self.name = Path(folder), name
        self.shapes: list[tuple[int, int]] = []
        self._next = 0

    def _path(self, i: int) -> Path:
        return self.folder / f"{self.name}-{i}.f32"

    def fill(self, runner, wins: list[list[int]], advance=lambda n: None) -> LogitStore:
        for i, w in enumerate(wins):
            logits = runner.score(w).float().contiguous()
            logits.numpy().tofile(self._path(i))
            self.shapes.append(tuple(logits.shape))
            advance(len(w))
        return self

    def score(self, tokens: list[int]) -> torch.Tensor:
        i = self._next
        self._next += 1
        rows, vocab = self.shapes[i]
        if rows != len(tokens):
            raise RuntimeError(f"stored logits of window {i} have {rows} rows for {len(tokens)} tokens")
        return torch.from_file(str(self._path(i)), size=rows * vocab, dtype=torch.float32).view(rows, vocab)


def score(runners: dict, pairs: dict[str, tuple[str, str]], wins: list[list[int]], advance=lambda n: None):
    """Score every window with every runner; returns ({pair: metrics}, {pair: {"kl": [...], "top1": [...]}})."""
    stats = {key: PairStats() for key in pairs}
    for w in wins:
        logits = {name: r.score(w) for name, r in runners.items()}
        for key, (a, b) in pairs.items():
            stats[key].add(logits[a], logits[b], w)
        del logits
        advance(len(w))
    return ({k: s.result() for k, s in stats.items()}, {k: s.positions() for k, s in stats.items()})


def compare(ref: list[torch.Tensor], test: list[torch.Tensor], wins: list[list[int]]) -> dict:
    """The same metrics over logits already in memory (tests, small inputs)."""
    s = PairStats()
    for a, b, w in zip(ref, test, wins):
        s.add(a, b, w)
    return s.result()


def greedy_tokens(runner, prompt: list[int], n: int = 64, advance=lambda n: None) -> list[int]:
    out = []
    for t in generate(runner, prompt, n):
        out.append(t)
        advance(1)
    return out


def agreement(a: list[int], b: list[int]) -> dict:
    """Shared prefix length and positionwise match of two greedy continuations."""
    prefix = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    return {"tokens": max(len(a), len(b)), "common_prefix": prefix,
            "match": sum(x == y for x, y in zip(a, b)) / max(len(a), len(b), 1)}


class NoisyRunner:
    """A runner whose `module` output is perturbed by one float32 ulp while it scores.

    Scoring the quantized eager model this way gives the *noise floor* of the lowering
    comparison: dynamic per-token activation quantization turns float rounding differences into
    different integers, so two correct implementations that round differently disagree by about
    this much. (On SmolLM2 8bit: KL 0.021, top-1 0.89; on the float model: KL 0.)
    """

    def __init__(self, runner, module: torch.nn.Module, seed: int = 0):
        self.runner, self.module = runner, module
        self.generator = torch.Generator().manual_seed(seed)  # one stream over all windows
        self.name = f"{runner.name}+ulp"

    def score(self, tokens: list[int]) -> torch.Tensor:
        with ulp_noise(self.module, self.generator):
            return self.runner.score(tokens)


@contextlib.contextmanager
def ulp_noise(module: torch.nn.Module, g: torch.Generator):
    """While active, perturb `module`'s output by one float32 ulp (relative 2^-23, random sign)."""

    def hook(mod, inputs, out):
        sign = torch.randint(0, 2, out.shape, generator=g).to(out.dtype) * 2 - 1
        return out * (1 + sign * 2.0 ** -23)

    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()
