"""Float generation with the reference model: what `mobilellm-export generate` runs."""

from __future__ import annotations

import time

import torch

from .errors import UserError
from .generate import Sampling, generate
from .model import Transformer, to_rotate_half
from .runners.eager import EagerRunner
from .sources import Checkpoint


def build_model(ck: Checkpoint, max_context: int, dtype: torch.dtype = torch.float32) -> Transformer:
    """The float reference for a checkpoint, in rotate_half RoPE layout (exact; see to_rotate_half)."""
    cfg, sd = to_rotate_half(ck.config, ck.state_dict)
    model = Transformer(cfg, max_context=max_context)
    model.load_weights(sd)
    return model.to(dtype).eval()


def prompt_ids(ck: Checkpoint, prompt: str, system: str | None = None, raw: bool = False) -> list[int]:
    tok = ck.tokenizer
    if tok is None:
        raise UserError(f"{ck.source} has no tokenizer; pass --tokenizer path/to/tokenizer.json")
    if raw or not tok.chat_template:
        return tok.encode(prompt)
    return tok.chat_prompt_ids(prompt, system)


def stream_generate(ck: Checkpoint, prompt: str, max_new_tokens: int, sampling: Sampling, *, system=None,
                    raw=False, dtype="fp32", write=print) -> dict:
    ids = prompt_ids(ck, prompt, system, raw)
    ctx = min(ck.config.max_position_embeddings, len(ids) + max_new_tokens)
    model = build_model(ck, ctx, torch.bfloat16 if dtype == "bf16" else torch.float32)
    runner = EagerRunner(model, max_seq_len=512)
    new, shown, t0, t_first = [], "", time.perf_counter(), None
    eos = tuple(ck.config.eos_token_ids) + ((ck.tokenizer.eos_id,) if ck.tokenizer.eos_id is not None else ())
    for tok in generate(runner, ids, max_new_tokens, sampling, eos):
        t_first = t_first or time.perf_counter()
        new.append(tok)
        text = ck.tokenizer.decode(new)
        if not text.endswith("\ufffd"):  # wait for the rest of a multi-byte character
            write(text[len(shown):])
            shown = text
    t1 = time.perf_counter()
    t_first = t_first or t1
    return {"prompt_tokens": len(ids), "new_tokens": len(new), "text": shown,
            "prefill_tok_s": len(ids) / max(t_first - t0, 1e-9),
            "decode_tok_s": (len(new) - 1) / max(t1 - t_first, 1e-9) if len(new) > 1 else 0.0}
