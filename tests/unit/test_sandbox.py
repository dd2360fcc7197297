"""Code that arrives in a file runs in a bounded child (mobilellm_export/sandbox.py): a tokenizer's
pre-tokenizer regex and a chat template, each killed past its deadline, capped in memory, and each
failure one UserError line. Issue 25's findings 6 and 8."""

from __future__ import annotations

import copy
import json
import os
import signal
import time
from pathlib import Path

import pytest
from tokenizers import Tokenizer as HFTokenizer

from mobilellm_export import sandbox
from mobilellm_export.errors import UserError
from mobilellm_export.text import tokenizer as tokenizer_mod
from mobilellm_export.text.chat_template import DEADLINE_S, render

TINY = Path(__file__).resolve().parents[1] / "data" / "tiny-tokenizer" / "tokenizer.json"
# (a|aa)+b on a run of n a's backtracks fib(n) ways before it fails: ~0.1 s at n = 31, under onig's
# retry limit, so a text of such runs costs seconds per thousand characters; at n = 40 onig's limit
# ends the search in a Rust panic.
SLOW = "(a|aa)+b"


def regex_tokenizer_json(regex: str) -> str:
    t = json.loads(TINY.read_text(encoding="utf-8"))
    t = copy.deepcopy(t)
    t["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": False},
        t["pre_tokenizer"]]}
    return json.dumps(t)


def test_a_catastrophic_pretokenizer_regex_is_killed_at_its_budget(monkeypatch):
    monkeypatch.setattr(tokenizer_mod, "ENCODE_S", 1.0)  # the budget's base (5 s), shortened for the test
    tok = HFTokenizer.from_str(regex_tokenizer_json(SLOW))
    text = ("a" * 31 + " ") * 200  # 6,400 characters
    one = time.monotonic()
    tok.encode("a" * 31 + " ")  # what one run of a's costs in-process
    per_run = time.monotonic() - one
    budget = tokenizer_mod.ENCODE_S + len(text) / tokenizer_mod.ENCODE_CHARS_PER_S
    assert per_run * 200 > 2 * budget, "the regex is not slow enough here to show the bound"
    t0 = time.monotonic()
    with pytest.raises(UserError, match=r"the tokenizer \(on 6,400 characters\) ran past its 2 s budget"):
        tokenizer_mod.encode_bounded(tok, text)
    assert time.monotonic() - t0 < budget + 3


def test_a_rust_panic_in_the_tokenizer_is_one_line():
    tok = HFTokenizer.from_str(regex_tokenizer_json(SLOW))
    with pytest.raises(BaseException) as raw:  # in-process: pyo3's PanicException, not an Exception
        tok.encode("a" * 40)
    assert not isinstance(raw.value, Exception) and type(raw.value).__name__ == "PanicException"
    with pytest.raises(UserError, match="native code panicked: .*retry-limit-in-match over"):
        tokenizer_mod.encode_bounded(tok, "a" * 40)


def test_bounded_encoding_is_the_tokenizers_encoding():
    """The child's answer is the in-process one, ids and offsets, on a real text."""
    tok = HFTokenizer.from_file(str(TINY))
    text = (Path(tokenizer_mod.__file__).parents[1] / "data" / "calib.txt").read_text(encoding="utf-8")[:20000]
    enc = tok.encode(text, add_special_tokens=True)
    ids, offsets = tokenizer_mod.encode_bounded(tok, text, add_special_tokens=True, offsets=True)
    assert ids == enc.ids and [tuple(o) for o in offsets] == enc.offsets


def test_a_chat_template_is_capped_in_memory():
    """One C call (a 3 GB format string) was out of reach of every in-process bound."""
    t0 = time.monotonic()
    with pytest.raises(UserError, match="chat template needed over its 512 MB memory budget"):
        render('{{ "%03000000000d" % 1 }}', messages=[])
    assert time.monotonic() - t0 < DEADLINE_S


def test_a_chat_template_that_loops_without_output_is_killed():
    t0 = time.monotonic()
    with pytest.raises(UserError, match="chat template ran past its 2 s budget"):
        render("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}", messages=[])
    assert time.monotonic() - t0 < DEADLINE_S + 2


def test_a_chat_template_renders_as_before():
    out = render("{{ bos_token }}{% for m in messages %}<{{ m.role }}>{{ m.content | trim }}{% endfor %}"
                 "{{ strftime_now('%Y') }}", messages=[{"role": "user", "content": " hi "}], bos_token="<s>",
                 now=__import__("datetime").datetime(2026, 3, 9))
    assert out == "<s><user>hi2026"


def _die():
    os.kill(os.getpid(), signal.SIGSEGV)


def _bug():
    return {}["missing"]


def test_a_child_that_dies_or_has_a_bug_is_reported():
    with pytest.raises(UserError, match="was killed by SIGSEGV"):
        sandbox.run(_die, seconds=5, memory_mb=64, what="probe")
    with pytest.raises(RuntimeError, match="KeyError: 'missing'"):
        sandbox.run(_bug, seconds=5, memory_mb=64, what="probe")


def test_the_child_goes_when_the_parent_is_interrupted(tmp_path):
    """Ctrl-C or SIGTERM in the parent (here an alarm raising in the main thread) kills the child:
    nothing runs on after the command has ended."""
    pid_file = tmp_path / "pid"

    def sleeper():
        pid_file.write_text(str(os.getpid()))
        time.sleep(60)

    class Interrupted(Exception):
        pass

    def on_alarm(signum, frame):
        raise Interrupted()

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, 1.0)
    try:
        with pytest.raises(Interrupted):
            sandbox.run(sleeper, seconds=30, memory_mb=64, what="sleeper")
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    pid = int(pid_file.read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
