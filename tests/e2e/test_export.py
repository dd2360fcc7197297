"""End-to-end exports on a tiny model: bundle contents, parity report, and the failure paths
(bad recipe, SIGINT mid-lowering, disk full, tampered bundle) that must leave nothing behind."""

import json
import subprocess
import sys
import textwrap

import pytest

from mobilellm_export.bundle import SCHEMA_VERSION, sha256, validate
from mobilellm_export.presets import PRESETS
from conftest import LLAMA3_TOKENIZER
from test_sources import assert_one_line_error, run_cli

COMMON = ["--max-context", "128", "--max-seq-len", "16"]


@pytest.fixture(scope="module")
def fp32_bundle(tiny_tokenizer, tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    r = run_cli("--model", "tiny-llama", "--tokenizer", str(tiny_tokenizer), "--quant", "fp32", "--out", str(out),
                "--eval-tokens", "96", "--json", "--quiet", *COMMON)
    assert r.returncode == 0, r.stderr
    return out / "tiny-llama-android-fp32", json.loads(r.stdout)


def test_verify_quick_on_the_cli(fp32_bundle):
    """`verify --quick` from the command line: no source, exit 0 on the bundle as exported (an fp32
    artifact matches both stored references to float rounding), one line for a flag that belongs to
    the full verify, and the summary says what it did not check."""
    d, rep = fp32_bundle
    r = run_cli("verify", "--quick", str(d), "--json")
    assert r.returncode == 0, r.stderr
    q = json.loads(r.stdout)
    assert q["mode"] == "quick" and q["passed"] and q["eval"]["positions"] == rep["eval"]["positions"]
    assert q["parity"]["float_vs_artifact"]["top1"] == 1.0 and q["parity"]["quant_vs_artifact"]["kl_mean"] < 1e-6
    r = run_cli("verify", "--quick", str(d))
    said = " ".join(r.stderr.split())  # the summary, unwrapped
    assert r.returncode == 0 and "not checked by --quick:" in said and "rewritten as a whole" in said, r.stderr
    assert_one_line_error(run_cli("verify", "--quick", str(d), "--source", "tiny-llama"),
                          "--source belongs to the full verify")


def test_fp32_bundle_is_complete_and_verified(fp32_bundle):
    d, rep = fp32_bundle
    assert sorted(p.name for p in d.iterdir()) == sorted(
        ["model.pte", "model.ptd", "tokenizer.json", "tokenizer_config.json", "bundle.json", "report.json",
         "report.md", "report-positions.json", "report-kl.png", "report-kl-hist.png", "report-top1.png",
         "reference_logits.safetensors"])
    m = json.loads((d / "bundle.json").read_text())
    validate(m)
    assert m["target"]["data_file"] == "model.ptd" and m["target"]["entry"] == "model.pte"
    # The tied embedding/head is stored once: the files are smaller than the fp32 parameters plus a
    # second copy of the 512x64 table (131 KB); what remains is the program, RoPE tables (~50 KB).
    cfg = PRESETS["tiny-llama"]
    weights = (d / "model.pte").stat().st_size + (d / "model.ptd").stat().st_size
    assert cfg.param_count() * 4 < weights < (cfg.param_count() + cfg.vocab_size * cfg.dim) * 4, weights
    assert m["schema_version"] == SCHEMA_VERSION and "created" not in m  # the timestamp is in report.json
    assert sorted(m["files"]) == ["model.ptd", "model.pte", "reference_logits.safetensors", "tokenizer.json",
                                  "tokenizer_config.json"]
    assert m["quick_check"] == {"file": "reference_logits.safetensors", "format": 1, "top_k": 32,
                                "positions": rep["eval"]["positions"]}  # one window: the eval is shorter
    for name, info in m["files"].items():
        assert sha256(d / name) == info["sha256"]
    # tools: only what this export used (no coremltools / onnx for an ExecuTorch bundle)
    assert {"torch", "executorch", "tokenizers"} <= set(m["tools"]) and not {"coremltools", "onnx"} & set(m["tools"])
    assert m["generation"]["eos_ids"] == [2] and m["generation"]["max_context"] == 128
    # fp32 artifact reproduces the float model: logits and 64 greedy tokens
    assert rep["parity"]["float_vs_artifact"]["max_abs_logit"] <= 1e-3
    assert rep["greedy"]["float_vs_artifact"]["common_prefix"] == 64
    # without activation quantization, 1-ulp input noise changes nothing measurable
    assert rep["parity"]["quant_noise_floor"]["kl_mean"] <= 1e-6
    assert rep["passed"] and {"float eager", "model.pte app loop", "model.pte Python loop"} <= set(rep["latency"])
    app = rep["latency"]["model.pte app loop"]  # TextLLMRunner: median and IQR of 5 in-process rounds
    assert app["rounds"] == 5 and app["prompt_tokens"] == 16 and app["decode_tok_s"] > 0
    assert app["decode_tok_s_iqr"][0] <= app["decode_tok_s"] <= app["decode_tok_s_iqr"][1]
    assert rep["latency"]["app_vs_python_loop"]["decode_tok_s"] > 0 and rep["threads"] == 2
    assert json.loads((d / "report.json").read_text())["parity"] == rep["parity"]


def test_verify_passes_on_intact_bundle(fp32_bundle):
    d, _ = fp32_bundle
    r = run_cli("verify", str(d), "--no-latency", "--eval-tokens", "64", "--quiet")
    assert r.returncode == 0, r.stderr


def test_verify_rejects_modified_pte(fp32_bundle, tmp_path):
    import shutil

    d = tmp_path / "b"
    shutil.copytree(fp32_bundle[0], d)
    data = bytearray((d / "model.pte").read_bytes())
    data[len(data) // 2] ^= 0x01
    (d / "model.pte").write_bytes(bytes(data))
    assert_one_line_error(run_cli("verify", str(d)), "model.pte fails its sha256 check")


def test_run_generates_through_text_llm_runner(fp32_bundle):
    """`run` (ExecuTorch's C++ TextLLMRunner, as the apps) prints, once and alone on stdout, the
    greedy text our runner produces through the same .pte from the same prompt ids (BOS included
    by the bundle's policy: this tokenizer's config adds none, the Llama-style template is absent)."""
    from mobilellm_export.sampling import generate
    from mobilellm_export.runtimes.executorch import ExecuTorchRunner
    from mobilellm_export.text.tokenizer import Tokenizer

    d, _ = fp32_bundle
    prompt = "Because of an hereditary"
    r = run_cli("run", str(d), "--prompt", prompt, "--max-new-tokens", "8")
    assert r.returncode == 0, r.stderr
    assert "[8 tokens" in r.stderr and "PyTorchObserver" not in r.stdout
    m = json.loads((d / "bundle.json").read_text())
    tok = Tokenizer.from_dir(d)
    ids = tok.prompt_ids(prompt, m["generation"]["bos"])
    assert f"{len(ids)} prompt tokens" in r.stderr
    ours = tok.decode(list(generate(ExecuTorchRunner(d / "model.pte"), ids, 8)))
    assert ours and r.stdout == ours + "\n"
    assert "threadpool" not in r.stderr and "Warning" not in r.stderr  # native / library lines hidden ...
    loud = run_cli("run", str(d), "--prompt", prompt, "--max-new-tokens", "8", "--verbose")
    assert loud.returncode == 0 and "threadpool" in loud.stderr and loud.stdout == r.stdout  # ... unless --verbose


def test_run_reports_the_runners_decode_rate(fp32_bundle):
    """`run` passes on TextLLMRunner's own rates and counts (all new tokens, the prefill's first one
    included: the runner's own count leaves it out)."""
    from mobilellm_export.run_bundle import run_bundle

    d, _ = fp32_bundle
    seen = []
    stats = run_bundle(str(d), "Because of an hereditary", max_new_tokens=64, raw=True, write=seen.append)
    # 63 timed decode steps take well over the runner's 1 ms clock resolution
    assert stats["decode_tok_s"] is not None and stats["decode_tok_s"] > 0
    assert stats["generated_tokens"] == stats["runner_stats"]["num_generated_tokens"] + 1 <= 64
    assert "".join(seen) == stats["text"] and stats["text"]


def test_run_clamps_new_tokens_to_the_context(fp32_bundle):
    d, _ = fp32_bundle
    r = run_cli("run", str(d), "--prompt", "Because", "--max-new-tokens", "500")
    assert r.returncode == 0, r.stderr
    note = [ln for ln in r.stderr.splitlines() if "clamped" in ln]
    assert len(note) == 1 and "context of 128" in note[0], r.stderr


def test_empty_prompt_is_one_line(fp32_bundle):
    d, _ = fp32_bundle
    assert_one_line_error(run_cli("run", str(d), "--prompt", ""), "the prompt is empty")
    assert_one_line_error(run_cli("generate", "tiny-llama", "--tokenizer", str(d), "--prompt", ""), "the prompt is empty")


# 4bit on tiny-llama android is the conformance suite's lowering pair (and test_android.py's tied
# table): only the CLI's 4bit-fast path is CI's here.
@pytest.mark.parametrize("recipe", [pytest.param("4bit", marks=pytest.mark.extra), "4bit-fast"])
def test_quantized_lowering_is_faithful_and_stores_tied_table_once(tiny_tokenizer, tmp_path, recipe):
    r = run_cli("--model", "tiny-llama", "--tokenizer", str(tiny_tokenizer), "--quant", recipe, "--out",
                str(tmp_path), "--eval-tokens", "96", "--json", "--quiet", "--no-latency", *COMMON)
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    low = rep["parity"]["quant_vs_artifact"]
    assert low["kl_mean"] <= 0.03 and low["top1"] >= 0.85
    assert rep["passed"], rep["checks"]  # the recipe's own thresholds, end to end included
    assert rep["quantization"]["tied_stored"] == "once" and "model.ptd" in rep["size_mb"]
    assert "latency" not in rep  # --no-latency
    if recipe != "4bit-fast":
        return
    # --android-weights pte: one file for a runtime that cannot load a .ptd (ExecuTorch's iOS TextRunner
    # 1.4.1). The same program; the tied table is then stored twice. It passes the same lowering gate
    # and ExecuTorch's C++ runner (what `run` and the apps use) loads and runs it.
    r = run_cli("--model", "tiny-llama", "--tokenizer", str(tiny_tokenizer), "--quant", recipe, "--out",
                str(tmp_path / "pte"), "--android-weights", "pte", "--eval-tokens", "96", "--json", "--quiet",
                "--no-latency", *COMMON)
    assert r.returncode == 0, r.stderr
    one = json.loads(r.stdout)
    d = tmp_path / "pte" / "tiny-llama-android-4bit-fast"
    m = json.loads((d / "bundle.json").read_text())
    assert not (d / "model.ptd").exists() and m["target"]["data_file"] is None and sorted(m["files"]) == [
        "model.pte", "reference_logits.safetensors", "tokenizer.json", "tokenizer_config.json"]
    assert m["target"]["options"] == {"weights": "pte"} and one["export"]["tied_table_stored"].startswith("twice")
    assert one["passed"] and one["parity"]["quant_vs_artifact"] == low  # the same arithmetic, to the bit
    cfg = PRESETS["tiny-llama"]
    table = cfg.vocab_size * cfg.dim // 2  # the int4 table's bytes, before its scales
    assert one["size_mb"]["model.pte"] * 1e6 > sum(rep["size_mb"][f] for f in ("model.pte", "model.ptd")) * 1e6 + table
    r = run_cli("run", str(d), "--prompt", "Because of an hereditary", "--max-new-tokens", "8")
    assert r.returncode == 0 and "[8 tokens" in r.stderr and r.stdout.strip(), r.stderr


@pytest.mark.parametrize("body,needle", [
    ("[linear]\nbits = 4\ngroup_size = 7\n", "group_size = 7"),
    ("[linear]\nbits = 3\n", "bits = 3"),
    ("[linear]\nbitz = 4\n", "unknown key 'bitz'"),
    ("colour = 'red'\n", "unknown key 'colour'"),
    ("[linear\n", "invalid TOML"),
])
def test_bad_recipes_fail_in_one_line(tmp_path, body, needle):
    f = tmp_path / "bad.toml"
    f.write_text(body)
    r = run_cli("--model", "tiny-llama", "--quant", str(f), "--out", str(tmp_path / "out"))
    assert_one_line_error(r, needle)
    assert not (tmp_path / "out").exists()


_INTERRUPT = textwrap.dedent("""
    import os, signal, sys
    import mobilellm_export.backends.executorch.program as android
    real = android.export_pte
    def export_then_interrupt(model, cfg, path, **kw):
        facts = real(model, cfg, path, **kw)     # a full artifact is on disk in the temp bundle ...
        # ... when the user interrupts. raise_signal runs the handler before it returns; os.kill
        # let one more line run under load (the None return failed before the KeyboardInterrupt).
        signal.raise_signal({signal})
        return facts
    android.export_pte = export_then_interrupt
    from mobilellm_export.cli import main
    sys.argv = ["mobilellm-export"] + sys.argv[1:]
    main()
""")


@pytest.mark.parametrize("how", ["signal.SIGINT", "ENOSPC"])
def test_interrupted_or_failed_export_leaves_no_bundle(tiny_tokenizer, fp32_bundle, tmp_path, how):
    import shutil

    out = tmp_path / "out"
    old = out / "tiny-llama-android-fp32"
    shutil.copytree(fp32_bundle[0], old)  # an earlier good bundle under the same name must survive
    before = {p.name: sha256(p) for p in old.iterdir()}
    code = _INTERRUPT.format(signal=how) if how.startswith("signal") else _INTERRUPT.replace(
        "signal.raise_signal({signal})", "raise OSError(28, 'No space left on device')")
    r = subprocess.run([sys.executable, "-c", code, "--model", "tiny-llama", "--tokenizer", str(tiny_tokenizer),
                        "--quant", "fp32", "--out", str(out), "--no-verify", *COMMON],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == (130 if how.startswith("signal") else 2), r.stderr
    assert "Traceback" not in r.stderr
    assert sorted(p.name for p in out.iterdir()) == [old.name]  # no partial/temp folders
    assert {p.name: sha256(p) for p in old.iterdir()} == before


@pytest.fixture(scope="module")
def r1_bundle(tmp_path_factory):
    """tiny-r1 (128K vocabulary, QK-norm), 4bit, unverified. (Two exports of one model writing the
    same bytes is the conformance suite's test_two_exports_are_byte_identical, on every target.)"""
    out = tmp_path_factory.mktemp("r1")
    r = run_cli("--model", "tiny-r1", "--tokenizer", str(LLAMA3_TOKENIZER), "--quant", "4bit", "--out", str(out),
                "--no-verify", "--quiet", *COMMON)
    assert r.returncode == 0, r.stderr
    return out / "tiny-r1-android-4bit"


@pytest.mark.extra  # ~2 min: moved out of CI's budget (make test-all runs it)
def test_parity_memory_does_not_grow_with_eval_tokens(r1_bundle):
    """Parity is streamed window by window: scoring 16x more tokens of a 128K vocabulary must not
    raise the peak (the old code held every window's logits: +2 GB per extra 1,024 tokens here)."""
    peaks = {}
    for n in (256, 4096):
        # random weights: the quality bounds (set on trained models) are not what this test is about
        r = run_cli("verify", str(r1_bundle), "--no-latency", "--eval-tokens", str(n), "--json",
                    "--threshold", "kl_mean=1", "--threshold", "top1_min=0")
        assert r.returncode == 0, r.stderr
        rep = json.loads(r.stdout)
        assert rep["eval"]["positions"] >= n
        peaks[n] = next(s["tree_peak_mb"] for s in rep["steps"] if s["step"] == "parity")
    # 4096 positions x 128256 logits x 4 bytes = 2.1 GB per runner if held
    assert peaks[4096] - peaks[256] < 200, peaks
