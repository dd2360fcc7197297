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


def test_version_and_export_alias():
    from mobilellm_export import __version__

    r = run_cli("--version")
    assert r.returncode == 0 and __version__ in r.stdout
    # `export` is a subcommand and the default one: both spellings reach the same option parser
    for args in (["export", "--model", "tiny-r1", "--quant", "3bit"], ["--model", "tiny-r1", "--quant", "3bit"]):
        assert "unknown recipe '3bit'" in run_cli(*args).stderr
    help_text = run_cli("export", "--help").stdout
    assert "[default: android]" in help_text and "--threads" in help_text and "--verbose" in help_text


_NATIVE_THEN_CRASH = """
import os, sys
import mobilellm_export.pipeline as pipeline
def crash(*a, **k):
    os.write(2, b"E 00:00:00.000 executorch:method.cpp:123] Missing operator: llama::fake.out\\n")
    print("a third-party warning", file=sys.stderr)
    raise RuntimeError("Generation failed")
pipeline.export_command = crash
from mobilellm_export.cli import main
sys.argv = ["mobilellm-export"] + sys.argv[1:]
main()
"""


def test_native_lines_are_hidden_but_replayed_when_a_step_fails():
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-c", _NATIVE_THEN_CRASH, "--model", "tiny-r1"], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 1
    err = r.stderr
    assert "Missing operator: llama::fake.out" in err and "a third-party warning" in err  # replayed ...
    assert err.index("Missing operator") < err.index("RuntimeError: Generation failed")  # ... before the traceback
    ok = run_cli("inspect", "r1-140m")
    assert ok.returncode == 0 and ok.stderr == ""  # nothing leaks on success (torch's import noise included)
