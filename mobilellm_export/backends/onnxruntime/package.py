"""What the ONNX bundle carries besides the graph: genai_config.json and the ORT-format model."""

from __future__ import annotations

import time
from pathlib import Path

from mobilellm_export.backends import ExportSpec
from mobilellm_export.backends.onnxruntime import DATA, MODEL
from mobilellm_export.errors import UserError


def to_ort_format(out_dir: Path, facts: dict) -> list[str]:
    """model.ort (weights inside) and model.required_operators.config, the op list a reduced ORT
    Mobile build is made from, by ORT's own converter, optimised for ARM (the phones'), not this
    machine. It accepts every op the graph uses, contrib ops included (a converter that rejects one
    fails the export with its message)."""
    import shutil
    import tempfile

    from onnxruntime.tools.convert_onnx_models_to_ort import OptimizationStyle, convert_onnx_models_to_ort

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="mobilellm-ort.") as tmp:
        src = Path(tmp) / "in"
        src.mkdir()
        for f in (MODEL, DATA):
            (src / f).symlink_to(out_dir.resolve() / f)
        try:
            convert_onnx_models_to_ort(src / MODEL, Path(tmp) / "out", [OptimizationStyle.Fixed], target_platform="arm")
        except Exception as e:
            raise UserError(f"ONNX Runtime's ORT-format converter rejected the model: {str(e).splitlines()[0]}") from None
        written = ["model.ort", "model.required_operators.config"]
        for f in written:
            shutil.move(str(Path(tmp) / "out" / f), out_dir / f)
    ops = [ln for ln in (out_dir / written[1]).read_text().splitlines() if ln and not ln.startswith("#")]
    facts.update(ort_s=time.perf_counter() - t0, ort_bytes=(out_dir / written[0]).stat().st_size, ort_operators=ops)
    return written


def genai_config(spec: ExportSpec, n_caches: int, pad_id: int | None) -> dict:
    """onnxruntime-genai's genai_config.json for this graph (the fields its builder writes)."""
    cfg = spec.config
    eos = list(spec.eos_ids)
    return {
        "model": {
            "bos_token_id": spec.bos_id if spec.bos_id is not None else (cfg.bos_token_id or 0),
            "context_length": spec.max_context,
            "decoder": {
                "session_options": {"log_id": "onnxruntime-genai", "provider_options": [],
                                    "intra_op_num_threads": spec.threads},
                "filename": MODEL, "head_size": cfg.head_dim, "hidden_size": cfg.dim,
                "inputs": {"input_ids": "input_ids", "attention_mask": "attention_mask",
                           "past_key_names": "past_key_values.%d.key", "past_value_names": "past_key_values.%d.value"},
                "outputs": {"logits": "logits", "present_key_names": "present.%d.key",
                            "present_value_names": "present.%d.value"},
                "num_attention_heads": cfg.n_heads, "num_hidden_layers": n_caches,
                "num_key_value_heads": cfg.n_kv_heads,
            },
            "eos_token_id": eos if len(eos) > 1 else eos[0],
            "pad_token_id": pad_id if pad_id is not None else eos[0],
            "type": "llama",
            "vocab_size": cfg.vocab_size,
        },
        "search": {"diversity_penalty": 0.0, "do_sample": False, "early_stopping": True, "length_penalty": 1.0,
                   "max_length": spec.max_context, "min_length": 0, "no_repeat_ngram_size": 0, "num_beams": 1,
                   "num_return_sequences": 1, "past_present_share_buffer": True, "repetition_penalty": 1.0,
                   "temperature": 1.0, "top_k": 1, "top_p": 1.0},
    }
