"""ExecuTorch runners for a .pte written by `targets.android.export_pte`.

`ExecuTorchRunner` drives the program's `forward` method through `executorch.runtime` (the
pybindings runtime, same kernels and XNNPACK delegate as on device) behind the Runner interface.
`generate_text` runs the C++ `TextLLMRunner`: the code the Android `LlmModule` and iOS
`TextRunner` wrap (tokenizer, chunked prefill, sampling, EOS from `get_eos_ids`).
"""

from __future__ import annotations

from pathlib import Path

import torch

from . import Runner


def set_threads(n: int) -> None:
    """Size ExecuTorch's (process-wide) threadpool, used by XNNPACK and the optimized kernels."""
    from executorch.extension.pybindings import portable_lib

    portable_lib._unsafe_reset_threadpool(int(n))


def _register_kernels() -> None:
    """Load the runtime kernels the exported graph needs outside XNNPACK (llama::custom_sdpa.out,
    llama::update_cache.out, quantized_decomposed::*). Without them, loading `forward` fails with
    "Missing operator" (TextLLMRunner reports only "Generation failed")."""
    import executorch.extension.llm.custom_ops.custom_ops  # noqa: F401
    import executorch.kernels.quantized  # noqa: F401


def default_data_path(pte_path: str | Path, data_path: str | Path | None) -> str | None:
    """The .ptd holding a program's external weights: as given, else `<stem>.ptd` beside it if present."""
    if data_path is not None:
        return str(data_path)
    sibling = Path(pte_path).with_suffix(".ptd")
    return str(sibling) if sibling.is_file() else None


class ExecuTorchRunner(Runner):
    def __init__(self, pte_path: str | Path, name: str = "executorch", threads: int | None = None,
                 data_path: str | Path | None = None):
        super().__init__()
        _register_kernels()
        from executorch.runtime import Runtime

        if threads is not None:
            set_threads(threads)
        self.name, self.path = name, str(pte_path)
        self.data_path = default_data_path(pte_path, data_path)  # .ptd with external weights
        self.program = Runtime.get().load_program(self.path, data_path=self.data_path)
        # Read every constant method before loading `forward`: the runtime may let host-only methods
        # of one program share planned arenas, and forward's KV caches live in its arena.
        self.constants = {}
        for name in sorted(self.program.method_names - {"forward"}):
            out = list(self.program.load_method(name).execute([]))
            self.constants[name] = out if name == "get_eos_ids" else (out[0] if len(out) == 1 else out)
        self.method = self.program.load_method("forward")  # holds the KV-cache buffers across calls
        if "get_max_seq_len" not in self.constants:
            raise ValueError(f"{self.path} has no get_max_seq_len method: not an LLM .pte")
        self.max_seq_len = int(self.constants["get_max_seq_len"])
        ctx = self.constants.get("get_max_context_len")
        self.max_context = int(ctx) if ctx is not None else None

    def constant(self, name: str):
        """Value of a constant method (get_max_seq_len, get_eos_ids, ...): a scalar, or a list."""
        return self.constants[name]

    def reset(self) -> None:
        self.pos = 0  # stale cache entries beyond pos are never attended to (causal from start_pos)

    def _forward(self, tokens: list[int], start: int) -> torch.Tensor:
        if len(tokens) > self.max_seq_len:
            raise ValueError(f"{len(tokens)} tokens in one call; the program takes at most {self.max_seq_len}")
        if self.max_context is not None and start + len(tokens) > self.max_context:
            raise ValueError(f"position {start + len(tokens)} is beyond the context of {self.max_context}")
        out = self.method.execute([torch.tensor([tokens], dtype=torch.long), torch.tensor([start], dtype=torch.long)])
        logits = out[0]
        return logits.reshape(-1, logits.shape[-1])[-1:].float().clone()


def open_text_runner(pte_path: str | Path, tokenizer_path: str | Path, data_path: str | Path | None = None):
    """ExecuTorch's C++ TextLLMRunner on a .pte (+ its .ptd), with the kernels it needs registered."""
    _register_kernels()
    from executorch.extension.llm.runner import TextLLMRunner

    return TextLLMRunner(str(pte_path), str(tokenizer_path), default_data_path(pte_path, data_path))


def generate_text(pte_path: str | Path, tokenizer_path: str | Path, prompt: str, max_new_tokens: int,
                  temperature: float = 0.0, echo: bool = False, num_bos: int = 0,
                  data_path: str | Path | None = None) -> tuple[str, dict]:
    """Generate with ExecuTorch's C++ TextLLMRunner; return (generated text, stats dict).

    stats holds the runner's Stats fields plus `pieces` (the decoded pieces, one per callback: the
    first comes from prefill, so len(pieces) == num_generated_tokens + 1 when no EOS was hit) and the
    runner's prefill/decode rates. BOS is whatever the tokenizer adds (tokenizer.json post-processor).
    """
    from executorch.extension.llm.runner import GenerationConfig

    runner = open_text_runner(pte_path, tokenizer_path, data_path)
    pieces: list[str] = []
    stats_seen: list = []
    config = GenerationConfig(echo=echo, max_new_tokens=max_new_tokens, temperature=temperature, num_bos=num_bos)
    try:
        runner.generate(prompt, config, pieces.append, stats_seen.append)
    except UnicodeDecodeError:
        # Upstream: the pybind token callback decodes each piece strictly, and a byte-level BPE
        # piece can be part of a multi-byte character. The C++ runner itself is fine.
        raise RuntimeError("ExecuTorch's Python TextLLMRunner binding failed on a token piece that is not "
                           "valid UTF-8 on its own (upstream binding limitation)") from None
    stats: dict = {"pieces": pieces}
    if stats_seen:
        stats.update(runner_stats(stats_seen[-1]))
    return "".join(pieces), stats


def runner_stats(s) -> dict:
    """A TextLLMRunner Stats object as a dict, with the runner's own rates added."""
    stats = {}
    for field in ("num_prompt_tokens", "num_generated_tokens", "model_load_start_ms", "model_load_end_ms",
                  "inference_start_ms", "token_encode_end_ms", "prompt_eval_end_ms", "first_token_ms",
                  "inference_end_ms", "aggregate_sampling_time_ms"):
        stats[field] = getattr(s, field)
    # The runner's own definitions (its "PyTorchObserver" line): decode rate excludes the first
    # token, which comes out of prefill and is not counted in num_generated_tokens.
    gen_ms = s.inference_end_ms - s.prompt_eval_end_ms
    prefill_ms = s.prompt_eval_end_ms - s.inference_start_ms
    stats["decode_tokens_per_s"] = s.num_generated_tokens * 1000.0 / gen_ms if gen_ms > 0 else None
    stats["prefill_tokens_per_s"] = s.num_prompt_tokens * 1000.0 / prefill_ms if prefill_ms > 0 else None
    stats["prefill_ms"] = prefill_ms
    return stats
