"""Metadata checks: what the apps read from bundle.json, re-derived from the hashed files.

The manifest is not trusted: an attacker who edits `bundle.json` can recompute any digest in it.
So `verify` derives each value the apps act on from the files whose sha256 it just checked (the
artifact's own metadata through the target, the chat template, BOS policy and pre-normalization
from `tokenizer_config.json` and `tokenizer.json`, the vocabulary from `tokenizer.json`) and fails
when the manifest disagrees. A numbers-only parity gate misses all of these.
"""

from __future__ import annotations

from pathlib import Path

from mobilellm_export.text import prompt_format
from mobilellm_export.errors import UserError, same_json
from mobilellm_export.text.tokenizer import Tokenizer


def _check(name: str, manifest_value, derived, source: str) -> dict:
    return {"name": name, "ok": same_json(manifest_value, derived), "manifest": manifest_value, "derived": derived,
            "source": source}


def derive(bundle_dir: Path, manifest: dict, target) -> list[dict]:
    d = Path(bundle_dir)
    gen, cfg = manifest["generation"], manifest["config"]
    tok = Tokenizer.from_dir(d / manifest["tokenizer"]["file"])
    files = f"{manifest['tokenizer']['config']} and {manifest['tokenizer']['file']}"
    # The steps the apps apply (bundle.json) against the steps tokenizer_config.json records plus any
    # tokenizer.json still holds that ExecuTorch's C++ tokenizer gets wrong (an older export, or a
    # tokenizer.json swapped back for the original): what the runtimes must be given, from the files.
    pre = _check("pre-normalization", prompt_format.steps(gen.get("prompt_format")), tok.bundle_pre_normalize(),
                 files)
    if not pre["ok"]:
        pre["message"] = (f"bundle.json's prompt_format.pre_normalize {pre['manifest']} differs from {pre['derived']}, "
                          f"what {files} need: re-export the bundle")
    out = [
        _check("chat template", gen["chat_template"], tok.chat_template, manifest["tokenizer"]["config"]),
        _check("tokenizer vocabulary", manifest["tokenizer"]["vocab_size"], tok.vocab_size, manifest["tokenizer"]["file"]),
        pre,
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
        # The tokenizer against the artifact itself, not only against bundle.json: a tokenizer from
        # another model stops on an id the artifact does not know, or emits ids past its table.
        eos = tok.eos_id
        out.append({"name": "tokenizer EOS among the artifact's EOS ids", "ok": eos is None or eos in art["eos_ids"],
                    "manifest": sorted(art["eos_ids"]), "derived": eos, "source": manifest["tokenizer"]["config"],
                    "message": f"the tokenizer's EOS id {eos} is not among {entry}'s EOS ids {sorted(art['eos_ids'])}"})
        past = [i for i, _, special in tok.ids_beyond(art["vocab_size"]) if not special]
        out.append({"name": "tokenizer vocabulary fits the artifact's", "ok": not past, "manifest": art["vocab_size"],
                    "derived": tok.vocab_size, "source": manifest["tokenizer"]["file"],
                    "message": f"{manifest['tokenizer']['file']} has {len(past)} ordinary token(s) past {entry}'s "
                               f"{art['vocab_size']}-entry vocabulary"})
    own = target.target_section(d, manifest) if hasattr(target, "target_section") else None
    if own is not None:  # bundle.json's target section, as export writes it for this artifact
        # (its options built `target`: they are what the parity run rebuilds the reference with)
        have = {k: v for k, v in manifest["target"].items() if k != "options"}
        out.append(compared("target", have, {"name": target.name, "runtime": target.runtime, **own}, "this artifact"))
    files = getattr(target, "file_checks", None)  # a Target method; a duck-typed target may lack it
    return out + (files(d, manifest) if files else [])


def compared(key: str, have, want, what: str) -> dict:
    """A check that bundle.json's `key` (`have`) is what an export writes (`want`, derived from
    `what`), compared as JSON values; its message names the first field that differs."""
    row = _check(key, have, want, what)
    if not row["ok"]:
        at = key
        while True:  # down to the first field that differs
            h, w = _at(have, at, key), _at(want, at, key)
            if not (isinstance(h, dict) and isinstance(w, dict)):
                break
            # compared as _check compares (types included): `True` against `1` is a difference
            at += "." + next(str(k) for k in sorted(set(h) | set(w), key=str)
                             if not same_json(h.get(k, ...), w.get(k, ...)))
        row["message"] = (f"bundle.json's {at} is not what the export of {what} writes ({_short(_at(have, at, key))} "
                          f"in bundle.json, {_short(_at(want, at, key))} derived): edited after export, or exported "
                          f"from something else")
    return row


def from_source(manifest: dict, config: dict, generation: dict) -> list[dict]:
    """The model config and every generation setting the apps read (prompt format, BOS policy, stop
    ids, system prompts, sampling defaults), against what an export of the source given on the
    command line, with the bundle's tokenizer, writes: a bundle.json edited after export fails here
    even where its hashes were rewritten to match."""
    what = "the source and the bundle's tokenizer"
    return [compared("config", manifest["config"], config, what)] + [
        compared(f"generation.{k}", manifest["generation"].get(k), v, what) for k, v in generation.items()]


TOKENIZER_CHECK = "tokenizer is the source's"


def tokenizer_is_sources(bundle_tok: Tokenizer, reference: Tokenizer | None, what: str) -> dict:
    """The bundle's tokenizer against the source's own (or `verify --tokenizer`'s), part by part
    (`Tokenizer.identity`). Nothing else sees a tokenizer from another model of the same size: every
    check of the bundle's files agrees with itself, and verify rebuilds its reference with the bundle's
    tokenizer. `reference` None: the source carries none; the check is "not applicable" (`what` says why)."""
    have = bundle_tok.identity()
    if reference is None:
        return {"name": TOKENIZER_CHECK, "ok": True, "status": "skip", "manifest": None, "derived": None,
                "source": "the source", "message": f"{TOKENIZER_CHECK}: not applicable: {what}"}
    want = reference.identity()
    row = {**_check(TOKENIZER_CHECK, _summary(have), _summary(want), what), "ok": same_json(have, want),
           "identity": {"bundle": have, "source": want}}
    if not row["ok"]:
        part = next(k for k in want if not same_json(have.get(k), want[k]))
        row["message"] = (f"the bundle's tokenizer is not {what}: its {part} differ ({_short(have.get(part))} in the "
                          f"bundle, {_short(want[part])} in the source): a tokenizer from another model, or edited "
                          f"after export (an export given --tokenizer is verified with the same --tokenizer)")
    return row


def _summary(identity: dict) -> str:
    m = identity["merges"]
    return (f"{identity['model']}, {identity['vocabulary']['tokens']} tokens"
            f"{'' if m is None else ', ' + str(m['count']) + ' merges'}, {identity['added tokens']['count']} added, "
            f"vocabulary sha256 {identity['vocabulary']['sha256']}")


def _at(value, path: str, root: str):
    for k in path[len(root):].split(".")[1:]:
        value = value.get(k) if isinstance(value, dict) else None
    return value


def _short(v) -> str:
    s = repr(v)
    return s if len(s) <= 40 else s[:37] + "..."


def require(checks: list[dict]) -> None:
    """One line for the first disagreement."""
    bad = next((c for c in checks if not c["ok"]), None)
    if bad is not None and "message" in bad:
        raise UserError(bad["message"])
    if bad is not None:
        raise UserError(f"bundle.json disagrees with {bad['source']} on {bad['name']}: "
                        f"{str(bad['manifest'])[:60]!r} in the manifest, {str(bad['derived'])[:60]!r} in the file")
