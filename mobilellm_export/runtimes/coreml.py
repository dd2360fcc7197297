"""Core ML runners over a stateful `.mlpackage` (the swift-transformers contract: inputIds, causalMask ->
logits; states keyCache / valueCache).

    MILRunner     Linux (and anywhere): the package's MIL program in the reference executor
                  (targets/mil_exec.py), fp32 or fp16-emulated
    MLModelRunner macOS: Core ML itself, `MLModel.predict` with an `MLState` (cannot run here)
    MILProbe      a probe package (the residual stream as extra outputs) in the executor, for
                  verify.localise

`coreml_runner()` picks MLModelRunner on macOS and MILRunner elsewhere.
"""

from __future__ import annotations

import platform
from pathlib import Path

import numpy as np
import torch

from mobilellm_export.errors import UserError
from mobilellm_export.runtimes import Runner


def causal_mask_np(q: int, start: int) -> np.ndarray:
    """[1, 1, q, start + q] fp16: 0 where key j <= query position start + i, else -inf."""
    j = np.arange(start + q)[None, :]
    i = start + np.arange(q)[:, None]
    return np.where(j <= i, 0.0, -np.inf).astype(np.float16)[None, None]


class _CoreMLRunner(Runner):
    def __init__(self, max_seq_len: int, max_context: int):
        super().__init__()
        self.max_seq_len, self.max_context = max_seq_len, max_context

    def _call(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray | torch.Tensor:
        raise NotImplementedError

    def _forward(self, tokens: list[int], start: int) -> torch.Tensor:
        if start + len(tokens) > self.max_context:
            raise ValueError(f"position {start + len(tokens)} is beyond the context of {self.max_context}")
        if len(tokens) > self.max_seq_len:
            raise ValueError(f"{len(tokens)} tokens in one call; the package takes at most {self.max_seq_len}")
        logits = self._call(np.asarray([tokens], np.int32), causal_mask_np(len(tokens), start))
        logits = torch.as_tensor(np.asarray(logits, np.float32) if not isinstance(logits, torch.Tensor) else logits)
        return logits.float().reshape(len(tokens), -1)

    def reset(self) -> None:
        self.pos = 0  # stale cache positions beyond pos are masked by causalMask's width

    def score(self, tokens: list[int]) -> torch.Tensor:
        """All positions, prefilled in chunks of max_seq_len from a fresh state."""
        self.reset()
        self.pos = len(tokens)
        n = self.max_seq_len
        return torch.cat([self._forward(tokens[i:i + n], i) for i in range(0, len(tokens), n)])


class MILRunner(_CoreMLRunner):
    not_a_speed_reference = ("the MIL reference executor runs the package op by op in Python (no Core ML "
                             "here); Core ML speed needs a Mac")

    def __init__(self, path: Path, max_seq_len: int, max_context: int, mode: str = "fp32"):
        super().__init__(max_seq_len, max_context)
        from mobilellm_export.runtimes.mil import MILExecutor, load_program

        self.name = f"coreml-mil-{mode}"
        self.executor = MILExecutor(load_program(path), mode=mode)

    def reset(self) -> None:
        super().reset()
        self.executor.reset()

    def _call(self, ids, mask):
        return self.executor.run({"inputIds": ids, "causalMask": mask})["logits"]


class MILProbe:
    """A probe package (the `ios` target's `probe`: logits, and the residual stream as outputs
    hidden_0, hidden_1, ... in `probe_names()` order) in the MIL executor, for verify.localise:
    tokens from position 0 on fresh states, chunked by max_seq_len -> (hidden [P, S, dim],
    logits [S, vocab]), fp32."""

    def __init__(self, path: Path, max_seq_len: int, max_context: int, mode: str = "fp32"):
        from mobilellm_export.runtimes.mil import MILExecutor, load_program

        self.executor = MILExecutor(load_program(path), mode=mode)
        self.max_seq_len, self.max_context = max_seq_len, max_context
        outputs = [v.name for v in self.executor.fn.outputs]
        self.hidden = sorted((k for k in outputs if k.startswith("hidden_")), key=lambda k: int(k.split("_")[1]))
        if not self.hidden or self.hidden != [f"hidden_{i}" for i in range(len(self.hidden))]:
            raise UserError(f"{Path(path).name} is not a probe package (outputs {', '.join(outputs)})")

    def __call__(self, tokens: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        if len(tokens) > self.max_context:
            raise ValueError(f"{len(tokens)} tokens are beyond the context of {self.max_context}")
        self.executor.reset()
        hidden, logits = [], []
        for i in range(0, len(tokens), self.max_seq_len):
            chunk = tokens[i:i + self.max_seq_len]
            out = self.executor.run({"inputIds": np.asarray([chunk], np.int32),
                                     "causalMask": causal_mask_np(len(chunk), i)})
            logits.append(out["logits"].float().reshape(len(chunk), -1))
            hidden.append(torch.stack([out[k].float().reshape(len(chunk), -1) for k in self.hidden]))
        return torch.cat(hidden, 1), torch.cat(logits)


class MLModelRunner(_CoreMLRunner):
    """Core ML on macOS 15+: one MLState per sequence, kept across predict calls."""

    name = "coreml"

    def __init__(self, path: Path, max_seq_len: int, max_context: int, compute_units: str = "CPU_AND_GPU"):
        super().__init__(max_seq_len, max_context)
        import coremltools as ct

        self.model = ct.models.MLModel(str(path), compute_units=getattr(ct.ComputeUnit, compute_units))
        self.state = self.model.make_state()

    def reset(self) -> None:
        super().reset()
        self.state = self.model.make_state()

    def _call(self, ids, mask):
        return self.model.predict({"inputIds": ids, "causalMask": mask}, state=self.state)["logits"]


def coreml_runner(path: Path, max_seq_len: int, max_context: int, mode: str = "fp32") -> Runner:
    """Core ML itself on macOS; the MIL reference executor elsewhere."""
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"{path} is not an .mlpackage folder")
    if platform.system() == "Darwin":
        return MLModelRunner(path, max_seq_len, max_context)
    return MILRunner(path, max_seq_len, max_context, mode=mode)


def package_metadata(path: Path) -> dict:
    """The package's user-defined metadata (eos_ids, max_context, ...), read from its spec."""
    from mobilellm_export.runtimes.mil import read_spec

    return dict(read_spec(path).description.metadata.userDefined)
