"""Android (.pte, XNNPACK) speed and size: our recipes against ExecuTorch's own `export_llm` recipe.

Rows, all measured in one run with 2 threads, prompt 128 tokens, greedy decode:
  eager                float reference Transformer (mobilellm_export), for scale
  ours-4bit-fast       `mobilellm-export --quant 4bit-fast`
  ours-4bit            `mobilellm-export --quant 4bit`
  executorch           `python -m executorch.extension.llm.export.export_llm` (8da4w g32, embedding 4,32)
                       on a params.json of the same shape, random weights

Two measurements, both with 2 threads, a 128-token prompt prefilled in one call and greedy decode:
  per process   each row in a fresh child process (`mobilellm_export.verify.latency.run_child`, our
                Python loop over `forward`), rows interleaved `--repeats` times in rotated order,
                medians: gives peak RSS and the eager row.
  paired        the .pte rows loaded in one process and run by ExecuTorch's C++ TextLLMRunner, one
                generation each per round, order rotated (`paired.py`): the ours / ExecuTorch speed
                ratios and the targets come from here, because separate processes on a shared VM
                swing by +-30 % while back-to-back runs in one process see the same machine.

    python benchmarks/bench_android.py                 # R1-140M (slow: ~3 exports of a 140M model)
    python benchmarks/bench_android.py --quick         # tiny-r1, for development
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from provenance import stamp  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(__file__).resolve().parents[2] / "shared"
DEFAULT_TOKENIZER = SHARED / "data" / "llama3-tokenizer"
DEFAULT_OUT = REPO / "benchmarks" / "results" / "android.json"
DEFAULT_OUT_QUICK = REPO / "benchmarks" / "results" / "android-quick.json"  # --quick never overwrites the real one

THREADS = 2
PROMPT_LEN = 128
MAX_SEQ_LEN = 128  # longest prefill chunk per call, for every .pte
GROUP_SIZE = 32  # export_llm's default (128) would leave every 576-wide linear in fp32
RECIPES = ("4bit-fast", "4bit")
METRICS = ("prefill_tok_s", "decode_tok_s", "ttft_ms", "peak_rss_mb")
TARGETS = {"decode_ratio_min": 1.0, "size_ratio_max": 0.8}  # for 4bit-fast against ExecuTorch's recipe


# ---- ExecuTorch's recipe -------------------------------------------------------------------

def executorch_params(cfg) -> tuple[dict, list[str]]:
    """params.json for export_llm's Llama `ModelArgs`, same shape as our ModelConfig; plus notes on
    what export_llm's XNNPACK path cannot reproduce."""
    if cfg.layer_sharing:
        raise SystemExit("error: export_llm has no layer sharing; pick a model without it")
    if cfg.rope_layers is not None and not all(cfg.rope_layers):
        raise SystemExit("error: NoPE layers are not mapped to export_llm here; pick an all-RoPE model")
    if cfg.rope_scaling is not None:
        raise SystemExit("error: rope_scaling is not mapped to export_llm here")
    params = {
        "dim": cfg.dim, "n_layers": cfg.n_layers, "n_heads": cfg.n_heads, "n_kv_heads": cfg.n_kv_heads,
        "head_dim": cfg.head_dim, "vocab_size": cfg.vocab_size,
        "hidden_dim": cfg.hidden_dim,  # explicit: ModelArgs otherwise derives it from dim, multiple_of
        "norm_eps": cfg.norm_eps, "rope_theta": cfg.rope_theta,
        # ExecuTorch's default RoPE rotates interleaved pairs (Llama-4 / R1 layout); HF rotate_half otherwise.
        "use_hf_rope": not cfg.rope_interleaved,
    }
    notes = []
    if cfg.qk_norm:
        # R1: weightless RMS norm of each q/k head, after RoPE.
        params.update(use_qk_norm=True, qk_norm_before_rope=False, qk_norm_affine=False)
    if cfg.tie_embeddings:
        notes.append("tied embeddings not reproduced: export_llm's XNNPACK path stores tok_embeddings "
                     "(4-bit g32) and output (8da4w g32) separately; model.use_shared_embedding needs "
                     "qmode=torchao:8da4w, which cannot be combined with XNNPACK")
    return params, notes


def export_llm_command(params_path: Path, out_dir: Path, name: str, max_context: int) -> list[str]:
    return [
        sys.executable, "-m", "executorch.extension.llm.export.export_llm",
        "base.model_class=llama3",
        f"base.params={params_path}",
        # no base.checkpoint: ExecuTorch initialises random weights (reset_parameters)
        "model.use_kv_cache=True",
        "model.use_sdpa_with_kv_cache=True",
        "model.enable_dynamic_shape=True",
        "backend.xnnpack.enabled=True",
        "backend.xnnpack.extended_ops=True",
        "quantization.qmode=8da4w",
        f"quantization.group_size={GROUP_SIZE}",
        f"quantization.embedding_quantize='4,{GROUP_SIZE}'",
        # export_llm bounds the token dimension at max_seq_length - 1 (LLMEdgeManager: Dim max=max_seq_len-1):
        # 129 gives a program that takes the same 128-token prefill in one call as ours.
        f"export.max_seq_length={MAX_SEQ_LEN + 1}",
        f"export.max_context_length={max_context}",
        f"export.output_dir={out_dir}",
        f"export.output_name={name}",
        f"hydra.run.dir={out_dir / 'hydra'}",
    ]


# ---- helpers -------------------------------------------------------------------------------

def _versions() -> dict:
    out = {"python": platform.python_version()}
    for pkg in ("torch", "executorch", "torchao", "mobilellm-export"):
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def _run_logged(cmd: list[str], log: Path, cwd: Path) -> float:
    env = dict(os.environ, OMP_NUM_THREADS=str(THREADS))
    t0 = time.perf_counter()
    with open(log, "w") as f:
        r = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=cwd, env=env)
    if r.returncode != 0:
        tail = log.read_text(errors="replace").strip().splitlines()[-15:]
        raise SystemExit(f"error: command failed ({r.returncode}): {shlex.join(cmd)}\n  " + "\n  ".join(tail)
                         + f"\n(full log: {log})")
    return time.perf_counter() - t0


def _shell_join(argv: list[str]) -> str:
    """shlex.join, but `k='4,32'` (hydra's quoted values) reads as "k='4,32'"."""
    def quote(a: str) -> str:
        if "'" in a and not any(c in a for c in '"$`\\!'):
            return f'"{a}"'
        return shlex.quote(a)

    return " ".join(quote(a) for a in argv)


def _float_linears(log: Path) -> int | None:
    """Linears export_llm left in fp32, from its "Model after source transforms" print (repeated blocks
    are collapsed there, so this counts distinct entries); None if the print was not found."""
    if not log.is_file():
        return None
    lines = [ln for ln in log.read_text(errors="replace").splitlines() if "Linear(in_features=" in ln]
    return sum("IntxUnpacked" not in ln for ln in lines) if lines else None


def _ours_cli() -> list[str]:
    exe = Path(sys.executable).with_name("mobilellm-export")
    if exe.exists():
        return [str(exe)]
    return [sys.executable, "-c", "import sys; from mobilellm_export.cli import main; sys.exit(main())"]


def _files(paths) -> dict:
    return {p.name: p.stat().st_size for p in sorted(paths)}


def _median(runs: list[dict]) -> dict:
    ok = [r for r in runs if "error" not in r]
    return {m: (statistics.median(r[m] for r in ok) if ok else None) for m in METRICS}


def _ratio(a, b):
    return a / b if a is not None and b else None


def _fmt(v, spec=".1f"):
    return "-" if v is None else format(v, spec)


def _measure_row(row: dict, decode_tokens: int) -> dict:
    """One fresh process: the float eager reference through the library's latency child, a bare
    .pte through benchmarks/pte_child.py (export_llm's programs have no bundle)."""
    from mobilellm_export.verify.latency import run_child

    if row["kind"] == "eager":
        return run_child("eager", row["target"], PROMPT_LEN, decode_tokens, rounds=1, threads=THREADS,
                         extra=row["extra"])
    cmd = [sys.executable, str(REPO / "benchmarks" / "pte_child.py"), row["target"], "--prompt-len", str(PROMPT_LEN),
           "--decode-tokens", str(decode_tokens), "--threads", str(THREADS)] + (["--data", row["data"]] if row["data"] else [])
    r = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS=str(THREADS)))
    if r.returncode != 0:
        raise RuntimeError(r.stderr.strip().splitlines()[-1] if r.stderr.strip() else f"exit {r.returncode}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def run_paired(rows: list[dict], tokenizer: str, rounds: int, decode_tokens: int, json_path: Path) -> dict:
    """benchmarks/paired.py in a child process over these .pte rows (the first is the reference)."""
    cmd = [sys.executable, str(Path(__file__).with_name("paired.py")), "--json", str(json_path), "--tokenizer",
           str(Path(tokenizer) / "tokenizer.json") if Path(tokenizer).is_dir() else tokenizer,
           "--rounds", str(rounds), "--decode-tokens", str(decode_tokens), "--prompt-len", str(PROMPT_LEN),
           "--threads", str(THREADS)]
    for row in rows:
        cmd.append(row["target"])
        if row["data"]:
            cmd += ["--data", row["data"]]
    r = subprocess.run(cmd, capture_output=True, text=True, errors="replace",
                       env=dict(os.environ, OMP_NUM_THREADS=str(THREADS)))
    if r.returncode != 0:
        tail = r.stderr.strip().splitlines()[-1] if r.stderr.strip() else str(r.returncode)
        raise SystemExit(f"error: paired measurement failed: {tail}")
    return json.loads(json_path.read_text())


# ---- main ----------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", help="preset or source (default r1-140m; tiny-r1 with --quick)")
    ap.add_argument("--tokenizer", default=str(DEFAULT_TOKENIZER), help="tokenizer for our bundles")
    ap.add_argument("--decode-tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3, help="measurements per row (median reported)")
    ap.add_argument("--out", help=f"JSON results path (default {DEFAULT_OUT.relative_to(REPO)}; "
                                  f"{DEFAULT_OUT_QUICK.name} with --quick)")
    ap.add_argument("--keep", metavar="DIR", help="build artifacts here and keep them (default: temp dir, removed)")
    ap.add_argument("--rounds", type=int, default=15, help="paired rounds (one generation per program each)")
    ap.add_argument("--reuse", action="store_true", help="with --keep: skip exports whose artifacts are already there")
    ap.add_argument("--quick", action="store_true", help="development: tiny-r1, max context 256")
    a = ap.parse_args(argv)

    model = a.model or ("tiny-r1" if a.quick else "r1-140m")
    if Path(model).exists():  # a local HF dir / .gguf: absolute, since exports run from the repo root
        model = str(Path(model).resolve())
    tokenizer = str(Path(a.tokenizer).resolve())
    max_context = 256 if a.quick else 2048
    if a.repeats < 1 or a.decode_tokens < 1 or a.rounds < 1:
        ap.error("--repeats, --rounds and --decode-tokens must be >= 1")
    if a.reuse and not a.keep:
        ap.error("--reuse needs --keep DIR")
    if PROMPT_LEN + a.decode_tokens > max_context:
        ap.error(f"prompt {PROMPT_LEN} + --decode-tokens {a.decode_tokens} exceeds max context {max_context}")

    sys.path.insert(0, str(REPO))
    from mobilellm_export.checkpoints import load

    cfg = load(model, weights=False).config
    et_params, et_notes = executorch_params(cfg)

    build = Path(a.keep).resolve() if a.keep else Path(tempfile.mkdtemp(prefix="bench_android."))
    build.mkdir(parents=True, exist_ok=True)
    load_start = os.getloadavg()
    print(f"model {model}: {cfg.param_count():,} parameters; build dir {build}; load avg {load_start[0]:.2f}",
          flush=True)
    try:
        rows: dict[str, dict] = {}
        commands: dict[str, str] = {}

        # (a) float eager reference
        rows["eager"] = {"label": "eager float (reference)", "kind": "eager", "target": model, "files": {},
                         "size_bytes": None, "extra": ["--max-context", str(max_context)], "data": None}

        # (b) our recipes
        for recipe in RECIPES:
            out_dir = build / f"ours-{recipe}"
            cmd = [*_ours_cli(), "--model", model, "--tokenizer", tokenizer, "--quant", recipe, "--out",
                   str(out_dir), "--no-verify", "--max-context", str(max_context), "--max-seq-len", str(MAX_SEQ_LEN)]
            commands[f"ours-{recipe}"] = _shell_join(cmd)
            bundle = out_dir / f"{model}-android-{recipe}"
            if a.reuse and (bundle / "model.pte").is_file():
                print(f"reuse ours {recipe} ({bundle})", flush=True)
                secs = None
            else:
                print(f"export ours {recipe} ...", flush=True)
                secs = _run_logged(cmd, build / f"export-ours-{recipe}.log", cwd=REPO)
            if not bundle.is_dir():
                found = sorted(out_dir.glob(f"*-android-{recipe}"))
                if not found:
                    raise SystemExit(f"error: no bundle folder under {out_dir}")
                bundle = found[0]
            model_files = [p for p in bundle.glob("model.*") if p.is_file()]
            ptd = next((p for p in model_files if p.suffix == ".ptd"), None)
            files = _files(model_files)
            quant = None
            if (bundle / "report.json").is_file():
                quant = json.loads((bundle / "report.json").read_text()).get("quantization")
            rows[f"ours-{recipe}"] = {"label": f"ours {recipe}", "kind": "pte", "target": str(bundle / "model.pte"),
                                      "data": str(ptd) if ptd else None, "files": files,
                                      "size_bytes": sum(files.values()), "export_s": secs, "quantization": quant,
                                      "extra": None}

        # (c) ExecuTorch's export_llm recipe on the same shape
        et_dir = build / "executorch-export_llm"
        et_dir.mkdir(exist_ok=True)
        params_path = et_dir / "params.json"
        params_path.write_text(json.dumps(et_params, indent=2) + "\n")
        et_name = f"{model}-8da4w-g{GROUP_SIZE}.pte"
        et_cmd = export_llm_command(params_path, et_dir, et_name, max_context)
        commands["executorch"] = _shell_join(et_cmd)
        et_pte = et_dir / et_name
        if a.reuse and et_pte.is_file():
            print(f"reuse ExecuTorch export_llm ({et_pte})", flush=True)
            secs = None
        else:
            print("export ExecuTorch export_llm ...", flush=True)
            secs = _run_logged(et_cmd, build / "export-executorch.log", cwd=et_dir)
        if not et_pte.is_file():
            raise SystemExit(f"error: export_llm wrote no {et_pte}")
        et_ptds = sorted(et_dir.glob("*.ptd"))
        files = _files([et_pte, *et_ptds])
        float_linears = _float_linears(build / "export-executorch.log")
        if float_linears:
            et_notes.append(f"export_llm left {float_linears} distinct linear entries in fp32 (group size does not "
                            f"divide in_features)")
        rows["executorch"] = {"label": f"ExecuTorch export_llm 8da4w g{GROUP_SIZE}", "kind": "pte",
                              "target": str(et_pte), "data": str(et_ptds[0]) if et_ptds else None, "files": files,
                              "size_bytes": sum(files.values()), "export_s": secs,
                              "quantization": {"float_linear_entries": float_linears}, "extra": None}

        # measure, interleaved
        for row in rows.values():
            row["runs"] = []
        keys = list(rows)
        for rep in range(a.repeats):
            # Rotate the order every repeat: a fixed order gives each row the same predecessor every
            # time, so any carry-over (e.g. from the 1.7 GB eager process) would bias one row.
            for key in keys[rep % len(keys):] + keys[:rep % len(keys)]:
                row = rows[key]
                print(f"measure [{rep + 1}/{a.repeats}] {key} ...", end=" ", flush=True)
                try:
                    r = _measure_row(row, a.decode_tokens)
                    print(f"decode {r['decode_tok_s']:.1f} tok/s, prefill {r['prefill_tok_s']:.1f} tok/s", flush=True)
                except RuntimeError as e:
                    r = {"error": str(e)}
                    print(f"FAILED: {e}", flush=True)
                row["runs"].append(r)
        for row in rows.values():
            row["median"] = _median(row["runs"])

        # paired: ExecuTorch's program first (the reference), then ours, in one process
        paired_keys = ["executorch", *(f"ours-{r}" for r in RECIPES)]
        print(f"measure paired, TextLLMRunner, {a.rounds} rounds ...", flush=True)
        paired = run_paired([rows[k] for k in paired_keys], tokenizer, a.rounds, a.decode_tokens,
                            build / "paired.json")
        for key, prog in zip(paired_keys, paired["programs"]):
            rows[key]["paired"] = prog

        # ratios ours / ExecuTorch and targets
        et = rows["executorch"]
        ratios = {}
        for recipe in RECIPES:
            o = rows[f"ours-{recipe}"]
            ratios[recipe] = {"decode_tok_s": o["paired"]["decode_ratio"]["median"],
                              "decode_tok_s_iqr": [o["paired"]["decode_ratio"]["q1"], o["paired"]["decode_ratio"]["q3"]],
                              "prefill_tok_s": o["paired"]["prefill_ratio"]["median"],
                              "size": _ratio(o["size_bytes"], et["size_bytes"]),
                              "per_process_decode_tok_s": _ratio(o["median"]["decode_tok_s"],
                                                                 et["median"]["decode_tok_s"]),
                              "per_process_prefill_tok_s": _ratio(o["median"]["prefill_tok_s"],
                                                                  et["median"]["prefill_tok_s"])}
        fast = ratios["4bit-fast"]
        checks = [
            {"name": f"4bit-fast decode >= {TARGETS['decode_ratio_min']:.1f}x ExecuTorch (paired median; "
                     f"IQR {fast['decode_tok_s_iqr'][0]:.3f}-{fast['decode_tok_s_iqr'][1]:.3f})",
             "value": fast["decode_tok_s"],
             "ok": fast["decode_tok_s"] is not None and fast["decode_tok_s"] >= TARGETS["decode_ratio_min"]},
            {"name": f"4bit-fast size <= {TARGETS['size_ratio_max']:.1f}x ExecuTorch (all model files)",
             "value": fast["size"], "ok": fast["size"] is not None and fast["size"] <= TARGETS["size_ratio_max"]},
        ]
        load_end = os.getloadavg()

        # table
        print()
        print(f"{model}, {THREADS} threads, prompt {PROMPT_LEN}, decode {a.decode_tokens} "
              f"(load avg {load_start[0]:.2f} -> {load_end[0]:.2f})")
        print(f"paired: TextLLMRunner, all .pte in one process, {a.rounds} rounds; medians, ratios are medians "
              f"of per-round ratios [interquartile range]")
        head = (f"{'row':<34} {'size MB':>8} {'prefill tok/s':>13} {'decode tok/s':>12} "
                f"{'decode/ET [IQR]':>21} {'prefill/ET':>10} {'size/ET':>7}")
        print(head)
        print("-" * len(head))
        for key in paired_keys:
            row, rt = rows[key], ratios.get(key.removeprefix("ours-"), {})
            p = row["paired"]
            iqr = (f"{rt['decode_tok_s']:.3f} [{rt['decode_tok_s_iqr'][0]:.2f}-{rt['decode_tok_s_iqr'][1]:.2f}]"
                   if rt else "1")
            print(f"{row['label']:<34} {row['size_bytes'] / 1e6:>8.2f} {p['prefill_tokens_per_s']:>13.1f} "
                  f"{p['decode_tokens_per_s']:>12.1f} {iqr:>21} {_fmt(rt.get('prefill_tok_s'), '.3f'):>10} "
                  f"{_fmt(rt.get('size'), '.2f'):>7}")
        print()
        print(f"per process: our Python loop over forward, a fresh process per run, median of {a.repeats}")
        head = (f"{'row':<34} {'prefill tok/s':>13} {'decode tok/s':>12} {'TTFT ms':>8} {'RSS MB':>7}")
        print(head)
        print("-" * len(head))
        for key, row in rows.items():
            m = row["median"]
            print(f"{row['label']:<34} {_fmt(m['prefill_tok_s']):>13} {_fmt(m['decode_tok_s']):>12} "
                  f"{_fmt(m['ttft_ms']):>8} {_fmt(m['peak_rss_mb'], '.0f'):>7}")
        print()
        for c in checks:
            print(f"{'PASS' if c['ok'] else 'FAIL'}  {c['name']}: {_fmt(c['value'], '.3f')}x")
        for n in et_notes:
            print(f"note: {n}")

        result = {
            "benchmark": "android",
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "model": model, "quick": a.quick,
            "config": cfg.to_dict(),
            "versions": _versions(),
            "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                        "loadavg_start": load_start, "loadavg_end": load_end},
            "settings": {"threads": THREADS, "prompt_len": PROMPT_LEN, "decode_tokens": a.decode_tokens,
                         "repeats": a.repeats, "paired_rounds": a.rounds, "statistic": "median", "order": "interleaved, rotated each repeat",
                         "ratios_from": "paired (benchmarks/paired.py, TextLLMRunner)",
                         "max_context": max_context, "max_seq_len": MAX_SEQ_LEN},
            "commands": commands,
            "export_llm_command": commands["executorch"],
            "export_llm_argv": et_cmd,
            "export_llm_params": et_params,
            "export_llm_notes": et_notes + [
                f"export.max_seq_length={MAX_SEQ_LEN + 1}: export_llm bounds the token dimension at max_seq_length-1; "
                f"with {MAX_SEQ_LEN} its program rejects a {MAX_SEQ_LEN}-token call (the runner would need two calls)"],
            "rows": {k: {kk: vv for kk, vv in v.items() if kk != "extra"} for k, v in rows.items()},
            "ratios_ours_over_executorch": ratios,
            "targets": TARGETS,
            "checks": checks,
            "passed": all(c["ok"] for c in checks),
        }
        out = Path(a.out) if a.out else (DEFAULT_OUT_QUICK if a.quick else DEFAULT_OUT)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({**result, "provenance": stamp()}, indent=2) + "\n")
        print(f"\nwrote {out}")
        return 0
    finally:
        if not a.keep:
            shutil.rmtree(build, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
