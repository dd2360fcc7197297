"""CI output of the parity gate: JUnit XML against our XSD, GitHub annotations + step summary, the workflow."""

import io
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import xmlschema
import yaml

from mobilellm_export.verify import ci

ROOT = Path(__file__).resolve().parents[2]
WORKFLOW = ROOT / ".github" / "workflows" / "parity.yml"


def check(name, status, message, suite="absolute", value=0.5, bound=0.4, op="<=", basis="recipe threshold"):
    return {"suite": suite, "name": name, "status": status, "message": message,
            "value": value, "bound": bound, "op": op, "basis": basis}


# A mix of every status, with text XML and the workflow-command syntax must survive.
CHECKS = [
    check("float->artifact kl_mean", "fail", "kl_mean 0.412 > 0.384 (baseline <0.373> & \"3 %\")",
          suite="baseline", value=0.412, bound=0.384, basis="baseline 0.373 + 3 % – naïve ≤ bound"),
    check("float->artifact top1", "pass", "top1 0.91 >= 0.85", value=0.91, bound=0.85, op=">="),
    check("decode tok/s", "warn", "speed unpaired: 'decode' 41.0 tok/s, no baseline on this machine",
          suite="speed", value=41.0, bound=None, op=None, basis=""),
    check("quant->artifact kl_mean", "skip", "the runtime cannot run here: <xnnpack> & co",
          suite="lowering", value=None, bound=None, op=None),
    check("eos ids", "pass", "eos [2] == [2]", suite="metadata", value=None, bound=None, op="=="),
    check("ppl_delta", "fail", "ppl_delta 0.2 > 0.1\nsecond line \x01 with a control byte",
          value=0.2, bound=0.1),
]


@pytest.fixture(scope="module")
def schema():
    return xmlschema.XMLSchema(str(ci.SCHEMA))


def test_junit_validates_and_counts_match(tmp_path, schema):
    path = ci.write_junit(CHECKS, tmp_path / "sub" / "junit.xml", "smollm2-135m-android-4bit", 12.5)
    schema.validate(str(path))
    assert [p.name for p in path.parent.iterdir()] == ["junit.xml"]  # no temp file left behind
    root = ET.parse(path).getroot()
    (suite,) = root.findall("testsuite")
    cases = suite.findall("testcase")
    assert [c.get("name") for c in cases] == [c["name"] for c in CHECKS]
    assert cases[0].get("classname") == "mobilellm_export.baseline"
    # The counts are recomputed from the elements, independently of ci.counts().
    for el in (root, suite):
        assert el.get("tests") == str(len(cases)) == "6"
        assert el.get("failures") == str(sum(c.find("failure") is not None for c in cases)) == "2"
        assert el.get("skipped") == str(sum(c.find("skipped") is not None for c in cases)) == "1"
        assert el.get("errors") == "0"
        assert float(el.get("time")) == 12.5


def test_junit_text_round_trips(schema):
    root = ET.fromstring(ci.junit_xml(CHECKS, "s", 1.0).encode())
    cases = {c.get("name"): c for c in root.iter("testcase")}
    fail = cases["float->artifact kl_mean"].find("failure")
    assert fail.get("type") == "parity"
    assert fail.get("message") == CHECKS[0]["message"]  # <, &, quotes survive the escaping
    assert "value: 0.412" in fail.text and "bound: <= 0.384" in fail.text
    assert "basis: baseline 0.373 + 3 % – naïve ≤ bound" in fail.text
    # The failure message attribute is one line; the control byte (illegal in XML 1.0) is replaced.
    ppl = cases["ppl_delta"].find("failure")
    assert "\n" not in ppl.get("message") and "\x01" not in ppl.get("message") and "\ufffd" in ppl.get("message")
    warn = cases["decode tok/s"]
    assert warn.find("failure") is None and warn.find("skipped") is None
    assert warn.find("system-out").text.startswith("warning: speed unpaired")
    assert cases["quant->artifact kl_mean"].find("skipped").get("message") == CHECKS[3]["message"]
    assert list(cases["float->artifact top1"]) == []  # a pass has no child element


def test_unknown_status_is_an_error_not_a_pass(schema):
    text = ci.junit_xml([check("x", "oops", "m")], "s", 0.0)
    schema.validate(text)
    root = ET.fromstring(text)
    assert root.get("errors") == "1" and root.find("testsuite/testcase/error") is not None
    assert ci.verdict([check("x", "oops", "m")]).startswith("FAIL")


@pytest.mark.parametrize("break_it", [
    lambda s: s.replace('<testcase name="float-&gt;artifact top1" ', "<testcase "),      # a case without name
    lambda s: s.replace('tests="6"', 'tests="six"', 1),                                  # a count that is no integer
    lambda s: s.replace('time="12.500"', 'time="-1"', 1),                                 # negative seconds
    lambda s: s.replace("<skipped ", "<failure /><skipped ", 1),                        # two outcomes in one case
    lambda s: s.replace('"float-&gt;artifact top1" classname="mobilellm_export.absolute"',
                        '"ppl_delta" classname="mobilellm_export.absolute"'),              # a duplicate case
    lambda s: s.replace("<testsuite ", "<suite ", 1).replace("</testsuite>", "</suite>"),  # a wrong element
])
def test_schema_rejects_malformed(schema, break_it):
    good = ci.junit_xml(CHECKS, "s", 12.5)
    schema.validate(good)
    bad = break_it(good)
    assert bad != good
    assert not schema.is_valid(bad)


def test_write_junit_replaces_atomically(tmp_path, monkeypatch):
    path = tmp_path / "junit.xml"
    path.write_text("old")
    monkeypatch.setattr(ci.os, "replace", lambda *a: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError):
        ci.write_junit(CHECKS, path, "s", 1.0)
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["junit.xml"]


def test_verdict():
    assert ci.verdict(CHECKS) == "FAIL: 2 of 6 checks failed"
    ok = [c for c in CHECKS if c["status"] != "fail"]
    assert ci.verdict(ok) == "PASS: 3 checks passed, 1 warning, 1 skipped"
    assert ci.verdict([c for c in ok if c["status"] == "skip"]).startswith("NOT CHECKED")
    assert ci.verdict([]).startswith("NOT CHECKED")


def test_github_annotations_and_summary(tmp_path):
    summary = tmp_path / "summary.md"
    summary.write_text("earlier step\n")
    out = io.StringIO()
    md = "# smollm2 · android · 4bit\n\n| check | value |\n|---|---|\n"
    ci.github_annotations(CHECKS, md, env={"GITHUB_ACTIONS": "true", "GITHUB_STEP_SUMMARY": str(summary)}, out=out)
    lines = out.getvalue().splitlines()
    assert len(lines) == 3  # one line per command: the newline inside a message is escaped
    errors = [x for x in lines if x.startswith("::error ")]
    warnings = [x for x in lines if x.startswith("::warning ")]
    assert len(errors) == 2 and len(warnings) == 1
    assert errors[0].startswith("::error title=float->artifact kl_mean::kl_mean 0.412 > 0.384")
    assert "%25" in errors[0]  # the "3 %" of its message
    assert errors[1] == "::error title=ppl_delta::ppl_delta 0.2 > 0.1%0Asecond line \x01 with a control byte"
    assert warnings[0].startswith("::warning title=decode tok/s::speed unpaired")
    text = summary.read_text()
    assert text.startswith("earlier step\n")  # appended, never truncated
    assert "## Parity gate: FAIL: 2 of 6 checks failed" in text and md.strip() in text


def test_summary_names_local_plots():
    md = "a\n![KL per position](report-kl.png)\n![remote](https://example.com/p.png)\n"
    got = ci.summary_markdown(md)
    # A job summary has no files beside it: a relative image would show as a broken icon.
    assert "](report-kl.png)" not in got and "KL per position: report-kl.png" in got
    assert "![remote](https://example.com/p.png)" in got and got.startswith("a\n")


def test_github_escaping():
    assert ci.escape_data("50% done\r\nnext") == "50%25 done%0D%0Anext"
    assert ci.escape_property("a: b, c%\n") == "a%3A b%2C c%25%0A"
    out = io.StringIO()
    ci.github_annotations([check("kl: mean, p99", "fail", "x")], "", env={"GITHUB_ACTIONS": "true"}, out=out)
    assert out.getvalue() == "::error title=kl%3A mean%2C p99::x\n"


@pytest.mark.parametrize("env", [{}, {"GITHUB_ACTIONS": "false"}])
def test_github_nothing_outside_actions(tmp_path, env):
    summary = tmp_path / "summary.md"
    summary.write_text("earlier\n")
    out = io.StringIO()
    ci.github_annotations(CHECKS, "# report", env={**env, "GITHUB_STEP_SUMMARY": str(summary)}, out=out)
    assert out.getvalue() == "" and summary.read_text() == "earlier\n"


def _run_lines(job):
    return [s.get("run", "") for s in job["steps"]]


def test_workflow():
    wf = yaml.safe_load(WORKFLOW.read_text())
    on = wf[True] if True in wf else wf["on"]  # YAML 1.1 reads the bare key `on` as a boolean
    assert "workflow_dispatch" in on
    inputs = on["workflow_call"]["inputs"]
    assert {k: inputs[k]["default"] for k in ("model", "target", "quant", "baseline", "python-version")} == {
        "model": "smollm2-135m", "target": "android", "quant": "4bit",
        "baseline": "parity/baseline/report.json", "python-version": "3.11"}
    (job,) = wf["jobs"].values()
    uses = [s.get("uses", "") for s in job["steps"]]
    assert any(u.startswith("actions/checkout@") for u in uses)
    setup = next(s for s in job["steps"] if s.get("uses", "").startswith("actions/setup-python@"))
    assert "python-version" in setup["with"]
    runs = "\n".join(_run_lines(job))
    assert "pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu" in runs
    assert "pip install mobilellm-export" in runs
    export = next(r for r in _run_lines(job) if "mobilellm-export export" in r)
    for flag in ("--model", "--target", "--quant", "--out out", "--junit parity-junit.xml"):
        assert flag in export
    assert "--baseline" in export and "[ -f" in export  # only when the baseline file exists
    upload = next(s for s in job["steps"] if s.get("uses", "").startswith("actions/upload-artifact@"))
    assert upload["if"] == "always()"
    for item in ("report.md", "report*.png", "parity-junit.xml"):
        assert item in upload["with"]["path"]
    publish = next(s for s in job["steps"] if "junit" in s.get("uses", "").lower() and s is not upload)
    assert publish["if"] == "always()" and "parity-junit.xml" in str(publish["with"])
    # The steps are in order: install before the export, the export before the upload and publish.
    order = [i for i, s in enumerate(job["steps"]) if s is setup or s is upload or s is publish
             or "mobilellm-export export" in s.get("run", "")]
    assert order == sorted(order) and len(order) == 4


def test_every_results_file_records_its_provenance():
    """Each number in docs/ cites a results file; each results file says which commit, date, machine
    and tool versions produced it (benchmarks/provenance.py; older files carry a retroactive stamp)."""
    import json

    files = sorted((ROOT / "benchmarks" / "results").glob("*.json"))
    assert files
    for f in files:
        p = json.loads(f.read_text()).get("provenance")
        assert p and p["commit"] and p["date"] and p["machine"] and p["tools"].get("torch"), f.name
