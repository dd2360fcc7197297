"""Threshold checks and the report: report.json, report.md and the terminal table."""

from __future__ import annotations

import json
from pathlib import Path

from ..quant.recipe import Thresholds

PAIRS = {
    "float_vs_quant": "float -> quantized eager (quantization error)",
    "quant_vs_artifact": "quantized eager -> artifact (lowering error)",
    "float_vs_artifact": "float -> artifact (end to end)",
    "quant_noise_floor": "quantized eager -> itself with 1-ulp input noise (floor for the lowering error)",
}
SHORT = {"float_vs_quant": "float→quant", "quant_vs_artifact": "quant→artifact", "float_vs_artifact": "float→artifact",
         "quant_noise_floor": "noise floor"}


def checks(parity: dict, th: Thresholds) -> list[dict]:
    out = []

    def add(name, value, op, bound):
        if bound is None or value is None:
            return
        ok = value <= bound if op == "<=" else value >= bound
        out.append({"name": name, "value": value, "op": op, "bound": bound, "ok": bool(ok)})

    e2e, low = parity.get("float_vs_artifact"), parity.get("quant_vs_artifact")
    if e2e:
        add("float->artifact kl_mean", e2e["kl_mean"], "<=", th.kl_mean)
        add("float->artifact top1", e2e["top1"], ">=", th.top1_min)
        add("float->artifact ppl_delta", e2e["ppl_delta"], "<=", th.ppl_delta_max)
    if low:
        add("quant->artifact kl_mean", low["kl_mean"], "<=", th.lowering_kl_mean)
        add("quant->artifact top1", low["top1"], ">=", th.lowering_top1_min)
        add("quant->artifact max_abs_logit", low["max_abs_logit"], "<=", th.lowering_max_abs_logit)
    return out


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def markdown(report: dict) -> str:
    lines = [f"# {report['model']} · {report['target']} · {report['recipe']}", ""]
    if "parity" in report:
        lines += [f"Parity on {report['eval']['positions']} positions of {report['eval']['text']} "
                  f"(windows of {report['eval']['window']}).", "",
                  "| pair | mean KL | p99 KL | top-1 | ppl ref | ppl test | Δppl | max abs Δlogit "
                  "| greedy prefix / match |", "|---|---|---|---|---|---|---|---|---|"]
        for key, label in PAIRS.items():
            p, g = report["parity"].get(key), report.get("greedy", {}).get(key)
            if p:
                greedy = f"{g['common_prefix']}/{g['tokens']}, {g['match']:.2f}" if g else "-"
                lines.append(f"| {label} | {p['kl_mean']:.4f} | {p['kl_p99']:.4f} | {p['top1']:.3f} | "
                             f"{p['ppl_ref']:.2f} | {p['ppl_test']:.2f} | {100 * p['ppl_delta']:+.1f} % | "
                             f"{p['max_abs_logit']:.3g} | {greedy} |")
    if "latency" in report:
        lines += ["", "| runner | prefill tok/s | decode tok/s | TTFT ms | peak RSS MB | file MB |", "|---|---|---|---|---|---|"]
        for name, lat in report["latency"].items():
            lines.append(f"| {name} | {lat['prefill_tok_s']:.1f} | {lat['decode_tok_s']:.1f} | {lat['ttft_ms']:.1f} | "
                         f"{lat['peak_rss_mb']:.0f} | {_fmt(lat.get('file_mb', '-'))} |")
    if report.get("checks"):
        lines += ["", "| check | value | bound | result |", "|---|---|---|---|"]
        for c in report["checks"]:
            lines.append(f"| {c['name']} | {c['value']:.4g} | {c['op']} {c['bound']:g} | {'pass' if c['ok'] else 'FAIL'} |")
    fb = report.get("quantization", {}).get("fallbacks")
    if fb:
        lines += ["", "Group-size fallbacks: " + ", ".join(f"{f['layer']} (in {f['in_features']}: g{f['group_size']})"
                                                          for f in fb)]
    lines += ["", f"Result: **{'PASS' if report.get('passed', True) else 'FAIL'}**", ""]
    return "\n".join(lines)


def write(report: dict, d: Path) -> None:
    (d / "report.json").write_text(json.dumps(report, indent=2))
    (d / "report.md").write_text(markdown(report))


def print_summary(report: dict, console) -> None:
    from rich.table import Table

    if "parity" in report:
        t = Table(title=f"parity ({report['eval']['positions']} positions)")
        for col in ("pair", "mean KL", "p99 KL", "top-1", "ppl ref", "ppl test", "max|Δ|", "greedy"):
            t.add_column(col, no_wrap=True)
        for key, label in SHORT.items():
            p, g = report["parity"].get(key), report.get("greedy", {}).get(key)
            if p:
                t.add_row(label, f"{p['kl_mean']:.4f}", f"{p['kl_p99']:.4f}", f"{p['top1']:.3f}",
                          f"{p['ppl_ref']:.2f}", f"{p['ppl_test']:.2f}", f"{p['max_abs_logit']:.3g}",
                          f"{g['common_prefix']}/{g['tokens']}" if g else "-")
        console.print(t)
    if "latency" in report:
        t = Table(title="latency (2 threads)")
        for col in ("runner", "prefill tok/s", "decode tok/s", "TTFT ms", "RSS MB", "file MB"):
            t.add_column(col, no_wrap=True)
        for name, lat in report["latency"].items():
            t.add_row(name, f"{lat['prefill_tok_s']:.1f}", f"{lat['decode_tok_s']:.1f}", f"{lat['ttft_ms']:.1f}",
                      f"{lat['peak_rss_mb']:.0f}", _fmt(lat.get("file_mb", "-")))
        console.print(t)
    for c in report.get("checks", []):
        mark = "[green]pass[/]" if c["ok"] else "[red]FAIL[/]"
        console.print(f"  {mark} {c['name']} = {c['value']:.4g} (bound {c['op']} {c['bound']:g})")
