"""Moved from test_gate.py: the tests that lower or run the CLI end to end (minutes, not the unit tier)."""

import json
import os
import subprocess
import sys

import pytest

from test_sources import assert_one_line_error, run_cli


COMMON = ["--max-context", "128", "--max-seq-len", "16", "--eval-tokens", "256", "--quiet"]


@pytest.fixture(scope="module")
def baseline_bundle(tiny_tokenizer, tmp_path_factory):
    out = tmp_path_factory.mktemp("gate")
    r = run_cli("--model", "tiny-llama", "--tokenizer", str(tiny_tokenizer), "--quant", "4bit", "--out", str(out),
                "--no-latency", *COMMON, timeout=900)
    assert r.returncode == 0, r.stderr
    return out / "tiny-llama-android-4bit"


@pytest.mark.slow
def test_export_writes_linked_plots_and_position_data(baseline_bundle):
    d = baseline_bundle
    rep = json.loads((d / "report.json").read_text())
    assert rep["plots"] == ["report-kl.png", "report-kl-hist.png", "report-top1.png"]
    md = (d / "report.md").read_text()
    for f in rep["plots"]:
        assert (d / f).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"]({f})" in md
    pos = json.loads((d / "report-positions.json").read_text())
    for pair, p in rep["parity"].items():
        kl = pos["pairs"][pair]["kl"]
        assert len(kl) == p["positions"] == rep["eval"]["positions"]
        assert sum(kl) / len(kl) == pytest.approx(p["kl_mean"], rel=1e-3)
        assert sum(pos["pairs"][pair]["top1"]) / len(kl) == pytest.approx(p["top1"])
    # The report files are not part of the hashed bundle: verify still sees exactly the listed files.
    assert not any(f.startswith("report") for f in json.loads((d / "bundle.json").read_text())["files"])


@pytest.mark.slow
def test_verify_against_its_own_baseline_passes_and_a_worse_recipe_fails(baseline_bundle, tiny_tokenizer, tmp_path):
    import xmlschema

    from mobilellm_export.verify.ci import SCHEMA

    base = baseline_bundle / "report.json"
    junit = tmp_path / "junit.xml"
    r = run_cli("verify", str(baseline_bundle), "--baseline", str(base), "--junit", str(junit), "--report-dir",
                str(tmp_path / "rep"), "--eval-tokens", "256", "--quiet", "--no-latency", timeout=900)
    assert r.returncode == 0, r.stderr
    xmlschema.XMLSchema(str(SCHEMA)).validate(str(junit))
    rep = json.loads((tmp_path / "rep" / "report.json").read_text())
    baseline_checks = [c for c in rep["gate"]["checks"] if c["suite"] == "baseline"]
    assert len(baseline_checks) >= 6 and all(c["status"] == "pass" for c in baseline_checks)
    assert (tmp_path / "rep" / "report-baseline.png").is_file()
    # A grossly worse recipe (4-bit embedding and head against the 8-bit ones of the baseline), run
    # as under GitHub Actions: the job summary gains the report, and each failed check is annotated.
    summary = tmp_path / "summary.md"
    summary.write_text("earlier step\n")
    env = dict(os.environ, GITHUB_ACTIONS="true", GITHUB_STEP_SUMMARY=str(summary))
    r = subprocess.run([sys.executable, "-m", "mobilellm_export.cli", "--model", "tiny-llama", "--tokenizer",
                        str(tiny_tokenizer), "--quant", "4bit-fast", "--out", str(tmp_path / "out"), "--baseline",
                        str(base), "--no-latency", "--json", *COMMON], capture_output=True, text=True, env=env,
                       timeout=900)
    assert r.returncode == 1, r.stderr
    failed = [c["name"] for c in json.loads(r.stdout)["gate"]["checks"] if c["status"] == "fail"]
    assert "baseline float->artifact kl_mean" in failed, failed
    annotations = [ln for ln in r.stderr.splitlines() if ln.startswith("::error ")]  # stdout carries the JSON
    assert len(annotations) == len(failed) and any("title=baseline float->artifact kl_mean::" in a
                                                   for a in annotations), r.stderr
    text = summary.read_text()
    assert text.startswith("earlier step\n") and "## Gate" in text and "**FAIL**" in text


def test_a_baseline_that_does_not_exist_fails_before_any_work(tmp_path):
    assert_one_line_error(run_cli("--model", "tiny-llama", "--baseline", str(tmp_path / "none.json"), "--out",
                                  str(tmp_path / "out")), "no such report")
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_paired_speed_runs_both_app_loops_in_one_child(baseline_bundle):
    """The same bundle against itself: every round ran both, and the ratio is about 1 (the tiny
    model's decode is timed by a millisecond clock, so only a loose bound)."""
    from mobilellm_export.verify.latency import run_paired

    p = run_paired(baseline_bundle, baseline_bundle, rounds=3)
    assert p["rounds"] == 3 and p["prompt_tokens"] == 16 and p["decode_tokens"] > 0
    assert 0.3 < p["decode_ratio"] < 3 and p["new_decode_tok_s"] > 0 and p["old_decode_tok_s"] > 0
