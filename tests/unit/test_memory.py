"""The process-tree memory sampler (mobilellm_export/memory.py), against the kernel's own counters."""

import os
import time

from mobilellm_export import memory

MB = 1 << 20


def test_a_forked_child_counts_once_in_pss_and_twice_in_the_rss_sum():
    """A fork shares its parent's pages: the RSS sum counts them per process, PSS once (what the
    machine holds). A tree of one process is its RSS (nothing shared within it), read without
    smaps_rollup."""
    held = bytearray(os.urandom(1 << 16)) * (3200)  # ~200 MB of touched pages
    alone_rss, alone_pss = memory.tree_rss_mb(), memory.tree_pss_mb()
    assert alone_pss == alone_rss == memory._status_kb(os.getpid(), "VmRSS:") / 1024
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: touch nothing, wait to be ended
        os.close(w)
        os.read(r, 1)
        os._exit(0)
    try:
        deadline = time.monotonic() + 10
        while not memory.descendants(os.getpid()) and time.monotonic() < deadline:
            time.sleep(0.01)
        rss, pss = memory.tree_rss_mb(), memory.tree_pss_mb()
        assert rss > alone_rss + 0.9 * len(held) / MB  # the child's RSS repeats the shared pages
        assert pss < alone_rss + 0.1 * len(held) / MB, (pss, alone_rss)  # each page once
    finally:
        os.close(w)
        os.waitpid(pid, 0)
        os.close(r)
    del held


def test_the_sampler_reports_a_peak_between_marks():
    with memory.TreeWatch(interval=0.02) as watch:
        watch.mark()
        block = bytearray(os.urandom(1 << 16)) * 1600  # ~100 MB
        time.sleep(0.2)
        before = memory.tree_rss_mb()
        del block
        peaks = watch.mark()
    assert peaks["tree_peak_mb"] >= before - 1 and peaks["tree_pss_peak_mb"] >= before - 1, (peaks, before)
