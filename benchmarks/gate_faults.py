"""Seeded-fault suite: how many real export bugs the CI gate catches, and no false alarms.

    .venv/bin/python benchmarks/gate_faults.py                       # all (about an hour on 2 cores)
    .venv/bin/python benchmarks/gate_faults.py --faults qk_norm_dropped,eos_ids_wrong --clean none
    .venv/bin/python benchmarks/gate_faults.py --clean tiny-llama-4bit,r1-folder-4bit --faults none
    .venv/bin/python benchmarks/gate_faults.py --table      # the docs' tables, from the results file

Faults (tests/faults): each is injected into an otherwise correct Android export of a 4-layer
MobileLLM-R1-layout HF folder (QK-norm, 512-id vocabulary), and the default gate is run on it
against the clean export's report as baseline (`export --baseline`, or `verify --baseline` for a
bundle edited after export). A fault is caught when a named check fails that passes on the clean
run, on an artifact that loads and runs; a refusal (the gate stopped with a one-line error before
a report) and a crash are columns apart, never catches.

Clean cases (false alarms): exports that vary seed, model and recipe, each judged twice: by the
gate without a baseline, then against its own report as baseline, re-run as a user's CI would
(`verify --baseline` with another thread count; a re-export where the source cannot be reloaded
as it was: presets with seed != 0). Any failed check is a false alarm.

Every export runs in its own child process (a fault that crashes the runtime kills only its
child), one at a time. Results: benchmarks/results/gate_faults.json and a markdown table on stdout.
Every row records its commit and date; the file records the thresholds in force. Rows of an earlier
partial run are merged in by name only when that run's thresholds equal today's (then
tests/unit/test_results_provenance.py holds the file to them).
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from provenance import stamp, thresholds_in_force  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
LLAMA3_TOKENIZER = SHARED / "data" / "llama3-tokenizer"
DEFAULT_OUT = REPO / "benchmarks" / "results" / "gate_faults.json"  # stale/ holds the 2026-12-02 run
sys.path[:0] = [str(REPO / "tests"), str(REPO / "tests" / "targets")]  # conftest helpers, the faults package

CHILD_TIMEOUT = 3600  # s: a tiny-r1 export with its 128K-row head takes minutes on a busy machine

# name -> how the clean export is made. r1-folder-* are also the faults' baselines.
CLEAN = {
    "tiny-r1-seed0-4bit": {"source": "tiny-r1", "seed": 0, "recipe": "4bit", "tokenizer": "llama3"},
    "tiny-r1-seed1-4bit-fast": {"source": "tiny-r1", "seed": 1, "recipe": "4bit-fast", "tokenizer": "llama3"},
    "tiny-r1-seed2-8bit": {"source": "tiny-r1", "seed": 2, "recipe": "8bit", "tokenizer": "llama3"},
    "tiny-llama-4bit": {"source": "tiny-llama", "seed": 0, "recipe": "4bit", "tokenizer": "tiny"},
    "r1-folder-4bit": {"source": "folder", "seed": 0, "recipe": "4bit", "tokenizer": None},
    "r1-folder-4bit-fast": {"source": "folder", "seed": 0, "recipe": "4bit-fast", "tokenizer": None},
}


# ---- children: one export (+ gate) each ---------------------------------------------------------------

def _source(work: Path, case: dict) -> tuple[str, str | None]:
    from faults import harness

    tok = {"llama3": str(LLAMA3_TOKENIZER), "tiny": str(harness.make_tokenizer(work / "tok512")), None: None}
    src = str(harness.tiny_r1_dir(work / "tiny-r1-hf")) if case["source"] == "folder" else case["source"]
    return src, tok[case["tokenizer"]]


def clean_dir(work: Path, name: str) -> Path:
    return work / "clean" / name


def child_clean(work: Path, name: str) -> dict:
    """Export + gate (no baseline), then the same bundle judged against that report."""
    from faults import harness

    case = CLEAN[name]
    src, tok = _source(work, case)
    t0 = time.perf_counter()
    bundle, first = harness.export_bundle(src, clean_dir(work, name), case["recipe"], tokenizer=tok, seed=case["seed"])
    t1 = time.perf_counter()
    report = str(bundle / "report.json")
    if case["seed"] == 0:  # verify reloads the source: what `mobilellm-export verify --baseline` does
        how = "verify --source --baseline (2 threads)"
        again = harness.verify_bundle(bundle, baseline=report, threads=2, source=src)
    else:  # a preset bundle records no seed, so verify would reload seed 0: re-export instead
        how = "re-export --baseline (2 threads)"
        _, again = harness.export_bundle(src, work / "clean-again" / name, case["recipe"], tokenizer=tok,
                                         seed=case["seed"], baseline=report, threads=2)
    row = {"case": name, **case, "report": report, "export_s": round(t1 - t0, 1),
           "rerun": how, "rerun_s": round(time.perf_counter() - t1, 1),
           "failed": harness.failed_checks(first), "failed_with_baseline": harness.failed_checks(again),
           "messages": [c["message"] for r in (first, again) for c in r["gate"]["checks"] if c["status"] == "fail"]}
    row["false_alarm"] = bool(row["failed"] or row["failed_with_baseline"])
    return row


def child_fault(work: Path, name: str) -> dict:
    from faults import BY_NAME, harness

    fault = BY_NAME[name]
    base = clean_dir(work, f"r1-folder-{fault.recipe}")
    reports = list(base.glob("*/report.json"))
    if not reports:
        raise SystemExit(f"no clean {fault.recipe} export under {base}: run its clean case first")
    out = work / "faults" / name
    return harness.run_fault(fault, reports[0], out)


def spawn(work: Path, kind: str, name: str) -> dict:
    """Run one child; a child that dies (timeout, signal, traceback outside run_fault) is a crash row."""
    row_path = work / "rows" / f"{kind}-{name}.json"
    log = work / "logs" / f"{kind}-{name}.log"
    row_path.parent.mkdir(parents=True, exist_ok=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    row_path.unlink(missing_ok=True)
    t0 = time.perf_counter()
    cmd = [sys.executable, __file__, "--work", str(work), "--child", kind, name, "--row", str(row_path)]
    with open(log, "w") as f:
        try:
            rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, timeout=CHILD_TIMEOUT).returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
    if row_path.is_file():
        return json.loads(row_path.read_text())
    tail = log.read_text(errors="replace").strip().splitlines()[-1:] or [""]
    key = "fault" if kind == "fault" else "case"
    return {key: name, "crashed": f"child exited {rc}: {tail[0][:200]}", "caught": False, "false_alarm": None,
            "seconds": round(time.perf_counter() - t0, 1), "log": str(log)}


# ---- summary ------------------------------------------------------------------------------------------

def summarise(faults: list[dict], clean: list[dict]) -> dict:
    def rate(sev):
        rows = [r for r in faults if r.get("severity") == sev]
        return (sum(bool(r.get("caught")) for r in rows) / len(rows)) if rows else None, len(rows)

    (gross, n_gross), (near, n_near) = rate("gross"), rate("near")
    return {"catch_rate_gross": gross, "catch_rate_near": near, "faults_gross": n_gross, "faults_near": n_near,
            "refused": sum(bool(r.get("refused")) for r in faults),
            "crashed": sum(bool(r.get("crashed")) for r in faults),
            "missed_gross": [r["fault"] for r in faults if r.get("severity") == "gross" and not r.get("caught")],
            "caught_near": [r["fault"] for r in faults if r.get("severity") == "near" and r.get("caught")],
            "clean_cases": len(clean), "false_alarms": sum(bool(r.get("false_alarm")) for r in clean),
            "clean_crashed": sum(bool(r.get("crashed")) for r in clean)}


def table(result: dict) -> str:
    lines = ["| fault | level | severity | caught | by (first check) | localised at | refused / crashed |",
             "|---|---|---|---|---|---|---|"]
    for r in result["faults"]:
        by = r.get("caught_by") or []
        other = r.get("refused") or r.get("crashed") or ""
        lines.append(f"| {r['fault']} | {r.get('level', '')} | {r.get('severity', '')} | "
                     f"{'yes' if r.get('caught') else 'no'} | {by[0] if by else ''}"
                     f"{f' (+{len(by) - 1})' if len(by) > 1 else ''} | {r.get('localise') or ''} | "
                     f"{str(other).replace('|', '/')[:90]} |")
    s = result["summary"]
    pct = (lambda x: "-" if x is None else f"{100 * x:.0f} %")
    lines += ["", f"Caught: gross {pct(s['catch_rate_gross'])} of {s['faults_gross']}, near-threshold "
                  f"{pct(s['catch_rate_near'])} of {s['faults_near']}; refused {s['refused']}, crashed {s['crashed']}.",
              "", "| clean export | recipe | failed checks (no baseline) | failed checks (own baseline, re-run) |",
              "|---|---|---|---|"]
    for r in result["clean"]:
        lines.append(f"| {r['case']} | {r.get('recipe', '')} | {', '.join(r.get('failed') or []) or 'none'} | "
                     f"{', '.join(r.get('failed_with_baseline') or []) or r.get('crashed') or 'none'} |")
    lines += ["", f"False alarms: {s['false_alarms']} of {s['clean_cases']} clean exports."]
    return "\n".join(lines)


def _merge(old: list[dict], new: list[dict], key: str) -> list[dict]:
    """Rows of an earlier run of the same file, kept only where they carry their own provenance (the
    file's thresholds were checked equal to today's before this is called); this run's replace them."""
    by = {r[key]: r for r in old if r.get("provenance")}
    by.update({r[key]: r for r in new})
    return list(by.values())


def main(argv=None) -> None:
    from faults import FAULTS, harness

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--faults", default="all", help="comma-separated fault names, 'all' or 'none'")
    ap.add_argument("--clean", default="all", help=f"comma-separated clean cases ({', '.join(CLEAN)}), 'all' or "
                                                   f"'none' (the r1-folder cases the faults need run anyway)")
    ap.add_argument("--work", type=Path, help="folder for models, bundles and logs (kept; default: a temp dir)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--child", nargs=2, metavar=("KIND", "NAME"), help=argparse.SUPPRESS)
    ap.add_argument("--row", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--table", action="store_true", help="print the docs' tables from --out and stop")
    a = ap.parse_args(argv)
    if a.table:
        print(table(json.loads(a.out.read_text())))
        return
    work = (a.work or Path(tempfile.mkdtemp(prefix="gate-faults."))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    if a.child:
        kind, name = a.child
        row = (child_fault if kind == "fault" else child_clean)(work, name)
        a.row.write_text(json.dumps(row, indent=1))
        return

    def pick(arg, names):
        chosen = list(names) if arg == "all" else [] if arg == "none" else arg.split(",")
        unknown = [n for n in chosen if n not in names]
        if unknown:
            raise SystemExit(f"unknown: {', '.join(unknown)} (choose from {', '.join(names)})")
        return chosen

    faults = pick(a.faults, [f.name for f in FAULTS])
    needed = {f"r1-folder-{f.recipe}" for f in FAULTS if f.name in faults}
    cases = pick(a.clean, list(CLEAN))
    # A baseline the faults need runs unless asked for or already in --work (then reused).
    cases += [c for c in CLEAN if c in needed and c not in cases and not any(clean_dir(work, c).glob("*/report.json"))]
    t0, stamped = time.perf_counter(), stamp()  # the code as the run starts
    print(f"work dir: {work}", flush=True)
    clean_rows, fault_rows = [], []
    for name in cases:  # baselines first: the faults are judged against them
        r = spawn(work, "clean", name)
        clean_rows.append(r)
        verdict = r.get("crashed") or (f"FALSE ALARM {r['failed'] + r['failed_with_baseline']}"
                                       if r.get("false_alarm") else "pass")
        print(f"clean {name}: {verdict} ({r.get('export_s', r.get('seconds'))} s)", flush=True)
    for name in faults:
        r = spawn(work, "fault", name)
        fault_rows.append(r)
        print(f"fault {name}: {'caught by ' + ', '.join(r['caught_by']) if r.get('caught') else 'MISSED'}"
              f"{' refused: ' + r['refused'] if r.get('refused') else ''}"
              f"{' crashed: ' + r['crashed'] if r.get('crashed') else ''} ({r.get('seconds')} s)", flush=True)
    prov = {**stamped, "thresholds": thresholds_in_force(sorted({c["recipe"] for c in CLEAN.values()}
                                                               | {f.recipe for f in FAULTS}), ["android"])}
    for r in clean_rows + fault_rows:  # each row says when and on what code it was measured
        r["provenance"] = {k: prov[k] for k in ("commit", "dirty", "date")}
    old = json.loads(a.out.read_text()) if a.out.is_file() else {}
    if old and old.get("provenance", {}).get("thresholds") != json.loads(json.dumps(prov["thresholds"])):
        print(f"{a.out}: made under other thresholds (or none recorded): its rows are not merged", flush=True)
        old = {}
    result = {
        "updated": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "python": platform.python_version()},
        "settings": {**harness.SETTINGS, "threads": harness.THREADS, "latency": False},
        "model": "faults: a 4-layer MobileLLM-R1-layout HF folder (dim 64, QK-norm, vocab 512, random weights, "
                 "seed 0); clean cases: as named",
        "definition": "caught: a gate check fails on the faulty run that passes on the clean run of the same model "
                      "and recipe, on an artifact that loads and runs here; refused (one-line error, no report) and "
                      "crashed are not catches. False alarm: any failed check on a clean export.",
        "faults": _merge(old.get("faults", []), fault_rows, "fault"),
        "clean": _merge(old.get("clean", []), clean_rows, "case"),
        "last_run_seconds": round(time.perf_counter() - t0, 1),  # rows of earlier runs keep their own
    }
    order = {f.name: i for i, f in enumerate(FAULTS)}
    result["faults"].sort(key=lambda r: order.get(r["fault"], len(order)))
    result["summary"] = summarise(result["faults"], result["clean"])
    result.update({k: result["summary"][k] for k in ("catch_rate_gross", "catch_rate_near", "false_alarms")})
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps({**result, "provenance": prov}, indent=1) + "\n")
    print()
    print(table(result))
    print(f"\nwritten: {a.out}")


if __name__ == "__main__":
    main()
