"""One bare .pte (no bundle: e.g. export_llm's) measured in this process by our Python loop over
`ExecuTorchRunner`, the same warm-up + rounds as `mobilellm_export.verify.latency` (which times bundles).

    python benchmarks/pte_child.py MODEL.pte [--data MODEL.ptd] --prompt-len N --decode-tokens M --rounds R
Prints one JSON line (with peak_rss_mb) on stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mobilellm_export.memory import self_peak_mb  # noqa: E402
from mobilellm_export.runtimes.executorch import ExecuTorchRunner  # noqa: E402
from mobilellm_export.verify.latency import _prompt, loop_round, measure  # noqa: E402


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("pte")
    ap.add_argument("--data")
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--decode-tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args(argv)
    runner = ExecuTorchRunner(a.pte, threads=a.threads, data_path=a.data)
    prompt = _prompt(int(runner.constant("get_vocab_size")), a.prompt_len)
    out = measure(lambda: loop_round(runner, prompt, a.decode_tokens), a.rounds)
    out.update(peak_rss_mb=self_peak_mb(), threads=a.threads)
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1:])
