"""ONNX Runtime runners over an `onnx` bundle: the graph in our Python loop (`OnnxRunner`, parity) and
onnxruntime-genai's own generation loop (`GenAIRunner`, what the apps run)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from mobilellm_export.runtimes import AppRunner, Runner
from mobilellm_export.text.tokenizer import encode_bounded


def session(path: Path, threads: int | None):
    import onnxruntime as ort

    so = ort.SessionOptions()
    if threads:
        so.intra_op_num_threads = int(threads)
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


class OnnxRunner(Runner):
    """The graph in ONNX Runtime, KV caches bound once with IOBinding: each cache is one
    [1, kv_heads, max_context, head_dim] buffer given to GQA as both past and present (the
    shared-buffer mode ORT GenAI uses), so no step copies the cache."""

    def __init__(self, path: Path, threads: int | None, max_seq_len: int, max_context: int, cfg: dict,
                 name: str = "onnxruntime"):
        super().__init__()
        import onnxruntime as ort

        self.name, self.max_seq_len, self.max_context = name, max_seq_len, max_context
        self.sess = session(path, threads)
        names = [i.name for i in self.sess.get_inputs() if i.name.startswith("past_key_values.")]
        shape = [1, cfg["n_kv_heads"], max_context, cfg["head_dim"]]
        self.caches = {n: ort.OrtValue.ortvalue_from_numpy(np.zeros(shape, np.float32)) for n in names}

    def reset(self) -> None:
        self.pos = 0  # GQA reads only the first seqlens_k + 1 positions of each cache

    def _run(self, tokens: list[int], start: int, outputs: tuple[str, ...] = ("logits",)) -> list[np.ndarray]:
        """One call at positions start.. : the named outputs (the caches are written in place)."""
        if start + len(tokens) > self.max_context:
            raise ValueError(f"position {start + len(tokens)} is beyond the context of {self.max_context}")
        io = self.sess.io_binding()
        io.bind_cpu_input("input_ids", np.asarray([tokens], np.int64))
        io.bind_cpu_input("attention_mask", np.ones((1, start + len(tokens)), np.int64))
        for name in outputs:
            io.bind_output(name, "cpu")
        for name, buf in self.caches.items():
            io.bind_ortvalue_input(name, buf)
            io.bind_ortvalue_output(name.replace("past_key_values.", "present."), buf)
        self.sess.run_with_iobinding(io)
        return [v.numpy() for v in io.get_outputs()[:len(outputs)]]

    def _forward(self, tokens: list[int], start: int) -> torch.Tensor:
        logits = self._run(tokens, start)[0]
        return torch.from_numpy(logits.reshape(-1, logits.shape[-1]).copy())

    def score(self, tokens: list[int]) -> torch.Tensor:
        self.reset()
        out = []
        for i in range(0, len(tokens), self.max_seq_len):
            chunk = tokens[i:i + self.max_seq_len]
            out.append(self._forward(chunk, self.pos))
            self.pos += len(chunk)
        return torch.cat(out)


class OnnxProbe(OnnxRunner):
    """A probe graph (graph.py, `export_onnx(probe=True)`) in ONNX Runtime, for verify.localise:
    tokens from position 0 on fresh caches, chunked by max_seq_len as the runner chunks them ->
    (hidden [P, S, dim], logits [S, vocab]), both fp32; `hidden` names the graph's residual-stream
    outputs in `Transformer.probe_names()` order."""

    def __init__(self, path: Path, hidden: list[str], threads: int | None, max_seq_len: int, max_context: int,
                 cfg: dict):
        super().__init__(path, threads, max_seq_len, max_context, cfg, name="onnxruntime-probe")
        self.hidden = tuple(hidden)

    def __call__(self, tokens: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        import onnxruntime as ort

        fresh = np.zeros_like  # fresh caches each call, as the contract says (GQA reads only what the call wrote)
        self.caches = {n: ort.OrtValue.ortvalue_from_numpy(fresh(buf.numpy())) for n, buf in self.caches.items()}
        hidden, logits = [], []
        for i in range(0, len(tokens), self.max_seq_len):
            chunk = tokens[i:i + self.max_seq_len]
            lg, *h = self._run(chunk, i, ("logits", *self.hidden))
            logits.append(torch.from_numpy(lg.reshape(len(chunk), -1).astype(np.float32)))
            hidden.append(torch.from_numpy(np.stack([x.reshape(len(chunk), -1) for x in h]).astype(np.float32)))
        return torch.cat(hidden, 1), torch.cat(logits)


class GenAIRunner(AppRunner):
    """onnxruntime-genai's own loop (its Model, Generator and search): what an app on ORT GenAI runs.
    Prompts are tokenized by the bundle's tokenizer (BOS as the bundle's policy says) and appended as
    ids, so the runtime never adds a BOS of its own."""

    def __init__(self, bundle_dir: Path, manifest: dict, threads: int | None):
        import onnxruntime_genai as og
        from tokenizers import Tokenizer

        self.og = og
        config = og.Config(str(bundle_dir))
        if threads:
            config.overlay(json.dumps({"model": {"decoder": {"session_options": {"intra_op_num_threads": int(threads)}}}}))
        self.model = og.Model(config)
        # The bundle's tokenizer.json as it is: prompts arrive pre-normalized (AppRunner), as an app
        # on ORT GenAI gives them to its tokenizer.
        self.tok = Tokenizer.from_file(str(Path(bundle_dir) / manifest["tokenizer"]["file"]))
        self.max_context = manifest["generation"]["max_context"]
        self.eos = set(manifest["generation"]["eos_ids"])

    def reset(self) -> None:
        pass  # every generate() starts a fresh Generator

    def generate(self, prompt: str, max_new_tokens: int, temperature: float = 0.0, on_text=None,
                 quiet: bool = False, reset: bool = True) -> dict:
        """A fresh generator per call (keeps_cache is False: a chat re-prefills each turn)."""
        og = self.og
        ids = encode_bounded(self.tok, prompt)
        params = og.GeneratorParams(self.model)
        opts = {"max_length": min(self.max_context, len(ids) + max_new_tokens)}
        opts.update({"do_sample": True, "temperature": temperature} if temperature > 0 else {"do_sample": False})
        params.set_search_options(**opts)
        gen = og.Generator(self.model, params)
        t0 = time.perf_counter()
        gen.append_tokens(np.asarray(ids, np.int32))  # the prefill
        new: list[int] = []
        first = None
        while not gen.is_done() and len(new) < max_new_tokens:
            gen.generate_next_token()  # the first call samples the prefill's logits; later ones decode
            tok = int(gen.get_next_tokens()[0])
            new.append(tok)
            first = first or time.perf_counter()
            if on_text is not None:
                on_text(self.tok.decode([tok]))
            if tok in self.eos:
                break
        end = time.perf_counter()
        decode = (len(new) - 1) / (end - first) if len(new) > 1 else None
        return {"text": self.tok.decode(new), "prompt_tokens": len(ids), "generated_tokens": len(new),
                "prefill_tok_s": len(ids) / (first - t0), "decode_tok_s": decode, "ttft_ms": 1e3 * (first - t0),
                "tokens": new}
