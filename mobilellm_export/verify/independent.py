"""The float model against an independent reading of the same source files: transformers.

Every pair the gate scores starts from our own loader (checkpoints/): the float model, the quantized
reference and the artifact all read the weights and the config through it. A loader fault (GGUF Q/K
rows left in llama.cpp's interleaved order, RoPE theta read from the wrong key, a norm's offset
dropped) makes all three wrong together, and they still agree with each other. transformers reads
the same files with its own code, so its logits on the first evaluation window are a reference our
loader cannot share a bug with.

transformers is optional (the `reference` extra; `make setup` installs it). Where it is missing, where
the source has no files (a preset: random weights), or where transformers cannot read the source, the
check is a `skip` record that says why, never a pass. It never runs a checkpoint's bundled code
(`trust_remote_code=False`) and never unpickles (safetensors only; a GGUF is parsed, not executed).
"""

from __future__ import annotations

import contextlib
import io
import math
from pathlib import Path

import torch

from mobilellm_export.verify.report import record

SUITE, CHECK = "source", "float model vs transformers"
# max |dlogit| / max |logit| over the first window. Two fp32 implementations of one model differ by
# summation order only: SmolLM2-135M's GGUF (30 layers, 512 positions) 2.2e-6, the six tiny models
# <= 3.1e-6. A loader fault moves the logits by a sizeable part of their range: SmolLM2 with RoPE theta
# read as the 1e4 default 0.27, with its Q/K un-permute skipped 0.83; the tiny models with theta x 10
# 0.20-1.43 (benchmarks/results/independent_reference.json).
BOUND = 1e-3
BASIS = "transformers reading the same source files"


def skipped(why: str) -> dict:
    return record(SUITE, CHECK, None, "<=", BOUND, BASIS, status="skip", message=f"{CHECK}: not applicable: {why}")


def load(ck) -> tuple[torch.nn.Module | None, str]:
    """transformers' own model for `ck`'s files, in fp32 on the CPU; (None, why) where there is none."""
    files = getattr(ck, "files", None)
    if files is None:
        return None, f"{ck.source} has no source files (a preset: random weights)"
    try:
        import transformers
    except ImportError:
        return None, "transformers is not installed (pip install 'mobilellm-export[reference]')"
    transformers.logging.set_verbosity_error()
    files = Path(files)
    kwargs = {"dtype": torch.float32, "trust_remote_code": False, "local_files_only": True}
    try:
        # transformers prints its own progress and warnings: the report says what matters
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            if files.is_file():  # a GGUF: transformers dequantizes it with its own reader
                model = transformers.AutoModelForCausalLM.from_pretrained(str(files.parent), gguf_file=files.name,
                                                                          **kwargs)
            else:
                model = transformers.AutoModelForCausalLM.from_pretrained(str(files), use_safetensors=True,
                                                                          **kwargs)
    except Exception as e:  # an architecture or file layout transformers cannot read: say so, don't fail
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        return None, f"transformers {transformers.__version__} cannot read {files.name}: {first[:200]}"
    return model.eval(), f"transformers {transformers.__version__}"


class Runner:
    """transformers' model scoring a window in one forward (the LogitStore interface)."""

    def __init__(self, model: torch.nn.Module):
        self.model = model

    @torch.inference_mode()
    def score(self, tokens: list[int]) -> torch.Tensor:
        return self.model(torch.tensor([tokens]), use_cache=False).logits[0].float()


def compare(ours: torch.Tensor, theirs: torch.Tensor, version: str) -> dict:
    """The gate record: max |dlogit| / max |logit| of our float model against transformers' on one window."""
    if ours.shape != theirs.shape:
        return record(SUITE, CHECK, None, "<=", BOUND, BASIS, status="fail",
                      message=f"{CHECK}: logits of shape {tuple(ours.shape)} against transformers' "
                              f"{tuple(theirs.shape)} (vocabulary or window differ)")
    rel = ((ours - theirs).abs().max() / theirs.abs().max().clamp_min(1e-30)).item()
    if not math.isfinite(rel):  # None, not inf: report.json stays standard JSON
        return record(SUITE, CHECK, None, "<=", BOUND, BASIS, status="fail",
                      message=f"{CHECK} ({version}): non-finite logits on one side")
    top1 = (ours.argmax(-1) == theirs.argmax(-1)).float().mean().item()
    ok = rel <= BOUND
    msg = (f"{CHECK} ({version}): max |dlogit| = {rel:.3g} x max |logit|, "
           f"{'within' if ok else 'outside'} <= {BOUND:g}; top-1 agreement {top1:.3f} over {len(ours)} positions")
    if not ok:
        msg += ": our loader reads the source differently (config or weights); every other pair shares that reading"
    return record(SUITE, CHECK, rel, "<=", BOUND, BASIS, message=msg)
