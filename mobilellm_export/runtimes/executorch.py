"""ExecuTorch runners for a .pte written by `targets.android.export_pte`.

`ExecuTorchRunner` drives the program's `forward` method through `executorch.runtime` (the
pybindings runtime, same kernels and XNNPACK delegate as on device) behind the Runner interface.
`TextRunner` runs the C++ `TextLLMRunner`: the code the Android `LlmModule` and iOS
`TextRunner` wrap (tokenizer, chunked prefill, sampling, EOS from `get_eos_ids`).
"""

from __future__ import annotations

import codecs
import contextlib
import os
import sys
import threading
import types
from pathlib import Path

import torch

from mobilellm_export.errors import UserError
from mobilellm_export.runtimes import AppRunner, Runner


def set_threads(n: int) -> None:
    """Size ExecuTorch's (process-wide) threadpool, used by XNNPACK and the optimized kernels."""
    from executorch.extension.pybindings import portable_lib

    portable_lib._unsafe_reset_threadpool(int(n))


def register_kernels() -> None:
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


def _constants(program) -> dict:
    """Every method but `forward` is a constant (get_max_seq_len, get_eos_ids, ...): run them all."""
    out = {}
    for name in sorted(program.method_names - {"forward"}):
        values = list(program.load_method(name).execute([]))
        out[name] = values if name == "get_eos_ids" else (values[0] if len(values) == 1 else values)
    return out


def read_constants(pte_path: str | Path, data_path: str | Path | None = None) -> dict:
    """The LLM runner metadata a .pte carries, without loading `forward`."""
    register_kernels()
    from executorch.runtime import Runtime

    program = Runtime.get().load_program(str(pte_path), data_path=default_data_path(pte_path, data_path))
    return _constants(program)


class ExecuTorchRunner(Runner):
    def __init__(self, pte_path: str | Path, name: str = "executorch", threads: int | None = None,
                 data_path: str | Path | None = None):
        super().__init__()
        register_kernels()
        from executorch.runtime import Runtime

        if threads is not None:
            set_threads(threads)
        self.name, self.path = name, str(pte_path)
        self.data_path = default_data_path(pte_path, data_path)  # .ptd with external weights
        self.program = Runtime.get().load_program(self.path, data_path=self.data_path)
        # Read every constant method before loading `forward`: the runtime may let host-only methods
        # of one program share planned arenas, and forward's KV caches live in its arena.
        self.constants = _constants(self.program)
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
    register_kernels()
    from executorch.extension.llm.runner import TextLLMRunner

    return TextLLMRunner(str(pte_path), str(tokenizer_path), default_data_path(pte_path, data_path))


_REPORT = b"PyTorchObserver "  # the runner's stats line, printed to stdout after the text


@contextlib.contextmanager
def _runner_stdout(on_text=None):
    """Read what the C++ runner prints on file descriptor 1: its generated text.

    The Python binding's token callback cannot be used: it decodes each piece strictly as UTF-8,
    and a byte-level BPE piece can be part of a character (UnicodeDecodeError aborts generation).
    The runner also prints every piece to stdout, so fd 1 goes to a pipe for the call and the text
    is decoded incrementally (a split character waits for its other bytes); the stats line the
    runner prints after the text is cut off. Yields a namespace whose `.text` is set on exit.
    """
    from mobilellm_export.console import _flush_c_stdio

    sys.stdout.flush()
    _flush_c_stdio()
    r, w = os.pipe()
    saved = os.dup(1)
    os.dup2(w, 1)
    os.close(w)
    raw = bytearray()
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    shown = [0]

    def emit(upto: int) -> None:
        if on_text is not None and upto > shown[0]:
            piece = decoder.decode(bytes(raw[shown[0]:upto]))
            shown[0] = upto
            if piece:
                on_text(piece)

    def reader() -> None:
        while chunk := os.read(r, 1 << 16):
            raw.extend(chunk)
            cut = raw.find(_REPORT)
            # up to the stats line (minus the runner's newline before it), and never the bytes that
            # may be the start of it
            emit(cut - 1 if cut >= 0 else len(raw) - len(_REPORT) - 1)

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    box = types.SimpleNamespace(text="")
    try:
        yield box
    finally:
        _flush_c_stdio()
        os.dup2(saved, 1)  # closes the pipe's last write end: the reader sees EOF
        os.close(saved)
        thread.join()
        os.close(r)
        cut = raw.find(_REPORT)
        end = len(raw) if cut < 0 else cut
        if end and raw[end - 1:end] == b"\n":  # the runner ends the text with one newline
            end -= 1
        emit(end)
        if on_text is not None:
            tail = decoder.decode(b"", final=True)
            if tail:
                on_text(tail)
        box.text = bytes(raw[:end]).decode("utf-8", "replace")


class TextRunner(AppRunner):
    """ExecuTorch's C++ `TextLLMRunner`: the loop the Android `LlmModule` and iOS `TextRunner`
    wrap (tokenizer, chunked prefill, sampling, EOS from `get_eos_ids`)."""

    def __init__(self, pte_path: str | Path, tokenizer_path: str | Path, data_path: str | Path | None = None,
                 max_context: int | None = None, threads: int | None = None):
        if threads is not None:
            set_threads(threads)
        self.runner = open_text_runner(pte_path, tokenizer_path, data_path)
        self.max_context = max_context

    def reset(self) -> None:
        self.runner.reset()

    keeps_cache = True  # the runner's position survives a call; only reset() clears it

    def generate(self, prompt: str, max_new_tokens: int, temperature: float = 0.0, on_text=None,
                 quiet: bool = False, reset: bool = True) -> dict:
        """One generation, from a fresh KV cache unless reset=False (then after what the last call
        left in it). quiet=True: the runner prints nothing (timing runs).

        BOS is part of `prompt` when the bundle wants one (num_bos = 0: the C++ tokenizer adds BOS
        only through a TemplateProcessing post-processor, unlike Python `tokenizers`)."""
        from executorch.extension.llm.runner import GenerationConfig

        if not prompt:
            raise UserError("the prompt is empty")
        if reset:
            self.runner.reset()
        config = GenerationConfig(echo=False, max_new_tokens=max_new_tokens, temperature=temperature, num_bos=0,
                                  num_eos=0, warming=quiet)
        seen: list = []
        capture = contextlib.nullcontext(types.SimpleNamespace(text=None)) if quiet else _runner_stdout(on_text)
        try:
            with capture as box:
                self.runner.generate(prompt, config, None, seen.append)
        except RuntimeError as e:
            raise RuntimeError(f"ExecuTorch's TextLLMRunner failed: {e} (run with --verbose for its log)") from None
        if not seen:
            raise RuntimeError("ExecuTorch's TextLLMRunner returned no statistics")
        stats = runner_stats(seen[-1])
        return {"text": box.text, "prompt_tokens": stats["num_prompt_tokens"],
                # the runner counts only the tokens of its decode loop; the first comes from prefill
                "generated_tokens": stats["num_generated_tokens"] + 1,
                "prefill_tok_s": stats["prefill_tokens_per_s"], "decode_tok_s": stats["decode_tokens_per_s"],
                "ttft_ms": stats["ttft_ms"], "runner_stats": stats}


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
    stats["ttft_ms"] = s.first_token_ms - s.inference_start_ms
    return stats


class ProbeProgram:
    """A probe .pte in ExecuTorch's runtime: tokens from position 0, chunked by max_seq_len."""

    def __init__(self, path: Path, max_seq_len: int, threads: int | None):
        from executorch.runtime import Runtime

        register_kernels()
        if threads:
            set_threads(threads)
        self.program = Runtime.get().load_program(str(path))
        self.max_seq_len = max_seq_len

    def __call__(self, tokens: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        method = self.program.load_method("forward")  # a fresh load: fresh KV-cache buffers
        hidden, logits = [], []
        for i in range(0, len(tokens), self.max_seq_len):
            chunk = torch.tensor([tokens[i:i + self.max_seq_len]], dtype=torch.long)
            lg, h = method.execute([chunk, torch.tensor([i], dtype=torch.long)])
            hidden.append(h[:, 0].float().clone())  # outputs live in the method's planned memory
            logits.append(lg[0].float().clone())
        return torch.cat(hidden, 1), torch.cat(logits)
