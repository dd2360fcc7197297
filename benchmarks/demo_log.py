"""`make demo` as a new user's CI log sees it: piped to a file (not a terminal), every line
timestamped. Reports the longest silence between two lines, the wall time, the export's peak memory
per step (its report.json) and the disk the set-up and the bundle take.

    python benchmarks/demo_log.py [--command "make demo"] [--json benchmarks/results/demo_log.json]

Run it from a checkout whose .venv already exists to time the demo alone (set-up time is
`make setup`'s, printed by .ci/run). Prints a table and writes JSON (the log itself beside it).
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from provenance import stamp  # noqa: E402

BUNDLE = REPO / "out" / "smollm2-135m-android-4bit"


def du_mb(path: Path) -> float | None:
    if not path.exists():
        return None
    out = subprocess.run(["du", "-sk", str(path)], capture_output=True, text=True, check=True).stdout
    return round(int(out.split()[0]) / 1024, 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--command", default="make demo")
    ap.add_argument("--json", default=str(REPO / "benchmarks" / "results" / "demo_log.json"))
    a = ap.parse_args()

    t0 = time.monotonic()
    lines: list[tuple[float, str]] = []
    p = subprocess.Popen(shlex.split(a.command), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    for raw in p.stdout:  # a pipe: exactly what a CI log receives
        lines.append((time.monotonic() - t0, raw.decode("utf-8", "replace").rstrip("\n")))
    code = p.wait()
    wall = time.monotonic() - t0
    stamps = [0.0] + [t for t, _ in lines] + [wall]
    gaps = [(stamps[i + 1] - stamps[i], lines[i - 1][1] if i else "(start)") for i in range(len(stamps) - 1)]
    gap, after = max(gaps)
    report = BUNDLE / "report.json"
    steps = json.loads(report.read_text())["steps"] if code == 0 and report.is_file() else []
    result = {
        "command": a.command, "exit_code": code, "wall_s": round(wall, 1), "lines": len(lines),
        "longest_gap_s": round(gap, 1), "longest_gap_after": after,
        # per step: the RSS sum over the process tree (a page shared by a forked child counted once per
        # process), the PSS sum (each page once: what the machine holds) and the exporter's own peak RSS
        "steps": [{k: s.get(k) for k in ("step", "seconds", "tree_peak_mb", "tree_pss_peak_mb", "self_peak_mb")}
                  for s in steps],
        "tree_peak_mb": max((s.get("tree_peak_mb") or 0 for s in steps), default=None),
        "tree_pss_peak_mb": max((s.get("tree_pss_peak_mb") or 0 for s in steps), default=None),
        "disk_mb": {".venv": du_mb(REPO / ".venv"), "bundle": du_mb(BUNDLE)},
        "provenance": stamp(),
    }
    out = Path(a.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    out.with_suffix(".log").write_text("".join(f"{t:8.1f}  {ln}\n" for t, ln in lines))
    print(f"{'command':<22}{a.command}\n{'exit code':<22}{code}\n{'wall':<22}{wall:.0f} s\n"
          f"{'lines':<22}{len(lines)}\n{'longest gap':<22}{gap:.1f} s, after: {after[:60]}\n"
          f"{'peak memory (tree)':<22}RSS sum {result['tree_peak_mb']} MB, PSS sum {result['tree_pss_peak_mb']} MB\n"
          f"{'disk':<22}{result['disk_mb']}")
    print(f"  {'step':<40}{'seconds':>10}{'tree RSS':>10}{'tree PSS':>10}{'self RSS':>10}  (MB)")
    for s in result["steps"]:
        print(f"  {s['step']:<40}{s['seconds']:>10.1f}" + "".join(f"{s.get(k) or 0:>10.0f}" for k in
                                                                 ("tree_peak_mb", "tree_pss_peak_mb", "self_peak_mb")))
    print(f"wrote {out} and {out.with_suffix('.log')}")
    sys.exit(code)


if __name__ == "__main__":
    main()
