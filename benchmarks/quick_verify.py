"""`verify --quick` on a bundle: its wall time, and what it makes of the artifact changed after export
with its hashes rewritten (scrambled weight bytes of growing size, a byte of the program flipped).

    python benchmarks/quick_verify.py [BUNDLE] [--json benchmarks/results/quick_verify.json]

Each run is the CLI in a fresh process, as a user runs it. A tampered copy has its changed file's
sha256 and size rewritten in bundle.json, so only the numbers can catch it. Prints a table and writes
JSON (commit, date and tool versions included).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from provenance import stamp  # noqa: E402

DEFAULT = REPO / "out" / "smollm2-135m-android-4bit"
CLI = [sys.executable, "-m", "mobilellm_export.cli"]


def quick(bundle: Path) -> dict:
    t0 = time.perf_counter()
    p = subprocess.run([*CLI, "verify", "--quick", str(bundle), "--json"], capture_output=True, text=True)
    wall = time.perf_counter() - t0
    row = {"exit": p.returncode, "wall_s": round(wall, 1)}
    if p.returncode in (0, 1):
        rep = json.loads(p.stdout)
        row["failed"] = [c["name"] for c in rep["gate"]["checks"] if c["status"] == "fail"]
        row["kl"] = {k: round(v["kl_mean"], 5) for k, v in rep["parity"].items()}
        row["top1"] = {k: round(v["top1"], 4) for k, v in rep["parity"].items()}
        row["steps_s"] = {s["step"]: s["seconds"] for s in rep["steps"]}
    else:
        row["error"] = (p.stderr.strip().splitlines() or ["?"])[-1][:200]
    return row


def tampered(bundle: Path, work: Path, name: str, change) -> Path:
    """A copy of `bundle` with `change(path)` applied to one file, its hash and size rewritten."""
    copy = work / name
    shutil.copytree(bundle, copy)
    m = json.loads((copy / "bundle.json").read_text())
    rel = change(copy, m)
    data = (copy / rel).read_bytes()
    m["files"][rel] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    (copy / "bundle.json").write_text(json.dumps(m, indent=2, sort_keys=True) + "\n")
    return copy


def scramble(n_bytes: int, seed: int = 0):
    """`n_bytes` random bytes in the middle of the weights file (the .ptd, else the .pte)."""
    def change(d: Path, m: dict) -> str:
        rel = m["target"].get("data_file") or m["target"]["entry"]
        p = d / rel
        data = bytearray(p.read_bytes())
        start = len(data) // 2
        data[start:start + n_bytes] = random.Random(seed).randbytes(n_bytes)
        p.write_bytes(bytes(data))
        return rel
    return change


def flip_program_byte(d: Path, m: dict) -> str:
    """One bit of the .pte's middle byte (the program: the delegate's graph, or weights without a .ptd)."""
    rel = m["target"]["entry"]
    p = d / rel
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0x10
    p.write_bytes(bytes(data))
    return rel


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("bundle", nargs="?", default=str(DEFAULT))
    ap.add_argument("--json", default=str(REPO / "benchmarks" / "results" / "quick_verify.json"))
    a = ap.parse_args()
    bundle = Path(a.bundle)
    if not (bundle / "bundle.json").is_file():
        sys.exit(f"error: {bundle} is not a bundle (run `make demo` first for the default)")
    rows = {"as exported": quick(bundle)}
    with tempfile.TemporaryDirectory(prefix="quick-verify.") as tmp:
        work = Path(tmp)
        for label, change in (("4 KB of weights scrambled", scramble(4 << 10)),
                              ("64 KB of weights scrambled", scramble(64 << 10)),
                              ("1 MB of weights scrambled", scramble(1 << 20)),
                              ("one bit of the .pte flipped", flip_program_byte)):
            rows[label] = quick(tampered(bundle, work, label.replace(" ", "-").replace(".", ""), change))
    print(f"verify --quick on {bundle.name} (each a fresh process; tampered copies have their hashes rewritten)")
    print(f"  {'case':<30}{'exit':>5}{'wall s':>8}  {'KL q->a':>9}  {'KL f->a':>9}  result")
    for label, r in rows.items():
        kl = r.get("kl", {})
        what = ("PASS" if r["exit"] == 0 else f"FAIL: {', '.join(r['failed'])}" if r["exit"] == 1
                else f"error: {r.get('error')}")
        print(f"  {label:<30}{r['exit']:>5}{r['wall_s']:>8.1f}  {kl.get('quant_vs_artifact', float('nan')):>9.4g}  "
              f"{kl.get('float_vs_artifact', float('nan')):>9.4g}  {what}")
    out = {"bundle": bundle.name, "rows": rows, "provenance": stamp()}
    Path(a.json).write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {a.json}")


if __name__ == "__main__":
    main()
