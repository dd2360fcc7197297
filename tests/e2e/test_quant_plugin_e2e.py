"""From unit/test_quant_plugins.py (its fixtures are imported from there): the tests that lower or run the CLI end to end (minutes, not the unit tier)."""

import json

from test_quant_plugins import FLOOR, _cli, plugin_site  # noqa: F401,F811 (plugin_site: a fixture)


def test_export_and_verify_with_a_plugin_rounding(plugin_site, tiny_tokenizer, tmp_path):
    """End to end: the bundle records the plugin's name; verify rebuilds the same integers with the
    plugin installed and fails in one line without it."""
    recipe = tmp_path / "floor8.toml"
    recipe.write_text(FLOOR)
    out = tmp_path / "out"
    r = _cli("export", "--model", "tiny-llama", "--tokenizer", str(tiny_tokenizer), "--quant", str(recipe),
             "--max-context", "64", "--max-seq-len", "16", "--eval-tokens", "128", "--no-latency",
             "--out", str(out), "--json", "--quiet", site=plugin_site)
    assert r.returncode == 0, r.stderr
    exported = json.loads(r.stdout)
    assert exported["passed"] and "minmax+floor" in exported["quantization"]["rounding"]
    (bundle,) = out.iterdir()
    assert json.loads((bundle / "bundle.json").read_text())["recipe"]["linear"]["rounding"] == "floor"

    r = _cli("verify", str(bundle), "--no-latency", "--eval-tokens", "128", "--json", "--quiet", site=plugin_site)
    assert r.returncode == 0, r.stderr
    verified = json.loads(r.stdout)
    assert verified["passed"]
    assert verified["quantization"]["weights_sha256"] == exported["quantization"]["weights_sha256"]

    r = _cli("verify", str(bundle), "--no-latency", "--eval-tokens", "128", "--quiet")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert "unknown rounding method 'floor'" in lines[0]
