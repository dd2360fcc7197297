"""verify's independent reference (mobilellm_export/verify/independent.py), measured: our float model
against transformers reading the same source files, on a clean source and with loader faults that
every pair of the gate shares (so only this check can see them).

Rows: each tiny architecture (a HF folder transformers writes), clean and with RoPE theta x 10; the
offline default SmolLM2-135M GGUF, clean, with RoPE theta read as the 1e4 default (it is 1e5), and with
the GGUF's Q/K rows left in llama.cpp's interleaved order (the un-permute skipped). The window is
the first one verify scores: 512 tokens of the built-in Botchan excerpt. Prints a table, writes JSON.

    python benchmarks/independent_reference.py                  # about two minutes
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from provenance import stamp  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests"), str(REPO / "tests" / "targets")]


def row(name: str, fault: str, ck, tokens: list[int]) -> dict:
    from mobilellm_export.checkpoints import build_model
    from mobilellm_export.runtimes.eager import EagerRunner
    from mobilellm_export.verify import independent

    t0 = time.perf_counter()
    model, why = independent.load(ck)
    if model is None:
        return {"model": name, "fault": fault, "skipped": why}
    theirs = independent.Runner(model).score(tokens)
    load_s = time.perf_counter() - t0
    del model
    ours = EagerRunner(build_model(ck, len(tokens))).score(tokens).float()
    rec = independent.compare(ours, theirs, why)
    top1 = (ours.argmax(-1) == theirs.argmax(-1)).float().mean().item()
    return {"model": name, "fault": fault, "rel_max_abs_logit": rec["value"], "bound": rec["bound"],
            "caught": rec["status"] == "fail", "top1_agreement": round(top1, 4), "positions": len(tokens),
            "transformers_s": round(load_s, 1), "message": rec["message"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "independent_reference.json"))
    args = ap.parse_args()

    import hf_tiny
    import torch

    from mobilellm_export.checkpoints import gguf, load
    from mobilellm_export.text.corpus import load_text

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        toks = torch.randint(3, hf_tiny.V, (128,), generator=torch.Generator().manual_seed(0)).tolist()
        for arch in hf_tiny.ARCHS:
            _, folder = hf_tiny.build(arch, Path(tmp) / arch)
            for fault in ("none", "rope_theta x 10"):
                ck = load(str(folder), tokenizer=str(hf_tiny.TOKENIZER))
                if fault != "none":
                    ck.config = dataclasses.replace(ck.config, rope_theta=ck.config.rope_theta * 10)
                rows.append(row(arch, fault, ck, toks))
                print(json.dumps({k: v for k, v in rows[-1].items() if k != "message"}), flush=True)

    ck = load("smollm2-135m")
    toks = ck.tokenizer.encode(load_text(None), add_special_tokens=False)[:512]  # verify's first window (no BOS)
    faults = {"none": lambda: None,
              "rope_theta read as the 1e4 default": lambda: setattr(ck, "config",
                                                                    dataclasses.replace(ck.config, rope_theta=1e4)),
              "GGUF Q/K un-permute skipped": lambda: None}
    stock = gguf._unpermute
    for fault, apply in faults.items():
        ck = load("smollm2-135m")
        if fault.startswith("GGUF"):
            gguf._unpermute = lambda w, n_heads: w
            ck = load("smollm2-135m")
            gguf._unpermute = stock
        apply()
        rows.append(row("smollm2-135m", fault, ck, toks))
        print(json.dumps({k: v for k, v in rows[-1].items() if k != "message"}), flush=True)

    Path(args.out).write_text(json.dumps({"provenance": stamp(), "rows": rows}, indent=1) + "\n")
    print(f"wrote {args.out}")
    clean = [r for r in rows if r["fault"] == "none" and "skipped" not in r]
    faulty = [r for r in rows if r["fault"] != "none" and "skipped" not in r]
    if any(r["caught"] for r in clean) or not all(r["caught"] for r in faulty):
        sys.exit("a clean source failed the check, or a fault passed it")


if __name__ == "__main__":
    main()
