"""The gate's baseline acceptance on real weights (SmolLM2-135M, 4,096 Botchan tokens):

    1. export `4bit` (the baseline, latency included so speed can be paired later)
    2. verify that bundle against its own report: an unchanged bundle must pass
    3. export `4bit-down-g128` (group 128 on the MLP down projections only) with --baseline: must fail
    4. export `4bit-fast` with --baseline: must fail

Prints a table of exit codes and failing checks, writes benchmarks/results/gate_baselines.json.
About 30 minutes on 2 cores.

    python benchmarks/gate_baselines.py [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from provenance import stamp, thresholds_in_force  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
BOTCHAN = REPO.parent / "shared" / "data" / "botchan.txt"


def cli(*args: str) -> tuple[int, float]:
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "mobilellm_export.cli", *args], cwd=REPO)
    return r.returncode, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(REPO / "out" / "gate"))
    a = ap.parse_args()
    out = Path(a.out)
    common = ["--eval-text", str(BOTCHAN), "--eval-tokens", "4096", "--quiet"]
    base = out / "smollm2-135m-android-4bit"
    rows = []

    def step(label: str, report: Path, expect: int, *args: str) -> None:
        code, secs = cli(*args)
        rep = json.loads(report.read_text()) if report.is_file() else {}
        failed = [c["name"] for c in rep.get("gate", {}).get("checks", []) if c["status"] == "fail"]
        warned = [c["name"] for c in rep.get("gate", {}).get("checks", []) if c["status"] == "warn"]
        rows.append({"run": label, "exit": code, "expected_exit": expect, "ok": code == expect, "seconds": round(secs),
                     "failed_checks": failed, "warnings": warned,
                     "checks": rep.get("gate", {}).get("checks", []),
                     "paired_speed": rep.get("gate", {}).get("paired_speed")})
        print(f"{label}: exit {code} (expected {expect}), {secs:.0f} s; failed: {', '.join(failed) or '-'}", flush=True)

    step("export 4bit (baseline)", base / "report.json", 0,
         "export", "--model", "smollm2-135m", "--quant", "4bit", "--out", str(out), *common)
    step("verify unchanged bundle --baseline itself", out / "verify-unchanged" / "report.json", 0,
         "verify", str(base), "--baseline", str(base / "report.json"), "--report-dir", str(out / "verify-unchanged"),
         "--junit", str(out / "verify-unchanged.xml"), *common)
    step("export 4bit-down-g128 --baseline 4bit", out / "smollm2-135m-android-4bit-down-g128" / "report.json", 1,
         "export", "--model", "smollm2-135m", "--quant", str(REPO / "benchmarks" / "recipes" / "4bit-down-g128.toml"),
         "--out", str(out), "--baseline", str(base / "report.json"), "--no-latency", *common)
    step("export 4bit-fast --baseline 4bit", out / "smollm2-135m-android-4bit-fast" / "report.json", 1,
         "export", "--model", "smollm2-135m", "--quant", "4bit-fast", "--out", str(out),
         "--baseline", str(base / "report.json"), "--no-latency", *common)
    dest = REPO / "benchmarks" / "results" / "gate_baselines.json"
    # the bounds the shipped recipes judged these runs under (4bit-down-g128 differs from 4bit only in its groups)
    prov = {**stamp(), "thresholds": thresholds_in_force(["4bit", "4bit-fast"], ["android"])}
    dest.write_text(json.dumps({"runs": rows, "provenance": prov}, indent=1))
    print(f"\n| run | exit | expected | failing checks |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['run']} | {r['exit']} | {r['expected_exit']} | {', '.join(r['failed_checks']) or '-'} |")
    print(f"\nwritten: {dest}")


if __name__ == "__main__":
    main()
