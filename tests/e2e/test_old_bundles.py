"""Bundles exported by the version before the redesign (schema 2; recipes that still named their
target's lowering bounds) verify with this one, one per target: tests/fixtures/bundles_v2/, written
by e8f9f94 from `tiny-llama` with tests/data/tiny-tokenizer (4bit, context 64, 128 eval tokens).

Each run also shows two properties of verify as a security boundary (docs/threat-model.md), at no
extra verification: the bounds are the tool's, whatever the bundle records (a copy whose recipe
claims bounds of 1e9, hashes rewritten, is judged by the shipped recipe's), and verify writes
nothing into the bundle (coremltools' package reader used to save Manifest.json back)."""

import json
import shutil
from pathlib import Path

import pytest

from test_sources import run_cli

BUNDLES = Path(__file__).resolve().parents[1] / "fixtures" / "bundles_v2"


def _snapshot(d: Path) -> dict:
    return {p.relative_to(d).as_posix(): (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(d.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("target", ["android", "onnx", "ios"])
def test_a_bundle_from_the_previous_version_still_verifies(target, tmp_path):
    from mobilellm_export import backends
    from mobilellm_export.quant.recipe import load_recipe
    from mobilellm_export.verify.thresholds import thresholds_for

    bundle = tmp_path / "b"
    shutil.copytree(BUNDLES / f"tiny-llama-{target}-4bit", bundle)
    m = json.loads((bundle / "bundle.json").read_text())
    assert m["schema_version"] == 2 and m["target"]["name"] == target
    # the bundle's own bounds, as an attacker would set them (bundle.json is not hashed by itself)
    m["recipe"]["thresholds"] = {k: 1e9 for k in m["recipe"]["thresholds"]}
    m["recipe"]["target_thresholds"] = {"lowering_kl_mean": 1e9}
    (bundle / "bundle.json").write_text(json.dumps(m))
    before = _snapshot(bundle)
    r = run_cli("verify", str(bundle), "--no-latency", "--eval-tokens", "128", "--report-dir", str(tmp_path / "rep"),
                "--json", "--quiet", timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    rep = json.loads(r.stdout)
    assert rep["passed"] and rep["quantization"]["weights_sha256"] == json.loads(
        (bundle / "report.json").read_text())["quantization"]["weights_sha256"]
    assert _snapshot(bundle) == before  # not a byte or an mtime changed
    # every bound verify applied is the shipped 4bit recipe's, as this target sets it
    tool = thresholds_for(load_recipe("4bit"), backends.get(target))
    applied = {c["name"]: c["bound"] for c in rep["checks"] if c["suite"] in ("absolute", "lowering")}
    assert len(applied) >= 5 and all(b < 1e9 for b in applied.values()), applied
    assert applied["float->artifact kl_mean"] == tool.kl_mean and applied["float->artifact top1"] == tool.top1_min
    assert rep["thresholds_loosened"] == {}
