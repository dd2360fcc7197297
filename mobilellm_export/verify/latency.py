"""Latency: prefill tok/s, decode tok/s, time to first token and peak RSS, as medians of rounds.

Each measurement runs in a fresh child process, so its peak RSS belongs to that runner alone:

    python -m mobilellm_export.verify.latency app BUNDLE      the runtime's own loop (TextLLMRunner
                                                              for a .pte): what the apps see
    python -m mobilellm_export.verify.latency loop BUNDLE     our Python loop over the artifact's Runner
    python -m mobilellm_export.verify.latency eager SOURCE    the float reference, same Python loop
    python -m mobilellm_export.verify.latency paired NEW --other OLD
                                                              two bundles' app loops in one process,
                                                              alternating round by round (the gate's
                                                              speed comparison with a baseline)

Every kind first runs one warm-up generation at exactly the measured shapes (first calls allocate
and pack weights), then `rounds` timed generations in the same process; the report gives the
median and the interquartile range of each rate.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from mobilellm_export.errors import UserError
from mobilellm_export.text.tokenizer import encode_bounded


def quartiles(v: list[float]) -> dict:
    v = [x for x in v if x is not None]
    if not v:
        return {"median": None, "q1": None, "q3": None}
    if len(v) < 2:
        return {"median": v[0], "q1": v[0], "q3": v[0]}
    q1, q2, q3 = statistics.quantiles(v, n=4, method="inclusive")
    return {"median": q2, "q1": q1, "q3": q3}


def summarize(runs: list[dict]) -> dict:
    out = {"rounds": len(runs), "prompt_tokens": runs[0]["prompt_tokens"],
           "decode_tokens": runs[0]["decode_tokens"]}
    for key in ("prefill_tok_s", "decode_tok_s", "ttft_ms"):
        q = quartiles([r[key] for r in runs])
        out[key], out[f"{key}_iqr"] = q["median"], [q["q1"], q["q3"]]
    return out


def loop_round(runner, prompt: list[int], decode_tokens: int) -> dict:
    """One generation with our Python loop: greedy prefill, then single-token decode steps."""
    runner.reset()
    t0 = time.perf_counter()
    tok = int(runner.prefill(prompt).argmax())
    t1 = time.perf_counter()
    for _ in range(decode_tokens):
        tok = int(runner.decode(tok).argmax())
    t2 = time.perf_counter()
    return {"prompt_tokens": len(prompt), "decode_tokens": decode_tokens, "ttft_ms": 1e3 * (t1 - t0),
            "prefill_tok_s": len(prompt) / (t1 - t0), "decode_tok_s": decode_tokens / (t2 - t1)}


def app_round(app, prompt: str, n_prompt: int, decode_tokens: int) -> dict:
    s = app.generate(prompt, decode_tokens + 1, temperature=0.0, quiet=True)
    if s["prompt_tokens"] != n_prompt:
        raise RuntimeError(f"the runtime tokenized the prompt to {s['prompt_tokens']} tokens, expected {n_prompt}")
    return {"prompt_tokens": s["prompt_tokens"], "decode_tokens": s["generated_tokens"] - 1,
            "ttft_ms": s["ttft_ms"], "prefill_tok_s": s["prefill_tok_s"], "decode_tok_s": s["decode_tok_s"]}


def measure(round_fn, rounds: int) -> dict:
    round_fn()  # warm-up at the measured shapes
    return summarize([round_fn() for _ in range(rounds)])


def prompt_prefix(tokenizer, text: str, n: int) -> str:
    """The shortest prefix of `text` that `tokenizer` (a tokenizers.Tokenizer) turns into exactly n
    tokens, without special tokens: a prompt of a known length for a text-in runtime."""
    ids, offsets = encode_bounded(tokenizer, text, offsets=True)
    if len(ids) < n:
        raise UserError(f"the text has only {len(ids)} tokens, fewer than the {n} asked for")
    prefix = text[:offsets[n - 1][1]]
    got = len(encode_bounded(tokenizer, prefix))
    if got != n:  # a merge across the cut; never seen with byte-level BPE on plain prose
        raise UserError(f"could not cut the text at exactly {n} tokens (got {got})")
    return prefix


def runner_prefix(d: Path, m: dict, text: str, n: int) -> str:
    """A bundle's app-runner prompt of exactly n tokens: the runner text (pre-normalized) of `text`,
    cut with the bundle's tokenizer.json as the runtime reads it."""
    from mobilellm_export.text.tokenizer import Tokenizer

    tok = Tokenizer.from_bundle(d, m)
    return prompt_prefix(tok.tok, tok.runner_text(text), n)


def peak_rss_mb() -> float:
    from mobilellm_export.memory import self_peak_mb

    return self_peak_mb()


def run_child(kind: str, target: str, prompt_len: int, decode_tokens: int, rounds: int = 5, threads: int = 2,
              extra: list[str] | None = None) -> dict:
    """Measure in a child process; returns its JSON (with peak_rss_mb)."""
    cmd = [sys.executable, "-m", "mobilellm_export.verify.latency", kind, target, "--prompt-len", str(prompt_len),
           "--decode-tokens", str(decode_tokens), "--rounds", str(rounds), "--threads", str(threads), *(extra or [])]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode != 0:
        last = r.stderr.strip().splitlines()[-1] if r.stderr.strip() else f"exit {r.returncode}"
        raise RuntimeError(f"latency child ({kind}) failed: {last}")
    return json.loads(r.stdout.strip().splitlines()[-1])


PAIRED_ROUNDS = 9


def run_paired(new: Path, old: Path, *, threads: int = 2, rounds: int = PAIRED_ROUNDS) -> dict:
    """Decode speed of bundle `new` against bundle `old`, paired: one process runs both app loops,
    one generation each per round, in an order that alternates, so whatever the machine does at
    that moment slows both alike. Returns the median (and IQR) of the per-round ratios new/old."""
    from mobilellm_export.bundle import read_manifest

    gens = [read_manifest(Path(d))["generation"] for d in (new, old)]
    n_prompt = min(min(128, g["max_seq_len"], g["max_context"] // 2) for g in gens)
    n_decode = min(min(64, g["max_context"] - n_prompt - 2) for g in gens)
    return run_child("paired", str(new), n_prompt, n_decode, rounds, threads, ["--other", str(old)])


def _paired(apps: list, prompts: list[str], n_prompt: int, n_decode: int, rounds: int) -> dict:
    for app, text in zip(apps, prompts):  # warm-up at the measured shapes
        app_round(app, text, n_prompt, n_decode)
    runs: list[list[dict]] = [[], []]
    for r in range(rounds):
        for i in ((0, 1) if r % 2 == 0 else (1, 0)):
            runs[i].append(app_round(apps[i], prompts[i], n_prompt, n_decode))
    out = {"rounds": rounds, "prompt_tokens": n_prompt, "decode_tokens": n_decode}
    for key in ("decode_tok_s", "prefill_tok_s"):
        ratios = [a[key] / b[key] for a, b in zip(*runs) if a[key] and b[key]]
        q = quartiles(ratios)
        name = key.split("_")[0]
        out[f"{name}_ratio"], out[f"{name}_ratio_iqr"] = q["median"], [q["q1"], q["q3"]]
        out[f"new_{key}"], out[f"old_{key}"] = (quartiles([x[key] for x in rs])["median"] for rs in runs)
    return out


def _main(argv: list[str]) -> None:
    import argparse

    import torch

    ap = argparse.ArgumentParser()
    ap.add_argument("kind", choices=["app", "loop", "eager", "paired"])
    ap.add_argument("target", help="a bundle folder (app, loop) or a source (eager)")
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--decode-tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tokenizer")
    ap.add_argument("--max-context", type=int, default=2048)
    ap.add_argument("--other", help="paired: the baseline bundle")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    # stdout carries the result line only: the C++ runner and libraries write to fd 1 too
    result_fd = os.dup(1)
    os.dup2(2, 1)
    if a.kind == "eager":
        from mobilellm_export.checkpoints import build_model
        from mobilellm_export.runtimes.eager import EagerRunner
        from mobilellm_export.checkpoints import load

        ck = load(a.target, tokenizer=a.tokenizer)
        runner = EagerRunner(build_model(ck, a.max_context), "float", max_seq_len=a.prompt_len)
        runner.model.full_logits = False  # as deployed: only the last position's logits
        prompt = _prompt(ck.config.vocab_size, a.prompt_len)
        out = measure(lambda: loop_round(runner, prompt, a.decode_tokens), a.rounds)
    elif a.kind == "paired":
        from mobilellm_export import backends
        from mobilellm_export.bundle import read_manifest
        from mobilellm_export.text.corpus import load_text

        apps, prompts = [], []
        for d in (Path(a.target), Path(a.other)):
            m = read_manifest(d)
            app = backends.of_bundle(m).app_runner(d, m, threads=a.threads)
            if app is None:
                os.write(result_fd, (json.dumps({"unavailable": f"{d.name} has no app runner on this machine"})
                                     + "\n").encode())
                return
            apps.append(app)
            prompts.append(runner_prefix(d, m, load_text(None), a.prompt_len))
        out = _paired(apps, prompts, a.prompt_len, a.decode_tokens, a.rounds)
    else:
        from mobilellm_export import backends
        from mobilellm_export.bundle import read_manifest

        d = Path(a.target)
        m = read_manifest(d)
        target = backends.of_bundle(m)
        runtime = target.runner(d, m, threads=a.threads) if a.kind == "loop" else target.app_runner(d, m, threads=a.threads)
        if runtime is None or getattr(runtime, "not_a_speed_reference", None):
            what = "runner" if a.kind == "loop" else "app runner"
            why = runtime.not_a_speed_reference if runtime else f"target {target.name} has no {what} on this machine"
            os.write(result_fd, (json.dumps({"unavailable": why}) + "\n").encode())
            return
        if a.kind == "loop":
            runner = runtime
            prompt = _prompt(m["config"]["vocab_size"], a.prompt_len)
            out = measure(lambda: loop_round(runner, prompt, a.decode_tokens), a.rounds)
        else:
            from mobilellm_export.text.corpus import load_text

            app = runtime
            text = runner_prefix(d, m, load_text(None), a.prompt_len)
            out = measure(lambda: app_round(app, text, a.prompt_len, a.decode_tokens), a.rounds)
    out["peak_rss_mb"] = peak_rss_mb()
    out["threads"] = a.threads
    os.write(result_fd, (json.dumps(out) + "\n").encode())


def _prompt(vocab: int, n: int) -> list[int]:
    import torch

    g = torch.Generator().manual_seed(0)
    return torch.randint(0, vocab, (n,), generator=g).tolist()


if __name__ == "__main__":
    _main(sys.argv[1:])
