"""HF directory source: config.json + safetensors (single or sharded), `.bin` only as weights.

Never imports or runs a checkpoint's own Python (`auto_map`, `modeling_*.py`): the architecture
is known, only tensors are read.
"""

from __future__ import annotations

from pathlib import Path

import torch

from mobilellm_export.config import ModelConfig
from mobilellm_export.checkpoints.hf_config import from_hf_config
from mobilellm_export.errors import UserError, load_json
from mobilellm_export.text.tokenizer import Tokenizer


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
    try:  # weights_only: a pickle that tries to build anything but tensors is refused, never run
        sd = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:
        # (torch's own message goes on to suggest weights_only=False, i.e. running the pickle: never)
        reason = "it holds objects other than tensors" if "weights_only" in str(e) else str(e).splitlines()[0][:120]
        raise UserError(f"refusing {path}: {reason}; only weights-only torch files and safetensors are read") from None
    if not isinstance(sd, dict):
        raise UserError(f"{path} does not hold a state dict")
    return sd


def _merge(files: list[Path], loader) -> dict[str, torch.Tensor]:
    sd = {}
    for f in files:
        sd.update(loader(f))
    return sd


def _weight_files(d: Path) -> tuple[list[Path], str]:
    """The weight files of a HF directory and their kind ("safetensors" or "bin")."""
    index = d / "model.safetensors.index.json"
    if index.is_file():
        wm = load_json(index).get("weight_map")
        if not isinstance(wm, dict) or not all(isinstance(v, str) for v in wm.values()):
            raise UserError(f"corrupt {index}: weight_map must map tensor names to file names")
        shards = sorted(set(wm.values()))
        for s in shards:
            if Path(s).is_absolute() or ".." in Path(s).parts or not (d / s).is_file():
                raise UserError(f"{index} names a missing or outside shard {s!r}")
        return [d / s for s in shards], "safetensors"
    for pattern, kind in (("*.safetensors", "safetensors"), ("pytorch_model*.bin", "bin")):
        files = sorted(d.glob(pattern))
        if files:
            return files, kind
    raise UserError(f"no weights in {d} (expected *.safetensors or pytorch_model*.bin)")


def read_shapes(d: Path) -> dict[str, tuple[int, ...]] | None:
    """Tensor names and shapes from the safetensors headers alone (no data read); None for .bin."""
    from safetensors import SafetensorError, safe_open

    files, kind = _weight_files(d)
    if kind != "safetensors":
        return None
    shapes = {}
    for f in files:
        try:
            with safe_open(str(f), framework="pt") as st:
                for k in st.keys():
                    shapes[canonical_name(k)] = tuple(st.get_slice(k).get_shape())
        except (SafetensorError, OSError, ValueError) as e:
            raise UserError(f"corrupt or truncated safetensors file {f}: {str(e).splitlines()[0]}") from None
    return shapes


def load_weights(d: Path) -> dict[str, torch.Tensor]:
    files, kind = _weight_files(d)
    return _merge(files, _load_safetensors if kind == "safetensors" else _load_bin)


def read_config(d: Path) -> ModelConfig:
    cfg_path = d / "config.json"
    if not cfg_path.is_file():
        raise UserError(f"{d} has no config.json")
    return from_hf_config(load_json(cfg_path), str(cfg_path))


def load_hf_dir(d: str | Path, weights: bool = True) -> tuple[ModelConfig, dict[str, torch.Tensor] | None,
                                                              Tokenizer | None]:
    """Config, weights (None with weights=False) and tokenizer. The headers' tensor names and
    shapes are checked against the config before any tensor data is read."""
    from mobilellm_export.model import check_shapes

    d = Path(d)
    cfg = read_config(d)
    shapes = read_shapes(d)
    if shapes is not None:
        check_shapes(cfg, shapes, str(d))
    sd = {canonical_name(k): v.float() for k, v in load_weights(d).items()} if weights else None
    tok = Tokenizer.from_dir(d) if (d / "tokenizer.json").is_file() else None
    return cfg, sd, tok
