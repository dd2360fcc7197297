"""Moved from test_rotate.py: the tests that lower or run the CLI end to end (minutes, not the unit tier)."""


import pytest

from mobilellm_export.quant.recipe import load_recipe


@pytest.mark.extra  # ~150 s on a 128K vocabulary: make test-all
def test_rotated_8bit_bundle_exports_and_verifies(tmp_path):
    """End to end on tiny-r1: the float pre-head lowers with the rest (XNNPACK), the gate's lowering
    pair passes, `verify` rebuilds the same rotated reference from the recipe, and a model whose
    norms write the stream is one line."""
    import json

    from conftest import LLAMA3_TOKENIZER, SHARED
    from test_sources import assert_one_line_error, run_cli

    assert load_recipe("8bit").rotate  # the shipped 8bit rotates (and smooths, and rounds with GPTQ)
    common = ["--quant", "8bit", "--max-context", "128", "--max-seq-len", "16", "--eval-tokens", "96",
              "--no-latency", "--quiet"]
    r = run_cli("export", "--model", "tiny-r1", "--tokenizer", str(LLAMA3_TOKENIZER), "--out", str(tmp_path), "--json",
                *common, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    rep = json.loads(r.stdout)
    assert rep["passed"] and rep["quantization"]["rotate"]["dim"] == 64
    assert all(c["ok"] for c in rep["checks"] if c["suite"] == "lowering")
    d = tmp_path / "tiny-r1-android-8bit"
    v = run_cli("verify", str(d), "--no-latency", "--eval-tokens", "64", "--quiet", timeout=900)
    assert v.returncode == 0, v.stderr[-2000:]
    bad = run_cli("export", "--model", "tiny-gemma3", "--tokenizer", str(SHARED / "data" / "gemma3-tokenizer"),
                  "--out", str(tmp_path / "g"), *common, timeout=300)
    assert_one_line_error(bad, "pre-norm")
