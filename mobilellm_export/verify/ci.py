"""CI-native output of the parity gate: JUnit XML and GitHub Actions annotations + step summary.

Pure functions over the gate's check records (report["gate"]["checks"]: suite, name, status,
message, value, bound, op, basis), so they import nothing heavy and are tested in milliseconds.
The JUnit shape is the Jenkins / Surefire one that CI report viewers read; its schema is
mobilellm_export/schemas/junit.xsd.
"""

from __future__ import annotations

import datetime
import math
import os
import re
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

SCHEMA = Path(__file__).resolve().parents[1] / "schemas" / "junit.xsd"
STATUSES = ("pass", "fail", "warn", "skip")

# XML 1.0 cannot carry these at all, not even escaped: a stray control byte in a message (say,
# from a tokenizer's text) would make the whole file unreadable, so it becomes U+FFFD.
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _xml_text(v) -> str:
    return _NOT_XML.sub("\ufffd", str(v))


def _one_line(v) -> str:
    return " ".join(_xml_text(v).split())


def counts(checks: list[dict]) -> dict[str, int]:
    """tests / failures / errors / skipped / warnings, as the JUnit attributes count them. A status
    outside the contract is an error (fails the gate), never silently a pass."""
    n = {s: sum(c.get("status") == s for c in checks) for s in STATUSES}
    return {"tests": len(checks), "failures": n["fail"], "errors": len(checks) - sum(n.values()),
            "skipped": n["skip"], "warnings": n["warn"]}


def verdict(checks: list[dict]) -> str:
    """One line: 'FAIL: 2 of 9 checks failed', 'PASS: 8 checks passed, 1 warning', ..."""
    n = counts(checks)
    bad = n["failures"] + n["errors"]
    if bad:
        return f"FAIL: {bad} of {n['tests']} check{'s' * (n['tests'] != 1)} failed"
    ran = n["tests"] - n["skipped"]
    if ran == 0:  # nothing skipped counts as passed
        return f"NOT CHECKED: no check ran ({n['skipped']} skipped)"
    extra = [f"{n['warnings']} warning{'s' * (n['warnings'] != 1)}" if n["warnings"] else "",
             f"{n['skipped']} skipped" if n["skipped"] else ""]
    return ", ".join([f"PASS: {ran} check{'s' * (ran != 1)} passed", *filter(None, extra)])


def _num(v) -> str:
    try:
        return format(float(v), ".6g")  # not repr(): a numpy float's is "np.float64(0.41)"
    except (TypeError, ValueError):
        return _xml_text(v)


def _detail(c: dict) -> str:
    lines = [_xml_text(c.get("message", ""))]
    if c.get("value") is not None:
        lines.append(f"value: {_num(c['value'])}")
    if c.get("bound") is not None:
        lines.append(f"bound: {' '.join(filter(None, [c.get('op'), _num(c['bound'])]))}")
    if c.get("basis"):
        lines.append(f"basis: {_xml_text(c['basis'])}")
    return "\n".join(lines)


def junit_xml(checks: list[dict], suite: str, seconds: float, *, timestamp: str | None = None) -> str:
    """One <testcase> per check in one <testsuite>. fail -> <failure type="parity">, skip ->
    <skipped>, warn -> passes with the message in <system-out>; an unknown status -> <error>."""
    n = counts(checks)
    secs = seconds if math.isfinite(seconds) and seconds >= 0 else 0.0  # "nan" is no xs:decimal
    attrs = {"name": _one_line(suite), "tests": str(n["tests"]), "failures": str(n["failures"]),
             "errors": str(n["errors"]), "skipped": str(n["skipped"]), "time": f"{secs:.3f}"}
    root = ET.Element("testsuites", attrs)
    ts = ET.SubElement(root, "testsuite", {
        **attrs, "timestamp": timestamp or datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")})
    for c in checks:
        # Per-check times are not measured: the suite's time is the whole verification.
        case = ET.SubElement(ts, "testcase", {"name": _one_line(c["name"]) or "?",
                                              "classname": f"mobilellm_export.{_one_line(c.get('suite', 'gate'))}",
                                              "time": "0.000"})
        status, msg = c.get("status"), _one_line(c.get("message", ""))
        if status == "fail":
            ET.SubElement(case, "failure", {"message": msg, "type": "parity"}).text = _detail(c)
        elif status == "skip":
            ET.SubElement(case, "skipped", {"message": msg})
        elif status == "warn":
            ET.SubElement(case, "system-out").text = f"warning: {_detail(c)}"
        elif status != "pass":
            ET.SubElement(case, "error", {"message": f"unknown check status {status!r}: {msg}",
                                          "type": "gate"}).text = _detail(c)
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def write_junit(checks: list[dict], path, suite: str, seconds: float) -> Path:
    """Atomically: CI reads the file even when the job failed, and must never see half of it."""
    path = Path(path)
    text = junit_xml(checks, suite, seconds)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


# GitHub workflow commands: `::error title=T::message`. The message escapes %, CR and LF; property
# values (the title) also ':' and ',' which delimit properties.
def escape_data(s: str) -> str:
    return str(s).replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def escape_property(s: str) -> str:
    return escape_data(s).replace(":", "%3A").replace(",", "%2C")


# report.md links its plots by relative path, which a job summary cannot resolve (it is one page
# with no files beside it): there the link names the plot and where to find it.
_LOCAL_IMAGE = re.compile(r"!\[([^\]]*)\]\((?![a-z]+://)([^)\s]+)\)")


def summary_markdown(report_md: str) -> str:
    return _LOCAL_IMAGE.sub(lambda m: f"*{m[1] or m[2]}: {m[2]} in the uploaded report*", report_md)


def github_annotations(checks: list[dict], report_md: str, env=None, out=None) -> None:
    """Under GitHub Actions only: an ::error per failed check, a ::warning per warning, and the
    report (under a verdict heading) appended to the job's step summary. Elsewhere, nothing."""
    env = os.environ if env is None else env
    if env.get("GITHUB_ACTIONS") != "true":
        return
    out = sys.stdout if out is None else out
    for c in checks:
        status = c.get("status")
        if status in ("pass", "skip"):
            continue
        level = "warning" if status == "warn" else "error"  # an unknown status errs, as in the JUnit file
        msg = c.get("message") or f"status {status!r}"
        print(f"::{level} title={escape_property(c['name'])}::{escape_data(msg)}", file=out)
    out.flush()
    summary = env.get("GITHUB_STEP_SUMMARY")
    if summary:
        # Append: earlier steps of the same job write to this file too.
        with open(summary, "a", encoding="utf-8") as f:
            f.write(f"## Parity gate: {verdict(checks)}\n\n{summary_markdown(report_md).rstrip()}\n\n")
