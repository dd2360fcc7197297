"""Where does the artifact diverge? Each op of the lowered model judged against the reference.

When the lowering pair (quantized eager reference -> artifact) fails, `localise` lowers the
target's prepared model once more with `Transformer.probe` on: the residual stream after the
embedding and after every attention and MLP application become extra outputs (on ExecuTorch each
layer is one XNNPACK delegate, so these are its natural boundaries). One short window runs through
that program; then the reference runs *teacher-forced* on the artifact's own stream: each op reads
the artifact's input to that op (`Transformer.forward(..., teacher=)`). So every op is judged on
its own output, from the same input, and a fault shows at the op that has it, not smeared over
every later layer as the accumulated error (kept in the report as `drift`) is.

An op's error is ||artifact - reference op(artifact input)|| / ||what the op adds to the stream||.
A correct XNNPACK lowering reproduces each op to fp32 rounding (~1e-7), except where dynamic int8
activation quantization rounds an element the other way: up to 4e-4 measured (4bit, tiny and
R1-140M-shaped models). The subtlest fault tested, one of 64 group scales x2 in an MLP of
R1-140M's width, costs 6e-3. The bound is TOLERANCE, or RATIO x the op's noise floor where that is
higher: the change one ulp of noise on the op's input makes (as `parity.NoisyRunner`; one such
rounding flip measured 2.7e-4), for ops so sensitive that rounding alone moves them further.

The accumulated error against the reference is no guide (measured on the R1-140M-shaped model):
in a clean run it jumps 180x at one op (a single rounding flip; 315x the embedding-noise floor
there) and reaches 0.02 at the logits, while the scale fault moves its layer's by under 10 %.
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path

import torch

from mobilellm_export.nn_utils import structural_copy

WINDOW = 64  # tokens: one extra lowering plus seconds of running
TOLERANCE = 2e-3  # 5x the largest rounding difference measured (4e-4), 1/3 of the subtlest fault (6e-3)
RATIO = 8.0  # ... or this many times the op's own noise floor, if larger
FLOOR_MIN = 1e-7  # an op the noise does not move (the embedding lookup) would otherwise have floor 0
NOISE_SEEDS = 2  # floor = RMS over this many draws
SAME = 1e-4  # relative logit difference under which the probe program computes what the artifact does


def _rel(a: torch.Tensor, b: torch.Tensor, scale: torch.Tensor) -> list[float]:
    """||a - b|| / ||scale|| per point (first dim), over all positions and features."""
    a, b, scale = (t.double().flatten(1) for t in (a, b, scale))
    return ((a - b).norm(dim=1) / scale.norm(dim=1).clamp_min(1e-30)).tolist()


def op_errors(test: tuple, local: tuple, inputs: torch.Tensor) -> list[float]:
    """Each point's error given its own input: ||test - local|| relative to what the reference op
    adds to the stream (local[i] - inputs[i - 1]); the embedding and the logits (the last point)
    relative to their whole output. test, local: (hidden [P, S, D], logits [S, V]); local is the
    reference teacher-forced on `inputs` [P, S, D] (the artifact's hidden states)."""
    (th, tl), (lh, ll) = test, local
    added = torch.cat((lh[:1], lh[1:] - inputs[:-1]))
    return _rel(th, lh, added) + _rel(tl[None], ll[None], ll[None])


def first_divergence(errors: list[float], floors: list[float], tolerance: float = TOLERANCE,
                     ratio: float = RATIO) -> int | None:
    """Index of the first point whose error exceeds max(tolerance, ratio x its floor), or None.

    No jump or trend test is needed: teacher forcing removes what earlier ops did, so a clean op's
    error does not grow with depth, and the first op over the bound is the one that is wrong.
    """
    for i, (e, f) in enumerate(zip(errors, floors)):
        if e > max(tolerance, ratio * f):
            return i
    return None


def _run(model, tokens: list[int], max_seq_len: int, teacher: torch.Tensor | None = None) -> tuple:
    """model (a probing structural copy) on tokens from position 0, chunked as the artifact runs
    them -> (hidden [P, S, D], logits [S, V]); with teacher [P, S, D], each op reads its input there."""
    hidden, logits = [], []
    with torch.inference_mode():
        for i in range(0, len(tokens), max_seq_len):
            t = None if teacher is None else teacher[:, None, i:i + max_seq_len]
            lg, h = model(torch.tensor([tokens[i:i + max_seq_len]]), torch.tensor([i]), t)
            hidden.append(h[:, 0].float())
            logits.append(lg[0].float())
    return torch.cat(hidden, 1), torch.cat(logits)


def _ulp(x: torch.Tensor, g: torch.Generator, dtype: torch.dtype) -> torch.Tensor:
    """x times (1 +- one ulp of `dtype`), random sign per element."""
    sign = torch.randint(0, 2, x.shape, generator=g).to(x.dtype) * 2 - 1
    return x * (1 + sign * torch.finfo(dtype).eps)


def probe_runs(target, reference, spec, tokens: list[int], work_dir=None, seeds: int = NOISE_SEEDS) -> dict | None:
    """One window through the artifact's probe program ("artifact"), the reference ("reference"),
    the reference teacher-forced on the artifact ("local") and on the artifact with ulp noise
    ("noisy", one per seed). Each: (hidden [P, S, D], logits [S, V]). None: the target cannot probe."""
    prepared = target.prepare(reference, spec)  # as export does: faults of prepare() show up here
    with tempfile.TemporaryDirectory(prefix="mobilellm-localise.", dir=work_dir) as tmp:
        fn = target.probe(prepared, spec, Path(tmp))
        if fn is None:
            return None
        art = fn(tokens)
        del fn
    del prepared
    model = structural_copy(reference)  # flags on a copy that shares the weights (and caches)
    model.probe, model.full_logits = True, True
    S = spec.max_seq_len
    out = {"artifact": art, "reference": _run(model, tokens, S), "local": _run(model, tokens, S, teacher=art[0])}
    out["noisy"] = [_run(model, tokens, S, teacher=_ulp(art[0], torch.Generator().manual_seed(s), reference.dtype))
                    for s in range(seeds)]
    return out


def localise(target, reference, spec, tokens: list[int], threads: int | None = None,
             work_dir: str | Path | None = None, window: int = WINDOW, artifact=None) -> dict | None:
    """Name the first op (and its layer) where `target`'s lowering of `reference` goes wrong.

    `reference`: the target's eager reference (target.reference(quantized)); it is not changed.
    Costs one lowering of the prepared model and a few eager passes over `window` tokens.
    None when the target cannot probe its artifact; else a dict: first (point name, or None),
    layer, op, error, floor, ratio (error / floor) and bound of that point, points (every point:
    name, error, floor, ratio, bound, drift = accumulated error against the reference), tokens,
    artifact_diff and a one-line message.

    artifact: optionally the shipped artifact's Runner. Its last logits over the window are then
    compared with the probe program's (`artifact_diff`, relative): the probe program is a second
    lowering of the same prepared model, so a difference puts the fault in what only the artifact
    has (its weights file, serialisation), where no op of the graph can show it.
    """
    tokens = list(tokens[:min(window, spec.max_context)])
    if threads is not None:
        spec = dataclasses.replace(spec, threads=threads)
    runs = probe_runs(target, reference, spec, tokens, work_dir)
    if runs is None:
        return None
    tolerance = max(TOLERANCE, getattr(target, "localise_tolerance", TOLERANCE))
    art, ref = runs["artifact"], runs["reference"]
    errors = op_errors(art, runs["local"], art[0])
    # The floor: how far ulp noise on an op's input moves its teacher-forced output (noise included).
    floors = torch.tensor([op_errors(n, runs["local"], art[0]) for n in runs["noisy"]]).pow(2).mean(0).sqrt().tolist()
    drift = _rel(art[0], ref[0], ref[0]) + _rel(art[1][None], ref[1][None], ref[1][None])
    names = reference.probe_names() + [("lm_head", None, "lm_head")]  # final norm + head, all positions
    points = []
    for (name, _, _), e, f, d in zip(names, errors, floors, drift):
        f = max(f, FLOOR_MIN)
        points.append({"name": name, "error": e, "floor": f, "ratio": e / f, "bound": max(tolerance, RATIO * f),
                       "drift": d})
    i = first_divergence(errors, [p["floor"] for p in points], tolerance)
    out = {"first": None, "layer": None, "op": None, "error": None, "floor": None, "ratio": None, "bound": None,
           "points": points, "tokens": len(tokens), "artifact_diff": None}
    elsewhere = ""
    if artifact is not None:
        artifact.reset()
        last = artifact.prefill(tokens).float()  # chunked by its max_seq_len, as the probe program ran
        out["artifact_diff"] = _rel(last[None], art[1][-1:], art[1][-1:])[0]
        if out["artifact_diff"] > SAME:
            elsewhere = (f"; and the artifact's last logits differ from its probe program's by "
                         f"{out['artifact_diff']:.3g}: a fault in what only the artifact file holds (weights data, "
                         f"serialisation)")
    if i is None:
        worst = max(points, key=lambda p: p["error"] / p["bound"])
        out["message"] = (f"no op diverges over {len(tokens)} tokens: given its input, every op matches the reference "
                          f"within its bound (closest: {worst['name']}, {worst['error']:.2g} <= {worst['bound']:.2g})"
                          + (elsewhere or f"; the logits drift {drift[-1]:.3g} by rounding alone, or the fault is "
                             f"outside the graph (runtime, weights file, chunking)"))
        return out
    name, layer, op = names[i]
    p = points[i]
    out.update(first=name, layer=layer, op=op, error=p["error"], floor=p["floor"], ratio=p["ratio"], bound=p["bound"])
    where = {"embed_tokens": "the embedding lookup",
             "lm_head": "the final norm / head (after the last layer)"}.get(name, f"{name.rsplit('.', 1)[0]} ({op})")
    out["message"] = (f"first divergence at {where}: given the artifact's own input, its output is off by "
                      f"{p['error']:.3g} of what the op adds (bound {p['bound']:.2g}; noise floor {p['floor']:.2g}, "
                      f"{p['ratio']:.0f}x){elsewhere}")
    return out
