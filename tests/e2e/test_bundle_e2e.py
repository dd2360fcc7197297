"""Moved from test_bundle.py: the tests that lower or run the CLI end to end (minutes, not the unit tier)."""

import json
from mobilellm_export.bundle import SCHEMA_VERSION
from test_bundle import DATA, manifest
from test_sources import assert_one_line_error, run_cli


def test_other_schema_versions_are_refused_in_one_line(tmp_path):
    for version, needle in ((SCHEMA_VERSION + 1, "upgrade mobilellm-export"), (1, "re-export the bundle")):
        m = dict(manifest(), schema_version=version)
        (tmp_path / "bundle.json").write_text(json.dumps(m))
        assert_one_line_error(run_cli("verify", str(tmp_path)), f"has schema {version}")
        assert needle in run_cli("verify", str(tmp_path)).stderr


def test_gemma3_bundle_records_bos_and_the_runner_prefills_it(tmp_path):
    """A model with Gemma 3's 262,144-id tokenizer: bundle.json says BOS is added, verification
    scores windows that start with BOS, and TextLLMRunner prefills BOS + the prompt."""
    from test_sources import r1_config, write_r1_dir

    src = tmp_path / "gemma-vocab"
    write_r1_dir(src, config=r1_config(5, vocab=262144))
    for f in ("tokenizer.json", "tokenizer_config.json"):
        (src / f).write_bytes((DATA / "gemma3-tokenizer" / f).read_bytes())
    r = run_cli("--model", str(src), "--quant", "fp32", "--out", str(tmp_path / "out"), "--max-context", "64",
                "--max-seq-len", "16", "--eval-tokens", "64", "--no-latency", "--json", "--quiet")
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert rep["eval"]["bos"] and rep["passed"]
    d = tmp_path / "out" / "gemma-vocab-android-fp32"
    bos = json.loads((d / "bundle.json").read_text())["generation"]["bos"]
    assert bos["add"] and bos["id"] == 2 and bos["text"] == "<bos>"
    r = run_cli("run", str(d), "--prompt", "Hello world", "--raw", "--max-new-tokens", "4", "--temperature", "0")
    assert r.returncode == 0, r.stderr
    assert "3 prompt tokens" in r.stderr  # <bos> Hello world


def test_special_tokens_past_the_table_are_tolerated_but_never_fed(tmp_path):
    """Gemma 3's tokenizer has 262,145 ids for a 262,144-row table (<image_soft_token>): the
    checkpoint loads, and a prompt that contains that token is refused in one line."""
    from test_sources import r1_config, write_r1_dir

    src = tmp_path / "g"
    write_r1_dir(src, config=r1_config(5, vocab=262144))
    for f in ("tokenizer.json", "tokenizer_config.json"):
        (src / f).write_bytes((DATA / "gemma3-tokenizer" / f).read_bytes())
    assert_one_line_error(run_cli("generate", str(src), "--raw", "--prompt", "a <image_soft_token> b"),
                          "token 262144 ('<image_soft_token>'), beyond the model's 262144-entry vocabulary")
    r = run_cli("generate", str(src), "--raw", "--prompt", "Hello", "--max-new-tokens", "2")
    assert r.returncode == 0, r.stderr
