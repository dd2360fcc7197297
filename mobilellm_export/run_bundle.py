"""`mobilellm-export run BUNDLE`: generate through the target runtime's own loop, as the apps do."""

from __future__ import annotations

import datetime
from pathlib import Path

from mobilellm_export import backends
from mobilellm_export.text import prompt_format
from mobilellm_export.bundle import check_files, read_manifest
from mobilellm_export.errors import UserError, load_json
from mobilellm_export.float_chat import clamp_new_tokens
from mobilellm_export.text.tokenizer import Tokenizer


def load_conversation(path: str) -> tuple[list[dict], bool | None]:
    """conv.json: {"messages": [{role, content}, ...], "enable_thinking": true|false (optional)}; the
    messages: an optional system message, then user and assistant alternating, ending with the user."""
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


def run_bundle(bundle: str, prompt: str | None, *, max_new_tokens: int, temperature: float | None = None,
               system: str | None = None, raw: bool = False, threads: int = 2, write=print, warn=print,
               conversation: str | None = None, enable_thinking: bool | None = None) -> dict:
    d = Path(bundle)
    m = read_manifest(d)
    check_files(d, m)
    target = backends.of_bundle(m)
    gen = m["generation"]
    tok = Tokenizer.from_bundle(d, m)
    if conversation is not None:
        if prompt is not None or system is not None or raw:
            raise UserError("--conversation replaces --prompt, --system and --raw")
        messages, thinking = load_conversation(conversation)
        text = conversation_text(m, tok, messages, enable_thinking=thinking if enable_thinking is None else enable_thinking,
                                 warn=warn)
    elif prompt is None:
        raise UserError("give --prompt or --conversation")
    else:
        # The chat template (unless raw), then BOS by the bundle's policy: the runtime gets exactly
        # the text whose ids verification scored, and is never asked to add BOS itself.
        text = tok.prompt_text(prompt, gen["bos"], system=system, raw=raw, system_prompts=gen["system_prompts"])
    n_prompt = len(tok.check_ids(tok.encode(text, add_special_tokens=False), m["config"]["vocab_size"]))
    max_new_tokens = clamp_new_tokens(n_prompt, max_new_tokens, gen["max_context"], warn)
    app = target.app_runner(d, m, threads=threads)
    if app is None:
        raise UserError(f"target {target.name}: its runtime ({target.runtime}) cannot run on this machine")
    # As the apps do: the runtime reads the bundle's tokenizer.json as it is, so it gets the text
    # pre-normalized (prompt_format.pre_normalize; tokenizer.py explains why).
    return app.generate(tok.runner_text(text), max_new_tokens,
                        temperature=gen["temperature"] if temperature is None else temperature, on_text=write)
