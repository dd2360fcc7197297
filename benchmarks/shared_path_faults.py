"""Faults in the shared path through the gate, on every target (issue 27, item 2).

    .venv/bin/python benchmarks/shared_path_faults.py                    # every target, ~12 min on 2 cores
    .venv/bin/python benchmarks/shared_path_faults.py --targets onnx --faults gptq_act_order_not_undone

Each fault (tests/targets/faults/shared.py) is a patch of one function that the float model, the
quantized reference and the artifact (or the last two) share: the loader, smoothing, rotation,
GPTQ, the tied head's quantization. The lowering pair cannot see one: reference and artifact are
wrong together. Per target, a clean export of a tiny MobileLLM-R1-layout HF folder (2 layers,
QK-norm, its own 512-id tokenizer; a tiny llama GGUF for the GGUF fault) is made with each recipe
a fault sits in; each fault is then
exported with the real target and `baseline=` that clean report, as `export --baseline` runs in a
user's CI. A fault is caught when a check fails that passes on the clean run (random weights miss
the recipe's absolute quality bounds, clean or not), on an artifact that loaded and ran here.

Writes benchmarks/results/shared_path_faults.json (provenance: commit, date, tools, and the
thresholds in force, which tests/unit/test_results_provenance.py compares with the code) and
prints the table. No row is merged from an older run.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "benchmarks"), str(REPO / "tests"), str(REPO / "tests" / "targets"),
                str(REPO / "tests" / "unit")]  # test_gguf_source.write_gguf: a tiny llama GGUF
OUT = REPO / "benchmarks" / "results" / "shared_path_faults.json"
N_LAYERS = 2  # the CI tests' size: lowering costs ~10-20 s a layer on 2 cores


def run(targets: list[str], names: list[str], work: Path) -> dict:
    from faults import harness
    from faults.shared import BY_NAME
    from test_gguf_source import write_gguf

    from mobilellm_export import backends
    from mobilellm_export.errors import UserError

    faults = [BY_NAME[n] for n in names]
    srcs = {"folder": str(harness.tiny_r1_dir(work / "tiny-r1-hf", n_layers=N_LAYERS))}
    if any(f.source == "gguf" for f in faults):
        # widths XNNPACK's 4-bit kernels (multiples of 32) and ORT's attention (head_dim 16) both take
        write_gguf(work / "tiny-llama.gguf", hidden=64, n_heads=2, n_kv=1)
        srcs["gguf"] = str(work / "tiny-llama.gguf")
    rows, clean_rows = [], []
    for t in targets:
        clean = {}
        for recipe, source in sorted({(f.recipe, f.source) for f in faults}):
            t0 = time.perf_counter()
            try:
                bundle, rep = harness.export_bundle(srcs[source], work / "clean" / t / source / recipe, recipe,
                                                    target=backends.get(t))
            except UserError as e:  # the target cannot take this model: its faults are out of reach here
                clean[recipe, source] = str(e).splitlines()[0]
                clean_rows.append({"target": t, "recipe": recipe, "source": source, "refused": clean[recipe, source]})
                print(f"clean {t} {source} {recipe}: refused: {clean[recipe, source]}", flush=True)
                continue
            clean[recipe, source] = bundle / "report.json"
            clean_rows.append({"target": t, "recipe": recipe, "source": source, "passed": rep["passed"],
                               "failed": harness.failed_checks(rep), "seconds": round(time.perf_counter() - t0, 1)})
            print(f"clean {t} {source} {recipe}: failed {clean_rows[-1]['failed'] or 'none'}", flush=True)
        for f in faults:
            t0 = time.perf_counter()
            row = {"target": t, "fault": f.name, "where": f.where, "recipe": f.recipe, "source": f.source,
                   "description": f.description}
            base = clean[f.recipe, f.source]
            if isinstance(base, str):
                rows.append({**row, "caught": False, "out_of_reach": f"the clean export is refused: {base}"})
                print(f"{t} {f.name}: out of reach ({base})", flush=True)
                continue
            try:
                with f.active():
                    _, rep = harness.export_bundle(srcs[f.source], work / "faults" / t / f.name, f.recipe,
                                                   target=backends.get(t), baseline=str(base))
            except UserError as e:  # the gate stopped in one line before judging: a refusal, not a catch
                row.update(caught=False, refused=str(e).splitlines()[0][:300])
            except Exception as e:  # a crash: a column of its own, never a catch
                row.update(caught=False, crashed=f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300])
            else:
                clean_rep = json.loads(base.read_text())
                by = harness.caught_by(rep, clean_rep)
                row.update(caught=bool(by) and rep.get("artifact_runs_here", False), caught_by=by,
                           checks_failed=harness.failed_checks(rep),
                           messages=[c["message"] for c in rep["gate"]["checks"] if c["name"] in by],
                           float_vs_artifact_kl=rep["parity"]["float_vs_artifact"]["kl_mean"],
                           quant_vs_artifact_kl=rep["parity"]["quant_vs_artifact"]["kl_mean"],
                           clean_float_vs_artifact_kl=clean_rep["parity"]["float_vs_artifact"]["kl_mean"])
            row["seconds"] = round(time.perf_counter() - t0, 1)
            rows.append(row)
            print(f"{t} {f.name}: {'caught by ' + ', '.join(row.get('caught_by', [])) if row['caught'] else 'MISSED'}"
                  f"{' refused: ' + row['refused'] if row.get('refused') else ''}"
                  f"{' crashed: ' + row['crashed'] if row.get('crashed') else ''}", flush=True)
    return {"rows": rows, "clean": clean_rows}


def table(result: dict) -> str:
    """The docs' table (docs/ci-gate.md): a row per fault, a column per target, and float -> artifact
    KL with the fault against the clean export's."""
    rows = result["rows"]
    targets = list(dict.fromkeys(r["target"] for r in rows))
    cell = {(r["fault"], r["target"]): r for r in rows}

    def verdict(r):
        by = r.get("caught_by") or []
        if r["caught"]:
            return f"caught: {by[0]}" + (f" (+{len(by) - 1})" if len(by) > 1 else "")
        if r.get("refused"):  # the baseline's path is long and says nothing: keep what differed
            what = re.sub(r"^baseline \S+ ", "", r["refused"]).split(": ")[0]
            return f"refused: {what[:90]}"
        return ("out of reach" if r.get("out_of_reach") else "crashed" if r.get("crashed") else "**missed**")

    lines = ["| fault | in | source, recipe | " + " | ".join(targets) + " | float->artifact KL with the fault (clean) |",
             "|---|---|---|" + "---|" * len(targets) + "---|"]
    for name in dict.fromkeys(r["fault"] for r in rows):
        first = next(r for r in rows if r["fault"] == name)
        kls = ", ".join(f"{t} {cell[name, t]['float_vs_artifact_kl']:.4f} ({cell[name, t]['clean_float_vs_artifact_kl']:.4f})"
                        for t in targets if "float_vs_artifact_kl" in cell.get((name, t), {})) or "-"
        lines.append(f"| {first['description']} | {first['where']} | {first.get('source', 'folder')}, `{first['recipe']}` | "
                     + " | ".join(verdict(cell[name, t]) for t in targets) + f" | {kls} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    from faults import harness
    from faults.shared import SHARED_FAULTS
    from provenance import stamp, thresholds_in_force

    from mobilellm_export import backends

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--targets", default=",".join(backends.names()))
    ap.add_argument("--faults", default=",".join(f.name for f in SHARED_FAULTS))
    ap.add_argument("--work", type=Path, help="folder for models and bundles (default: a temporary one)")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--table", action="store_true", help="print the docs' table from --out; run nothing")
    a = ap.parse_args(argv)
    if a.table:
        print(table(json.loads(a.out.read_text())))
        return
    targets, names = a.targets.split(","), a.faults.split(",")
    work = (a.work or Path(tempfile.mkdtemp(prefix="shared-faults."))).resolve()
    t0, prov = time.perf_counter(), stamp()  # the code as the run starts
    result = run(targets, names, work)
    recipes = sorted({r["recipe"] for r in result["rows"]} | {r["recipe"] for r in result["clean"]})
    result = {"provenance": {**prov, "thresholds": thresholds_in_force(recipes, targets)},
              "command": "python benchmarks/shared_path_faults.py " + " ".join(argv or sys.argv[1:]),
              "model": f"tiny MobileLLM-R1-layout HF folder, {N_LAYERS} layers, random weights (seed 0); for GGUF "
                       f"faults a tiny llama GGUF (tests/unit/test_gguf_source.py: 2 layers, Q/K permuted as "
                       f"llama.cpp writes them)",
              "settings": harness.SETTINGS,
              "seconds": round(time.perf_counter() - t0, 1), **result,
              "caught": {t: f"{sum(r['caught'] for r in result['rows'] if r['target'] == t)}/"
                            f"{sum(r['target'] == t and 'out_of_reach' not in r for r in result['rows'])}"
                            for t in targets}}
    a.out.write_text(json.dumps(result, indent=1) + "\n")
    print(table(result))
    print(f"\ncaught: {result['caught']}; {result['seconds']:.0f} s; wrote {a.out}")


if __name__ == "__main__":
    main()
