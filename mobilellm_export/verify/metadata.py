"""Metadata checks: what the apps read from bundle.json, re-derived from the hashed files.

The manifest is not trusted: an attacker who edits `bundle.json` can recompute any digest in it.
So `verify` derives each value the apps act on from the files whose sha256 it just checked (the
artifact's own metadata through the target, the chat template and BOS policy from
`tokenizer_config.json`, the vocabulary from `tokenizer.json`) and fails when the manifest
disagrees. A numbers-only parity gate misses all of these.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import UserError
from ..tokenizer import Tokenizer


def _check(name: str, manifest_value, derived, source: str) -> dict:
    return {"name": name, "ok": manifest_value == derived, "manifest": manifest_value, "derived": derived,
            "source": source}


def derive(bundle_dir: Path, manifest: dict, target) -> list[dict]:
    d = Path(bundle_dir)
    gen, cfg = manifest["generation"], manifest["config"]
    tok = Tokenizer.from_dir(d / manifest["tokenizer"]["file"])
    out = [
        _check("chat template", gen["chat_template"], tok.chat_template, manifest["tokenizer"]["config"]),
        _check("tokenizer vocabulary", manifest["tokenizer"]["vocab_size"], tok.vocab_size, manifest["tokenizer"]["file"]),
    ]
    policy = tok.bos_policy(cfg.get("bos_token_id"))
    for key in ("id", "text", "add"):
        out.append(_check(f"BOS policy {key}", gen["bos"].get(key), policy[key], manifest["tokenizer"]["config"]))
    beyond = tok.ids_beyond(cfg["vocab_size"])
    out.append({"name": "tokenizer fits the embedding table", "ok": all(special for _, _, special in beyond),
                "manifest": cfg["vocab_size"], "derived": tok.vocab_size, "source": manifest["tokenizer"]["file"]})
    art = target.metadata(d, manifest)
    if art is not None:
        entry = manifest["target"]["entry"]
        out += [
            _check("EOS ids", sorted(gen["eos_ids"]), sorted(art["eos_ids"]), entry),
            _check("max context", gen["max_context"], art["max_context"], entry),
            _check("max sequence length", gen["max_seq_len"], art["max_seq_len"], entry),
            _check("vocabulary size", cfg["vocab_size"], art["vocab_size"], entry),
        ]
    return out


def require(checks: list[dict]) -> None:
    """One line for the first disagreement."""
    bad = next((c for c in checks if not c["ok"]), None)
    if bad is not None:
        raise UserError(f"bundle.json disagrees with {bad['source']} on {bad['name']}: "
                        f"{str(bad['manifest'])[:60]!r} in the manifest, {str(bad['derived'])[:60]!r} in the file")
