"""Calibration: what each linear's inputs look like on real text, for the rounding methods.

One pass of the float model over seeded windows of the calibration text records, per linear, the
second moment of its inputs H = X^T X / n ([K, K]; GPTQ's Hessian, and its diagonal E[x_j^2]
weights the mse scale search). Inputs that several linears share (q/k/v, gate/up) are counted once.

The built-in text is the second half of Botchan (chapters VII-XI), shipped in the package: the
evaluation text by default is its first chapters, so the two never overlap. `--calib-text FILE`
gives the user's own; `overlap()` tells verification when calibration and evaluation share text.
"""

from __future__ import annotations

import hashlib
import random
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch
import torch.nn as nn

from mobilellm_export import errors
from mobilellm_export.errors import UserError

BUILTIN = resources.files("mobilellm_export") / "data" / "calib.txt"


@dataclass(frozen=True)
class CalibSpec:
    text: str | None = None  # a file; None = the built-in text
    tokens: int = 8192
    window: int = 512
    seed: int = 0


def read_text(path: str | None) -> tuple[str, str]:
    """(text, label) of the calibration text."""
    text = errors.read_text(Path(path) if path else BUILTIN, "calibration text")
    return text, (str(path) if path else "built-in (Botchan chapters VII-XI)")


def calib_windows(ids: list[int], spec: CalibSpec, bos: int | None) -> list[list[int]]:
    """`spec.tokens` tokens as windows at seeded random offsets (deterministic for a seed)."""
    step = spec.window - (bos is not None)
    if len(ids) < step + 1:
        raise UserError(f"calibration text is too short: {len(ids)} tokens, a window needs {step + 1}")
    rng = random.Random(spec.seed)
    n = max(1, spec.tokens // spec.window)
    starts = [rng.randrange(0, len(ids) - step + 1) for _ in range(n)]
    head = [bos] if bos is not None else []
    return [head + ids[s:s + step] for s in sorted(starts)]


class Hessians:
    """Running X^T X / n per linear, from forward hooks; shared inputs computed once."""

    def __init__(self, model: nn.Module, names: set[str]):
        self.h: dict[str, torch.Tensor] = {}
        self.n: dict[str, int] = {}
        self._seen: dict[int, tuple] = {}  # id(input) -> (the linear whose H holds it, the input)
        self._alias: dict[str, str] = {}
        self._hooks = [m.register_forward_pre_hook(self._hook(name))
                       for name, m in model.named_modules() if name in names]

    def _hook(self, name):
        def hook(mod, args):
            x = args[0]
            key = id(x)
            if key in self._seen and self._seen[key][1] is x:  # q/k/v (and gate/up) read one tensor
                self._alias[name] = self._seen[key][0]
                return
            self._seen[key] = (name, x)  # held for the batch, so its id is not reused meanwhile
            x = x.detach().reshape(-1, x.shape[-1]).float()
            xtx = x.T @ x
            if name in self.h:
                self.h[name] += xtx
                self.n[name] += x.shape[0]
            else:
                self.h[name], self.n[name] = xtx, x.shape[0]
        return hook

    def next_batch(self) -> None:
        self._seen.clear()

    def close(self) -> dict[str, torch.Tensor]:
        for hk in self._hooks:
            hk.remove()
        out = {k: v / self.n[k] for k, v in self.h.items()}
        for a, b in self._alias.items():
            out[a] = out[b]
        return out


@torch.inference_mode()
def hessians(model, wins: list[list[int]], names: set[str], forward=None,
             status=lambda msg: None) -> dict[str, torch.Tensor]:
    """H = X^T X / n of each named linear's inputs over the token windows (each from position 0).
    `forward(ids)` runs the model on one window (default: our Transformer's call)."""
    forward = forward or (lambda ids: model(torch.tensor([ids]), torch.tensor([0])))
    hs = Hessians(model, names)
    try:
        for i, w in enumerate(wins):
            status(f"calibration window {i + 1}/{len(wins)}")
            forward(w)
            hs.next_batch()
    finally:
        H = hs.close()
    return H


def from_windows(model, wins: list[list[int]]):
    """A quantize() calibrate callback over given token windows (tests, benchmarks)."""
    return lambda names: (hessians(model, wins, names), {"text": "given windows", "windows": len(wins),
                                                         "tokens": sum(map(len, wins))})


def collect(model, tokenizer, spec: CalibSpec, names: set[str], bos: int | None,
            status=lambda msg: None) -> tuple[dict, dict]:
    """(H per linear name, facts for the report). `model` is the float reference Transformer."""
    t0 = time.perf_counter()
    text, label = read_text(spec.text)
    status("tokenizing the calibration text")
    ids = tokenizer.encode(text, add_special_tokens=False)
    wins = calib_windows(ids, spec, bos)
    H = hessians(model, wins, names, status=status)
    facts = {"text": label, "sha256": hashlib.sha256(text.encode()).hexdigest()[:16], "tokens": sum(map(len, wins)),
             "windows": len(wins), "window": spec.window, "seed": spec.seed,
             "seconds": round(time.perf_counter() - t0, 2)}
    return H, facts


def overlap(calib_text: str, eval_text: str, n: int = 64, stride: int = 32) -> bool:
    """Do the two texts share a passage? Every n-character run of the evaluation text (whitespace
    normalised) is a key; calibration runs are probed every `stride` characters, so any shared passage
    of n + stride - 1 characters or more is found."""
    cal, ev = " ".join(calib_text.split()), " ".join(eval_text.split())
    grams = {ev[i:i + n] for i in range(len(ev) - n + 1)}
    return any(cal[i:i + n] in grams for i in range(0, len(cal) - n + 1, stride))
