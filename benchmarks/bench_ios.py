"""The iOS target's acceptance on real weights: SmolLM2-135M-Instruct exported with `--target ios`, its
.mlpackage run by the MIL reference executor in fp16-emulated mode over the first N novel tokens of
Botchan (non-overlapping windows of 512, no BOS, chunked prefill of --max-seq-len), against

    reference   the eager `IOS.reference()` (same integers at fp16 scales, fp16 constants, float
                activations): the lowering pair, acceptance mean KL <= 0.01 and top-1 >= 0.95
    float       the dequantized float checkpoint: KL, top-1 and ppl delta of float -> artifact

and also the fp32 executor mode on the first window (max |dlogit| / max |logit|), size, timings, op
counts and the first op producing inf/NaN in fp16 (if any).

    flock /tmp/heavy.lock python benchmarks/bench_ios.py [--quant 4bit|4bit-ane] [--tokens 4096]

Writes benchmarks/results/bench_ios[-<quant>].json.
"""

from __future__ import annotations

import argparse
import json
import sys
import shutil
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from provenance import stamp  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BOTCHAN = ROOT.parent / "shared" / "data" / "botchan.txt"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quant", default="4bit")
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--max-context", type=int, default=512)
    ap.add_argument("--max-seq-len", type=int, default=128)
    ap.add_argument("--work", default=str(ROOT / "build" / "bench-ios"))
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(2)

    from mobilellm_export.checkpoints import build_model
    from mobilellm_export.pipeline import calibrator
    from mobilellm_export.quant.quantize import quantize
    from mobilellm_export.quant.recipe import load_recipe
    from mobilellm_export.runtimes.coreml import MILRunner
    from mobilellm_export.runtimes.eager import EagerRunner
    from mobilellm_export.checkpoints import load
    from mobilellm_export.backends import ExportSpec
    from mobilellm_export.backends.coreml.target import IOS
    from mobilellm_export.verify import parity
    from mobilellm_export.text.corpus import load_text, windows

    out: dict = {"model": "smollm2-135m", "quant": args.quant, "tokens": args.tokens,
                 "max_context": args.max_context, "max_seq_len": args.max_seq_len}
    t0 = time.perf_counter()
    ck = load("smollm2-135m")
    float_model = build_model(ck, args.max_context)
    model = build_model(ck, args.max_context)
    recipe = load_recipe(args.quant)
    spec = ExportSpec(config=model.cfg, max_context=args.max_context, max_seq_len=args.max_seq_len,
                      eos_ids=tuple(ck.config.eos_token_ids), bos_id=None)
    target = IOS(compute_units="ane" if args.quant == "4bit-ane" else "gpu")  # the recipe the ANE runs well
    out["notes"] = target.check(recipe, spec)
    quantize(model, recipe, calibrator(ck, model, recipe, None, args.max_context))
    out["quantize_s"] = round(time.perf_counter() - t0, 1)
    ref = target.reference(model)
    work = Path(args.work) / args.quant
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    t0 = time.perf_counter()
    art = target.export(target.prepare(ref, spec), spec, work)
    out["export_s"] = round(time.perf_counter() - t0, 1)
    out["export"] = {k: art.facts[k] for k in ("mlpackage_bytes", "op_count", "ops", "constexpr", "blocks",
                                               "state_shape", "compute_units", "scales", "scales_fp16_subnormal",
                                               "scales_fp16_flushed_to_zero", "export_s", "convert_s")}
    pkg = work / art.entry
    print(json.dumps(out["export"], indent=1), flush=True)

    ids = ck.tokenizer.encode(load_text(str(BOTCHAN)), add_special_tokens=False)
    wins = windows(ids, args.tokens, args.max_context, None)
    t0 = time.perf_counter()
    fp16 = MILRunner(pkg, args.max_seq_len, args.max_context, mode="fp16")
    out["load_s"] = round(time.perf_counter() - t0, 1)

    # fp32 mode on the first window: the package's arithmetic apart from fp16 rounding
    fp32 = MILRunner(pkg, args.max_seq_len, args.max_context, mode="fp32")
    a, b = EagerRunner(ref, max_seq_len=args.max_seq_len).score(wins[0]), fp32.score(wins[0])
    out["fp32_first_window"] = {"max_abs_dlogit": (a - b).abs().max().item(), "max_abs_logit": a.abs().max().item()}
    out["fp32_first_window"]["ratio"] = out["fp32_first_window"]["max_abs_dlogit"] / out["fp32_first_window"]["max_abs_logit"]
    print(out["fp32_first_window"], flush=True)
    del fp32

    runners = {"float": EagerRunner(float_model, "float", max_seq_len=args.max_seq_len),
               "reference": EagerRunner(ref, "reference", max_seq_len=args.max_seq_len), "artifact": fp16}
    pairs = {"float_vs_quant": ("float", "reference"), "quant_vs_artifact": ("reference", "artifact"),
             "float_vs_artifact": ("float", "artifact")}
    t0 = time.perf_counter()
    done = [0]

    def advance(n):
        done[0] += n
        print(f"  {done[0]} positions, {time.perf_counter() - t0:.0f} s", flush=True)

    results, _ = parity.score(runners, pairs, wins, advance)
    out["parity_s"] = round(time.perf_counter() - t0, 1)
    out["parity"] = results
    out["fp16_first_nonfinite"] = fp16.executor.first_nonfinite
    lw = results["quant_vs_artifact"]
    out["acceptance"] = {"lowering_kl_mean<=0.01": lw["kl_mean"] <= 0.01, "lowering_top1>=0.95": lw["top1"] >= 0.95}
    path = Path(args.json or ROOT / "benchmarks" / "results" /
                f"bench_ios{'' if args.quant == '4bit' else '-' + args.quant}.json")
    path.write_text(json.dumps({**out, "provenance": stamp()}, indent=1, default=str) + "\n")
    print(json.dumps({k: out[k] for k in ("parity", "acceptance", "fp16_first_nonfinite")}, indent=1, default=str))


if __name__ == "__main__":
    main()
