"""Float generation with the reference model: what `mobilellm-export generate` runs."""

from __future__ import annotations

import time

import torch

from mobilellm_export.errors import UserError
from mobilellm_export.sampling import Sampling, generate
from mobilellm_export.runtimes.eager import EagerRunner
from mobilellm_export.checkpoints import Checkpoint, build_model


def clamp_new_tokens(prompt_len: int, max_new_tokens: int, context: int, warn) -> int:
    """Fit prompt + new tokens in the context, saying so in one line; an overlong prompt is an error."""
    if prompt_len >= context:
        raise UserError(f"the prompt has {prompt_len} tokens; the context holds {context}")
    if prompt_len + max_new_tokens > context:
        room = context - prompt_len
        warn(f"note: --max-new-tokens {max_new_tokens} clamped to {room} (prompt {prompt_len} + new tokens "
             f"must fit the context of {context})")
        return room
    return max_new_tokens


def stream_generate(ck: Checkpoint, prompt: str, max_new_tokens: int, sampling: Sampling, *, system=None,
                    raw=False, dtype="fp32", write=print, warn=print) -> dict:
    tok = ck.tokenizer
    if tok is None:
        raise UserError(f"{ck.source} has no tokenizer; pass --tokenizer path/to/tokenizer.json")
    policy = tok.bos_policy(ck.config.bos_token_id)
    ids = tok.check_ids(tok.encode(tok.prompt_text(prompt, policy, system=system, raw=raw), add_special_tokens=False),
                        ck.config.vocab_size)
    max_new_tokens = clamp_new_tokens(len(ids), max_new_tokens, ck.config.max_position_embeddings, warn)
    model = build_model(ck, len(ids) + max_new_tokens, torch.bfloat16 if dtype == "bf16" else torch.float32)
    runner = EagerRunner(model, max_seq_len=512)
    new, shown, t0, t_first = [], "", time.perf_counter(), None
    eos = tuple(ck.config.eos_token_ids) + ((tok.eos_id,) if tok.eos_id is not None else ())
    for t in generate(runner, ids, max_new_tokens, sampling, eos):
        t_first = t_first or time.perf_counter()
        new.append(t)
        text = tok.decode(new)
        if not text.endswith("\ufffd"):  # wait for the rest of a multi-byte character
            write(text[len(shown):])
            shown = text
    t1 = time.perf_counter()
    t_first = t_first or t1
    return {"prompt_tokens": len(ids), "new_tokens": len(new), "text": shown,
            "prefill_tok_s": len(ids) / max(t_first - t0, 1e-9),
            "decode_tok_s": (len(new) - 1) / max(t1 - t_first, 1e-9) if len(new) > 1 else 0.0}
