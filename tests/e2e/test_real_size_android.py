"""Real-size Android exports (minutes each; in `make test` and CI: the real-weight SmolLM2 checks).

SmolLM2-135M (real weights) against the bounds of the Android issue, measured on the first
4,096 novel tokens of Botchan in windows of 512; MobileLLM-R1-140M shapes (random weights,
QK-norm, Llama 3 tokenizer) through fp32 and 4bit, and through ExecuTorch's C++ LLM runner.
"""

import json

import pytest

from conftest import BOTCHAN, LLAMA3_TOKENIZER
from test_sources import run_cli, write_r1_dir

pytestmark = pytest.mark.slow


def export(tmp_path, *args):
    # --no-latency: nothing here asserts speed, and three timing children per export cost minutes of CI
    # (test_export checks the latency rows on tiny-llama; benchmarks/ measures real sizes)
    r = run_cli(*args, "--out", str(tmp_path), "--json", "--quiet", "--no-latency", timeout=3600)
    assert r.returncode in (0, 1), r.stderr  # 1 = a threshold failed: the assertions below say which
    return json.loads(r.stdout)


@pytest.fixture(scope="module")
def smollm2_4bit(tmp_path_factory):
    out = tmp_path_factory.mktemp("smol4")
    return out, export(out, "--model", "smollm2-135m", "--quant", "4bit", "--eval-text", str(BOTCHAN),
                       "--eval-tokens", "4096")


def test_smollm2_4bit_lowering_parity(smollm2_4bit):
    _, rep = smollm2_4bit
    low = rep["parity"]["quant_vs_artifact"]
    assert rep["eval"]["positions"] == 4096 and rep["eval"]["window"] == 512
    assert low["kl_mean"] <= 0.03 and low["top1"] >= 0.85, low


def test_smollm2_4bit_quality_against_float(smollm2_4bit):
    _, rep = smollm2_4bit
    e2e = rep["parity"]["float_vs_artifact"]
    assert abs(e2e["ppl_ref"] - 30.50) <= 1.0  # independent figure (MODEL_FACTS): float ppl over 4,096 tokens
    # This recipe measures KL 0.0938, top-1 0.821, ppl +8.2 % here (benchmarks/results/
    # smollm2_4bit_android.json, the same command and text). The bounds sit just past that, with
    # room for run-to-run and thread-count noise: KL +17 %, top-1 -0.02, ppl +1.8 points. Losing the
    # smoothing alone (before it: 0.119 / 0.797 / +10.6 %, quant_recipes/4bit.toml) fails all three, as does
    # anything near issue 10's acceptance (KL 0.25) or llama.cpp's Q4_0 + Q8_0 head (KL 0.274,
    # top-1 0.688, +19.3 %); plain round-to-nearest measured 0.384 / 0.631 / +32.8 %.
    assert e2e["kl_mean"] <= 0.11 and e2e["top1"] >= 0.80 and e2e["ppl_delta"] <= 0.10, e2e
    q = rep["quantization"]
    assert q["calibration"]["tokens"] == 8192 and "mse+gptq+act_order" in q["rounding"]
    # SmoothQuant ran (quant/transforms/smooth.py, the recipe's `smooth = 0.3`): SmolLM2-135M's 30
    # pre-norm blocks give 3 groups each (q|k|v input, gate|up input, down_proj input), and scales
    # that are all 1 would mean nothing moved (measured max ratio 18.3).
    assert q["smooth"]["alpha"] == 0.3 and q["smooth"]["groups"] == 3 * 30, q.get("smooth")
    assert q["smooth"]["max_ratio"] > 2, q["smooth"]
    # the default evaluation (first 4,096 tokens) and the built-in calibration text share no passage
    assert any(c["name"] == "calibration text disjoint from evaluation text" and c["status"] == "pass"
               for c in rep["gate"]["checks"])
    assert rep["passed"]


def test_smollm2_float_model_agrees_with_transformers_reading_the_gguf(smollm2_4bit):
    """verify's independent reference on the real weights: transformers dequantizes the same GGUF with
    its own reader (and un-permutes Q/K with its own code) and agrees with our float model on the first
    512-token window as two fp32 implementations do (benchmarks/results/independent_reference.json)."""
    _, rep = smollm2_4bit
    (src,) = [c for c in rep["gate"]["checks"] if c["suite"] == "source"]
    assert src["status"] == "pass" and src["value"] <= 1e-4 and "over 512 positions" in src["message"], src["message"]


def test_smollm2_4bit_bundle_stores_tied_table_once(smollm2_4bit):
    out, rep = smollm2_4bit
    # 49152x576 int8 table + fp32 scales, once; two copies would add another 28.5 MB
    total = sum(v for k, v in rep["size_mb"].items() if k.startswith("model."))
    assert rep["quantization"]["tied_stored"] == "once" and total < 95, rep["size_mb"]


@pytest.fixture(scope="module")
def r1_fp32(tmp_path_factory):
    out = tmp_path_factory.mktemp("r1fp32")
    rep = export(out, "--model", "r1-140m", "--tokenizer", str(LLAMA3_TOKENIZER), "--quant", "fp32",
                 "--max-context", "512", "--eval-tokens", "256")
    return out / "r1-140m-android-fp32", rep


@pytest.mark.extra  # R1-140M shapes (random weights), minutes each: make test-all
def test_r1_140m_fp32_matches_float(r1_fp32):
    _, rep = r1_fp32
    assert rep["parity"]["float_vs_artifact"]["max_abs_logit"] <= 1e-3
    assert rep["greedy"]["float_vs_artifact"]["common_prefix"] >= 32  # same 32 (here 64) greedy tokens as float
    assert rep["passed"]


@pytest.mark.extra  # R1-140M shapes (random weights), minutes each: make test-all
def test_r1_140m_text_llm_runner_generates(r1_fp32):
    """`run` on R1-140M (128K vocabulary, QK-norm, Llama 3 chat template): ExecuTorch's C++ runner
    generates and prints the same greedy tokens as our runner over the same .pte. Random weights
    emit byte pieces that are not UTF-8 on their own: the text is read from the runner's stdout,
    never through the Python token callback that fails on them."""
    from test_android import cpp_runner_text

    from mobilellm_export.sampling import generate
    from mobilellm_export.runtimes.executorch import ExecuTorchRunner
    from mobilellm_export.text.tokenizer import Tokenizer

    d, _ = r1_fp32
    r = run_cli("run", str(d), "--prompt", "What is 2+2?", "--max-new-tokens", "12", "--temperature", "0")
    assert r.returncode == 0, r.stderr
    tok = Tokenizer.from_dir(d)
    m = json.loads((d / "bundle.json").read_text())
    ids = tok.prompt_ids(tok.prompt_text("What is 2+2?", m["generation"]["bos"]), m["generation"]["bos"])
    assert ids[0] == 128000 and ids.count(128000) == 1  # the template renders BOS; nothing adds a second
    assert f"{len(ids)} prompt tokens" in r.stderr
    ours = list(generate(ExecuTorchRunner(d / "model.pte"), ids, 12, eos_ids=(128001, 128008, 128009)))
    assert f"[{len(ours)} tokens" in r.stderr
    assert r.stdout == cpp_runner_text(tok, ours) + "\n"


@pytest.mark.extra  # R1-140M shapes (random weights), minutes each: make test-all
def test_r1_140m_4bit_lowering(tmp_path):
    rep = export(tmp_path, "--model", "r1-140m", "--tokenizer", str(LLAMA3_TOKENIZER), "--quant", "4bit",
                 "--max-context", "512", "--eval-tokens", "512")
    low = rep["parity"]["quant_vs_artifact"]
    assert low["kl_mean"] <= 0.03 and low["top1"] >= 0.85, low


@pytest.mark.extra  # R1-140M shapes (random weights), minutes each: make test-all
def test_r1_layout_hf_directory_exports(tmp_path):
    """A MobileLLM-R1-layout HF directory (transformers 5.x config, safetensors) goes all the way."""
    src = tmp_path / "MobileLLM-R1-tiny"
    write_r1_dir(src, generation=5)
    import shutil

    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(LLAMA3_TOKENIZER / f, src / f)
    cfg = json.loads((src / "config.json").read_text())
    cfg["vocab_size"] = 128256
    (src / "config.json").write_text(json.dumps(cfg))
    write_r1_dir_vocab(src, cfg)
    rep = export(tmp_path / "out", "--model", str(src), "--quant", "fp32", "--max-context", "128",
                 "--max-seq-len", "32", "--eval-tokens", "128")
    assert rep["parity"]["float_vs_artifact"]["max_abs_logit"] <= 1e-3 and rep["passed"]


def write_r1_dir_vocab(src, cfg):
    """Rewrite the weights for the full Llama 3 vocabulary (the tokenizer has 128,256 ids)."""
    from safetensors.torch import save_file

    from mobilellm_export.checkpoints.hf_config import from_hf_config
    from test_sources import r1_tensors

    save_file(r1_tensors(from_hf_config(cfg)), str(src / "model.safetensors"))


def _in_a_terminal(args: list[str], lines: list[str], timeout: float = 900) -> tuple[int, str]:
    """Run the CLI on a pseudo-terminal (stdin, stdout and stderr), typing `lines` one per `you> `
    prompt, then Ctrl-D; return its exit code and everything the terminal showed."""
    import os
    import pty
    import select
    import subprocess
    import sys
    import time

    master, slave = pty.openpty()
    p = subprocess.Popen([sys.executable, "-m", "mobilellm_export.cli", *args], stdin=slave, stdout=slave,
                         stderr=slave, close_fds=True)
    os.close(slave)
    shown, typed, deadline = b"", 0, time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if select.select([master], [], [], 1)[0]:
                try:
                    chunk = os.read(master, 1 << 16)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not chunk:
                    break
                shown += chunk
            if shown.count(b"you> ") > typed:
                os.write(master, (lines[typed] + "\n").encode() if typed < len(lines) else b"\x04")
                typed += 1
        else:
            p.kill()
            raise AssertionError(f"the chat did not end in {timeout} s: {shown[-2000:]!r}")
        return p.wait(timeout=60), shown.decode("utf-8", "replace")
    finally:
        os.close(master)


def test_smollm2_chat_in_a_terminal_reuses_the_kv_cache(smollm2_4bit):
    """`run BUNDLE` with no prompt, on a terminal: a three-turn chat through the bundle's prompt
    format, where turns 2 and 3 keep the runner's KV cache and prefill only the new turn; no stop
    token reaches the screen (ExecuTorch's runner prints it)."""
    import re

    out, _ = smollm2_4bit
    bundle = out / "smollm2-135m-android-4bit"
    code, shown = _in_a_terminal(["run", str(bundle), "--max-new-tokens", "96", "--temperature", "0"],
                                 ["What is 2 plus 2?", "And 3 plus 3?", "Name a colour."])
    assert code == 0, shown[-3000:]
    assert shown.count("you> ") == 4 and "chat: one line per turn" in shown, shown
    assert "<|im_end|>" not in shown and "<|im_start|>" not in shown, shown
    kept = [(int(a), int(b)) for a, b in re.findall(r"KV cache reused: (\d+) tokens kept, (\d+) prefilled", shown)]
    assert len(kept) == 2, shown  # turns 2 and 3 (turn 1 starts empty)
    (k2, p2), (k3, p3) = kept
    assert 0 < k2 < k3 and p2 < k2 and p3 < k3, kept  # the history stays in the cache; only the new turn is fed


def test_smollm2_run_prompt_hides_the_stop_token(smollm2_4bit):
    out, _ = smollm2_4bit
    r = run_cli("run", str(out / "smollm2-135m-android-4bit"), "--prompt", "What is 7 times 8?",
                "--max-new-tokens", "96", "--temperature", "0")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() and "<|im_end|>" not in r.stdout, r.stdout
