"""Progress in a log (stderr not a terminal): a step that reports nothing for a while still writes
a line at the plain-line rate, with its count, time left and latest sub-step; a terminal gets rich's
live line instead."""

import io
import re
import time

from mobilellm_export import console as console_mod
from mobilellm_export.console import Progress, clock


def _progress(monkeypatch, every: float) -> tuple[Progress, io.StringIO]:
    buf = io.StringIO()  # not a terminal, as a CI log or `make demo > log`
    monkeypatch.setattr(console_mod, "err", lambda: buf)
    monkeypatch.setattr(Progress, "EVERY_S", every)
    return Progress(), buf


def _wait_for(buf: io.StringIO, needle: str, count: int, limit: float = 10.0) -> None:
    """Sleep (a native call that reports nothing) until `needle` was written `count` times; a loaded
    machine may wake the progress thread late, never not at all."""
    end = time.monotonic() + limit
    while buf.getvalue().count(needle) < count and time.monotonic() < end:
        time.sleep(0.02)


def test_a_silent_step_still_writes_lines_to_a_log(monkeypatch):
    p, buf = _progress(monkeypatch, 0.1)
    with p.step("lower to android", "XNNPACK") as task:
        task.status("XNNPACK partition + lowering")
        _wait_for(buf, "XNNPACK partition + lowering", 3)
    lines = buf.getvalue().splitlines()
    assert lines[0] == "▸ lower to android: XNNPACK"
    beats = [ln for ln in lines if "XNNPACK partition + lowering" in ln]
    assert len(beats) >= 3, lines
    assert lines[-1] == "  lower to android · done in 0:00", lines[-1]
    assert not any("\x1b" in ln for ln in lines), "no terminal control codes in a log"


def test_a_counted_step_reports_its_count_and_time_left(monkeypatch):
    p, buf = _progress(monkeypatch, 0.05)
    with p.step("parity", "64 positions", total=64, unit="positions") as task:
        task.advance(16)
        _wait_for(buf, "16/64 positions", 1)
    lines = buf.getvalue().splitlines()
    assert any(re.fullmatch(r"  parity · 16/64 positions · ~\d+:\d\d left · 0:00", ln) for ln in lines), lines
    assert lines[-1] == "  parity · 64/64 positions · done in 0:00"


def test_code_inside_a_step_reports_through_the_progress(monkeypatch):
    """Calibration runs inside the quantize step it did not open: Progress.status reaches that step."""
    p, buf = _progress(monkeypatch, 0.05)
    p.status("outside any step: dropped")
    with p.step("quantize (4bit)"):
        p.status("calibration window 3/8")
        _wait_for(buf, "calibration window 3/8", 1)
    p.status("after the step: dropped")
    text = buf.getvalue()
    assert "calibration window 3/8" in text and "dropped" not in text


def test_a_failing_step_writes_no_done_line(monkeypatch):
    p, buf = _progress(monkeypatch, 10)
    try:
        with p.step("quantize (4bit)"):
            raise ValueError("boom")
    except ValueError:
        pass
    assert "done" not in buf.getvalue()
    assert p._task is None


def test_clock():
    assert [clock(s) for s in (0, 59.9, 61, 3599, 3600, 36000)] == \
        ["0:00", "0:59", "1:01", "59:59", "1:00:00", "10:00:00"]
