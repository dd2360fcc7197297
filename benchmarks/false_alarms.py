"""False alarms under benign change: the gate must stay quiet when nothing that matters changed
(issue 27, item 4).

    .venv/bin/python benchmarks/false_alarms.py                 # every target, ~20 min on 2 cores
    .venv/bin/python benchmarks/false_alarms.py --targets onnx

Per target, a clean `4bit` export of a tiny MobileLLM-R1-layout HF folder (2 layers, random
weights, its own tokenizer; 512 evaluation tokens, 1 thread) is the baseline. Each variant below is
judged against it with `--baseline`, through the CLI, as a user's CI runs the gate; thresholds and
`[gate]` tolerances are the shipped ones. Required to pass (a failed check is a false alarm):

    rerun          the same export again, into another folder
    threads-1      `verify` of the baseline bundle, 1 thread
    threads-2      `verify` of the baseline bundle, 2 threads
    recipe-keys    a copy of 4bit.toml with its tables and keys in reverse order
    checkout       a re-export from another checkout of the same commit (`git worktree`), in its own
                   interpreter (what another day's CI job on an unchanged tree does)
    out-elsewhere  `--out` in another folder tree
    copied         the baseline bundle copied to another path, then `verify`
    latency-on     a re-export with the latency step on (the baseline was made without it)
    other-text     Botchan chapter V instead of the built-in sample, against the baseline bundle
                   re-scored on that text (`verify --eval-text`)

Reported, not required (another calibration is another quantization, not a benign change):

    calib-seed-1, calib-seed-2   the recipe's `[calibration] seed` set to 1 and 2

For every check of every run, the margin to its bound: (bound - value) for an upper bound,
(value - bound) for a lower one, and that over |bound|. Writes benchmarks/results/false_alarms.json
(provenance with the thresholds in force) and prints a table of each variant's smallest margin.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "benchmarks"), str(REPO / "tests"), str(REPO / "tests" / "targets")]
OUT = REPO / "benchmarks" / "results" / "false_alarms.json"
BOTCHAN = REPO / "tests" / "data" / "botchan.txt"
RECIPE = "4bit"
SETTINGS = ["--max-context", "256", "--max-seq-len", "32", "--eval-tokens", "512"]
REQUIRED = ("rerun", "threads-1", "threads-2", "recipe-keys", "checkout", "out-elsewhere", "copied", "latency-on",
            "other-text")
REPORTED = ("calib-seed-1", "calib-seed-2")


def cli(*args, cwd=None, env=None) -> dict:
    """One CLI run -> its report (or the error line); exit 0 = pass, 1 = a check failed."""
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "mobilellm_export.cli", *map(str, args), "--json", "--quiet"],
                       capture_output=True, text=True, cwd=cwd, env=env, timeout=3600)
    if r.returncode not in (0, 1):
        return {"exit": r.returncode, "error": (r.stderr.strip().splitlines() or [""])[-1][:300],
                "seconds": round(time.perf_counter() - t0, 1)}
    return {"exit": r.returncode, "report": json.loads(r.stdout), "seconds": round(time.perf_counter() - t0, 1)}


# How a `--baseline` check's bound comes from the baseline's value b (verify/gate.py), inverted here
# to say how much of the tolerance a run used: name -> b from (bound, [gate] tolerances).
_BASE = {
    "baseline float->artifact kl_mean": lambda bound, g: (bound - g["kl_abs"]) / (1 + g["kl_mean_rel"]),
    "baseline float->artifact kl_p99": lambda bound, g: (bound - g["kl_abs"]) / (1 + g["kl_p99_rel"]),
    "baseline float->artifact top1": lambda bound, g: bound + g["top1_abs"],
    "baseline float->artifact ppl_delta": lambda bound, g: bound - g["ppl_delta_abs"],
    "baseline float->artifact greedy prefix": lambda bound, g: bound + g["greedy_prefix_tokens"],
    "baseline artifact size MB": lambda bound, g: bound / (1 + g["size_rel"]),
}


def margins(report: dict, gate: dict) -> list[dict]:
    """Each bounded check's margin: (bound - value) for an upper bound, (value - bound) for a lower
    one. `headroom`: for a baseline check, the share of its tolerance left (1 = the baseline's own
    value, 0 = at the bound); for any other, the margin over |bound|."""
    return [m for c in report["gate"]["checks"] if (m := margin(c["name"], c["status"], c.get("value"), c.get("op"),
                                                                  c.get("bound"), gate)) is not None]


def margin(name, status, v, op, b, gate: dict) -> dict | None:
    if not isinstance(v, (int, float)) or not isinstance(b, (int, float)) or op not in ("<=", ">=", "<", ">"):
        return None
    m = (b - v) if op in ("<=", "<") else (v - b)
    if name in _BASE:
        base = _BASE[name](b, gate)
        headroom = 1 - (v - base) / (b - base) if b != base else None
    else:
        headroom = m / abs(b) if b else None
    return {"check": name, "status": status, "value": v, "op": op, "bound": b, "margin": m, "headroom": headroom}


def rescore(rows: list[dict], gate: dict) -> None:
    """Derived fields of each row (headroom, the smallest one, false alarm) from its recorded checks."""
    for row in rows:
        if row.get("margins") is None:
            row["false_alarm"] = row["required"]
            continue
        row["margins"] = [margin(c["check"], c["status"], c["value"], c["op"], c["bound"], gate) for c in row["margins"]]
        known = [c for c in row["margins"] if c["headroom"] is not None]
        row["smallest"] = min(known, key=lambda c: c["headroom"], default=None)
        row["false_alarm"] = row["required"] and (row["exit"] != 0 or bool(row["failed"]))


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)  # a TOML basic string for the recipes' plain text
    if isinstance(v, list):
        return "[" + ", ".join(map(_toml_value, v)) + "]"
    raise TypeError(f"no TOML writer here for {type(v).__name__}")


def reversed_toml(src: Path, dest: Path, seed: int | None = None) -> Path:
    """`src` with its tables, and the keys inside each, in reverse order (comments dropped); with
    `seed`, the `[calibration]` seed replaced. Same values: the parser must read the same recipe."""
    import tomllib

    data = tomllib.loads(src.read_text(encoding="utf-8"))
    if seed is not None:
        data["calibration"]["seed"] = seed
    top = [(k, v) for k, v in data.items() if not isinstance(v, dict)]
    tables = [(k, v) for k, v in data.items() if isinstance(v, dict)]
    text = "\n".join(f"{k} = {_toml_value(v)}" for k, v in reversed(top))
    for name, table in reversed(tables):
        text += f"\n\n[{name}]\n" + "\n".join(f"{k} = {_toml_value(v)}" for k, v in reversed(table.items()))
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(text + "\n")
    return dest


def other_text(dest: Path) -> Path:
    lines = BOTCHAN.read_text(encoding="utf-8").splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("CHAPTER V."))
    end = next(i for i, ln in enumerate(lines) if ln.startswith("CHAPTER VI."))
    dest.write_text("\n".join(lines[start:end]) + "\n", encoding="utf-8")
    return dest


def bundle_of(out: Path) -> Path:
    (b,) = [p for p in out.iterdir() if (p / "bundle.json").is_file()]
    return b


def run_target(target: str, src: str, work: Path, tree: Path, gate: dict) -> list[dict]:
    w = work / target
    shutil.rmtree(w, ignore_errors=True)
    w.mkdir(parents=True)
    export = ["export", "--model", src, "--target", target, *SETTINGS, "--threads", "1"]
    base = cli(*export, "--quant", RECIPE, "--no-latency", "--out", w / "base")
    if "report" not in base:
        raise SystemExit(f"{target}: the clean export failed: {base['error']}")
    bundle = bundle_of(w / "base")
    baseline = bundle / "report.json"
    text = other_text(w / "chapter-v.txt")
    rescored = w / "rescored"
    r = cli("verify", bundle, "--source", src, "--eval-text", text, "--eval-tokens", "512", "--threads", "1",
            "--no-latency", "--report-dir", rescored)
    if "report" not in r:
        raise SystemExit(f"{target}: re-scoring the baseline on chapter V failed: {r['error']}")
    copied = w / "elsewhere" / "deep" / "copy" / bundle.name
    shutil.copytree(bundle, copied, ignore=shutil.ignore_patterns("report*"))
    recipe = REPO / "quant_recipes" / f"{RECIPE}.toml"
    env = {**os.environ, "PYTHONPATH": str(tree)}  # the other checkout's package, not this one's
    verify = ["verify", "--source", src, "--eval-tokens", "512", "--no-latency", "--baseline", baseline]
    runs = {
        "rerun": lambda: cli(*export, "--quant", RECIPE, "--no-latency", "--out", w / "rerun", "--baseline", baseline),
        "threads-1": lambda: cli(verify[0], bundle, *verify[1:], "--threads", "1"),
        "threads-2": lambda: cli(verify[0], bundle, *verify[1:], "--threads", "2"),
        "recipe-keys": lambda: cli(*export, "--quant", reversed_toml(recipe, w / "keys" / f"{RECIPE}.toml"),
                                   "--no-latency", "--out", w / "keys-out", "--baseline", baseline),
        "checkout": lambda: cli(*export, "--quant", RECIPE, "--no-latency", "--out", w / "checkout",
                                "--baseline", baseline, cwd=tree, env=env),
        "out-elsewhere": lambda: cli(*export, "--quant", RECIPE, "--no-latency", "--out",
                                     Path(tempfile.mkdtemp(prefix="fa-out.")) / "a" / "b", "--baseline", baseline),
        "copied": lambda: cli(verify[0], copied, *verify[1:], "--threads", "1"),
        "latency-on": lambda: cli(*export, "--quant", RECIPE, "--out", w / "latency", "--baseline", baseline),
        "other-text": lambda: cli(verify[0], bundle, "--source", src, "--eval-text", text, "--eval-tokens", "512",
                                  "--no-latency", "--threads", "1", "--baseline", rescored / "report.json"),
    }
    for s in (1, 2):
        runs[f"calib-seed-{s}"] = (lambda s=s: cli(
            *export, "--quant", reversed_toml(recipe, w / f"seed{s}" / f"{RECIPE}.toml", seed=s), "--no-latency",
            "--out", w / f"seed{s}-out", "--baseline", baseline))
    rows = []
    for name, fn in runs.items():
        r = fn()
        row = {"target": target, "variant": name, "required": name in REQUIRED, "exit": r["exit"],
               "seconds": r["seconds"]}
        if "report" in r:
            row.update(failed=[c["name"] for c in r["report"]["gate"]["checks"] if c["status"] == "fail"],
                       margins=margins(r["report"], gate))
        else:
            row.update(failed=None, error=r["error"])
        rescore([row], gate)
        rows.append(row)
        s = row.get("smallest") or {}
        print(f"{target} {name}: exit {row['exit']} failed {row['failed']} smallest headroom "
              f"{s.get('check')} {s.get('headroom')}", flush=True)
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| target | variant | required | exit | failed checks | smallest headroom (check: value vs bound, headroom) |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        s = r.get("smallest")
        sm = (f"{s['check']}: {s['value']:.4g} {s['op']} {s['bound']:.4g}, {s['headroom']:.0%}" if s
              else r.get("error", ""))
        lines.append(f"| {r['target']} | {r['variant']} | {'yes' if r['required'] else 'margin only'} | {r['exit']} | "
                     f"{', '.join(r['failed'] or []) or 'none'} | {sm} |")
    return "\n".join(lines)


def docs_table(result: dict) -> str:
    """The docs' table (docs/ci-gate.md): per target, the required runs and their false alarms, the
    check with the least headroom over them, and what each calibration seed failed."""
    rows = result["rows"]
    lines = ["| target | required variants (false alarms) | least headroom, required variants | calibration seed 1 | "
             "calibration seed 2 |", "|---|---|---|---|---|"]
    for t in dict.fromkeys(r["target"] for r in rows):
        req = [r for r in rows if r["target"] == t and r["required"]]
        least = min((r["smallest"] for r in req if r.get("smallest")), key=lambda c: c["headroom"])
        where = [r["variant"] for r in req if r.get("smallest") == least]
        seeds = []
        for v in REPORTED:
            r = next(x for x in rows if x["target"] == t and x["variant"] == v)
            fails = [m for m in r.get("margins") or [] if m["status"] == "fail"]
            seeds.append("fails " + ", ".join(f"{m['check'].replace('baseline float->artifact ', '')} ({m['value']:.4g} "
                                              f"vs {m['op']} {m['bound']:.4g})" for m in fails) if fails else "passes")
        lines.append(f"| {t} | {len(req)} ({sum(r['false_alarm'] for r in req)}) | {least['check']} {least['value']:.4g} "
                     f"{least['op']} {least['bound']:.4g} ({', '.join(where)}) | {seeds[0]} | {seeds[1]} |")
    return "\n".join(lines)


def summarise(result: dict) -> None:
    targets = list(dict.fromkeys(r["target"] for r in result["rows"]))
    result["false_alarms"] = {t: sum(r["false_alarm"] for r in result["rows"] if r["target"] == t) for t in targets}
    result["required_runs"] = {t: sum(r["required"] for r in result["rows"] if r["target"] == t) for t in targets}


def main(argv=None) -> None:
    from faults import harness
    from provenance import stamp, thresholds_in_force

    from mobilellm_export import backends

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--targets", default=",".join(backends.names()))
    ap.add_argument("--work", type=Path, help="folder for models and bundles (default: a temporary one)")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--table", action="store_true", help="print the docs' table from --out; run nothing")
    ap.add_argument("--rescore", action="store_true",
                    help="recompute the derived fields (headroom, false alarms) of --out from its recorded checks")
    a = ap.parse_args(argv)
    gate = thresholds_in_force([RECIPE], [])[RECIPE]["gate"]
    if a.table:
        print(docs_table(json.loads(a.out.read_text())))
        return
    if a.rescore:
        result = json.loads(a.out.read_text())
        rescore(result["rows"], gate)
        summarise(result)
    else:
        targets = a.targets.split(",")
        work = (a.work or Path(tempfile.mkdtemp(prefix="false-alarms."))).resolve()
        t0, prov = time.perf_counter(), stamp()  # the code as the run starts
        src = str(harness.tiny_r1_dir(work / "tiny-r1-hf", n_layers=2))
        tree = work / "checkout"
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(tree), "HEAD"], check=True,
                       capture_output=True)
        try:
            rows = [r for t in targets for r in run_target(t, src, work, tree, gate)]
        finally:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)], capture_output=True)
        result = {"provenance": {**prov, "thresholds": thresholds_in_force([RECIPE], targets)},
                  "command": "python benchmarks/false_alarms.py " + " ".join(argv or sys.argv[1:]),
                  "model": "tiny MobileLLM-R1-layout HF folder, 2 layers, random weights (seed 0)",
                  "settings": " ".join(SETTINGS) + " --threads 1", "recipe": RECIPE,
                  "seconds": round(time.perf_counter() - t0, 1), "rows": rows}
        summarise(result)
    rows = result["rows"]
    a.out.write_text(json.dumps(result, indent=1) + "\n")
    print(table(rows))
    print(f"\nfalse alarms: {result['false_alarms']} of {result['required_runs']}; {result['seconds']:.0f} s; "
          f"wrote {a.out}")


if __name__ == "__main__":
    main()
