"""4-bit (and 8-bit) rounding methods ranked on three models, eager, against the float model.

One row per (model, method): mean KL, p99 KL, top-1, perplexity delta, MB of weights, calibration and
rounding seconds. Scored on the first N novel tokens of Botchan (windows of 512); calibration reads
the package's built-in text (Botchan VII-XI), which shares no passage with them (checked here).

Models:
  smollm2         SmolLM2-135M-Instruct (its GGUF linears lie on an asymmetric Q4_1 grid)
  smollm2-degrid  the same plus seeded Gaussian noise of 0.3 x each group's quantization step, so no
                  grid is left (its float perplexity is reported beside it)
  gemma3          Gemma 3 270M base (Q4_K_M GGUF, dequantized), run by transformers: the rounding
                  code is model-agnostic (it sees nn.Linear weights and their calibration inputs)

The arithmetic is the eager reference's: weights dequantized from the chosen integers and scales
(bf16 block scales), int8 asymmetric per-token activations via torchao's own quant-dequant, the
tied head/embedding sharing one int8 per-row grid. Exported bundles add only the lowering error
(their reports give it).

    python benchmarks/quant_methods.py [--models smollm2,smollm2-degrid,gemma3] [--tokens 4096]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import math
import time
from pathlib import Path

import torch
import torch.nn as nn

from mobilellm_export.quant import calibrate, simulate
from mobilellm_export.quant.recipe import WeightQuant
from mobilellm_export.quant.size import weight_bytes
from mobilellm_export.verify.parity import PairStats
from mobilellm_export.text.corpus import load_text, windows

sys.path.insert(0, str(Path(__file__).resolve().parent))
from provenance import stamp  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
BOTCHAN = SHARED / "data" / "botchan.txt"


def W(bits=4, group=32, scales="minmax", rounding="nearest", act_order=False, act=True, scale_dtype="bf16"):
    return WeightQuant(bits=bits, group_size=group, activations="int8_dynamic" if act else "none",
                       scale_dtype=scale_dtype, scales=scales, rounding=rounding, act_order=act_order)


HEAD8 = W(8, 0, scale_dtype="fp32")
GPTQ = W(4, 32, "mse", "gptq", True)
METHODS = {  # name -> (linears, head, mse weighted by E[x^2]); the tied embedding reads the head's integers
    "plain (torchao round-to-nearest)": (W(), HEAD8, False),
    "hqq": (W(scales="hqq"), HEAD8, False),
    "mse clip": (W(scales="mse"), HEAD8, False),
    "mse clip E[x^2]-weighted": (W(scales="mse"), HEAD8, True),
    "gptq": (W(4, 32, "minmax", "gptq"), HEAD8, True),
    "gptq + mse": (W(4, 32, "mse", "gptq"), HEAD8, True),
    "gptq + mse + act-order (4bit default)": (GPTQ, HEAD8, True),
    # the head, with the default linears
    "head: int8 weight-only": (GPTQ, W(8, 0, act=False, scale_dtype="fp32"), True),
    "head: 4-bit g32 plain": (GPTQ, W(4, 32), True),
    "head: 4-bit g32 gptq + mse": (GPTQ, W(4, 32, "mse", "gptq", True), True),
    "head: float": (GPTQ, None, True),
    # 8-bit
    "8bit plain (8da8w)": (W(8, 0, scale_dtype="fp32"), HEAD8, False),
    "8bit gptq + mse": (W(8, 0, "mse", "gptq", True, scale_dtype="fp32"), HEAD8, True),
    "8bit weight-only": (W(8, 0, act=False, scale_dtype="fp32"), W(8, 0, act=False, scale_dtype="fp32"), False),
}


# ---- models -------------------------------------------------------------------------------------

class Model:
    """A float model, its tokenizer and BOS, its linears and head, and a logits(ids) function."""

    def __init__(self, name, module, tokenizer, bos, logits):
        self.name, self.module, self.tokenizer, self.bos, self.logits = name, module, tokenizer, bos, logits
        self.linears = {n: m for n, m in module.named_modules() if isinstance(m, nn.Linear)}


def _smollm2(degrid: bool) -> Model:
    from mobilellm_export.checkpoints import build_model
    from mobilellm_export.checkpoints import load

    ck = load("smollm2-135m")
    model = build_model(ck, 1024).eval()
    if degrid:
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for n, p in model.named_parameters():
                if p.ndim != 2:
                    continue
                # The GGUF's grid per group of 32 along the input: Q4_1 linears (max-min)/15, the Q8_0
                # embedding max|w|/127; noise of 0.3 steps leaves no grid for a re-quantization to find.
                grp = p.reshape(p.shape[0], -1, 32)
                step = ((grp.amax(-1) - grp.amin(-1)) / 15 if "embed" not in n else grp.abs().amax(-1) / 127)
                grp.add_(torch.randn(grp.shape, generator=g) * 0.3 * step.unsqueeze(-1))
    return Model("smollm2-degrid" if degrid else "smollm2", model, ck.tokenizer, None,
                 lambda ids: model(torch.tensor([ids]), torch.tensor([0]))[0])


def _gemma3() -> Model:
    from gemma3_ref import transformers_model
    from tokenizers import Tokenizer

    m = transformers_model()
    tok = Tokenizer.from_file(str(SHARED / "data" / "gemma3-tokenizer" / "tokenizer.json"))

    class Tok:
        def encode(self, text, add_special_tokens=False):
            return tok.encode(text, add_special_tokens=False).ids

    return Model("gemma3", m, Tok(), 2, lambda ids: m(input_ids=torch.tensor([ids]), use_cache=False).logits[0].float())


MODELS = {"smollm2": lambda: _smollm2(False), "smollm2-degrid": lambda: _smollm2(True), "gemma3": _gemma3}


# ---- simulated quantization (the eager reference's arithmetic) -----------------------------------

def quantized(model: Model, lin: WeightQuant, head: WeightQuant | None, H: dict, weighted: bool):
    """(simulated(...) context, rounding seconds, MB of weights) for every linear of `model`."""
    t0 = time.perf_counter()
    chosen, total = {}, 0.0
    for n, m in model.linears.items():
        wq = head if n.endswith("lm_head") else lin
        if wq is None:
            total += m.weight.numel() * 4
            continue
        total += weight_bytes(m.out_features, m.in_features, wq)
        q, s = simulate.choose(m.weight.detach(), wq, wq.group_size, H.get(n) if weighted or wq.rounding == "gptq"
                               else None)
        chosen[n] = (q, s, wq)
    # Both models tie the embedding to the head (one Parameter): the lookup reads the head's
    # integers, as the recipes' shared table does, and the matrix is counted once.
    return simulate.simulated(model.linears, chosen), time.perf_counter() - t0, total / 1e6


@torch.inference_mode()
def score(model: Model, wins, ref_store=None) -> tuple[dict, list]:
    stats, logits = PairStats(), []
    for i, w in enumerate(wins):
        out = model.logits(w)
        if ref_store is None:
            logits.append(out)
        else:
            stats.add(ref_store[i], out, w)
    return (stats.result() if ref_store is not None else None), logits


def run_model(name: str, methods: list[str], n_tokens: int, calib_tokens: int) -> list[dict]:
    torch.manual_seed(0)
    model = MODELS[name]()
    text = load_text(str(BOTCHAN))
    cal_text, _ = calibrate.read_text(None)
    assert not calibrate.overlap(cal_text, text[:n_tokens * 8]), "calibration and evaluation text overlap"
    ids = model.tokenizer.encode(text, add_special_tokens=False)
    wins = windows(ids, n_tokens, 512, model.bos)
    _, ref = score(model, wins)
    nll = PairStats()
    for r, w in zip(ref, wins):
        nll.add(r, r, w)
    float_ppl = nll.result()["ppl_ref"]
    t0 = time.perf_counter()
    cal_ids = model.tokenizer.encode(cal_text, add_special_tokens=False)
    cwins = calibrate.calib_windows(cal_ids, calibrate.CalibSpec(tokens=calib_tokens), model.bos)
    H = calibrate.hessians(model.module, cwins, set(model.linears), model.logits)
    calib_s = time.perf_counter() - t0
    print(f"\n{name}: float ppl {float_ppl:.2f} on {sum(map(len, wins))} positions; calibration "
          f"{sum(map(len, cwins))} tokens in {calib_s:.0f} s", flush=True)
    print(f"{'method':42s} {'KL':>7s} {'p99':>6s} {'top-1':>6s} {'Δppl':>7s} {'MB':>6s} {'round s':>7s}")
    rows = []
    for meth in methods:
        lin, head, weighted = METHODS[meth]
        needs_cal = weighted or any(s is not None and s.rounding == "gptq" for s in (lin, head))
        ctx, secs, mb = quantized(model, lin, head, H, weighted)
        with ctx:
            res, _ = score(model, wins, ref)
        row = {"model": name, "method": meth, "kl_mean": res["kl_mean"], "kl_p99": res["kl_p99"], "top1": res["top1"],
               "ppl_delta": res["ppl_delta"], "mb": mb, "round_seconds": round(secs, 1),
               "calib_seconds": round(calib_s, 1) if needs_cal else 0.0, "float_ppl": float_ppl,
               "linear": dataclasses.asdict(lin), "head": head and dataclasses.asdict(head)}
        rows.append(row)
        print(f"{meth:42s} {res['kl_mean']:7.4f} {res['kl_p99']:6.2f} {res['top1']:6.3f} "
              f"{res['ppl_delta'] * 100:+6.1f}% {mb:6.1f} {secs:7.1f}", flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="smollm2,smollm2-degrid,gemma3")
    ap.add_argument("--methods", default=",".join(METHODS), help="comma-separated names (see METHODS)")
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--calib-tokens", type=int, default=8192)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=str(REPO / "benchmarks" / "results" / "quant_methods.json"))
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    methods = [m for m in a.methods.split(",") if m]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise SystemExit(f"unknown method {unknown[0]!r}; known: {', '.join(METHODS)}")
    out = Path(a.json)
    # Rows of other models (or methods) already in the file stay: runs can be split by model.
    rows = json.loads(out.read_text())["rows"] if out.is_file() else []
    for name in a.models.split(","):
        new = run_model(name, methods, a.tokens, a.calib_tokens)
        done = {(r["model"], r["method"]) for r in new}
        rows = [r for r in rows if (r["model"], r["method"]) not in done] + new
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"tokens": a.tokens, "calib_tokens": a.calib_tokens, "rows": rows,
                                   "provenance": stamp()}, indent=1))
    base = {r["model"]: r["kl_mean"] for r in rows if r["method"].startswith("plain")}
    print("\nKL relative to plain rounding (lower is better):")
    for r in rows:
        if r["model"] in base and not math.isnan(r["kl_mean"]):
            print(f"  {r['model']:15s} {r['method']:42s} {r['kl_mean'] / base[r['model']]:.2f}x")


if __name__ == "__main__":
    main()
