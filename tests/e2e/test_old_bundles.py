"""Bundles exported by the version before the redesign (schema 2; recipes that still named their
target's lowering bounds) verify with this one, one per target: tests/fixtures/bundles_v2/, written
by e8f9f94 from `tiny-llama` with tests/data/tiny-tokenizer (4bit, context 64, 128 eval tokens)."""

import json
from pathlib import Path

import pytest

from test_sources import run_cli

BUNDLES = Path(__file__).resolve().parents[1] / "fixtures" / "bundles_v2"


@pytest.mark.parametrize("target", ["android", "onnx", "ios"])
def test_a_bundle_from_the_previous_version_still_verifies(target, tmp_path):
    bundle = BUNDLES / f"tiny-llama-{target}-4bit"
    m = json.loads((bundle / "bundle.json").read_text())
    assert m["schema_version"] == 2 and m["target"]["name"] == target
    r = run_cli("verify", str(bundle), "--no-latency", "--eval-tokens", "128", "--report-dir", str(tmp_path),
                "--json", "--quiet", timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    rep = json.loads(r.stdout)
    assert rep["passed"] and rep["quantization"]["weights_sha256"] == json.loads(
        (bundle / "report.json").read_text())["quantization"]["weights_sha256"]
