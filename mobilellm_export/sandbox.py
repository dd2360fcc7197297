"""Running code that arrives in a file (a tokenizer's pre-tokenizer regexes, a chat template) in a
forked child with a deadline and a memory cap.

Why a child: both run in native code (onig's regex engine, one C call such as `"%03000000000d" % 1`)
that a Python signal handler cannot interrupt and nothing in-process can stop from allocating. The
child gets an address-space cap (RLIMIT_AS) of what the parent had mapped plus a budget; the
parent waits at most the deadline per request and kills it (SIGKILL). Its stdout and stderr go to
/dev/null (a Rust panic prints a backtrace there), and answers come back as JSON: no pickle crosses.

fork, not spawn: the child needs the parent's loaded tokenizer, and a fresh interpreter importing
`tokenizers` and jinja2 costs a second. A fork of a process holding a model costs 50-150 ms, so a
`Worker` serves many requests from one child (a tokenizer's encodes); `run` is a one-off. Where
there is no fork (Windows) the handler runs in-process, unbounded.
"""

from __future__ import annotations

import json
import os
import select
import signal
import struct
import threading
import time
import traceback

from mobilellm_export.errors import UserError

# A forked child must not print "the current process just got forked, after parallelism has
# already been used" (tokenizers' at-fork warning); this tool never encodes in batches anyway.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

_HEADER = struct.Struct("<Q")


def _mapped_bytes() -> int | None:
    """The process's current address-space size (Linux), the base the child's cap is added to."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def _one_line(e: BaseException) -> str:
    s = str(e).strip().splitlines()
    return s[0][:200] if s else type(e).__name__


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(_HEADER.pack(len(data)) + data)
    while view:
        view = view[os.write(fd, view):]


def _read_exact(fd: int, n: int, deadline: float | None) -> bytes | None:
    """n bytes from fd, or None at EOF; TimeoutError past the deadline (None: wait forever)."""
    out = bytearray()
    while len(out) < n:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise TimeoutError()
        chunk = os.read(fd, min(n - len(out), 1 << 20))
        if not chunk:
            return None
        out += chunk
    return bytes(out)


def _answer(handler, request) -> dict:
    try:
        return {"ok": handler(request)}
    except UserError as e:
        return {"error": _one_line(e)}
    except MemoryError:
        return {"memory": True}
    except BaseException as e:  # noqa: BLE001  pyo3's PanicException is a BaseException
        if type(e).__name__ == "PanicException":
            return {"error": f"native code panicked: {_one_line(e)}"}
        return {"bug": traceback.format_exc()}


def _serve(handler, memory_mb: int, req: int, resp: int) -> None:
    """The child's whole life: caps, then request -> answer until EOF; _exit (no atexit, no pytest)."""
    try:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 1)
        os.dup2(null, 2)
        import faulthandler

        faulthandler.disable()  # it writes to a descriptor of its own (pytest's stderr), not to fd 2
        for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT, signal.SIGALRM):
            signal.signal(sig, signal.SIG_DFL)
        signal.setitimer(signal.ITIMER_REAL, 0)
        base = _mapped_bytes()
        if base is not None:
            import resource

            cap = base + (memory_mb << 20)
            resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
        while True:
            head = _read_exact(req, _HEADER.size, None)
            if head is None:
                break
            out = _answer(handler, json.loads(_read_exact(req, _HEADER.unpack(head)[0], None)))
            _write_all(resp, json.dumps(out).encode())
            if "memory" in out:  # the heap may be half-broken: a fresh child serves the next request
                break
    finally:
        os._exit(0)


class Worker:
    """A forked child answering `call(request)` with `handler(request)` (both JSON), each request
    within its own deadline, the child within `memory_mb` more than its parent had mapped. A
    deadline, a death or a memory failure ends the child; the next call forks a new one."""

    def __init__(self, handler, *, memory_mb: int, what: str):
        self.handler, self.memory_mb, self.what = handler, memory_mb, what
        self.pid = None
        self._lock = threading.Lock()

    def _start(self) -> None:
        req_r, req_w = os.pipe()
        resp_r, resp_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(req_w)
            os.close(resp_r)
            _serve(self.handler, self.memory_mb, req_r, resp_w)
        os.close(req_r)
        os.close(resp_w)
        self.pid, self._req, self._resp = pid, req_w, resp_r

    def close(self) -> int | None:
        """Kill and reap the child; its wait status (None when there was none)."""
        if self.pid is None:
            return
        for fd in (self._req, self._resp):
            os.close(fd)
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        _, status = os.waitpid(self.pid, 0)
        self.pid = None
        return status

    def call(self, request, *, seconds: float):
        if not hasattr(os, "fork"):
            return self.handler(request)
        with self._lock:
            if self.pid is None:
                self._start()
            out = None
            try:
                _write_all(self._req, json.dumps(request).encode())
                deadline = time.monotonic() + seconds
                head = _read_exact(self._resp, _HEADER.size, deadline)
                body = None if head is None else _read_exact(self._resp, _HEADER.unpack(head)[0], deadline)
                out = None if body is None else json.loads(body)
            except TimeoutError:
                self.close()
                raise UserError(f"{self.what} ran past its {seconds:.0f} s budget; refusing it") from None
            except BrokenPipeError:
                pass
            except BaseException:  # Ctrl-C or SIGTERM in the parent: the child goes too
                self.close()
                raise
            if not isinstance(out, dict):  # the child died (a native abort, the kernel's OOM killer)
                status = self.close()
                how = (f"was killed by {signal.Signals(os.WTERMSIG(status)).name}" if os.WIFSIGNALED(status)
                       else f"exited with status {os.WEXITSTATUS(status)}")
                raise UserError(f"{self.what} {how} (over its {self.memory_mb} MB memory budget?); refusing it")
        if "ok" in out:
            return out["ok"]
        if out.get("memory"):
            self.close()
            raise UserError(f"{self.what} needed over its {self.memory_mb} MB memory budget; refusing it")
        if "error" in out:
            raise UserError(f"{self.what}: {out['error']}")
        raise RuntimeError(f"{self.what} failed in its child process:\n{out.get('bug')}")


def run(fn, *args, seconds: float, memory_mb: int, what: str):
    """fn(*args) once, in a Worker of its own: its (JSON-able) result, or one UserError line naming
    `what` when it raises a UserError, panics, runs past `seconds`, needs over `memory_mb` more
    memory or dies. A bug in fn (any other exception) is re-raised as a RuntimeError."""
    w = Worker(lambda _: fn(*args), memory_mb=memory_mb, what=what)
    try:
        return w.call(None, seconds=seconds)
    finally:
        w.close()
