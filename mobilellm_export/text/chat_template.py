"""Rendering a checkpoint's chat template: sandboxed, and bounded in time and output.

A chat template is code from whoever published the checkpoint. jinja2's immutable sandbox keeps it
from touching Python objects; on top of that, rendering here stops
- when the output passes MAX_OUTPUT characters (checked as it streams, and before a `*` or `**`
  builds a huge string, list or number in one step),
- when it runs past DEADLINE_S seconds, a nested loop that prints nothing included (a timer
  signal in the main thread; elsewhere a watchdog thread), and
- on any template error (syntax, a refused attribute, an undefined call),
each as one UserError line.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import signal
import threading

import jinja2
import jinja2.sandbox

from mobilellm_export.errors import UserError

MAX_OUTPUT = 1 << 20  # characters: a prompt is a few kB; a MiB is already absurd
DEADLINE_S = 2.0


class _Timeout(Exception):
    pass


class _TooLong(Exception):
    pass


class BoundedSandbox(jinja2.sandbox.ImmutableSandboxedEnvironment):
    intercepted_binops = frozenset(["*", "**"])

    def call_binop(self, context, operator, left, right):
        if operator == "*":
            for seq, n in ((left, right), (right, left)):
                if isinstance(seq, (str, list, tuple)) and isinstance(n, int) and len(seq) * n > MAX_OUTPUT:
                    raise _TooLong()
        if operator == "**" and isinstance(left, (int, float)) and isinstance(right, (int, float)):
            if abs(left) > 1 and right > 64:  # a number of thousands of digits, or an overflow
                raise _TooLong()
        return super().call_binop(context, operator, left, right)


def _environment(raise_exception) -> BoundedSandbox:
    env = BoundedSandbox(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.datetime.now().strftime(str(fmt))
    env.filters["tojson"] = lambda x, **kw: json.dumps(x, ensure_ascii=False, **kw)
    return env


@contextlib.contextmanager
def _alarm(seconds: float):
    def on_alarm(signum, frame):
        raise _Timeout()

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def _stream(template: str, context: dict) -> str:
    def raise_exception(msg):
        raise UserError(f"chat template: {msg}")

    out, size = [], 0
    for piece in _environment(raise_exception).from_string(template).generate(**context):
        size += len(piece)
        if size > MAX_OUTPUT:
            raise _TooLong()
        out.append(piece)
    return "".join(out)


def render(template: str, *, now: datetime.datetime | None = None, **context) -> str:
    """The rendered template; UserError (one line) on any error or bound.

    `now` pins what the template's `strftime_now(fmt)` sees (default: the local time), so a
    template that dates its system prompt renders reproducibly; a `strftime_now` passed in
    `context` replaces the function altogether."""
    if now is not None and "strftime_now" not in context:
        pinned = now
        context["strftime_now"] = lambda fmt: pinned.strftime(str(fmt))
    try:
        if threading.current_thread() is threading.main_thread() and hasattr(signal, "setitimer"):
            with _alarm(DEADLINE_S):
                return _stream(template, context)
        return _render_watched(template, context)
    except _Timeout:
        raise UserError(f"chat template: rendering ran past {DEADLINE_S:g} s; refusing this template") from None
    except _TooLong:
        raise UserError(f"chat template: output would exceed {MAX_OUTPUT:,} characters; refusing this template") from None
    except jinja2.TemplateError as e:
        first = str(e).splitlines()[0] if str(e) else ""
        raise UserError(f"chat template: {type(e).__name__}: {first}") from None
    except (OverflowError, MemoryError, RecursionError, ValueError, TypeError, ZeroDivisionError) as e:
        raise UserError(f"chat template: {type(e).__name__}: {str(e)[:120]}") from None


def _render_watched(template: str, context: dict) -> str:
    """Off the main thread no timer signal can interrupt the renderer: run it in a daemon thread
    and give up on it at the deadline (it then runs on, bounded by the output check, until the
    process ends)."""
    box: dict = {}

    def work():
        try:
            box["out"] = _stream(template, context)
        except BaseException as e:  # noqa: BLE001  (re-raised in the caller's thread)
            box["err"] = e

    t = threading.Thread(target=work, daemon=True)
    t.start()
    t.join(DEADLINE_S)
    if t.is_alive():
        raise _Timeout()
    if "err" in box:
        raise box["err"]
    return box["out"]
