"""`mobilellm-export run BUNDLE`: generate through the target runtime's own loop, as the apps do."""

from __future__ import annotations

from pathlib import Path

from . import targets
from .bundle import check_files, read_manifest
from .errors import UserError
from .float_chat import clamp_new_tokens
from .tokenizer import Tokenizer


def run_bundle(bundle: str, prompt: str, *, max_new_tokens: int, temperature: float | None = None,
               system: str | None = None, raw: bool = False, threads: int = 2, write=print, warn=print) -> dict:
    d = Path(bundle)
    m = read_manifest(d)
    check_files(d, m)
    target = targets.of_bundle(m)
    gen = m["generation"]
    tok = Tokenizer.from_dir(d / m["tokenizer"]["file"])
    # The chat template (unless raw), then BOS by the bundle's policy: the runtime gets exactly the
    # text whose ids verification scored, and is never asked to add BOS itself.
    text = tok.prompt_text(prompt, gen["bos"], system=system, raw=raw, system_prompts=gen["system_prompts"])
    n_prompt = len(tok.check_ids(tok.encode(text, add_special_tokens=False), m["config"]["vocab_size"]))
    max_new_tokens = clamp_new_tokens(n_prompt, max_new_tokens, gen["max_context"], warn)
    app = target.app_runner(d, m, threads=threads)
    if app is None:
        raise UserError(f"target {target.name}: its runtime ({target.runtime}) cannot run on this machine")
    return app.generate(text, max_new_tokens, temperature=gen["temperature"] if temperature is None else temperature,
                        on_text=write)
