"""Peak memory of the whole process tree (this process and every descendant), per step.

A sampler thread sums VmRSS over the tree every `interval` seconds; a child that lives shorter
than that can be missed, so children also report their own high-water mark (VmHWM). For this
process alone the kernel's own VmHWM is exact: it is reset at each step (/proc/self/clear_refs).
"""

from __future__ import annotations

import os
import threading
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


def release() -> None:
    """Collect garbage and hand freed heap pages back to the OS (glibc keeps them otherwise, and
    the next step's peak would count memory no one uses)."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


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


class TreeWatch:
    """Background sampler: `mark()` starts a new step and returns the finished step's peaks."""

    def __init__(self, interval: float = 0.05):
        self.interval = interval
        self._peak = 0.0
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
        while not self._stop.wait(self.interval):
            rss = tree_rss_mb()
            with self._lock:
                self._peak = max(self._peak, rss)

    def mark(self) -> dict:
        """Peaks since the previous mark: {'tree_peak_mb', 'self_peak_mb'}; then start anew."""
        if not self.available:
            return {}
        now = tree_rss_mb()
        with self._lock:
            tree = max(self._peak, now)
            self._peak = now
        own = self_peak_mb()
        reset_self_peak()
        return {"tree_peak_mb": round(max(tree, own), 1), "self_peak_mb": round(own, 1)}
