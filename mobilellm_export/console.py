"""What the user sees: our own output intact, third-party noise hidden, progress on long steps.

`Session` (one per CLI command) captures file descriptors 1 and 2 into a temporary log unless
`--verbose`: torch/torchao warnings and ExecuTorch's native log lines (written straight to the
descriptors by C++) land there, not on the terminal. Our own output goes through `out()` and
`err()`, duplicates of the real descriptors. When a command fails unexpectedly, the tail of the
captured log is replayed before the traceback, so a native "Missing operator" is never lost.

`Progress` shows one live line per step (a bar where the step has a known size, else a spinner,
with elapsed time), and records each step's wall time and peak memory for the report. When stderr
is not a terminal (a CI log, `make demo > log`), rich draws nothing until a step ends, so a step
instead writes a plain line with its latest state (count, time left, sub-step) every `EVERY_S`
seconds: a log is never silent for long.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import tempfile
import threading
import time
from collections.abc import Iterator

from mobilellm_export.errors import user_message
from mobilellm_export.memory import TreeWatch

_OUT: io.TextIOBase | None = None
_ERR: io.TextIOBase | None = None
REPLAY_LINES = 60


def out():
    return _OUT or sys.stdout


def err():
    return _ERR or sys.stderr


class Session:
    def __init__(self, verbose: bool = False):
        self.verbose = verbose
        self.log = None
        self._saved: dict[int, int] = {}

    def __enter__(self) -> Session:
        global _OUT, _ERR
        sys.stdout.flush()
        sys.stderr.flush()
        # Our own output goes to duplicates of the real descriptors, even with --verbose: a runtime
        # may move fd 1 for a while (TextRunner reads the C++ runner's text from it).
        for fd in (1, 2):
            self._saved[fd] = os.dup(fd)
        if not self.verbose:
            self.log = tempfile.TemporaryFile()
            for fd in (1, 2):
                os.dup2(self.log.fileno(), fd)
        _OUT = open(self._saved[1], "w", encoding="utf-8", errors="replace", closefd=False, buffering=1)
        _ERR = open(self._saved[2], "w", encoding="utf-8", errors="replace", closefd=False, buffering=1)
        return self

    def __exit__(self, etype, exc, tb) -> None:
        global _OUT, _ERR
        for stream in (sys.stdout, sys.stderr, _OUT, _ERR):
            with contextlib.suppress(Exception):
                stream.flush()
        _flush_c_stdio()
        for fd, saved in self._saved.items():
            if not self.verbose:
                os.dup2(saved, fd)
            os.close(saved)
        _OUT = _ERR = None
        if self.log is None:
            return
        from mobilellm_export.signals import Terminated

        expected = (etype is None or issubclass(etype, (KeyboardInterrupt, SystemExit, Terminated))
                    or user_message(exc) is not None)
        if not expected:
            self.replay()
        self.log.close()

    def replay(self) -> None:
        """Print the tail of what third-party code wrote while the command ran."""
        self.log.seek(0)
        lines = self.log.read().decode("utf-8", "replace").splitlines()
        if lines:
            tail = lines[-REPLAY_LINES:]
            sys.stderr.write(f"--- last {len(tail)} of {len(lines)} lines of native/library output ---\n")
            sys.stderr.write("\n".join(tail) + "\n---\n")
            sys.stderr.flush()


def _flush_c_stdio() -> None:
    """C code (ExecuTorch's runner) buffers printf output; flush it before moving descriptors."""
    import ctypes

    with contextlib.suppress(Exception):
        ctypes.CDLL(None).fflush(None)


class Task:
    def __init__(self, progress, task_id):
        self._progress, self._id = progress, task_id

    def advance(self, n: float = 1) -> None:
        if self._progress is not None:
            self._progress.update(self._id, advance=n)

    def status(self, text: str) -> None:
        if self._progress is not None:
            self._progress.update(self._id, info=f"· {text}")


def clock(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    return f"{m // 60}:{m % 60:02d}:{s:02d}" if m >= 60 else f"{m}:{s:02d}"


class PlainLines:
    """One step's progress as plain lines (stderr not a terminal): its latest state every `every`
    seconds from a daemon thread, whatever the step is doing (a native call that reports nothing
    for minutes included), and a last line with its time. Same `update` as rich's Progress."""

    def __init__(self, console, name: str, total: float | None, unit: str, every: float):
        self.console, self.name, self.total, self.unit, self.every = console, name, total, unit, every
        self.done, self.info = 0.0, ""
        self.t0 = time.perf_counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"progress: {name}", daemon=True)

    def update(self, _task_id=None, advance: float | None = None, info: str | None = None) -> None:
        if advance:
            self.done += advance
        if info is not None:
            self.info = info.removeprefix("· ")

    def line(self, done: bool = False) -> str:
        elapsed = time.perf_counter() - self.t0
        parts = [f"  {self.name}"]
        if self.total:
            parts.append(f"{self.total if done else self.done:g}/{self.total:g} {self.unit}".rstrip())
            if 0 < self.done < self.total and not done:
                parts.append(f"~{clock(elapsed / self.done * (self.total - self.done))} left")
        if self.info and not done:
            parts.append(self.info)
        return " · ".join(parts + [f"{'done in ' if done else ''}{clock(elapsed)}"])

    def _beat(self) -> None:
        while not self._stop.wait(self.every):
            self.console.print(self.line(), overflow="fold", soft_wrap=True)

    def __enter__(self) -> PlainLines:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        if exc[0] is None:
            self.console.print(self.line(done=True), overflow="fold", soft_wrap=True)


class Progress:
    """Step lines and live progress on the real stderr; per-step seconds and peak RSS recorded."""

    EVERY_S = 30.0  # a log's line rate: at most one line per step this often

    def __init__(self, quiet: bool = False, watch: TreeWatch | None = None):
        from rich.console import Console

        self.console = Console(file=err(), quiet=quiet, highlight=False)
        self.quiet = quiet
        self.watch = watch
        self.steps: list[dict] = []
        self.t0 = time.perf_counter()
        self._task: Task | None = None

    def status(self, text: str) -> None:
        """The running step's sub-step, for code that runs inside a step it did not open."""
        if self._task is not None:
            self._task.status(text)

    def note(self, msg: str) -> None:
        self.console.print(msg)

    @contextlib.contextmanager
    def step(self, name: str, detail: str = "", total: float | None = None, unit: str = "") -> Iterator[Task]:
        """A step: `name` (short: the live line fits 80 columns) and `detail` (its start line)."""
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress as RichProgress, SpinnerColumn,
                                   TextColumn, TimeElapsedColumn)

        if self.watch is not None:
            self.watch.mark()  # the previous step's tail belongs to no step
        t0 = time.perf_counter()
        columns = [SpinnerColumn(), TextColumn("{task.description}")]
        if total:
            columns += [BarColumn(bar_width=20), MofNCompleteColumn()]
        columns += [TimeElapsedColumn(), TextColumn("{task.fields[info]}")]
        if not self.quiet:  # a log's lines are never folded; a terminal's fit its width
            self.console.print(f"▸ {name}" + (f": {detail}" if detail else ""), overflow="fold",
                               soft_wrap=not self.console.is_terminal)
        try:
            if self.quiet:
                yield Task(None, None)
            elif not self.console.is_terminal:
                with PlainLines(self.console, name, total, unit, self.EVERY_S) as lines:
                    self._task = Task(lines, None)
                    yield self._task
            else:
                with RichProgress(*columns, console=self.console, transient=False) as bar:
                    task_id = bar.add_task(name, total=total, info=f"{unit}" if total else "")
                    self._task = Task(bar, task_id)
                    yield self._task
                    if total:
                        bar.update(task_id, completed=total)
        finally:
            self._task = None
        rec = {"step": name, "detail": detail, "seconds": round(time.perf_counter() - t0, 2)}
        if self.watch is not None:
            rec.update(self.watch.mark())
        self.steps.append(rec)
