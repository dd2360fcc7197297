"""Rendering a checkpoint's chat template: sandboxed, and bounded in time, memory and output.

A chat template is code from whoever published the checkpoint. jinja2's immutable sandbox keeps it
from touching Python objects. On top of that, rendering runs in a forked child (`sandbox.run`)
that is killed past DEADLINE_S seconds (a nested loop that prints nothing included) and has
MEMORY_MB of address space beyond its parent's (one C call, `"%03000000000d" % 1`, allocated 3 GB);
in it, rendering also stops when the output passes MAX_OUTPUT characters (checked as it streams,
and before a `*` or `**` builds a huge string, list or number in one step). Each of these, and any
template error (syntax, a refused attribute, an undefined call), is one UserError line.
"""

from __future__ import annotations

import datetime
import json

import jinja2
import jinja2.sandbox

from mobilellm_export import sandbox
from mobilellm_export.memory import on_release
from mobilellm_export.errors import UserError

MAX_OUTPUT = 1 << 20  # characters: a prompt is a few kB; a MiB is already absurd
DEADLINE_S = 2.0
MEMORY_MB = 512  # beyond the parent's: jinja2 and a few prompts need a few MB


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


def _stream(template: str, context: dict) -> str:
    def raise_exception(msg):
        raise UserError(str(msg))

    out, size = [], 0
    for piece in _environment(raise_exception).from_string(template).generate(**context):
        size += len(piece)
        if size > MAX_OUTPUT:
            raise _TooLong()
        out.append(piece)
    return "".join(out)


def render(template: str, *, now: datetime.datetime | None = None, date_marks: tuple[str, str] | None = None,
           **context) -> str:
    """The rendered template; UserError (one line) on any error or bound.

    `now` pins what the template's `strftime_now(fmt)` sees (default: the local time), so a
    template that dates its system prompt renders reproducibly; with `date_marks` (a, b) it renders
    `a + fmt + b` instead, so a caller learns the format. A `strftime_now` passed in `context`
    replaces the function altogether (rendered in a child of its own: a function cannot be sent)."""
    if callable(context.get("strftime_now")):
        return sandbox.run(_render, template, context, seconds=DEADLINE_S, memory_mb=MEMORY_MB, what="chat template")
    request = {"template": template, "context": context, "now": now.isoformat() if now else None, "marks": date_marks}
    return _worker().call(request, seconds=DEADLINE_S)


_WORKER: list[sandbox.Worker] = []


def _worker() -> sandbox.Worker:
    """One child renders every template of this process (a fork per render cost 50-150 ms); it ends
    at each `memory.release()` (tokenizer.close_workers says why)."""
    if not _WORKER:
        _WORKER.append(sandbox.Worker(_render_request, memory_mb=MEMORY_MB, what="chat template"))
    return _WORKER[0]


def close_worker() -> None:
    while _WORKER:
        _WORKER.pop().close()


on_release(close_worker)


def _render_request(req: dict) -> str:
    context = dict(req["context"])
    if req["marks"]:
        a, b = req["marks"]
        context["strftime_now"] = lambda fmt: f"{a}{fmt}{b}"
    elif req["now"]:
        pinned = datetime.datetime.fromisoformat(req["now"])
        context["strftime_now"] = lambda fmt: pinned.strftime(str(fmt))
    return _render(req["template"], context)


def _render(template: str, context: dict) -> str:
    """In the child: every way a template can fail as one UserError line."""
    try:
        return _stream(template, context)
    except _TooLong:
        raise UserError(f"output would exceed {MAX_OUTPUT:,} characters; refusing this template") from None
    except jinja2.TemplateError as e:
        first = str(e).splitlines()[0] if str(e) else ""
        raise UserError(f"{type(e).__name__}: {first}") from None
    except (OverflowError, RecursionError, ValueError, TypeError, ZeroDivisionError) as e:
        raise UserError(f"{type(e).__name__}: {str(e)[:120]}") from None
