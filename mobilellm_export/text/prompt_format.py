"""`prompt_format`: the chat template reduced to data the apps can apply without Jinja.

At export the chat template is *probed* (rendered on conversations whose contents are sentinels)
to derive a small declarative format, then the reduction is *proved*: the jinja rendering and
`render()` below agree byte for byte on every conversation in `PROOF_CONVERSATIONS` (single and
multi-turn, with and without a system prompt, whitespace the template may trim, reasoning in an
earlier assistant turn with thinking on and off, with the date pinned). A template that cannot
be reduced, or whose reduction fails the proof, gives `{"reducible": false, "reason": ...}`: the
apps must then not format prompts themselves.

The format (bundle.json `generation.prompt_format`, version 1, or 2 with `pre_normalize`):
    start               text once before the first turn (e.g. the template's `bos_token`)
    roles.<r>           {prefix, suffix, trim} for r in system, user, assistant: a turn renders as
                        prefix + content + suffix; with trim, content is first stripped of
                        `trim_chars` on both ends (Python's str.strip(), which jinja's `trim` is)
    system              {placement: "turn" | "first_user", separator, default}: "first_user" puts
                        the system content + separator in front of the first user turn's content
                        (Gemma 3); `default` (string or null) is used when the conversation has no
                        system message (SmolLM2's persona, Llama 3.2's empty dated system turn)
    generation_prompt   text after the last turn (the assistant header)
    thinking            null, or {open, close, history: "drop_reasoning" | "keep", history_lstrip,
                        generation_prompt_on, generation_prompt_off}: with drop_reasoning an earlier
                        assistant turn keeps only what follows its last `close`, left-stripped of
                        `history_lstrip` characters; generation_prompt_on / _off follow the
                        generation prompt when thinking is enabled / disabled
    date                null, or {strftime, placeholder}: every fixed string above has the
                        placeholder replaced by today's date formatted with the strftime subset
                        in STRFTIME (English month and day names) before rendering
    stop                {ids, strings}: the EOS ids, and their texts (LlmCallback delivers text)
    system_prompts      named system prompts (MobileLLM-R1: math, code)
    pre_normalize       (version 2 only, non-empty) steps, in order, applied to the prompt text (BOS
                        included) before it goes to the runtime: {"type": "NFC"} or {"type": "Replace",
                        "pattern": literal string, "content": string}. They are the normalizer steps the
                        bundle's tokenizer.json no longer holds (tokenizer.py explains why); applied to
                        a reducible or irreducible format's text alike.
BOS is not part of the format: after rendering, `generation.bos` applies (`Tokenizer.with_bos`).

Why pre_normalize lives here and bumps the version: the apps read the tokenizer file and the
prompt_format, and this is their recipe for turning a conversation into the text LlmModule is given,
so the steps belong next to it. An app that ignored them would mis-tokenize silently, and older apps
ignore unknown fields; but every app refuses a prompt_format version it does not know ("update the
app"). So pre_normalize is required-when-present: a format carries it exactly when its version is 2,
and bundles that need no pre-normalization stay version 1, readable by older apps.

Conversations the apps render: an optional system message first, then user and assistant turns
alternating, starting and ending with a user turn; the generation prompt always follows.
"""

from __future__ import annotations

import datetime
import json
import re

from mobilellm_export.errors import UserError

VERSION = 1  # a format without pre_normalize
VERSION_PRE_NORMALIZE = 2  # a format with it (see above)
PLACEHOLDER = "{date}"
_MARK = ("\ue000", "\ue001")  # around a strftime_now format while deriving
# Python's str.strip() whitespace (what jinja's `trim` removes); Kotlin's trim() and Swift's
# whitespacesAndNewlines differ from it (e.g. U+0085, U+200B), so the set travels with the format.
TRIM_CHARS = "".join(chr(i) for i in range(0x3001) if chr(i).isspace())
STRFTIME = "%d %e %m %y %Y %b %B %a %A %H %M %S %%".split()
ROLES = ("system", "user", "assistant")

# A fixed date for the proof and the shared test vectors.
FIXED_DATE = datetime.datetime(2026, 3, 9, 14, 5, 7)

_SYSTEM_MATH = "Please reason step by step, and put your final answer within \\boxed{}."
# The conversations every reduction is proved on (kwargs: extra template variables).
PROOF_CONVERSATIONS: list[dict] = [
    {"name": "single", "messages": [{"role": "user", "content": "What is 2+2?"}]},
    {"name": "single-system", "messages": [
        {"role": "system", "content": "You are a terse assistant."},
        {"role": "user", "content": "What is 2+2?"}]},
    {"name": "multi", "messages": [
        {"role": "user", "content": "Name a prime."},
        {"role": "assistant", "content": "7 is prime."},
        {"role": "user", "content": "And an even one?"}]},
    {"name": "multi-system", "messages": [
        {"role": "system", "content": "Answer in one line."},
        {"role": "user", "content": "Name a prime."},
        {"role": "assistant", "content": "7 is prime."},
        {"role": "user", "content": "And an even one?"},
        {"role": "assistant", "content": "2."},
        {"role": "user", "content": "Why?"}]},
    {"name": "whitespace", "messages": [
        {"role": "system", "content": "  \n Be brief.\t\n"},
        {"role": "user", "content": "\n\n  Hello there  \n\t"},
        {"role": "assistant", "content": "  Hi! \u00a0\n"},
        {"role": "user", "content": "\u0085 bye \u3000"}]},
    {"name": "whitespace-no-system", "messages": [
        {"role": "user", "content": "   spaced   out   "}]},
    {"name": "unicode", "messages": [
        {"role": "user", "content": "Ça va? 日本語 🙂 — “quotes” {braces} <tags>"}]},
    {"name": "reasoning-history", "messages": [
        {"role": "user", "content": "What is 3*4?"},
        {"role": "assistant", "content": "<think>\n3*4 is 12.\n</think>\n\n12"},
        {"role": "user", "content": "And 5*6?"}]},
    {"name": "reasoning-history-think-on", "kwargs": {"enable_thinking": True}, "messages": [
        {"role": "user", "content": "What is 3*4?"},
        {"role": "assistant", "content": "<think>\n3*4 is 12.\n</think>\n\n12"},
        {"role": "user", "content": "And 5*6?"}]},
    {"name": "reasoning-history-think-off", "kwargs": {"enable_thinking": False}, "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is 3*4?"},
        {"role": "assistant", "content": "<think>\nEasy.\n</think>\n\n12"},
        {"role": "user", "content": "And 5*6?"}]},
    {"name": "math-system", "messages": [
        {"role": "system", "content": _SYSTEM_MATH},
        {"role": "user", "content": "Solve x^2 = 9."}]},
]


# ---- rendering (mirrored line for line by android_demo/core and ios_demo) -------------------------

def strftime(fmt: str, d: datetime.datetime) -> str:
    """The STRFTIME subset with English names, as the apps implement it (equals Python's
    strftime in the C locale for these specifiers)."""
    months = ["January", "February", "March", "April", "May", "June", "July", "August", "September",
              "October", "November", "December"]
    days = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
    out, i = [], 0
    while i < len(fmt):
        c = fmt[i]
        if c != "%" or i + 1 >= len(fmt):
            out.append(c)
            i += 1
            continue
        f = fmt[i + 1]
        i += 2
        out.append({"d": f"{d.day:02d}", "e": f"{d.day:2d}", "m": f"{d.month:02d}", "y": f"{d.year % 100:02d}",
                    "Y": f"{d.year}", "b": months[d.month - 1][:3], "B": months[d.month - 1],
                    "a": days[d.weekday()][:3], "A": days[d.weekday()], "H": f"{d.hour:02d}",
                    "M": f"{d.minute:02d}", "S": f"{d.second:02d}", "%": "%"}.get(f, "%" + f))
    return "".join(out)


def check_conversation(messages: list[dict]) -> None:
    """The shape the apps render: [system], user, (assistant, user)*."""
    if not messages:
        raise UserError("conversation: no messages")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("content"), str) or m.get("role") not in ROLES:
            raise UserError(f"conversation: message {i}: expected {{role: system|user|assistant, content: string}}")
    rest = messages[1:] if messages[0]["role"] == "system" else messages
    if not rest:
        raise UserError("conversation: no user message")
    for i, m in enumerate(rest):
        want = "user" if i % 2 == 0 else "assistant"
        if m["role"] != want:
            raise UserError(f"conversation: turn {i + 1} is {m['role']}, expected {want} "
                            "(one optional system message, then user and assistant alternating)")
    if rest[-1]["role"] != "user":
        raise UserError("conversation: the last message must be the user's")


def render(fmt: dict, messages: list[dict], *, enable_thinking: bool | None = None,
           date: datetime.datetime | None = None) -> str:
    """The prompt text for `messages` (before the BOS policy)."""
    if not fmt.get("reducible"):
        raise UserError(f"this bundle's chat template has no prompt_format: {fmt.get('reason', '')}")
    check_conversation(messages)
    today = strftime(fmt["date"]["strftime"], date or datetime.datetime.now()) if fmt.get("date") else None

    def fixed(s: str) -> str:
        return s.replace(fmt["date"]["placeholder"], today) if today is not None else s

    def content(role: str, text: str) -> str:
        return text.strip(fmt["trim_chars"]) if fmt["roles"][role]["trim"] else text

    system = fmt["system"]
    sys_text = messages[0]["content"] if messages[0]["role"] == "system" else system["default"]
    sys_text = fixed(sys_text) if sys_text is not None and messages[0]["role"] != "system" else sys_text
    turns = messages[1:] if messages[0]["role"] == "system" else messages
    out = [fixed(fmt["start"])]
    fold = ""
    if sys_text is not None:
        if system["placement"] == "turn":
            r = fmt["roles"]["system"]
            out += [fixed(r["prefix"]), content("system", sys_text), fixed(r["suffix"])]
        else:
            fold = content("system", sys_text) + fixed(system["separator"])
    think = fmt.get("thinking")
    for i, m in enumerate(turns):
        text = m["content"]
        if m["role"] == "assistant" and think and think["history"] == "drop_reasoning" and think["close"] in text:
            text = text.rsplit(think["close"], 1)[1].lstrip(think["history_lstrip"])
        text = content(m["role"], text)
        if i == 0:
            text = fold + text
        r = fmt["roles"][m["role"]]
        out += [fixed(r["prefix"]), text, fixed(r["suffix"])]
    out.append(fixed(fmt["generation_prompt"]))
    if think:
        out.append(fixed(think["generation_prompt_off"] if enable_thinking is False else think["generation_prompt_on"]))
    return "".join(out)


# ---- reduction ---------------------------------------------------------------------------------------

class _Irreducible(Exception):
    pass


def _lcp(*xs: str) -> str:
    n = 0
    while all(n < len(x) for x in xs) and len({x[n] for x in xs}) == 1:
        n += 1
    return xs[0][:n]


def _snap(gap: str, specials: list[str]) -> str:
    """A turn's suffix taken from the text that follows its content: up to the end of the first
    special token in it (and the newlines right after), else all of it."""
    first = None
    for s in specials:
        i = gap.find(s)
        if i >= 0 and (first is None or i < first[0] or (i == first[0] and len(s) > len(first[1]))):
            first = (i, s)
    if first is None:
        return gap
    end = first[0] + len(first[1])
    while end < len(gap) and gap[end] == "\n":
        end += 1
    return gap[:end]


_S, _U1, _A1, _U2, _R = "Qz7sys", "Qz7usr", "Qz7ast", "Qz8usr", "Qz7rsn"


def reduce_template(template: str | None, *, bos_token: str | None, eos_token: str | None, specials: list[str],
                    eos_ids: list[int], eos_texts: list[str], system_prompts: dict | None = None,
                    pre_normalize: list[dict] | None = None) -> dict:
    """The template's prompt_format, proved on PROOF_CONVERSATIONS; {"reducible": false, ...} if not."""
    base = {"version": VERSION, "stop": {"ids": list(eos_ids), "strings": list(eos_texts)},
            "system_prompts": dict(system_prompts or {})}
    if pre_normalize:
        base.update(version=VERSION_PRE_NORMALIZE, pre_normalize=list(pre_normalize))
    if not template:
        return {**base, "reducible": False, "reason": "the tokenizer has no chat template"}
    try:
        fmt = {**base, **_derive(template, bos_token or "", eos_token or "", specials)}
    except _Irreducible as e:
        return {**base, "reducible": False, "reason": str(e)}
    except UserError as e:
        return {**base, "reducible": False, "reason": f"probing the template failed: {e}"}
    bad = prove(fmt, template, bos_token=bos_token, eos_token=eos_token)
    if bad:
        return {**base, "reducible": False, "reason": bad}
    return fmt


def jinja_render(template: str, messages: list[dict], *, bos_token: str | None, eos_token: str | None,
                 date: datetime.datetime = FIXED_DATE, **kwargs) -> str:
    from mobilellm_export.text.chat_template import render as jrender

    return jrender(template, messages=messages, add_generation_prompt=True, bos_token=bos_token or "",
                   eos_token=eos_token or "", now=date, **kwargs)


def prove(fmt: dict, template: str, *, bos_token: str | None, eos_token: str | None) -> str | None:
    """None when render() equals the jinja rendering on every proof conversation; else why not."""
    for conv in PROOF_CONVERSATIONS:
        kw = conv.get("kwargs", {})
        want = jinja_render(template, conv["messages"], bos_token=bos_token, eos_token=eos_token, **kw)
        got = render(fmt, conv["messages"], date=FIXED_DATE, **kw)
        if got != want:
            at = len(_lcp(got, want))
            return (f"the reduced format differs from the chat template on conversation {conv['name']!r} at "
                    f"character {at}: template {want[at:at + 40]!r}, format {got[at:at + 40]!r}")
    return None


def _derive(template: str, bos: str, eos: str, specials: list[str]) -> dict:
    formats: list[str] = []

    # The template renders in a sandbox child (chat_template.render), where a side effect would be
    # lost: so strftime_now's format comes back inside the output, between two private-use marks.
    if PLACEHOLDER in template or any(m in template for m in _MARK):
        raise _Irreducible(f"the template contains the text {PLACEHOLDER!r}, which the format uses for the date")

    def r(msgs, gen=True, **kw):
        from mobilellm_export.text.chat_template import render as jrender

        out = jrender(template, messages=msgs, add_generation_prompt=gen, bos_token=bos, eos_token=eos,
                      date_marks=_MARK, **kw)
        formats.extend(re.findall(f"{_MARK[0]}(.*?){_MARK[1]}", out, flags=re.S))
        return re.sub(f"{_MARK[0]}.*?{_MARK[1]}", lambda _: PLACEHOLDER, out, flags=re.S)

    def split(text: str, sentinels: list[str]) -> list[str]:
        gaps, pos = [], 0
        for s in sentinels:
            i = text.find(s, pos)
            if i < 0 or text.count(s) != 1:
                raise _Irreducible(f"the template does not render each message's content once (probe {s})")
            gaps.append(text[pos:i])
            pos = i + len(s)
        return gaps + [text[pos:]]

    def msg(role, content):
        return {"role": role, "content": content}

    u1, a1, u2, s1 = msg("user", _U1), msg("assistant", _A1), msg("user", _U2), msg("system", _S)
    a0, a_tail = split(r([u1]), [_U1])
    _, bn_tail = split(r([u1], gen=False), [_U1])
    c0, c1, c2, c3 = split(r([u1, a1, u2]), [_U1, _A1, _U2])
    try:
        f2 = split(r([u1, a1], gen=False), [_U1, _A1])[2]
    except (UserError, _Irreducible):
        f2 = c2
    su = _snap(_lcp(c1, bn_tail, a_tail), specials)
    sa = _snap(_lcp(c2, f2), specials)
    if not (c1.startswith(su) and a_tail.startswith(su) and c3 == a_tail and c0 == a0 and c2.startswith(sa)):
        raise _Irreducible("user and assistant turns do not render with a fixed prefix and suffix")
    pa, gen, pu = c1[len(su):], a_tail[len(su):], c2[len(sa):]
    if not a0.endswith(pu):
        raise _Irreducible("the first user turn renders differently from later ones")
    head = a0[:len(a0) - len(pu)]
    try:
        d0, d1, _ = split(r([s1, u1]), [_S, _U1])
    except _Irreducible:
        raise _Irreducible("the template does not render the system message") from None
    ps = ss = ""
    default = None
    if d0.endswith(pu) and not d1.endswith(pu):  # system content inside the first user turn
        placement, separator, start = "first_user", d1, d0[:len(d0) - len(pu)]
        if head != start:
            raise _Irreducible("a default system prompt folded into the first user turn is not supported")
    elif d1.endswith(pu):
        placement, separator = "turn", ""
        ss = d1[:len(d1) - len(pu)]
        if d0.startswith(head):  # no system message: nothing rendered for it
            start = head
        elif head.startswith(d0) and head.endswith(ss):  # no system message: a default one
            # where the start ends is ambiguous here: BOS, unless BOS also opens every turn (ChatML)
            start = bos if bos and d0.startswith(bos) and not pu.startswith(bos) else ""
            default = head[len(d0):len(head) - len(ss)]
        else:
            raise _Irreducible("what the template renders without a system message is not a system turn")
        ps = d0[len(start):]
    else:
        raise _Irreducible("the system message renders neither as a turn nor inside the first user turn")

    def trimmed(role: str) -> bool:
        pad = " \n\t"
        msgs = {"system": [msg("system", pad + _S + pad), u1], "user": [msg("user", pad + _U1 + pad)],
                "assistant": [u1, msg("assistant", pad + _A1 + pad), u2]}[role]
        return (pad + {"system": _S, "user": _U1, "assistant": _A1}[role] + pad) not in r(msgs)

    fmt = {
        "reducible": True,
        "start": start,
        "roles": {"system": {"prefix": ps, "suffix": ss, "trim": trimmed("system")},
                  "user": {"prefix": pu, "suffix": su, "trim": trimmed("user")},
                  "assistant": {"prefix": pa, "suffix": sa, "trim": trimmed("assistant")}},
        "trim_chars": TRIM_CHARS,
        "system": {"placement": placement, "separator": separator, "default": default},
        "generation_prompt": gen,
        "thinking": _thinking(r, template, a_tail, su + gen, c1, [u1, a1, u2]),
        "date": None,
    }
    if formats:
        if len(set(formats)) != 1:
            raise _Irreducible(f"the template formats the date in more than one way: {sorted(set(formats))}")
        bad = [t for t in re.findall(r"%.", formats[0]) if t not in STRFTIME]
        if bad:
            raise _Irreducible(f"strftime_now({formats[0]!r}) uses {bad[0]}, which the apps do not implement")
        fmt["date"] = {"strftime": formats[0], "placeholder": PLACEHOLDER}
    return fmt


def _thinking(r, template: str, a_tail: str, su_gen: str, c1: str, conv: list[dict]) -> dict | None:
    if "</think>" not in template:
        return None
    on = r(conv[:1], enable_thinking=True).split(_U1, 1)[1]
    off = r(conv[:1], enable_thinking=False).split(_U1, 1)[1]
    if not (on.startswith(su_gen) and off.startswith(su_gen)):
        raise _Irreducible("enable_thinking changes more than the end of the generation prompt")
    with_reasoning = [conv[0], {"role": "assistant", "content": f"<think>\n{_R}\n</think>\n\n{_A1}"}, conv[2]]
    text = r(with_reasoning)
    history = "keep" if _R in text else "drop_reasoning"
    if history == "drop_reasoning" and text.split(_U1, 1)[1].split(_A1, 1)[0] != c1:
        raise _Irreducible("the template rewrites earlier assistant turns in a way the format cannot express")
    return {"open": "<think>", "close": "</think>", "history": history, "history_lstrip": "\n",
            "generation_prompt_on": on[len(su_gen):], "generation_prompt_off": off[len(su_gen):]}


def steps(fmt: dict | None) -> list[dict]:
    """A format's pre_normalize steps ([] for none, or no format)."""
    return list((fmt or {}).get("pre_normalize", []))


def for_tokenizer(tok, eos_ids: list[int], system_prompts: dict | None = None) -> dict:
    """The prompt_format of a `Tokenizer` (what the export writes into bundle.json), with the
    pre-normalization its bundle's tokenizer.json needs (`Tokenizer.bundle_pre_normalize`)."""
    added = tok.tok.get_added_tokens_decoder()
    specials = sorted({t.content for t in added.values() if t.special}, key=len, reverse=True)
    eos_texts = []
    for i in eos_ids:
        # an id past the vocabulary (a bundle's, checked against its artifact elsewhere) has no text;
        # tokenizers would overflow on one past 2^32
        t = added[i].content if i in added else tok.tok.id_to_token(i) if 0 <= i < tok.vocab_size else None
        if t and t not in eos_texts:
            eos_texts.append(t)
    from mobilellm_export.text.tokenizer import _token_str

    return reduce_template(tok.chat_template, bos_token=_token_str(tok.config.get("bos_token")),
                           eos_token=_token_str(tok.config.get("eos_token")), specials=specials,
                           eos_ids=list(eos_ids), eos_texts=eos_texts, system_prompts=system_prompts,
                           pre_normalize=tok.bundle_pre_normalize())


def dumps(fmt: dict) -> str:
    return json.dumps(fmt, indent=2, ensure_ascii=False, sort_keys=True)
