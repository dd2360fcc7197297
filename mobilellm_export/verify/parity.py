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
from pathlib import Path

import torch

from mobilellm_export.metrics import PairStats, compare  # noqa: F401 (compare is re-exported: the parity API)
from mobilellm_export.sampling import generate

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

    def window(self, i: int) -> torch.Tensor:
        """Window i's logits, read without moving the replay on."""
        rows, vocab = self.shapes[i]
        return torch.from_file(str(self._path(i)), size=rows * vocab, dtype=torch.float32).view(rows, vocab)

    def score(self, tokens: list[int]) -> torch.Tensor:
        i = self._next
        self._next += 1
        rows, vocab = self.shapes[i]
        if rows != len(tokens):
            raise RuntimeError(f"stored logits of window {i} have {rows} rows for {len(tokens)} tokens")
        return self.window(i)


def score(runners: dict, pairs: dict[str, tuple[str, str]], wins: list[list[int]], advance=lambda n: None,
          first=lambda logits: None):
    """Score every window with every runner; returns ({pair: metrics}, {pair: {"kl": [...], "top1": [...]}}).
    `first(logits)` sees the first window's logits of every runner (the reference logits --quick keeps)."""
    stats = {key: PairStats() for key in pairs}
    for i, w in enumerate(wins):
        logits = {name: r.score(w) for name, r in runners.items()}
        if i == 0:
            first(logits)
        for key, (a, b) in pairs.items():
            stats[key].add(logits[a], logits[b], w)
        del logits
        advance(len(w))
    return ({k: s.result() for k, s in stats.items()}, {k: s.positions() for k, s in stats.items()})


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

    # prefill/decode too: greedy and the decode path have a noise floor of their own
    def reset(self) -> None:
        self.runner.reset()

    def prefill(self, tokens: list[int]) -> torch.Tensor:
        with ulp_noise(self.module, self.generator):
            return self.runner.prefill(tokens)

    def decode(self, token: int) -> torch.Tensor:
        with ulp_noise(self.module, self.generator):
            return self.runner.decode(token)


class Recorder:
    """A runner that keeps the logits its prefill and decode calls return (since the last reset):
    the reference's greedy run is then also its decode path on its own tokens, at no second cost."""

    def __init__(self, runner):
        self.runner, self.logits = runner, []

    def reset(self) -> None:
        self.runner.reset()
        self.logits = []

    def prefill(self, tokens: list[int]) -> torch.Tensor:
        self.logits.append(self.runner.prefill(tokens).float())
        return self.logits[-1]

    def decode(self, token: int) -> torch.Tensor:
        self.logits.append(self.runner.decode(token).float())
        return self.logits[-1]


def decode_rows(runner, prompt: list[int], tokens: list[int]) -> torch.Tensor:
    """[len(tokens), vocab]: prefill `prompt`, then feed `tokens[:-1]` one at a time; row i predicts tokens[i]."""
    runner.reset()
    return torch.stack([runner.prefill(prompt).float()] + [runner.decode(t).float() for t in tokens[:-1]])


def decode_path(ref, test, prompt: list[int], tokens: list[int]) -> dict:
    """Teacher-forced single-token decode: both runners prefill `prompt`, then are fed `tokens` (the
    reference's own greedy continuation) one at a time, and each step's logits are compared.
    Windowed parity scores prefill calls only; this is the path generation takes, on the same tokens
    for both, so a difference here that the windows do not show is a decode-path difference, and a
    greedy fork with none here is a near-tie tipped by rounding. Either side may be given as its
    rows already (`decode_rows`'s, or a Recorder's from the greedy run that made `tokens`)."""
    rows = [r if isinstance(r, torch.Tensor) else decode_rows(r, prompt, tokens) for r in (ref, test)]
    stats = PairStats()
    stats.add(rows[0], rows[1], [prompt[-1], *tokens[:-1]])  # step i predicts tokens[i]
    res = stats.result()
    return {"steps": len(tokens), **{k: res[k] for k in ("kl_mean", "kl_p99", "top1", "max_abs_logit_rel")}}


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
