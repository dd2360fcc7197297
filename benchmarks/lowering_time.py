"""How long the `android` lowering takes with every XNNPACK pass and with the lean pass list
(mobilellm_export/backends/executorch/lean_passes.py), and whether the bytes are the same.

Each model is quantized once (`4bit-fast`: the 8da4w g32 linears of `4bit`, no calibration) and
lowered in this one process, stock then lean, `--rounds` times; a row's time per mode is its fastest
round. A warm-up lowering (tiny-llama, not reported) first pays the process's one-time costs
(imports, XNNPACK's pattern models), which would otherwise land on the first stock run.
Prints a table, writes JSON.

    python benchmarks/lowering_time.py                                  # tiny-llama, tiny-gemma3, smollm2-135m
    python benchmarks/lowering_time.py --models tiny-llama --out /tmp/l.json   # a two-minute check
    python benchmarks/lowering_time.py --models tiny-llama tiny-gemma3 --rounds 2
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from provenance import stamp  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def _model(name: str, max_context: int):
    from mobilellm_export.checkpoints import build_model, load
    from mobilellm_export.model import Transformer, random_weights
    from mobilellm_export.presets import PRESETS

    if name in PRESETS:
        cfg = PRESETS[name]
        return cfg, Transformer.from_weights(cfg, random_weights(cfg), max_context=max_context).eval()
    model = build_model(load(name), max_context=max_context).eval()
    return model.cfg, model


def measure(name: str, max_context: int, max_seq_len: int, work: Path, rounds: int = 1) -> dict:
    from mobilellm_export.backends.executorch.program import export_pte
    from mobilellm_export.quant.quantize import quantize
    from mobilellm_export.quant.recipe import load_recipe

    cfg, model = _model(name, max_context)
    quantize(model, load_recipe("4bit-fast"))
    row = {"model": name, "n_layers": cfg.n_layers, "max_context": max_context, "max_seq_len": max_seq_len,
           "rounds": rounds}
    digests = set()
    for r in range(rounds):
        for mode in ("stock", "lean"):
            out = work / f"{name}-{mode}-{r}"
            t0 = time.perf_counter()
            facts = export_pte(model, cfg, out / "model.pte", max_seq_len=max_seq_len, max_context=max_context,
                               data_file="model.ptd", lean=mode == "lean")
            run = {"wall_s": round(time.perf_counter() - t0, 1),
                   **{k: round(v, 1) for k, v in facts.items() if k.endswith("_s")}}
            row.setdefault(f"{mode}_rounds", []).append(run["wall_s"])
            if mode not in row or run["wall_s"] < row[mode]["wall_s"]:
                row[mode] = run
            digests.add(tuple(hashlib.sha256((out / f).read_bytes()).hexdigest() for f in ("model.pte", "model.ptd")))
    row["delegate_calls"] = facts["delegate_calls"]  # the same program every time (identical_bytes)
    row["identical_bytes"] = len(digests) == 1
    row["lean_over_stock"] = round(row["lean"]["wall_s"] / row["stock"]["wall_s"], 3)
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="+", default=["tiny-llama", "tiny-gemma3", "smollm2-135m"])
    ap.add_argument("--max-context", type=int, default=2048)
    ap.add_argument("--max-seq-len", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=1, help="stock then lean, this many times (fastest kept)")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "lowering_time.json"))
    args = ap.parse_args()

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        measure("tiny-llama", args.max_context, args.max_seq_len, Path(tmp) / "warm-up")
        for name in args.models:
            rows.append(measure(name, args.max_context, args.max_seq_len, Path(tmp), args.rounds))
            r = rows[-1]
            print(f"{name:14s} layers {r['n_layers']:2d}  stock {r['stock']['wall_s']:7.1f} s  "
                  f"lean {r['lean']['wall_s']:7.1f} s  lean/stock {r['lean_over_stock']:.3f}  "
                  f"same bytes {r['identical_bytes']}", flush=True)
    Path(args.out).write_text(json.dumps({"provenance": stamp(), "rows": rows}, indent=1) + "\n")
    print(f"wrote {args.out}")
    if not all(r["identical_bytes"] for r in rows):
        sys.exit("the lean lowering changed the program's bytes")


if __name__ == "__main__":
    main()
