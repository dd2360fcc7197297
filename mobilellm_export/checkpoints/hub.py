"""Hugging Face hub ids: download only what the HF-directory source reads, then load it."""

from __future__ import annotations

from pathlib import Path

from mobilellm_export.errors import UserError

ALLOW = ["config.json", "*.safetensors", "model.safetensors.index.json", "tokenizer.json",
         "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja", "generation_config.json"]


def download(repo_id: str, revision: str | None = None, cache_dir: str | None = None) -> Path:
    """snapshot_download with allow-patterns (no .bin pickles, no custom code). Offline: one clear error."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        return Path(snapshot_download(repo_id, revision=revision, cache_dir=cache_dir, allow_patterns=ALLOW))
    except LocalEntryNotFoundError:
        raise UserError(f"cannot download {repo_id!r}: no network and not in the local HF cache "
                        f"(download it elsewhere and pass the directory)") from None
    except RepositoryNotFoundError:
        raise UserError(f"hub repository {repo_id!r} not found (or gated: run `hf auth login`)") from None
    except (HfHubHTTPError, OSError) as e:
        raise UserError(f"cannot download {repo_id!r}: {str(e).splitlines()[0]}") from None
