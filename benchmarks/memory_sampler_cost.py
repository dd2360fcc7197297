"""What the process-tree memory sampler (mobilellm_export/memory.py) costs the process it watches.

A process holding a model-sized heap (`--gb`) runs an allocation-heavy torch workload (large
tensors made, multiplied and freed, as quantization and lowering do) three ways in one run,
interleaved over `--rounds`: with no sampler, with `TreeWatch` as it is, and with a sampler that
reads PSS (`/proc/<pid>/smaps_rollup`) every 0.1 s tick, as the sampler did before. The heap has a
forked child beside it, so the tree has more than one process and PSS is read (a lone process is its
RSS). Also times one read of smaps_rollup and of status. Prints a table and writes JSON.

    python benchmarks/memory_sampler_cost.py [--gb 3] [--rounds 3] [--json benchmarks/results/memory_sampler_cost.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from provenance import stamp  # noqa: E402


class EveryTickPss:
    """The sampler before the fix: RSS and PSS of the whole tree at every 0.1 s tick."""

    def __init__(self, interval: float = 0.1):
        from mobilellm_export import memory

        self.memory, self.interval, self.stop = memory, interval, threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self.stop.wait(self.interval):
            self.memory.tree_rss_mb(), self.memory.tree_pss_mb()

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()


def workload(seconds_hint: int) -> float:
    """Allocation-heavy torch work: 16 MB tensors made, multiplied and freed."""
    import torch

    t = time.perf_counter()
    for _ in range(seconds_hint):
        xs = [torch.randn(2048, 2048) for _ in range(6)]
        for a, b in zip(xs, xs[1:]):
            (a @ b).sum()
        del xs
    return time.perf_counter() - t


def read_ms(path: str, n: int = 20) -> float:
    t = time.perf_counter()
    for _ in range(n):
        with open(path) as f:
            f.read()
    return (time.perf_counter() - t) / n * 1000


def main() -> None:
    import torch

    from mobilellm_export.memory import TreeWatch

    ap = argparse.ArgumentParser()
    ap.add_argument("--gb", type=float, default=3.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=40, help="workload iterations per measurement")
    ap.add_argument("--json", default=str(REPO / "benchmarks" / "results" / "memory_sampler_cost.json"))
    args = ap.parse_args()
    torch.set_num_threads(2)
    heap = [torch.ones(1 << 26) for _ in range(int(args.gb * 4))]  # 256 MB each, touched
    r, w = os.pipe()
    child = os.fork()
    if child == 0:  # shares the heap: the tree now has two processes, so PSS is read
        os.close(w)
        os.read(r, 1)
        os._exit(0)
    try:
        pid = os.getpid()
        reads = {"smaps_rollup_ms": round(read_ms(f"/proc/{pid}/smaps_rollup"), 2),
                 "status_ms": round(read_ms(f"/proc/{pid}/status"), 3)}
        ways = {"none": None, "TreeWatch (PSS at most 5 % of the time)": TreeWatch,
                "PSS every 0.1 s (before)": EveryTickPss}
        times = {k: [] for k in ways}
        workload(2)  # warm
        for _ in range(args.rounds):
            for name, make in ways.items():
                if make is None:
                    times[name].append(workload(args.steps))
                else:
                    with make():
                        times[name].append(workload(args.steps))
    finally:
        os.close(w)
        os.waitpid(child, 0)
    del heap
    base = statistics.median(times["none"])
    rows = [{"sampler": k, "median_s": round(statistics.median(v), 2), "runs_s": [round(x, 2) for x in v],
             "over_none": round(statistics.median(v) / base, 3)} for k, v in times.items()]
    print(f"smaps_rollup read {reads['smaps_rollup_ms']} ms, status read {reads['status_ms']} ms "
          f"({args.gb:g} GB heap, one forked child)")
    print(f"{'sampler':42s} {'median s':>9s} {'/ none':>7s}")
    for row in rows:
        print(f"{row['sampler']:42s} {row['median_s']:9.2f} {row['over_none']:7.3f}")
    Path(args.json).write_text(json.dumps({"provenance": stamp(), "heap_gb": args.gb, "rounds": args.rounds,
                                           "reads": reads, "rows": rows}, indent=1) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
