"""The process-tree memory sampler (mobilellm_export/memory.py), against the kernel's own counters.

Each case runs in a fresh interpreter: a test worker may have children of its own (sandbox
workers), and the tree's sums would count them."""

import json
import subprocess
import sys

MB = 1 << 20

FORK = """
import json, os, time
from mobilellm_export import memory
held = bytearray(os.urandom(1 << 16)) * 3200  # ~200 MB of touched pages
out = {"alone_rss": memory.tree_rss_mb(), "alone_pss": memory.tree_pss_mb(),
       "status_rss": memory._status_kb(os.getpid(), "VmRSS:") / 1024, "held_mb": len(held) / (1 << 20)}
r, w = os.pipe()
pid = os.fork()
if pid == 0:  # the child: touches nothing, waits to be ended
    os.close(w); os.read(r, 1); os._exit(0)
deadline = time.monotonic() + 10
while not memory.descendants(os.getpid()) and time.monotonic() < deadline:
    time.sleep(0.01)
out.update(rss=memory.tree_rss_mb(), pss=memory.tree_pss_mb())
os.close(w); os.waitpid(pid, 0)
print(json.dumps(out))
"""

PEAK = """
import json, os, time
from mobilellm_export import memory
with memory.TreeWatch(interval=0.02) as watch:
    watch.mark()
    block = bytearray(os.urandom(1 << 16)) * 1600  # ~100 MB
    time.sleep(0.3)
    before = memory.tree_rss_mb()
    del block
    peaks = watch.mark()
print(json.dumps({"before": before, **peaks}))
"""


def _run(code: str) -> dict:
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout)


def test_a_forked_child_counts_once_in_pss_and_twice_in_the_rss_sum():
    """A fork shares its parent's pages: the RSS sum counts them per process, PSS once (what the
    machine holds). A tree of one process is its RSS (nothing shared within it), read without
    smaps_rollup."""
    o = _run(FORK)
    assert o["alone_pss"] == o["alone_rss"] == o["status_rss"], o
    assert o["rss"] > o["alone_rss"] + 0.9 * o["held_mb"], o  # the child's RSS repeats the shared pages
    assert o["pss"] < o["alone_rss"] + 0.1 * o["held_mb"], o  # each page once


def test_the_sampler_reports_a_peak_between_marks():
    o = _run(PEAK)
    assert o["tree_peak_mb"] >= o["before"] - 1 and o["tree_pss_peak_mb"] >= o["before"] - 1, o
