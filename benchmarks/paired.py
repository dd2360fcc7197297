"""Paired speed comparison of several .pte programs, loaded in ONE process, run by ExecuTorch's
C++ `TextLLMRunner` (the loop the Android `LlmModule` and iOS `TextRunner` wrap).

Why paired: separate processes on a shared 2-core VM swing by +-30 % from one to the next (one
benchmark run measured the same .pte at 105 and 223 decode tok/s), so a median of a few
independent runs can rank two programs either way. Here each round generates once with every
program, back to back, in an order rotated every round; whatever the machine does at that moment
hits all programs alike. The per-round ratio program / reference is a paired estimate, and its
median over rounds is reported with its interquartile range.

Each generation: a prompt of exactly `--prompt-len` tokens (a prefix of `--text`), prefilled in
one call, then `--decode-tokens` greedy tokens. Rates are the runner's own (its Stats).

    python benchmarks/paired.py --tokenizer T.json --json OUT.json REF.pte [--data REF.ptd] OTHER.pte [--data X.ptd] ...

Writes the results as JSON to `--json FILE` (stdout is not usable: the C++ runner prints the
generated text there).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_TEXT = REPO / "mobilellm_export" / "data" / "sample.txt"


def _quartiles(v: list[float]) -> dict:
    if len(v) < 2:
        return {"median": v[0], "q1": v[0], "q3": v[0]}
    q1, q2, q3 = statistics.quantiles(v, n=4, method="inclusive")
    return {"median": q2, "q1": q1, "q3": q3}


def measure(programs: list[tuple[str, str | None]], tokenizer: str, prompt: str, rounds: int,
            decode_tokens: int, threads: int) -> dict:
    sys.path.insert(0, str(REPO))
    from executorch.extension.llm.runner import GenerationConfig

    from mobilellm_export.runtimes.executorch import open_text_runner, runner_stats, set_threads

    set_threads(threads)
    runners = [open_text_runner(pte, tokenizer, ptd) for pte, ptd in programs]

    def generate(runner, max_new: int) -> dict:
        seen: list = []
        runner.reset()
        # No token callback: the C++ loop runs alone (and random-weight pieces need not be UTF-8).
        runner.generate(prompt, GenerationConfig(max_new_tokens=max_new, temperature=0.0, num_bos=0),
                        None, seen.append)
        return runner_stats(seen[-1])

    for r in runners:  # warm-up: first calls allocate and pack weights
        generate(r, 4)
    runs: list[list[dict]] = [[] for _ in runners]
    for rnd in range(rounds):
        for i in [(k + rnd) % len(runners) for k in range(len(runners))]:
            runs[i].append(generate(runners[i], decode_tokens))
    out = []
    for i, (pte, ptd) in enumerate(programs):
        row: dict = {"pte": pte, "data": ptd,
                     "prompt_tokens": sorted({s["num_prompt_tokens"] for s in runs[i]}),
                     "generated_tokens": statistics.median(s["num_generated_tokens"] for s in runs[i])}
        for metric in ("decode_tokens_per_s", "prefill_tokens_per_s"):
            rates = [s[metric] for s in runs[i]]
            row[metric] = statistics.median(rates)
            row[metric + "_runs"] = rates
            row[metric.replace("tokens_per_s", "ratio")] = _quartiles(
                [a / b for a, b in zip(rates, (s[metric] for s in runs[0]))])
        out.append(row)
    return {"runner": "TextLLMRunner", "rounds": rounds, "decode_tokens": decode_tokens, "threads": threads,
            "order": "rotated each round", "programs": out}


def _parse(argv: list[str]):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokenizer", required=True, help="tokenizer.json shared by all programs")
    ap.add_argument("--text", default=str(DEFAULT_TEXT), help="prompt source (default: the built-in sample)")
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--decode-tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", required=True, help="write the results here")
    a, rest = ap.parse_known_args(argv)
    programs: list[tuple[str, str | None]] = []
    it = iter(rest)
    for tok in it:
        if tok == "--data":
            if not programs or programs[-1][1] is not None:
                ap.error("--data must follow the .pte it belongs to")
            programs[-1] = (programs[-1][0], next(it, None))
        elif tok.startswith("-"):
            ap.error(f"unknown option {tok}")
        else:
            programs.append((tok, None))
    if len(programs) < 2:
        ap.error("give at least two .pte files (the first is the reference)")
    for f in [a.tokenizer, a.text, *(p for pair in programs for p in pair if p is not None)]:
        if not Path(f).is_file():
            ap.error(f"no such file: {f}")
    if min(a.rounds, a.decode_tokens, a.prompt_len) < 1:
        ap.error("--rounds, --decode-tokens and --prompt-len must be >= 1")
    return a, programs


def main(argv: list[str] | None = None) -> int:
    a, programs = _parse(sys.argv[1:] if argv is None else argv)
    sys.path.insert(0, str(REPO))
    from tokenizers import Tokenizer

    from mobilellm_export.verify.latency import prompt_prefix

    prompt = prompt_prefix(Tokenizer.from_file(a.tokenizer), Path(a.text).read_text(encoding="utf-8"), a.prompt_len)
    result = measure(programs, a.tokenizer, prompt, a.rounds, a.decode_tokens, a.threads)
    Path(a.json).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
