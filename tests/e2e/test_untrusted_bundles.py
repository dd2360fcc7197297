"""`verify` is a security boundary (docs/threat-model.md): a CI gate runs it on bundles a pull request
can change, so everything in a bundle is attacker-controlled data.

Each attack is tried as an attacker would: on a real bundle of each target (tests/fixtures/bundles_v2,
tiny-llama), edited, with bundle.json's hashes rewritten to match. Every one must end in one `error:`
line (exit 2) before any parity work, so most tests here cost a second. The one that must pass (a
bundle re-checked against the source given on the command line) runs a full verification.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
from pathlib import Path

import pytest

from test_sources import assert_one_line_error, run_cli

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "bundles_v2"
TARGETS = ("android", "onnx", "ios")


def attacked(target: str, tmp_path: Path, edit_manifest=None, edit_dir=None) -> Path:
    """A copy of the target's fixture bundle, edited, with every file re-hashed into bundle.json."""
    from mobilellm_export.bundle import bundle_files, sha256

    d = tmp_path / f"tiny-llama-{target}-4bit"
    shutil.copytree(FIXTURES / d.name, d)
    if edit_dir is not None:
        edit_dir(d)
    m = json.loads((d / "bundle.json").read_text())
    if edit_manifest is not None:
        edit_manifest(m)
    m["files"] = {f: {"sha256": sha256(d / f), "bytes": (d / f).stat().st_size} for f in bundle_files(d)
                  if (d / f).is_file() and not (d / f).is_symlink()}
    (d / "bundle.json").write_text(json.dumps(m))
    return d


def refused(d: Path, needle: str, **request) -> None:
    """verify_command refuses the bundle with `needle` in its one line, before loading any model."""
    from mobilellm_export import pipeline
    from mobilellm_export.console import Progress
    from mobilellm_export.errors import UserError

    with pytest.raises(UserError, match=needle):
        pipeline.verify_command(pipeline.VerifyRequest(str(d), checking=pipeline.Checking(latency=False, eval_tokens=64),
                                                       **request), Progress(quiet=True))


# ---- 1. nothing a loader opens lies outside the bundle ----------------------------------------------

@pytest.mark.parametrize("where", ["relative", "absolute"])
def test_an_mlpackage_manifest_cannot_point_outside_the_bundle(tmp_path, where):
    """coremltools follows Manifest.json's root path: the bundle's own model.mlmodel zeroed, the real
    one outside, used to PASS."""
    outside = tmp_path / "outside"

    def edit(d):
        core = d / "model.mlpackage" / "Data" / "com.apple.CoreML"
        outside.mkdir()
        shutil.copy(core / "model.mlmodel", outside / "model.mlmodel")
        (core / "model.mlmodel").write_bytes(bytes((core / "model.mlmodel").stat().st_size))
        man = d / "model.mlpackage" / "Manifest.json"
        m = json.loads(man.read_text())
        m["itemInfoEntries"][m["rootModelIdentifier"]]["path"] = (
            "../../../outside/model.mlmodel" if where == "relative" else str(outside / "model.mlmodel"))
        man.write_text(json.dumps(m))

    refused(attacked("ios", tmp_path, edit_dir=edit), "points outside the package")


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("kind", ["link", "fifo"])
def test_a_bundle_holds_only_regular_files(target, kind, tmp_path):
    def edit(d):
        if kind == "link":  # even one pointing inside: a loader that follows links is not a closed world
            (d / "tokenizer_copy.json").symlink_to(d / "tokenizer.json")
        else:  # a FIFO hangs whoever reads it
            os.mkfifo(d / "tokenizer_copy.json")

    refused(attacked(target, tmp_path, edit_dir=edit), "is a link" if kind == "link" else "not a regular file")


def test_onnx_external_data_cannot_point_outside_the_bundle(tmp_path):
    import onnx

    def edit(d):
        model = onnx.load(str(d / "model.onnx"), load_external_data=False)
        t = next(t for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL)
        next(e for e in t.external_data if e.key == "location").value = "../../../../etc/hostname"
        onnx.save(model, str(d / "model.onnx"))

    refused(attacked("onnx", tmp_path, edit_dir=edit), "reads its data from '../../../../etc/hostname'")


# ---- 2. the values apps read are re-derived, genai_config.json included --------------------------------

@pytest.mark.parametrize("key,value", [
    (("eos_token_id",), 13),  # the app would stop on the wrong token
    (("context_length",), 100000),  # ... and run past the KV cache
    (("bos_token_id",), 0),
    (("decoder", "filename"), "../../evil.onnx"),  # ... and load another graph
])
def test_genai_config_is_checked_against_the_bundle(tmp_path, key, value):
    def edit(d):
        g = json.loads((d / "genai_config.json").read_text())
        node = g["model"]
        for k in key[:-1]:
            node = node[k]
        node[key[-1]] = value
        (d / "genai_config.json").write_text(json.dumps(g))

    refused(attacked("onnx", tmp_path, edit_dir=edit), "genai_config.json says model." + ".".join(key))


# ---- 3. verify reads and fetches nothing a bundle names -------------------------------------------------

@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("source", [{"kind": "hf", "id": "/etc"}, {"kind": "hub", "id": "attacker/payload"},
                                    {"kind": "gguf", "id": "/dev/zero"}, {"kind": "preset", "id": "../../x"}])
def test_the_source_a_bundle_names_is_never_loaded(target, source, tmp_path):
    refused(attacked(target, tmp_path, lambda m: m.update(source=source)), "pass --source PATH")


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("text", ["/dev/zero", "fifo"])
def test_the_calibration_text_a_bundle_names_is_never_read(target, text, tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)  # opening it would hang verify
    path = str(fifo) if text == "fifo" else text

    def edit(m):
        m["recipe"]["calibration"].update(text=path, text_sha256="ab" * 32)

    refused(attacked(target, tmp_path, edit), "pass it with --calib-text")
    # without a hash, as a hand-edited bundle might have it: still never opened
    refused(attacked(target, tmp_path / "2", lambda m: m["recipe"]["calibration"].update(text=path)),
            "pass it with --calib-text")


def test_a_bundle_rechecks_against_the_source_given_on_the_command_line(tmp_path):
    """The positive case: the source named by the user, not the bundle; an unhashed report.json that
    is not even an object only costs its one comparison."""
    d = attacked("android", tmp_path, lambda m: m.update(source={"kind": "hf", "id": "/nonexistent/model"}))
    (d / "report.json").write_text("[]")
    r = run_cli("verify", str(d), "--source", "tiny-llama", "--no-latency", "--eval-tokens", "128", "--json",
                "--quiet", "--report-dir", str(tmp_path / "rep"), timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads(r.stdout)["passed"]


# ---- 4. bounded parsers and inputs -----------------------------------------------------------------------

def test_a_tiny_gguf_declaring_a_huge_array_is_one_line(tmp_path):
    """52 bytes declaring a 2^40-element array: gguf's reader grew ~60 MB/s until the memory cap."""
    p = tmp_path / "evil.gguf"
    p.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", 4) + b"toks"
                  + struct.pack("<IIQ", 9, 8, 1 << 40))
    assert_one_line_error(run_cli("inspect", str(p), timeout=60), "cannot fit in the file")


@pytest.mark.parametrize("flag", ["--eval-text", "--calib-text"])
def test_text_inputs_must_be_regular_files(flag, tmp_path):
    r = run_cli("--model", "tiny-llama", "--quant", "4bit", flag, "/dev/zero", "--out", str(tmp_path), timeout=120)
    assert_one_line_error(r, "/dev/zero is not a regular file")
    assert list(tmp_path.iterdir()) == []


def test_a_conversation_must_be_a_regular_file(tmp_path):
    d = attacked("android", tmp_path)
    assert_one_line_error(run_cli("run", str(d), "--conversation", "/dev/zero", timeout=120), "not a regular file")


def test_malformed_recipe_in_bundle_json_is_one_line(tmp_path):
    for i, edit in enumerate([lambda m: m["recipe"]["linear"].update(bits="4"),
                              lambda m: m["recipe"].update(unknown_key=1),
                              lambda m: m["recipe"].update(overrides=[{"bits": 8}]),
                              lambda m: m["recipe"]["calibration"].update(tokens=[1])]):
        d = attacked("android", tmp_path / str(i), edit)
        assert_one_line_error(run_cli("verify", str(d), "--no-latency", timeout=120), "its recipe is malformed")


def test_deeply_nested_inputs_are_one_line(tmp_path):
    d = attacked("android", tmp_path)
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100000 + "]" * 100000)
    assert_one_line_error(run_cli("verify", str(d), "--baseline", str(deep), "--no-latency", timeout=120),
                          "nested deeper than")
    toml = tmp_path / "deep.toml"
    toml.write_text("a = " + "[" * 100000 + "]" * 100000 + "\n")
    assert_one_line_error(run_cli("--model", "tiny-llama", "--quant", str(toml), "--out", str(tmp_path / "o"),
                                  timeout=120), "nested too deeply")
    binary = tmp_path / "binary.toml"
    binary.write_bytes(bytes(range(256)) * 4)
    assert_one_line_error(run_cli("--model", "tiny-llama", "--quant", str(binary), "--out", str(tmp_path / "o"),
                                  timeout=120), "not UTF-8 text")


# ---- 5. the tool never writes into a bundle; usage errors are one line -----------------------------------

def test_nothing_is_written_into_a_bundle(tmp_path):
    d = attacked("android", tmp_path)
    assert_one_line_error(run_cli("verify", str(d), "--report-dir", str(d), "--no-latency", timeout=120),
                          "never writes into a bundle")
    assert_one_line_error(run_cli("verify", str(d), "--junit", str(d / "x.xml"), "--no-latency", timeout=120),
                          "never writes into a bundle")
    assert_one_line_error(run_cli("--model", "tiny-llama", "--out", str(d / "nested"), timeout=120),
                          "never writes into a bundle")
    assert sorted(p.name for p in d.iterdir()) == sorted(p.name for p in (FIXTURES / d.name).iterdir())


@pytest.mark.parametrize("args,needle", [
    (("--model", "tiny-llama", "--threads", "0"), "Invalid value for '--threads'"),
    (("--model", "tiny-llama", "--junit", "/tmp"), "is a directory"),
    (("verify",), "Missing argument 'BUNDLE'"),
    (("--model", "tiny-llama", "--no-such-flag"), "No such option"),
])
def test_usage_errors_are_one_line(args, needle):
    assert_one_line_error(run_cli(*args, timeout=120), needle)


def test_the_documented_minimum_context_exports_and_verifies(tmp_path):
    """--max-context 16 with a BOS-adding tokenizer (R1's): the greedy check's prompt was BOS + 16
    tokens, past the context, and the export ended in an IndexError after minutes of work."""
    from conftest import LLAMA3_TOKENIZER

    r = run_cli("--model", "tiny-r1", "--tokenizer", str(LLAMA3_TOKENIZER), "--quant", "fp32", "--max-context", "16",
                "--max-seq-len", "8", "--eval-tokens", "64", "--no-latency", "--out", str(tmp_path), "--json", "--quiet",
                timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    rep = json.loads(r.stdout)
    assert rep["passed"] and rep["eval"]["bos"]
    assert 1 <= len(rep["greedy_tokens"]["artifact"]) <= 16 - 1 and rep["greedy"]["float_vs_artifact"]["match"] == 1.0


# ---- 6. code a file carries runs in a bounded child (findings 6 and 8) ----------------------------------

def _regex_tokenizer(tmp_path: Path) -> Path:
    """The tiny tokenizer with a pre-tokenizer regex that backtracks fib(n) ways on a run of n a's."""
    from test_sandbox import SLOW, regex_tokenizer_json

    d = tmp_path / "regex-tok"
    d.mkdir()
    (d / "tokenizer.json").write_text(regex_tokenizer_json(SLOW))
    return d


@pytest.mark.parametrize("run,needle", [
    ("a" * 31 + " ", "characters) ran past its"),  # seconds per run
    ("a" * 40 + " ", "native code panicked: Onig: Regex search error: retry-limit-in-match over"),  # onig's limit
])
def test_a_tokenizers_regex_is_bounded_in_time_and_cannot_panic_out(tmp_path, run, needle):
    """In-process, the slow regex would take minutes on this calibration text (and ignore SIGTERM
    meanwhile); the panicking one escaped the error handler as a 115-line backtrace."""
    import time

    text = tmp_path / "calib.txt"
    text.write_text(run * (64000 // len(run)) + "a" * (64000 % len(run)))
    out = tmp_path / "out"
    t0 = time.monotonic()
    r = run_cli("--model", "tiny-llama", "--tokenizer", str(_regex_tokenizer(tmp_path)), "--quant", "4bit",
                "--calib-text", str(text), "--max-context", "128", "--max-seq-len", "16", "--no-latency",
                "--quiet", "--out", str(out), timeout=300)
    assert_one_line_error(r, needle)
    assert time.monotonic() - t0 < 120
    assert not out.exists() or list(out.iterdir()) == []


@pytest.mark.parametrize("target", TARGETS)
def test_a_chat_templates_memory_is_capped(target, tmp_path):
    """`"%03000000000d" % 1` is one C call: it allocated 3 GB in `run --conversation`, which exited 0."""
    evil = '{{ "%03000000000d" % 1 }}'

    def edit_dir(d):
        cfg = json.loads((d / "tokenizer_config.json").read_text())
        cfg["chat_template"] = evil
        (d / "tokenizer_config.json").write_text(json.dumps(cfg))

    def edit(m):
        m["generation"]["chat_template"] = evil  # its prompt_format stays "not reducible": run renders the template

    d = attacked(target, tmp_path, edit, edit_dir)
    conv = tmp_path / "conv.json"
    conv.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}]}))
    r = run_cli("run", str(d), "--conversation", str(conv), "--max-new-tokens", "2", timeout=300)
    assert_one_line_error(r, "chat template needed over its 512 MB memory budget")
