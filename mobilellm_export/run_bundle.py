"""`mobilellm-export run BUNDLE`: generate through the ExecuTorch C++ LLM runner, as the apps do."""

from __future__ import annotations

from pathlib import Path

from .bundle import check_files, read_manifest
from .errors import UserError
from .tokenizer import Tokenizer


def run_bundle(bundle: str, prompt: str, *, max_new_tokens: int, temperature: float | None = None,
               system: str | None = None, raw: bool = False, write=print) -> dict:
    d = Path(bundle)
    m = read_manifest(d)
    check_files(d, m)
    if m["target"] != "android":
        raise UserError(f"`run` drives ExecuTorch bundles; this one targets {m['target']}")
    gen = m["generation"]
    tok = Tokenizer.from_dir(d)
    # BOS comes from the text (chat templates render it) or from tokenizer.json's own post-processor,
    # never from the runner (num_bos = 0): then the runner sees exactly the ids our eager path scores.
    if raw or not tok.chat_template:
        text = prompt
    else:
        msgs = ([{"role": "system", "content": gen["system_prompts"].get(system, system)}] if system else [])
        text = tok.apply_chat_template(msgs + [{"role": "user", "content": prompt}])
    from .runners.executorch import generate_text

    out, stats = generate_text(d / "model.pte", d / "tokenizer.json", text, max_new_tokens,
                               temperature=gen["temperature"] if temperature is None else temperature,
                               num_bos=0, data_path=d / gen["data_file"] if gen.get("data_file") else None)
    write(out)
    stats["generated_tokens"] = len(stats["pieces"])  # the runner's own count leaves out the first token
    stats["decode_tok_s"] = stats.get("decode_tokens_per_s") or 0.0  # None when the runner timed 0 ms
    return stats
