"""SIGTERM and SIGHUP take the same path as Ctrl-C: an exception that unwinds the command, so the
temporary bundle folder is removed, and one line with exit status 128 + the signal number."""

from __future__ import annotations

import contextlib
import signal


class Terminated(BaseException):
    """Raised in the main thread when the process receives SIGTERM or SIGHUP. A BaseException, like
    KeyboardInterrupt, so that no `except Exception` on the way swallows it."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name


@contextlib.contextmanager
def terminate_cleanly():
    def on_signal(signum, frame):
        raise Terminated(signum)

    old = {}
    for sig in (signal.SIGTERM, signal.SIGHUP):
        try:
            old[sig] = signal.signal(sig, on_signal)
        except ValueError:  # not the main thread: leave the default handlers
            pass
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
