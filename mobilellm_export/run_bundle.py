"""`mobilellm-export run BUNDLE`: generate through the target runtime's own loop, as the apps do."""

from __future__ import annotations

import datetime
from pathlib import Path

from mobilellm_export import backends
from mobilellm_export.text import prompt_format
from mobilellm_export.bundle import check_files, read_manifest
from mobilellm_export.errors import JSON_CAP, UserError, load_json, parse_json
from mobilellm_export.float_chat import clamp_new_tokens
from mobilellm_export.text.stops import StopStream
from mobilellm_export.text.tokenizer import Tokenizer


def load_conversation(path: str) -> tuple[list[dict], bool | None]:
    """conv.json ('-': standard input): {"messages": [{role, content}, ...], "enable_thinking":
    true|false (optional)}; the messages: an optional system message, then user and assistant
    alternating, ending with the user."""
    if path == "-":
        import sys

        raw = sys.stdin.buffer.read(JSON_CAP + 1)
        if len(raw) > JSON_CAP:
            raise UserError(f"the conversation on standard input is over the {JSON_CAP >> 20} MB this tool reads")
        try:
            data = parse_json(raw.decode("utf-8"), "the conversation on standard input")
        except UnicodeDecodeError as e:
            raise UserError(f"the conversation on standard input is not UTF-8 ({e.reason})") from None
        if not isinstance(data, dict):
            raise UserError("the conversation on standard input: expected a JSON object")
        path = "standard input"
    else:
        data = load_json(Path(path))
    messages, thinking = data.get("messages"), data.get("enable_thinking")
    if thinking is not None and not isinstance(thinking, bool):
        raise UserError(f"{path}: enable_thinking must be true, false or absent")
    if not isinstance(messages, list):
        raise UserError(f"{path}: expected {{\"messages\": [{{\"role\": ..., \"content\": ...}}, ...]}}")
    try:
        prompt_format.check_conversation(messages)
    except UserError as e:
        raise UserError(f"{path}: {e}") from None
    return messages, thinking


def conversation_text(m: dict, tok: Tokenizer, messages: list[dict], *, enable_thinking: bool | None = None,
                      date=None, warn=print) -> str:
    """What the apps feed the runner for a conversation: the bundle's prompt_format rendering, then
    the BOS policy. The jinja template is rendered too, as a check (a format proved on the fixed
    conversations could still differ on this one); a bundle without a usable format (an older
    export, or a template that could not be reduced) uses the jinja template, as the apps cannot."""
    gen = m["generation"]
    fmt = gen.get("prompt_format")
    kwargs = {} if enable_thinking is None else {"enable_thinking": enable_thinking}
    jinja = None
    if gen.get("chat_template"):
        jinja = prompt_format.jinja_render(gen["chat_template"], messages, bos_token=gen["bos"]["text"],
                                           eos_token=_eos_text(tok), date=date or datetime.datetime.now(), **kwargs)
    if fmt and fmt.get("reducible"):
        text = prompt_format.render(fmt, messages, enable_thinking=enable_thinking, date=date)
        if jinja is not None and text != jinja:
            warn("warning: the bundle's prompt_format renders this conversation differently from its chat template; "
                 "feeding the prompt_format rendering, as the apps do")
    elif jinja is not None:
        why = fmt["reason"] if fmt else "the bundle has no prompt_format (re-export it)"
        warn(f"note: the apps cannot format prompts for this bundle ({why}); using the jinja chat template")
        text = jinja
    else:
        raise UserError("this bundle has no chat template; use --prompt with --raw")
    return tok.with_bos(text, gen["bos"])  # the runtime is given tok.runner_text() of it


def _eos_text(tok: Tokenizer) -> str:
    from mobilellm_export.text.tokenizer import _token_str

    return _token_str(tok.config.get("eos_token")) or ""


def _open(bundle: str):
    d = Path(bundle)
    m = read_manifest(d)
    check_files(d, m)
    target = backends.of_bundle(m)
    return d, m, target, Tokenizer.from_bundle(d, m)


def _app(target, d: Path, m: dict, threads: int):
    """The target runtime's own loop; opened after the prompt is rendered, so a bundle's bad
    template is reported as such on every target, not hidden behind a runtime this machine lacks."""
    app = target.app_runner(d, m, threads=threads)
    if app is None:
        raise UserError(f"target {target.name}: its runtime ({target.runtime}) cannot run on this machine")
    return app


def stop_strings(m: dict, tok: Tokenizer) -> list[str]:
    """The texts of the stop tokens, which a runtime that prints its pieces prints too."""
    fmt = m["generation"].get("prompt_format") or {}
    strings = (fmt.get("stop") or {}).get("strings")
    if strings:
        return list(strings)
    return [t for t in (tok.decode([i]) for i in m["generation"]["eos_ids"]) if t]


def _generate(app, tok: Tokenizer, text: str, stops: list[str], max_new_tokens: int, temperature: float,
              write, reset: bool = True) -> tuple[dict, StopStream]:
    """One generation with stop strings kept off the output (`stats["text"]` too)."""
    stream = StopStream(stops, write)
    # As the apps do: the runtime reads the bundle's tokenizer.json as it is, so it gets the text
    # pre-normalized (prompt_format.pre_normalize; tokenizer.py explains why).
    stats = app.generate(tok.runner_text(text), max_new_tokens, temperature=temperature, on_text=stream.feed,
                         reset=reset)
    stream.finish()
    stats["text"] = stream.visible
    return stats, stream


def run_bundle(bundle: str, prompt: str | None, *, max_new_tokens: int, temperature: float | None = None,
               system: str | None = None, raw: bool = False, threads: int = 2, write=print, warn=print,
               conversation: str | None = None, enable_thinking: bool | None = None) -> dict:
    if conversation is not None and (prompt is not None or system is not None or raw):
        raise UserError("--conversation replaces --prompt, --system and --raw")
    if conversation is None and prompt is None:
        raise UserError("give --prompt or --conversation")
    d, m, target, tok = _open(bundle)
    gen = m["generation"]
    if conversation is not None:
        messages, thinking = load_conversation(conversation)
        text = conversation_text(m, tok, messages, enable_thinking=thinking if enable_thinking is None else enable_thinking,
                                 warn=warn)
    else:
        # The chat template (unless raw), then BOS by the bundle's policy: the runtime gets exactly
        # the text whose ids verification scored, and is never asked to add BOS itself.
        text = tok.prompt_text(prompt, gen["bos"], system=system, raw=raw, system_prompts=gen["system_prompts"])
    n_prompt = len(_ids(tok, m, text))
    max_new_tokens = clamp_new_tokens(n_prompt, max_new_tokens, gen["max_context"], warn)
    stats, _ = _generate(_app(target, d, m, threads), tok, text, stop_strings(m, tok), max_new_tokens,
                         gen["temperature"] if temperature is None else temperature, write)
    return stats


def _ids(tok: Tokenizer, m: dict, text: str) -> list[int]:
    return tok.check_ids(tok.encode(text, add_special_tokens=False), m["config"]["vocab_size"])


def kv_plan(tok: Tokenizer, cached: str | None, new: str) -> tuple[bool, str]:
    """The apps' multi-turn policy (tests/fixtures/apps/kv.json): the cache holds the previous
    prompt and the answer shown (the stop token is never fed back). Keep it only when its ids are a
    prefix of the new prompt's ids, and prefill just the rest; else start again from the whole prompt."""
    if cached is None or not new.startswith(cached):
        return False, new
    a = tok.encode(cached, add_special_tokens=False)
    b = tok.encode(new, add_special_tokens=False)
    return (True, new[len(cached):]) if b[:len(a)] == a else (False, new)


def chat(bundle: str, *, read, max_new_tokens: int, temperature: float | None = None, system: str | None = None,
         threads: int = 2, write=print, warn=print, enable_thinking: bool | None = None) -> list[dict]:
    """An interactive conversation through the bundle's prompt format, reusing the runtime's KV cache
    from turn to turn as the apps do. `read()` returns the next user line, or None at the end;
    '/reset' starts a new conversation. Returns each turn's stats."""
    d, m, target, tok = _open(bundle)
    gen = m["generation"]
    if not gen.get("chat_template"):
        raise UserError("this bundle has no chat template: chat needs one (use --prompt with --raw)")
    app = _app(target, d, m, threads)
    temperature = gen["temperature"] if temperature is None else temperature
    stops = stop_strings(m, tok)
    sys_text = (gen.get("system_prompts") or {}).get(system, system) if system else None
    start = [{"role": "system", "content": sys_text}] if sys_text else []
    messages, cached, n_cached, turns = list(start), None, 0, []
    while (line := read()) is not None:
        line = line.strip()
        if line == "/reset":
            messages, cached, n_cached = list(start), None, 0
            warn("[a new conversation]")
            continue
        if not line:
            continue
        messages.append({"role": "user", "content": line})
        ctx, dropped = gen["max_context"], 0
        while True:  # as the apps do: fit the prompt and --max-new-tokens, dropping the oldest exchanges
            text = conversation_text(m, tok, messages, enable_thinking=enable_thinking, warn=warn)
            reuse, delta = kv_plan(tok, cached, text)
            occupied = (n_cached if reuse else 0) + len(_ids(tok, m, delta))
            if occupied + max_new_tokens <= ctx:
                break
            if reuse:  # the cache is too full: the whole conversation afresh
                cached = None
                continue
            first = 1 if messages[0]["role"] == "system" else 0
            if len(messages) - first < 3:  # this message alone: clamp_new_tokens says whether it fits
                break
            messages = messages[:first] + messages[first + 2:]
            dropped += 1
        if dropped:
            warn(f"[the oldest {dropped} exchange(s) left the conversation to fit the {ctx}-token context]")
        if occupied >= ctx:
            warn(f"[this message is {occupied} tokens, the context holds {ctx}: not sent]")
            messages.pop()
            continue
        new_tokens = clamp_new_tokens(occupied, max_new_tokens, ctx, warn)
        stats, stream = _generate(app, tok, delta, stops, new_tokens, temperature, write, reset=not reuse)
        write("\n")
        kept = n_cached if reuse else 0
        stats.update(kv_reused=reuse, cached_tokens=kept, stopped=stream.stopped)
        turns.append(stats)
        warn(f"[{stats['generated_tokens']} tokens, {stats.get('decode_tok_s') or 0:.1f} tok/s decode; "
             + (f"KV cache reused: {kept} tokens kept, {stats['prompt_tokens']} prefilled]" if reuse else
                f"{stats['prompt_tokens']} tokens prefilled]"))
        messages.append({"role": "assistant", "content": stream.visible})
        # Reusable only after a stop token: the cache then holds the prompt and every answer token (the
        # last sampled one, the stop, never fed back). A turn cut by --max-new-tokens left its last
        # token out of the cache, so the next one starts afresh.
        if stream.stopped and app.keeps_cache:
            cached = text + stream.visible
            n_cached = kept + stats["prompt_tokens"] + stats["generated_tokens"] - 1
        else:
            cached, n_cached = None, 0
    return turns
