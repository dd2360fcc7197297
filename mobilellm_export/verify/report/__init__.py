"""Threshold checks and the report: report.json, report.md and the terminal summary.

The terminal summary is laid out to read fully in 80 columns (a CI log is not a terminal, and rich
then cuts wider tables); report.md carries every figure.
"""

from __future__ import annotations

import json
from pathlib import Path

from mobilellm_export.quant.recipe import Thresholds

from mobilellm_export.verify.report.labels import PAIRS, SHORT  # noqa: F401 (re-exported)


def record(suite: str, name: str, value, op: str | None, bound, basis: str, status: str | None = None,
           message: str | None = None) -> dict:
    """One gate check (the shape `--junit`, GitHub annotations and report.md read).

    status: pass | fail | warn (reported, does not fail the gate) | skip; from value/op/bound if None."""
    if status is None:
        ok = value <= bound if op == "<=" else value >= bound if op == ">=" else value == bound
        status = "pass" if ok else "fail"
    if message is None:
        verb = {"pass": "within", "warn": "outside", "fail": "outside", "skip": "not checked:"}[status]
        message = f"{name} = {value:.4g}, {verb} {op} {bound:.4g} ({basis})"
    return {"suite": suite, "name": name, "status": status, "ok": status != "fail", "message": message,
            "value": value, "op": op, "bound": bound, "basis": basis}


FLOOR_ZERO = 1e-6  # a noise floor at or below this is 0: fp32 and weight-only artifacts


def lowering_kl_bound(th: Thresholds, floor_kl: float | None) -> tuple[float, str]:
    """The lowering pair's KL bound and its basis: relative to the noise floor measured in the same
    run, or the recipe's absolute bound where that floor is 0 (or absent) or no factor is set."""
    if th.lowering_kl_floor_factor is not None and floor_kl is not None and floor_kl > FLOOR_ZERO:
        return (th.lowering_kl_floor_factor * floor_kl + th.lowering_kl_floor_slack,
                f"{th.lowering_kl_floor_factor:g} x noise floor {floor_kl:.4g} + {th.lowering_kl_floor_slack:g}")
    return th.lowering_kl_mean, "recipe threshold" + (" (noise floor is 0)" if floor_kl is not None else "")


def checks(parity: dict, th: Thresholds) -> list[dict]:
    """The recipe's bounds on the end-to-end pair, and on the lowering pair relative to the noise
    floor measured in the same run (absolute where that floor is 0 or no factor is set)."""
    out = []

    def add(suite, name, value, op, bound, basis):
        if bound is not None and value is not None:
            out.append(record(suite, name, value, op, bound, basis))

    e2e, low, floor = (parity.get(k) for k in ("float_vs_artifact", "quant_vs_artifact", "quant_noise_floor"))
    if e2e:
        add("absolute", "float->artifact kl_mean", e2e["kl_mean"], "<=", th.kl_mean, "recipe threshold")
        add("absolute", "float->artifact top1", e2e["top1"], ">=", th.top1_min, "recipe threshold")
        add("absolute", "float->artifact ppl_delta", e2e["ppl_delta"], "<=", th.ppl_delta_max, "recipe threshold")
    if low:
        relative = th.lowering_kl_floor_factor is not None and floor and floor["kl_mean"] > FLOOR_ZERO
        add("lowering", "quant->artifact kl_mean", low["kl_mean"], "<=",
            *lowering_kl_bound(th, floor["kl_mean"] if floor else None))
        if relative and th.lowering_top1_floor_slack is not None:
            add("lowering", "quant->artifact top1", low["top1"], ">=", floor["top1"] - th.lowering_top1_floor_slack,
                f"noise floor top-1 {floor['top1']:.4g} - {th.lowering_top1_floor_slack:g}")
        else:
            add("lowering", "quant->artifact top1", low["top1"], ">=", th.lowering_top1_min, "recipe threshold")
        add("lowering", "quant->artifact max_abs_logit", low["max_abs_logit"], "<=", th.lowering_max_abs_logit,
            "recipe threshold")
        add("lowering", "quant->artifact max_abs_logit / max_abs_ref", low.get("max_abs_logit_rel"), "<=",
            th.lowering_max_abs_logit_rel, "target threshold")
    return out


def metadata_records(meta: list[dict]) -> list[dict]:
    """The metadata checks (values the apps read, re-derived from the hashed files) as gate records."""
    out = []
    for c in meta:
        status = c.get("status") or ("pass" if c["ok"] else "fail")  # skip: a check that does not apply
        msg = (f"{c['name']}: bundle.json and {c['source']} agree" if status == "pass" else c.get("message") or
               f"{c['name']}: bundle.json says {_cell(c['manifest'])}, {c['source']} says {_cell(c['derived'])}")
        out.append(record("metadata", f"metadata: {c['name']}", None, "==", None, f"re-derived from {c['source']}",
                          status=status, message=msg))
    return out


def _fmt(v, spec: str = ".1f") -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return format(v, spec)
    return str(v)


def _short(v: float) -> str:
    """At most ~7 characters: random-weight perplexities reach 1e8."""
    return f"{v:.1f}" if abs(v) < 10000 else f"{v:.2g}"


def _cell(v) -> str:
    text = str(v).replace("|", "\\|").replace("\n", " ")
    return text if len(text) <= 40 else text[:37] + "..."


def _iqr(row: dict, key: str) -> str:
    q = row.get(f"{key}_iqr")
    return f"{_fmt(row.get(key))} [{_fmt(q[0])}–{_fmt(q[1])}]" if q and q[0] is not None else _fmt(row.get(key))


def latency_rows(report: dict) -> list[tuple[str, dict]]:
    return [(k, v) for k, v in report.get("latency", {}).items() if "rounds" in v]


def result_line(report: dict) -> str:
    if report.get("passed") is None:
        return "not verified (exported with --no-verify)"
    if not report.get("artifact_runs_here", True):
        return ("PASS (quantized reference only: the artifact's runtime cannot run on this machine)"
                if report["passed"] else "FAIL")
    if report.get("mode") == "quick":
        return "PASS (--quick: against the reference logits in the bundle)" if report["passed"] else "FAIL"
    return "PASS" if report["passed"] else "FAIL"


def markdown(report: dict) -> str:
    lines = [f"# {report['model']} · {report['target']} · {report['recipe']}", ""]
    for note in report.get("target_notes", []):
        lines.append(f"- target note: {note}")
    if "parity" in report:
        lines += [f"Parity on {report['eval']['positions']} positions of {report['eval']['text']} "
                  f"(windows of {report['eval']['window']}{', each starting with BOS' if report['eval'].get('bos') else ''}).",
                  "", "| pair | mean KL | p99 KL | top-1 | ppl ref | ppl test | Δppl | max abs Δlogit "
                  "| greedy prefix / match |", "|---|---|---|---|---|---|---|---|---|"]
        for key, label in PAIRS.items():
            p, g = report["parity"].get(key), report.get("greedy", {}).get(key)
            if p:
                greedy = f"{g['common_prefix']}/{g['tokens']}, {g['match']:.2f}" if g else "-"
                lines.append(f"| {label} | {p['kl_mean']:.4f} | {p['kl_p99']:.4f} | {p['top1']:.3f} | "
                             f"{p['ppl_ref']:.2f} | {p['ppl_test']:.2f} | {100 * p['ppl_delta']:+.1f} % | "
                             f"{p['max_abs_logit']:.3g} | {greedy} |")
    dp = report.get("decode_path")
    if dp:
        steps = next(iter(dp.values()))["steps"]
        lines += ["", f"Decode path: {steps} single-token steps, both sides fed the quantized reference's own "
                  "greedy tokens (windowed parity above scores prefill calls only). A greedy fork with the "
                  "decode path at its floor is a near-tie tipped by rounding; one above it is a decode-path "
                  "difference.", "", "| pair | mean KL | p99 KL | top-1 |", "|---|---|---|---|"]
        for key, label in PAIRS.items():
            if key in dp:
                d = dp[key]
                lines.append(f"| {label} | {d['kl_mean']:.4f} | {d['kl_p99']:.4f} | {d['top1']:.3f} |")
    rows = latency_rows(report)
    if rows:
        lines += ["", f"Latency, {report.get('threads', 2)} threads: medians of "
                  f"{rows[0][1].get('rounds', 1)} rounds after a warm-up at the same shapes, [interquartile range].",
                  "", "| runner | prefill tok/s | decode tok/s | TTFT ms | peak RSS MB | file MB |",
                  "|---|---|---|---|---|---|"]
        for name, lat in rows:
            lines.append(f"| {name} | {_iqr(lat, 'prefill_tok_s')} | {_iqr(lat, 'decode_tok_s')} | "
                         f"{_iqr(lat, 'ttft_ms')} | {_fmt(lat.get('peak_rss_mb'), '.0f')} | {_fmt(lat.get('file_mb'))} |")
        ratio = report["latency"].get("app_vs_python_loop")
        if ratio:
            lines += ["", f"The runtime's own loop against our Python loop over the same artifact: decode "
                          f"{_fmt(ratio['decode_tok_s'], '.2f')}×, prefill {_fmt(ratio['prefill_tok_s'], '.2f')}×."]
    checks = report.get("gate", {}).get("checks") or report.get("checks")
    if checks:
        lines += ["", "## Gate", ""]
        if report.get("gate", {}).get("baseline"):
            lines += [f"Baseline: `{report['gate']['baseline']}`.", ""]
        lines += ["| suite | check | value | bound | basis | result |", "|---|---|---|---|---|---|"]
        for c in checks:
            if c.get("suite") == "metadata" and c["status"] == "pass":
                continue  # listed in full in the metadata table below
            value = _fmt(c["value"], ".4g") if c.get("value") is not None else "-"
            bound = f"{c['op']} {c['bound']:.4g}" if c.get("bound") is not None else "-"
            status = c.get("status", "pass" if c["ok"] else "fail")
            result = {"pass": "pass", "fail": "**FAIL**", "warn": "warning", "skip": "skipped"}[status]
            detail = c.get("basis", "") if status == "pass" else c.get("message", "")
            lines.append(f"| {c.get('suite', '')} | {c['name']} | {value} | {bound} | {_cell(detail)} | {result} |")
    loc = report.get("localise")
    if loc:
        lines += ["", f"Localiser: **{loc['message']}**", "",
                  "| point | relative error | noise floor | ratio |", "|---|---|---|---|"]
        for pt in loc.get("points", []):
            lines.append(f"| {pt['name']} | {pt['error']:.3g} | {pt['floor']:.3g} | {pt['ratio']:.3g} |")
    if report.get("metadata"):
        lines += ["", "Metadata, re-derived from the files (what the apps read):", "",
                  "| check | bundle.json | file | source | result |", "|---|---|---|---|---|"]
        for c in report["metadata"]:
            lines.append(f"| {c['name']} | {_cell(c['manifest'])} | {_cell(c['derived'])} | {c['source']} | "
                         f"{'not applicable' if c.get('status') == 'skip' else 'match' if c['ok'] else 'MISMATCH'} |")
    q = report.get("quantization", {})
    if q.get("calibration"):
        c = q["calibration"]
        lines += ["", f"Rounding: {', '.join(q.get('rounding', []))}; calibration: {c.get('text')}, "
                      f"{c.get('tokens')} tokens ({c.get('seconds', 0):.0f} s), rounding {q.get('rounding_seconds', 0):.0f} s."]
    if q.get("auto"):
        a = q["auto"]
        measured = report.get("parity", {}).get("float_vs_quant", {}).get("kl_mean")
        lines += ["", f"4bit-auto plan for {a['budget_mb']:.1f} MB of weights ({a['weights_mb']:.1f} MB used, "
                      f"{a['seconds']:.0f} s of trials): predicted KL {a['predicted_kl_sum']:.4f} (sum of each item "
                      f"alone; all at the base format: {_fmt(a.get('predicted_kl_sum_base'), '.4f')}), measured "
                      f"float -> quantized {_fmt(measured, '.4f')}.", "",
                  "| item | format | KL when alone in each format |", "|---|---|---|"]
        for it in a["plan"]:
            alone = ", ".join(f"{o}: {v:.4f}" for o, v in it["kl_alone"].items())
            lines.append(f"| {it['item']} | {it['format']} | {alone} |")
    fb = q.get("fallbacks")
    if fb:
        lines += ["", "Group-size fallbacks: " + ", ".join(f"{f['layer']} (in {f['in_features']}: g{f['group_size']})"
                                                          for f in fb)]
    if report.get("steps"):
        lines += ["", "Peak memory per step: the process tree's RSS summed (a page its processes share counted "
                      "once per process) and its PSS summed (each page once: what the machine holds), in MB.",
                  "", "| step | seconds | tree RSS sum | tree PSS sum |", "|---|---|---|---|"]
        for s in report["steps"]:
            name = f"{s['step']} ({s['detail']})" if s.get("detail") else s["step"]
            lines.append(f"| {name} | {s['seconds']:.1f} | {_fmt(s.get('tree_peak_mb'), '.0f')} | "
                         f"{_fmt(s.get('tree_pss_peak_mb'), '.0f')} |")
    if report.get("plots"):
        from mobilellm_export.verify.report.plots import markdown_links

        lines += ["", markdown_links(report["plots"])]
    q = report.get("quick")
    if q:
        lines += ["", f"`verify --quick`: the artifact against the reference logits stored in the bundle, KL over "
                      f"the top {q['top_k']} reference tokens (a lower bound of the full KL). Not checked:", ""]
        lines += [f"- {line}" for line in q["not_checked"]]
    lines += ["", f"Result: **{result_line(report)}**", ""]
    return "\n".join(lines)


def write(report: dict, d: Path) -> None:
    (d / "report.json").write_text(json.dumps(report, indent=2))
    (d / "report.md").write_text(markdown(report))


# What the parity table's columns mean, one line each (<= 80 columns), where a reader would guess.
LEGEND = (
    "KL, p99 KL: mean and 99th-percentile KL divergence per position, in nats",
    "top-1: share of positions where both models pick the same next token",
    "max|Δ|: the largest difference of one logit at any position, in logit units",
    "greedy: tokens two greedy runs share before they fork / tokens generated;",
    "  one near-tie flips a token and the texts part (only --baseline compares it)",
)


def wrap_clauses(text: str, width: int, indent: int) -> list[str]:
    """`text` in lines of at most `width` columns, broken only between clauses (after ', ' or '; '),
    never inside an expression such as 'kl_mean = 0.09, within <= 0.3'; the lines
    after the first are indented by `indent`. A clause longer than a line is left whole."""
    import re

    lead = text[:len(text) - len(text.lstrip())]
    lines, cur = [], ""
    for clause in re.split(r"(?<=[;,]) ", text.strip()):
        room = width - (indent if lines else len(lead))
        if cur and len(cur) + 1 + len(clause) > room:
            lines.append(cur)
            cur = clause
        else:
            cur = f"{cur} {clause}" if cur else clause
    lines.append(cur)
    return [lead + lines[0]] + [" " * indent + ln for ln in lines[1:]]


def print_summary(report: dict, console) -> None:
    from rich import box
    from rich.markup import escape
    from rich.table import Table

    def say(mark: str, plain_mark: str, text: str) -> None:
        """A check line: `mark` (rich markup, `plain_mark` wide) then `text` wrapped between clauses."""
        lines = wrap_clauses(text, console.width - 3 - len(plain_mark), len(plain_mark) + 3)
        console.print(f"  {mark} " + escape("\n".join(lines)), highlight=False, soft_wrap=True)

    def table(title):
        return Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False, title_justify="left")

    if "parity" in report:
        t = table(f"parity: {report['eval']['positions']} positions")
        for col in ("pair", "KL", "p99 KL", "top-1", "ppl ref→test", "max|Δ|", "greedy"):
            t.add_column(col, no_wrap=True, justify="left" if col == "pair" else "right")
        for key, label in SHORT.items():
            p, g = report["parity"].get(key), report.get("greedy", {}).get(key)
            if p:
                t.add_row(label, f"{p['kl_mean']:.4f}", f"{p['kl_p99']:.3f}", f"{p['top1']:.3f}",
                          f"{_short(p['ppl_ref'])}→{_short(p['ppl_test'])}", f"{p['max_abs_logit']:.3g}",
                          f"{g['common_prefix']}/{g['tokens']}" if g else "-")
        console.print(t)
        for line in LEGEND:
            console.print(escape(f"  {line}"), style="dim", highlight=False, soft_wrap=True)
    rows = latency_rows(report)
    if rows:
        t = table(f"latency: {report.get('threads', 2)} threads, median of {rows[0][1].get('rounds', 1)}")
        for col in ("runner", "prefill/s", "decode/s", "TTFT ms", "RSS MB", "file MB"):
            t.add_column(col, no_wrap=True, justify="left" if col == "runner" else "right")
        for name, lat in rows:
            t.add_row(name, _fmt(lat["prefill_tok_s"]), _fmt(lat["decode_tok_s"]), _fmt(lat["ttft_ms"]),
                      _fmt(lat.get("peak_rss_mb"), ".0f"), _fmt(lat.get("file_mb")))
        console.print(t)
    for c in report.get("gate", {}).get("checks") or report.get("checks", []):
        if c.get("suite") == "metadata":
            continue  # one line for all of them below
        status = c.get("status", "pass" if c["ok"] else "fail")
        mark = {"pass": "[green]pass[/]", "fail": "[red]FAIL[/]", "warn": "[yellow]warn[/]",
                "skip": "[dim]skip[/]"}[status]
        say(mark, "FAIL", c["message"])
    if report.get("localise"):
        say("localiser:", "localiser:", report["localise"]["message"])
    meta = report.get("metadata", [])
    bad = [c for c in meta if not c["ok"]]
    if meta:
        say("[red]FAIL[/]" if bad else "[green]pass[/]", "FAIL",
            "metadata: " + (f"{bad[0]['name']} differs in {bad[0]['source']}" if bad else
                            f"{len(meta)} values match the files"))
    q = report.get("quick")
    if q:
        import textwrap

        at_export = ", ".join(f"{SHORT[k]} {v:.4g}" for k, v in q["export_kl"].items() if v == v)  # NaN: not run
        for line in (f"--quick: KL and max|Δ| over the top {q['top_k']} reference tokens (a lower bound of the "
                     f"full KL)" + (f"; the export measured KL {at_export} here" if at_export else ""),
                     "not checked by --quick:", *(f"  - {x}" for x in q["not_checked"])):
            console.print(escape(textwrap.fill(line, console.width - 1, initial_indent="  ",
                                               subsequent_indent="      ")), style="dim", highlight=False,
                          soft_wrap=True)
    console.print(f"  result: {result_line(report)}")


def next_steps(bundle, app: str) -> list[str]:
    """What to do with a bundle just written: where it and its report are, a command to chat with it,
    and how its target's app loads it (`Target.app`)."""
    import shlex

    b = shlex.quote(str(bundle))
    return ["next:",
            f"  bundle  {bundle}",
            f"  report  {bundle}/report.md",
            f"  chat    mobilellm-export run {b}",
            f"  ask     mobilellm-export run {b} --prompt 'What is 7 times 8?'",
            *([f"  phone   {app.format(bundle=b)}"] if app else [])]
