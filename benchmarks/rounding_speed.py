"""Does the choice of integers change speed? It must not: GPTQ and MSE scales fill the same format.

Exports one model with `benchmarks/recipes/4bit-plain.toml` (the 4bit format, torchao round-to-
nearest: `4bit` before this change) and with the shipped `4bit` (GPTQ act-order, MSE scales), plus
any other recipes given (e.g. a 4bit-auto plan), then runs all .pte programs in ONE process, paired
round by round (`paired.py`). Prints decode and prefill ratios against 4bit-plain, writes JSON.

    python benchmarks/rounding_speed.py [--model r1-140m] [--extra RECIPE --size-mb N] [--rounds 9]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from provenance import stamp  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TOKENIZER = REPO.parent / "shared" / "data" / "llama3-tokenizer" / "tokenizer.json"


def export(model: str, quant: str, out: Path, tokenizer: str | None, extra: list[str]) -> Path:
    cmd = [sys.executable, "-m", "mobilellm_export.cli", "export", "--model", model, "--quant", quant, "--out",
           str(out), "--no-verify", "--quiet", *extra]
    if tokenizer:
        cmd += ["--tokenizer", tokenizer]
    subprocess.run(cmd, cwd=REPO, check=True)
    return next(p for p in out.iterdir() if p.is_dir() and p.name.endswith(Path(quant).stem))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="r1-140m")
    ap.add_argument("--tokenizer", default=str(TOKENIZER), help="for presets (ignored for smollm2-135m)")
    ap.add_argument("--extra", help="a third recipe to pair (e.g. 4bit-auto, with --size-mb)")
    ap.add_argument("--size-mb")
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--json", default=str(REPO / "benchmarks" / "results" / "rounding_speed.json"))
    a = ap.parse_args()
    sys.path.insert(0, str(REPO / "benchmarks"))
    import paired

    tok = None if a.model == "smollm2-135m" else a.tokenizer
    recipes = [str(REPO / "benchmarks" / "recipes" / "4bit-plain.toml"), "4bit"] + ([a.extra] if a.extra else [])
    with tempfile.TemporaryDirectory(prefix="rounding-speed.") as tmp:
        bundles = []
        for r in recipes:
            extra = ["--size-mb", a.size_mb] if (r == a.extra and a.size_mb) else []
            bundles.append(export(a.model, r, Path(tmp) / Path(r).stem, tok, extra))
        tokenizer = str(bundles[0] / "tokenizer.json")
        from tokenizers import Tokenizer

        from mobilellm_export.verify.latency import prompt_prefix

        prompt = prompt_prefix(Tokenizer.from_file(tokenizer), paired.DEFAULT_TEXT.read_text(encoding="utf-8"), 128)
        res = paired.measure([(str(b / "model.pte"), str(b / "model.ptd")) for b in bundles], tokenizer, prompt,
                             a.rounds, 128, 2)
    res["model"], res["recipes"] = a.model, [Path(r).stem for r in recipes]
    print(f"{a.model}, {a.rounds} paired rounds in one process (TextLLMRunner, 2 threads):")
    print(f"{'recipe':14s} {'decode tok/s':>12s} {'ratio [IQR]':>22s} {'prefill ratio':>14s}")
    for name, row in zip(res["recipes"], res["programs"]):
        d, p = row["decode_ratio"], row["prefill_ratio"]
        print(f"{name:14s} {row['decode_tokens_per_s']:12.1f} {d['median']:8.3f} [{d['q1']:.3f}-{d['q3']:.3f}] "
              f"{p['median']:14.3f}")
    Path(a.json).write_text(json.dumps({**res, "provenance": stamp()}, indent=1) + "\n")


if __name__ == "__main__":
    main()
