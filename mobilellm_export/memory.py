"""Peak memory of the whole process tree (this process and every descendant), per step.

A sampler thread sums VmRSS over the tree every `interval` seconds, and PSS as often as its cost
allows (`TreeWatch._run`); a child that lives shorter than that can be missed, so children also
report their own high-water mark (VmHWM). For this process alone the kernel's own VmHWM is exact:
it is reset at each step (/proc/self/clear_refs).
The RSS sum counts a page once per process that maps it (a forked sandbox child, the torch library
in every latency child); the PSS sum counts it once in all: what the machine holds.

`release()` also ends the sandbox children (`on_release`): a child forked while the parent held a
model keeps that model's pages alive after the parent frees them.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path


def _status_kb(pid: int | str, key: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def self_peak_mb() -> float:
    """This process's own high-water RSS since start or the last reset_self_peak()."""
    return _status_kb("self", "VmHWM:") / 1024


def reset_self_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # 5: reset the peak RSS (Linux >= 4.0)
        return True
    except OSError:
        return False


_ON_RELEASE: list = []


def on_release(fn) -> None:
    """Call `fn()` at every `release()`, before the heap is trimmed (the sandbox registers the end of
    its children: text/ sits above this module)."""
    _ON_RELEASE.append(fn)


def release() -> None:
    """Collect garbage and hand freed heap pages back to the OS (glibc keeps them otherwise, and
    the next step's peak would count memory no one uses)."""
    import ctypes
    import gc

    for fn in _ON_RELEASE:
        fn()
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


_TRIED: set[str] = set()  # modules settle_imports was given (a missing one is not tried again)
_FROZEN = False


def settle_imports(modules=()) -> None:
    """Import `modules` (those missing are skipped) and take everything alive out of the cyclic
    collector's reach (gc.freeze): on the first call, and on each that imports something new.

    Why: torch, ExecuTorch, coremltools and ONNX leave ~540,000 tracked objects behind at import,
    and every full collection (each `release()`, and the interpreter's own) walked them all: 0.35 s
    each, 3.5 s of a tiny export's 46. Frozen, they are never walked again. Call it only where
    what is alive lives as long as the process (imports, the command's inputs): a frozen object is
    still freed when its last reference goes, but one in a reference cycle never is."""
    import gc
    import importlib
    import sys

    global _FROZEN
    new = [m for m in modules if m not in _TRIED and m not in sys.modules]
    _TRIED.update(modules)
    for m in new:
        try:
            importlib.import_module(m)
        except ImportError:  # an optional extra (transformers) not installed: its check says so later
            pass
    if new or not _FROZEN:
        gc.collect()
        gc.freeze()
        _FROZEN = True


def descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        try:
            tasks = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for t in tasks:
            try:
                kids = Path(f"/proc/{p}/task/{t}/children").read_text().split()
            except OSError:
                continue
            for k in kids:
                out.append(int(k))
                todo.append(int(k))
    return out


def tree_rss_mb(pid: int | None = None) -> float:
    pid = pid or os.getpid()
    return sum(_status_kb(p, "VmRSS:") for p in [pid, *descendants(pid)]) / 1024


def _pss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def tree_pss_mb(pid: int | None = None) -> float:
    """The tree's memory as the machine holds it: each page counted once, shared pages split among
    the processes that map them (proportional set size). A sum of RSS counts a page shared by a
    forked child, or a library every child maps, once per process: a fork of a 2 GB process adds
    2 GB to it and next to nothing to the machine. A tree of one process shares nothing within
    itself: its RSS, read without smaps_rollup's cost (see TreeWatch)."""
    pid = pid or os.getpid()
    kids = descendants(pid)
    if not kids:
        return _status_kb(pid, "VmRSS:") / 1024
    return sum(_pss_kb(p) for p in [pid, *kids]) / 1024


class TreeWatch:
    """Background sampler: `mark()` starts a new step and returns the finished step's peaks."""

    def __init__(self, interval: float = 0.1):
        self.interval = interval
        self._peak = self._pss_peak = 0.0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.available = Path("/proc/self/status").exists()

    def __enter__(self) -> TreeWatch:
        if self.available:
            reset_self_peak()
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        # smaps_rollup walks every page of a process under its mmap lock: 94 ms for a 3 GB process
        # here. Read every 0.1 s it slowed the watched work 1.37x (benchmarks/results/
        # memory_sampler_cost.json), so PSS is read at most 5 % of the time; RSS every tick.
        next_pss = 0.0
        while not self._stop.wait(self.interval):
            rss, pss = tree_rss_mb(), None
            t0 = time.monotonic()
            if t0 >= next_pss:
                pss = tree_pss_mb()
                t1 = time.monotonic()
                next_pss = t1 + max(self.interval, 20 * (t1 - t0))
            with self._lock:
                self._peak = max(self._peak, rss)
                if pss is not None:
                    self._pss_peak = max(self._pss_peak, pss)

    def mark(self) -> dict:
        """Peaks since the previous mark: {'tree_peak_mb' (sum of RSS), 'tree_pss_peak_mb' (each page
        once), 'self_peak_mb'}; then start anew."""
        if not self.available:
            return {}
        now, now_pss = tree_rss_mb(), tree_pss_mb()
        with self._lock:
            tree, pss = max(self._peak, now), max(self._pss_peak, now_pss)
            self._peak, self._pss_peak = now, now_pss
        own = self_peak_mb()
        reset_self_peak()
        return {"tree_peak_mb": round(max(tree, own), 1), "tree_pss_peak_mb": round(pss, 1),
                "self_peak_mb": round(own, 1)}
