"""Peak memory and wall time of the default export (`--quant 4bit`, `--eval-tokens 4096`) of
MobileLLM-R1 shapes, per step, for the whole process tree (the export and its latency children).

    python benchmarks/bench_memory.py --tokenizer ../shared/data/llama3-tokenizer/tokenizer.json \
        [--models r1-140m r1-950m] [--json benchmarks/results/memory.json]

Each export runs as its own process; this script samples the RSS of that process and all its
descendants every 50 ms (an outside view of the same number the export records per step in
report.json["steps"]). Prints a table and writes JSON. One export at a time: the machine has 2 cores.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mobilellm_export.memory import tree_rss_mb  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from provenance import stamp  # noqa: E402


def run(model: str, tokenizer: str, out: Path) -> dict:
    cmd = [sys.executable, "-m", "mobilellm_export.cli", "export", "--model", model, "--tokenizer", tokenizer,
           "--quant", "4bit", "--out", str(out), "--json"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = [0.0]
    done = threading.Event()

    def sample():
        while not done.wait(0.05):
            peak[0] = max(peak[0], tree_rss_mb(proc.pid))

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    stdout, stderr = proc.communicate()
    done.set()
    t.join()
    wall = time.perf_counter() - t0
    if proc.returncode not in (0, 1):
        return {"model": model, "exit": proc.returncode, "wall_s": wall, "tree_peak_mb": peak[0],
                "error": stderr.strip().splitlines()[-1] if stderr.strip() else ""}
    rep = json.loads(stdout)
    return {"model": model, "exit": proc.returncode, "wall_s": round(wall, 1), "tree_peak_mb": round(peak[0]),
            "passed": rep.get("passed"), "steps": rep["steps"],
            "parity": {k: {m: v[m] for m in ("kl_mean", "top1")} for k, v in rep["parity"].items()},
            "size_mb": round(sum(v for k, v in rep["size_mb"].items() if k.startswith("model.")), 1)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--models", nargs="+", default=["r1-140m", "r1-950m"])
    ap.add_argument("--json", default=str(REPO / "benchmarks" / "results" / "memory.json"))
    a = ap.parse_args(argv)
    tokenizer = str(Path(a.tokenizer).resolve())
    results = []
    with tempfile.TemporaryDirectory(prefix="bench_memory.") as tmp:
        for model in a.models:
            print(f"export {model} ...", flush=True)
            results.append(run(model, tokenizer, Path(tmp) / model))
            r = results[-1]
            print(f"  exit {r['exit']}, {r['wall_s']:.0f} s, peak {r['tree_peak_mb'] / 1024:.2f} GB", flush=True)
    for r in results:
        print(f"\n{r['model']}: exit {r['exit']}, wall {r['wall_s']:.0f} s, process-tree peak "
              f"{r['tree_peak_mb'] / 1024:.2f} GB (sampled from outside)")
        print(f"  {'step':<40} {'seconds':>8} {'tree peak GB':>13} {'own peak GB':>12}")
        for s in r.get("steps", []):
            print(f"  {s['step']:<40} {s['seconds']:>8.1f} {s.get('tree_peak_mb', 0) / 1024:>13.2f} "
                  f"{s.get('self_peak_mb', 0) / 1024:>12.2f}")
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps({"results": results, "command": " ".join(sys.argv), "provenance": stamp()},
                                       indent=1) + "\n")
    print(f"\nwrote {a.json}")
    return 0 if all(r["exit"] in (0, 1) for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
