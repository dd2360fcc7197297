"""The gate: every check of a report in one list, and the comparison with a baseline report.

    gate(report, thresholds-checks, baseline)   -> report["gate"] = {"checks": [...], "baseline": ...}

A check is a record (`report.record`): suite (absolute | lowering | baseline | speed | metadata),
name, status (pass | fail | warn | skip), a one-line message, and the value, bound and basis.
The gate fails when any check fails; a warning is reported and does not fail it.

Baselines: a previous report.json of the same model and evaluation. Each metric may be worse by
the recipe's `[gate]` tolerance. Speed is noisy on shared machines (separate processes swing
+-30 %), so a slower decode fails only when the baseline artifact was re-measured in this run,
paired round by round with the new one (`latency.run_paired`); from the two reports alone it warns.
"""

from __future__ import annotations

from pathlib import Path

from mobilellm_export.errors import UserError, load_json
from mobilellm_export.quant.recipe import Gate
from mobilellm_export.verify.quick import FILE as QUICK_FILE
from mobilellm_export.verify.report import metadata_records, record

NO_BASELINE = "no baseline given: judged on the recipe's absolute thresholds and the metadata alone"


def load_baseline(path: str | Path) -> dict:
    """A baseline report.json, read before any work so a wrong path fails in a second."""
    p = Path(path)
    if p.is_dir():
        p = p / "report.json"
    if not p.is_file():
        raise UserError(f"baseline {path}: no such report (give OLD/report.json or the bundle folder)")
    try:
        rep = load_json(p, "baseline")
    except UserError as e:
        raise UserError(f"baseline {p}: not a JSON report ({e})") from None
    if not isinstance(rep.get("parity"), dict) or not isinstance(rep.get("eval"), dict):
        raise UserError(f"baseline {p}: not a verified report (no parity section; was it exported with --no-verify?)")
    bad = _malformed(rep)
    if bad:  # checked now: compare() reads these only after the whole run
        raise UserError(f"baseline {p}: {bad} is malformed; not a report this tool wrote")
    rep["_path"] = str(p)
    return rep


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _malformed(rep: dict) -> str | None:
    """The first value compare() and speed() read from a baseline that is not what they need, or None."""
    greedy, lat, sizes = rep.get("greedy", {}), rep.get("latency", {}), rep.get("size_mb")
    if not isinstance(greedy, dict) or not isinstance(lat, dict):
        return "greedy" if not isinstance(greedy, dict) else "latency"
    for pair in ("float_vs_artifact", "float_vs_quant"):
        row, g = rep["parity"].get(pair), greedy.get(pair)
        if row is not None:
            for metric in ("kl_mean", "kl_p99", "top1", "ppl_delta"):
                if not isinstance(row, dict) or not _number(row.get(metric)):
                    return f"parity.{pair}.{metric}"
        if g and (not isinstance(g, dict) or not _number(g.get("common_prefix"))):
            return f"greedy.{pair}.common_prefix"
    if sizes is not None and (not isinstance(sizes, dict) or not all(_number(v) for v in sizes.values())):
        return "size_mb"
    for k, v in lat.items():
        tok_s = v.get("decode_tok_s") if isinstance(v, dict) else "?"
        if k.endswith("app loop") and tok_s is not None and not (_number(tok_s) and tok_s > 0):
            return f"latency.{k}.decode_tok_s"
    return None


def baseline_bundle(baseline: dict) -> Path | None:
    """The baseline's artifact, when its report still sits in its bundle: then speed can be paired."""
    d = Path(baseline["_path"]).parent
    return d if (d / "bundle.json").is_file() else None


def comparable(report: dict, baseline: dict) -> None:
    """Metrics scored on another text or token count are not comparable: refuse in one line."""
    for key in ("text", "positions", "window", "bos"):
        a, b = report["eval"].get(key), baseline["eval"].get(key)
        if a != b:
            raise UserError(f"baseline {baseline['_path']} was scored with eval {key} {b!r}, this run with {a!r}: "
                            f"re-run with the same --eval-text/--eval-tokens, or refresh the baseline")


def _pair(report: dict, baseline: dict) -> str | None:
    for key in ("float_vs_artifact", "float_vs_quant"):
        if key in report.get("parity", {}) and key in baseline.get("parity", {}):
            return key
    return None


def artifact_mb(report: dict) -> float | None:
    sizes = report.get("size_mb")
    """The model's files: not the tokenizer, nor the reference logits --quick reads (the app never loads them)."""
    return sum(v for f, v in sizes.items() if not f.startswith("tokenizer") and f != QUICK_FILE) if sizes else None


def _app_decode(report: dict) -> float | None:
    row = next((v for k, v in report.get("latency", {}).items() if k.endswith("app loop")), None)
    return row.get("decode_tok_s") if row else None


def compare(report: dict, baseline: dict, tol: Gate, paired: dict | None = None) -> list[dict]:
    """Baseline checks: each metric against the baseline's value and the recipe's [gate] tolerance."""
    out = []
    pair = _pair(report, baseline)
    base = f"baseline {Path(baseline['_path']).parent.name or baseline['_path']}"
    if baseline.get("model") != report.get("model"):
        out.append(record("baseline", "baseline model", None, None, None, base, status="warn",
                          message=f"the baseline is of model {baseline.get('model')!r}, this report of "
                                  f"{report.get('model')!r}"))
    if pair is not None:
        new, old = report["parity"][pair], baseline["parity"][pair]
        label = pair.replace("_vs_", "->").replace("quant", "quantized")
        for metric, op, bound, how in (
                ("kl_mean", "<=", old["kl_mean"] * (1 + tol.kl_mean_rel) + tol.kl_abs, f"+{tol.kl_mean_rel:.0%}"),
                ("kl_p99", "<=", old["kl_p99"] * (1 + tol.kl_p99_rel) + tol.kl_abs, f"+{tol.kl_p99_rel:.0%}"),
                ("top1", ">=", old["top1"] - tol.top1_abs, f"-{tol.top1_abs:g}"),
                ("ppl_delta", "<=", old["ppl_delta"] + tol.ppl_delta_abs, f"+{tol.ppl_delta_abs:g}")):
            out.append(record("baseline", f"baseline {label} {metric}", new[metric], op, bound,
                              f"{base}: {old[metric]:.4g} {how}"))
        g_new, g_old = report.get("greedy", {}).get(pair), baseline.get("greedy", {}).get(pair)
        if g_new and g_old:
            out.append(record("baseline", f"baseline {label} greedy prefix", g_new["common_prefix"], ">=",
                              g_old["common_prefix"] - tol.greedy_prefix_tokens,
                              f"{base}: {g_old['common_prefix']} tokens - {tol.greedy_prefix_tokens}"))
    mb_new, mb_old = artifact_mb(report), artifact_mb(baseline)
    if mb_new is not None and mb_old is not None:
        out.append(record("baseline", "baseline artifact size MB", mb_new, "<=", mb_old * (1 + tol.size_rel),
                          f"{base}: {mb_old:.4g} MB +{tol.size_rel:.0%}"))
    out.append(speed(report, baseline, tol, paired, base))
    return out


def speed(report: dict, baseline: dict, tol: Gate, paired: dict | None, base: str) -> dict:
    name = "baseline decode tok/s"
    if paired and paired.get("decode_ratio") is not None:
        q = paired.get("decode_ratio_iqr") or [None, None]
        iqr = f", IQR {q[0]:.3f}-{q[1]:.3f}" if q[0] is not None else ""
        return record("speed", name, paired["decode_ratio"], ">=", 1 - tol.decode_rel,
                      f"paired with the {base} artifact in one process, {paired['rounds']} rounds{iqr}; ratio new/old")
    new, old = _app_decode(report), _app_decode(baseline)
    if new is None or old is None:
        return record("speed", name, None, None, None, base, status="skip",
                      message="decode speed not compared: "
                              + ("no latency in this run" if new is None else "the baseline has no latency"))
    ratio = new / old
    status = "pass" if ratio >= 1 - tol.decode_rel else "warn"
    return record("speed", name, ratio, ">=", 1 - tol.decode_rel,
                  f"unpaired ({new:.1f} vs {old:.1f} tok/s in separate runs): a warning only", status=status,
                  message=f"decode {new:.1f} tok/s vs the baseline's {old:.1f} ({ratio:.2f}x), measured in separate "
                          f"runs" + ("" if status == "pass" else ": slower, but unpaired timings swing +-30 %, so "
                                                                 "this warns; re-measure with the baseline bundle"))


def gate(report: dict, checks: list[dict], baseline: dict | None, tol: Gate, paired: dict | None = None) -> dict:
    """report["gate"]: the absolute/lowering checks, the baseline comparison and the metadata."""
    records = list(checks)
    if baseline is None:
        records.append(record("baseline", "baseline", None, None, None, "none", status="skip", message=NO_BASELINE))
    else:
        records += compare(report, baseline, tol, paired)
    records += metadata_records(report.get("metadata", []))
    return {"checks": records, "baseline": baseline["_path"] if baseline else None,
            "passed": all(c["status"] != "fail" for c in records)}
