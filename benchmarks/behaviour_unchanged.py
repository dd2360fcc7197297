"""Does a refactoring change what the tool builds? Every shipped recipe x target on a tiny shape,
exported by an earlier commit and by this tree, compared: the quantized weights' digest, each
artifact file's sha256, and every parity pair's KL / top-1 (the same seeds, the same text).

    .venv/bin/python benchmarks/behaviour_unchanged.py --before e8f9f94          # ~30 min on 2 cores
    .venv/bin/python benchmarks/behaviour_unchanged.py --before e8f9f94 --recipes 4bit --targets android

The earlier commit runs from a `git worktree` with this venv (its code first on PYTHONPATH). Writes
benchmarks/results/behaviour_unchanged.json and prints a table. A pair differs in KL by more than
--kl-tol (0.002) or in top-1 by more than --top1-tol (0.005) is a regression; equal digests mean the
same integers, and equal artifact hashes the same bytes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from provenance import stamp  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TOKENIZER = REPO / "tests" / "data" / "tiny-tokenizer"
RECIPES = ("fp32", "4bit", "4bit-fast", "4bit-auto", "4bit-ane", "8bit")
TARGETS = ("android", "onnx", "ios")
# Bundles keep a file only where both versions write it; report.* and bundle.json carry dates/paths.
SKIP = ("bundle.json", "report")


def export(pythonpath: str | None, recipe: str, target: str, out: Path, model: str, ane_flag: bool) -> dict:
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    args = [sys.executable, "-m", "mobilellm_export.cli", "export", "--model", model, "--tokenizer", str(TOKENIZER),
            "--target", target, "--quant", recipe, "--max-context", "128", "--max-seq-len", "16",
            "--eval-tokens", "256", "--no-latency", "--out", str(out), "--json", "--quiet"]
    if recipe == "4bit-auto":
        args += ["--size-mb", "1"]
    if ane_flag and target == "ios" and recipe == "4bit-ane":
        args += ["--ios-compute-units", "ane"]  # before the option, the recipe's name chose the ANE
    r = subprocess.run(args, capture_output=True, text=True, env=env, timeout=3600)
    if r.returncode == 2:
        return {"refused": (r.stderr.strip().splitlines() or ["?"])[-1]}
    if r.returncode not in (0, 1):
        return {"crashed": r.stderr[-500:]}
    rep = json.loads(r.stdout)
    (bundle,) = [p for p in out.iterdir() if (p / "bundle.json").is_file()]
    m = json.loads((bundle / "bundle.json").read_text())
    files = {f: i["sha256"] for f, i in m["files"].items() if not f.startswith(SKIP)}
    return {"passed": rep.get("passed"), "weights_sha256": rep["quantization"].get("weights_sha256"),
            "files": files, "parity": {k: {"kl_mean": v["kl_mean"], "top1": v["top1"]} for k, v in rep["parity"].items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", required=True, help="the earlier commit")
    ap.add_argument("--model", default="tiny-llama")
    ap.add_argument("--recipes", default=",".join(RECIPES))
    ap.add_argument("--targets", default=",".join(TARGETS))
    ap.add_argument("--kl-tol", type=float, default=0.002)
    ap.add_argument("--top1-tol", type=float, default=0.005)
    ap.add_argument("--json", default=str(REPO / "benchmarks" / "results" / "behaviour_unchanged.json"))
    a = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="behaviour.") as tmp:
        old = Path(tmp) / "before"
        subprocess.run(["git", "worktree", "add", "--detach", str(old), a.before], cwd=REPO, check=True,
                       capture_output=True)
        try:
            for recipe in a.recipes.split(","):
                for target in a.targets.split(","):
                    res = {}
                    for label, path in (("before", str(old)), ("after", None)):
                        out = Path(tmp) / f"{label}-{recipe}-{target}"
                        out.mkdir()
                        res[label] = export(path, recipe, target, out, a.model, ane_flag=label == "after")
                    b, n = res["before"], res["after"]
                    row = {"recipe": recipe, "target": target, **res}
                    if "parity" in b and "parity" in n:
                        row["same_weights"] = b["weights_sha256"] == n["weights_sha256"]
                        row["same_files"] = b["files"] == n["files"]
                        row["max_dkl"] = max(abs(b["parity"][k]["kl_mean"] - n["parity"][k]["kl_mean"]) for k in b["parity"])
                        row["max_dtop1"] = max(abs(b["parity"][k]["top1"] - n["parity"][k]["top1"]) for k in b["parity"])
                        row["ok"] = row["max_dkl"] <= a.kl_tol and row["max_dtop1"] <= a.top1_tol and b["passed"] == n["passed"]
                    else:
                        row["ok"] = ("refused" in b) == ("refused" in n)
                    rows.append(row)
                    print(f"{recipe:10s} {target:8s} ok={row['ok']!s:5s} weights={row.get('same_weights', '-')!s:5s} "
                          f"files={row.get('same_files', '-')!s:5s} dKL={row.get('max_dkl', float('nan')):.2g} "
                          f"dtop1={row.get('max_dtop1', float('nan')):.2g} "
                          f"{b.get('refused', '') or b.get('crashed', '')}", flush=True)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(old)], cwd=REPO, capture_output=True)
    Path(a.json).write_text(json.dumps({"before": a.before, "model": a.model, "rows": rows,
                                        "all_ok": all(r["ok"] for r in rows), "provenance": stamp()}, indent=1) + "\n")
    print(f"all ok: {all(r['ok'] for r in rows)}  -> {a.json}")


if __name__ == "__main__":
    main()
