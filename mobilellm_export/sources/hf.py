"""HF directory source: config.json + safetensors (single or sharded), `.bin` only as weights.

Never imports or runs a checkpoint's own Python (`auto_map`, `modeling_*.py`): the architecture
is known, only tensors are read.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..config import ModelConfig, from_hf_config
from ..errors import UserError, load_json
from ..tokenizer import Tokenizer


def canonical_name(name: str) -> str:
    """HF tensor name -> reference-model name (strip `model.`, Llama-4 `feed_forward` -> `mlp`)."""
    if name.startswith("model."):
        name = name[len("model."):]
    return name.replace(".feed_forward.", ".mlp.")


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise UserError(f"corrupt or truncated safetensors file {path}: {str(e).splitlines()[0]}") from None


def _load_bin(path: Path) -> dict[str, torch.Tensor]:
    try:  # weights_only: a pickle that tries to build anything but tensors is refused
        sd = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:
        raise UserError(f"cannot read {path} as weights-only torch file: {str(e).splitlines()[0]}") from None
    if not isinstance(sd, dict):
        raise UserError(f"{path} does not hold a state dict")
    return sd


def _merge(files: list[Path], loader) -> dict[str, torch.Tensor]:
    sd = {}
    for f in files:
        sd.update(loader(f))
    return sd


def load_weights(d: Path) -> dict[str, torch.Tensor]:
    index = d / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = sorted(set(load_json(index)["weight_map"].values()))
        except KeyError:
            raise UserError(f"corrupt {index}: no weight_map") from None
        missing = [s for s in shards if not (d / s).is_file()]
        if missing:
            raise UserError(f"{index} names missing shard {missing[0]}")
        return _merge([d / s for s in shards], _load_safetensors)
    for pattern, loader in (("*.safetensors", _load_safetensors), ("pytorch_model*.bin", _load_bin)):
        files = sorted(d.glob(pattern))
        if files:
            return _merge(files, loader)
    raise UserError(f"no weights in {d} (expected *.safetensors or pytorch_model*.bin)")


def read_config(d: Path) -> ModelConfig:
    cfg_path = d / "config.json"
    if not cfg_path.is_file():
        raise UserError(f"{d} has no config.json")
    return from_hf_config(load_json(cfg_path))


def load_hf_dir(d: str | Path) -> tuple[ModelConfig, dict[str, torch.Tensor], Tokenizer | None]:
    d = Path(d)
    cfg = read_config(d)
    sd = {canonical_name(k): v.float() for k, v in load_weights(d).items()}
    tok = Tokenizer.from_dir(d) if (d / "tokenizer.json").is_file() else None
    return cfg, sd, tok
