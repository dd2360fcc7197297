"""CLI behaviour through a real subprocess (what users type)."""

import re

from conftest import LLAMA3_TOKENIZER
from test_sources import run_cli


def test_inspect_r1_950m_parameter_count():
    r = run_cli("inspect", "r1-950m")
    assert r.returncode == 0, r.stderr
    assert "949,685,760" in r.stdout and "QK-norm" in r.stdout and "interleaved" in r.stdout


def test_inspect_smollm2_offline():
    r = run_cli("inspect", "smollm2-135m")
    assert r.returncode == 0, r.stderr
    assert "134,515,008" in r.stdout and "49152 ids" in r.stdout
    assert re.search(r"4bit\s+\d+\.\d MB", r.stdout)


def test_generate_streams_and_reports_speed():
    r = run_cli("generate", "tiny-r1", "--tokenizer", str(LLAMA3_TOKENIZER), "--prompt", "Hello",
                "--max-new-tokens", "6", "--system", "math")
    assert r.returncode == 0, r.stderr
    assert re.search(r"\[6 tokens, prefill [\d.]+ tok/s, decode [\d.]+ tok/s\]", r.stderr)


def test_unknown_recipe_is_one_line():
    from test_sources import assert_one_line_error

    assert_one_line_error(run_cli("--model", "tiny-r1", "--quant", "3bit"), "unknown recipe")
