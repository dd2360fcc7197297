"""Latency of any runner: prefill tok/s, decode tok/s, time to first token, peak RSS.

Each measurement runs in a fresh child process so peak RSS belongs to that runner alone:
    python -m mobilellm_export.verify.latency pte model.pte [--data model.ptd]
    python -m mobilellm_export.verify.latency eager SOURCE [--tokenizer T]
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time

import torch


def measure(runner, prompt: list[int], decode_tokens: int = 64) -> dict:
    runner.reset()  # warm-up: first calls allocate and pack weights
    runner.prefill(prompt[:8])
    runner.decode(prompt[8])
    runner.reset()
    t0 = time.perf_counter()
    tok = int(runner.prefill(prompt).argmax())
    t1 = time.perf_counter()
    for _ in range(decode_tokens):
        tok = int(runner.decode(tok).argmax())
    t2 = time.perf_counter()
    return {"prompt_tokens": len(prompt), "decode_tokens": decode_tokens,
            "ttft_ms": 1e3 * (t1 - t0), "prefill_tok_s": len(prompt) / (t1 - t0),
            "decode_tok_s": decode_tokens / (t2 - t1)}


def peak_rss_mb() -> float:
    """This process's own high-water RSS. (ru_maxrss is not used: Linux carries it over from the
    parent across fork/exec, so a child would report its parent's peak.)"""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _prompt(vocab: int, n: int) -> list[int]:
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, vocab, (n,), generator=g).tolist()


def run_child(kind: str, target: str, prompt_len: int = 128, decode_tokens: int = 64, threads: int = 2,
              extra: list[str] | None = None, data_path: str | None = None) -> dict:
    """Measure in a child process; returns the child's JSON (with peak_rss_mb).
    `data_path`: the .ptd file holding a .pte's external weights, if it has one."""
    cmd = [sys.executable, "-m", "mobilellm_export.verify.latency", kind, target, "--prompt-len", str(prompt_len),
           "--decode-tokens", str(decode_tokens), "--threads", str(threads), *(extra or [])]
    if data_path is not None:
        cmd += ["--data", str(data_path)]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise RuntimeError(f"latency child failed: {r.stderr.strip().splitlines()[-1] if r.stderr.strip() else r.returncode}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def _main(argv: list[str]) -> None:
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("kind", choices=["pte", "eager"])
    ap.add_argument("target")
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--decode-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tokenizer")
    ap.add_argument("--max-context", type=int, default=2048)
    ap.add_argument("--data", help="pte only: .ptd file with the program's external weights")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    if a.kind == "pte":
        from ..runners.executorch import ExecuTorchRunner

        runner = ExecuTorchRunner(a.target, threads=a.threads, data_path=a.data)
        vocab = int(runner.constant("get_vocab_size"))
    else:
        from ..float_chat import build_model
        from ..runners.eager import EagerRunner
        from ..sources import load

        ck = load(a.target, tokenizer=a.tokenizer)
        runner = EagerRunner(build_model(ck, a.max_context), "float", max_seq_len=a.prompt_len)
        runner.model.full_logits = False  # as deployed: only the last position's logits
        vocab = ck.config.vocab_size
    out = measure(runner, _prompt(vocab, a.prompt_len), a.decode_tokens)
    out["peak_rss_mb"] = peak_rss_mb()
    out["threads"] = a.threads
    print(json.dumps(out))


if __name__ == "__main__":
    _main(sys.argv[1:])
