"""Tokenizer: HF `tokenizer.json` through `tokenizers`, plus the chat template through jinja2.

Only `tokenizer.json` (+ `tokenizer_config.json`) is used: it is also what the ExecuTorch LLM
runner and the demo apps read, so the bundle ships exactly what was verified here.

Pre-normalization. ExecuTorch's C++ tokenizer (pytorch_tokenizers 1.5.0) applies some normalizers
differently from `tokenizers`: its NFC turns "Ç" into "C" (Qwen3), and it matches added tokens
before Gemma 3's Replace(" " -> "▁") where `tokenizers` matches after it. So a bundle's
tokenizer.json leaves those simple steps to the caller: when the normalizer is NFC, a Replace of a
literal string, or a Sequence of only those (`movable_steps`), the bundle's copy has `normalizer: null`
and the steps, in order, are applied to the text before tokenizing (`pre_normalize`). Then
C++(bundle file, pre(text)) == tokenizers(bundle file, pre(text)) == tokenizers(original, text),
except where NFC composes a combining mark into the last character of a special-token string
typed in the text ("<|im_end|>" + U+0338 -> "<|im_end|≯"; `tokenizers` normalizes around added
tokens). The steps travel in the bundle's tokenizer_config.json (CONFIG_KEY: the copy this
wrapper reads and `verify` checks) and in bundle.json `generation.prompt_format.pre_normalize`
(the copy the apps read). Any other normalizer stays in tokenizer.json untouched.
"""

from __future__ import annotations

import json
import os
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

from tokenizers import Tokenizer as HFTokenizer

from mobilellm_export import sandbox
from mobilellm_export.memory import on_release
from mobilellm_export.errors import UserError, load_json
from mobilellm_export.presets import SYSTEM_PROMPTS

_TOKEN_KEYS = ("bos_token", "eos_token", "pad_token", "unk_token")
_FLAG_KEYS = ("add_bos_token", "add_eos_token")
CONFIG_KEY = "mobilellm_pre_normalize"  # tokenizer_config.json: the steps moved out of tokenizer.json


# ---- pre-normalization (mirrored by android_demo/core and ios_demo) --------------------------------

# A tokenizer's pre-tokenizer regexes are code from whoever published it: one took 11 s per 1,000
# characters, and onig's retry limit ends another in a Rust panic. So every encode runs in a
# sandbox child, with a deadline in proportion to the text (real tokenizers do >1 MB/s here).
ENCODE_S = 5.0
ENCODE_CHARS_PER_S = 10_000
ENCODE_MB = 1024


_WORKERS: dict[tuple, tuple[HFTokenizer, sandbox.Worker]] = {}  # key -> (tokenizer, its child); at most 4


def _worker(tok: HFTokenizer, file_key: tuple | None) -> sandbox.Worker:
    """The sandbox child encoding with `tok` (forked once: it holds the loaded tokenizer). Loads of
    one unchanged tokenizer.json (`file_key`) share a child; any other tokenizer has its own."""
    key = file_key or ("object", id(tok))
    hit = _WORKERS.pop(key, None)
    if hit is None or (file_key is None and hit[0] is not tok):
        def handle(req):
            e = tok.encode(req["text"], add_special_tokens=req["special"])
            return [e.ids, e.offsets] if req["offsets"] else e.ids

        hit = (tok, sandbox.Worker(handle, memory_mb=ENCODE_MB, what="the tokenizer"))
        while len(_WORKERS) >= 4:  # the least recently used goes (a dict keeps insertion order)
            _WORKERS.pop(next(iter(_WORKERS)))[1].close()
    _WORKERS[key] = hit  # the reference to tok keeps its id from being reused meanwhile
    return hit[1]


def close_workers() -> None:
    """End every encode child. A child shares its parent's pages as they were at the fork, so once
    the parent frees a model the child alone keeps it resident; the next encode forks a fresh one
    (50-150 ms), from the smaller parent."""
    while _WORKERS:
        _WORKERS.popitem()[1][1].close()


on_release(close_workers)


def file_key(path: Path) -> tuple:
    """A tokenizer.json's identity while it is unchanged: two loads of it encode alike."""
    st = os.stat(path)
    return ("file", os.path.realpath(path), st.st_ino, st.st_size, st.st_mtime_ns)


def encode_bounded(tok: HFTokenizer, text: str, add_special_tokens: bool = False, offsets: bool = False,
                   file_key: tuple | None = None):
    """tok.encode(text)'s ids (and, with offsets, [ids, offsets]) from a sandbox child: one
    UserError line when the tokenizer panics, passes its time budget or its memory budget."""
    budget = ENCODE_S + len(text) / ENCODE_CHARS_PER_S
    try:
        return _worker(tok, file_key).call({"text": text, "special": add_special_tokens, "offsets": offsets},
                                           seconds=budget)
    except UserError as e:
        raise UserError(str(e).replace("the tokenizer", f"the tokenizer (on {len(text):,} characters)", 1)) from None


def pre_normalize(steps: list[dict], text: str) -> str:
    """`text` with the steps applied in order: NFC, or Replace (every non-overlapping occurrence of
    the literal `pattern`, left to right, by `content`: Python's str.replace)."""
    for s in steps:
        if s["type"] == "NFC":
            text = unicodedata.normalize("NFC", text)
        elif s["type"] == "Replace":
            text = text.replace(s["pattern"], s["content"])
        else:
            raise UserError(f"pre_normalize: unknown step {s['type']!r}")
    return text


def check_steps(steps, where: str) -> list[dict]:
    """A pre_normalize list as read from a file: [{type: NFC} | {type: Replace, pattern, content}]."""
    if not isinstance(steps, list):
        raise UserError(f"{where}: expected a list of pre-normalization steps")
    for i, s in enumerate(steps):
        ok = isinstance(s, dict) and (
            s == {"type": "NFC"} or (s.get("type") == "Replace" and set(s) == {"type", "pattern", "content"}
                                     and isinstance(s["pattern"], str) and s["pattern"]
                                     and isinstance(s["content"], str)))
        if not ok:
            raise UserError(f"{where}[{i}] = {json.dumps(s, ensure_ascii=False)[:80]}: expected {{\"type\": \"NFC\"}} "
                            "or {\"type\": \"Replace\", \"pattern\": non-empty string, \"content\": string}")
    return steps


def movable_steps(normalizer: dict | None) -> list[dict] | None:
    """The steps of a tokenizer.json normalizer when it is made only of PRE_STEPS (Replace of a
    String pattern); None for any other normalizer (Prepend, Lowercase, NFKC, a Regex Replace, ...)."""
    if normalizer is None:
        return []
    t = normalizer.get("type")
    if t == "NFC":
        return [{"type": "NFC"}]
    pattern = normalizer.get("pattern")
    if t == "Replace" and isinstance(pattern, dict) and set(pattern) == {"String"} and pattern["String"]:
        return [{"type": "Replace", "pattern": pattern["String"], "content": normalizer["content"]}]
    if t == "Sequence":
        out = []
        for n in normalizer.get("normalizers", []):
            part = movable_steps(n)
            if part is None:
                return None
            out += part
        return out
    return None


def check_tokenizer_config(cfg: dict, where: str) -> dict:
    """The fields this tool reads, with their types checked: a token is a string, an AddedToken
    object with a string `content`, or null; `add_bos_token` is a boolean or null; the chat
    template is a string or a list of {name, template} strings."""
    for key in _TOKEN_KEYS:
        v = cfg.get(key)
        if v is not None and not isinstance(v, str) and not (isinstance(v, dict) and isinstance(v.get("content"), str)):
            raise UserError(f"{where}: {key} = {repr(v)[:80]}: expected a token string, an AddedToken object or null")
    v = cfg.get("add_bos_token")
    if v is not None and not isinstance(v, bool):
        raise UserError(f"{where}: add_bos_token = {v!r}: expected true, false or null")
    if CONFIG_KEY in cfg:
        check_steps(cfg[CONFIG_KEY], f"{where}: {CONFIG_KEY}")
    t = cfg.get("chat_template")
    if t is not None and not isinstance(t, str) and not (
            isinstance(t, list) and all(isinstance(x, dict) and isinstance(x.get("name"), str)
                                        and isinstance(x.get("template"), str) for x in t)):
        raise UserError(f"{where}: chat_template: expected a string or a list of {{name, template}} objects")
    return cfg


def _token_str(v) -> str | None:
    if isinstance(v, dict):  # AddedToken serialisation
        return v.get("content")
    return v


@dataclass
class Tokenizer:
    tok: HFTokenizer
    config: dict = field(default_factory=dict)  # tokenizer_config.json contents (CONFIG_KEY taken out)
    # Steps applied to text before `tok`: a bundle's (its tokenizer.json has them removed); empty for
    # a source tokenizer, whose tokenizer.json still normalizes by itself. encode() applies them.
    pre_normalize: list[dict] = field(default_factory=list)
    file_key: tuple | None = None  # the tokenizer.json it was read from, unchanged (see file_key())

    # ---- loading ---------------------------------------------------------------------------
    @classmethod
    def from_dir(cls, path: str | Path) -> Tokenizer:
        path = Path(path)
        tj = path / "tokenizer.json" if path.is_dir() else path
        if not tj.is_file():
            raise UserError(f"no tokenizer.json in {path}")
        try:
            tok = HFTokenizer.from_file(str(tj))
        except Exception as e:  # tokenizers raises a bare Exception on bad JSON
            raise UserError(f"cannot read tokenizer {tj}: {str(e).splitlines()[0]}") from None
        cfg = {}
        cfg_path = tj.parent / "tokenizer_config.json"
        if cfg_path.is_file():
            cfg = check_tokenizer_config(load_json(cfg_path), str(cfg_path))
        pre = cfg.pop(CONFIG_KEY, [])
        jinja = tj.parent / "chat_template.jinja"
        if "chat_template" not in cfg and jinja.is_file():
            try:
                cfg["chat_template"] = jinja.read_text(encoding="utf-8")
            except UnicodeDecodeError:
                raise UserError(f"{jinja}: not UTF-8 text") from None
        return cls(tok, cfg, pre, file_key(tj))

    @classmethod
    def from_bundle(cls, d: str | Path, manifest: dict) -> Tokenizer:
        """A bundle's tokenizer, its pre-normalization (from tokenizer_config.json) checked against
        the copy the apps read (bundle.json); `verify` reports a disagreement as a metadata check."""
        tok = cls.from_dir(Path(d) / manifest["tokenizer"]["file"])
        steps = (manifest["generation"].get("prompt_format") or {}).get("pre_normalize", [])
        if steps != tok.pre_normalize:
            raise UserError(f"bundle.json's prompt_format.pre_normalize {steps} differs from "
                            f"{manifest['tokenizer']['config']}'s {tok.pre_normalize}: re-export the bundle")
        return tok

    # ---- pre-normalization ---------------------------------------------------------------------
    def runner_text(self, text: str) -> str:
        """What a runtime reading this tokenizer's tokenizer.json as it is (ExecuTorch's C++
        tokenizer, ORT GenAI, the apps) must be given for `text`."""
        return pre_normalize(self.pre_normalize, text)

    def _moved(self) -> list[dict]:
        """The steps of tokenizer.json's normalizer that a bundle moves out of it, or []."""
        n = self.tok.normalizer
        steps = movable_steps(json.loads(n.__getstate__()) if n is not None else None)
        if not steps:
            return []
        added = self.tok.get_added_tokens_decoder().values()
        # Added tokens are matched on the text as given (normalized=false) or on the normalized text
        # with their content normalized too: exact only when no content changes under the steps,
        # and when none strips or bounds on whitespace a Replace may have turned into something else.
        if any(pre_normalize(steps, t.content) != t.content for t in added):
            return []
        if any(s["type"] == "Replace" for s in steps) and any(t.lstrip or t.rstrip or t.single_word for t in added):
            return []
        return steps

    def bundle_pre_normalize(self) -> list[dict]:
        """The steps a bundle of this tokenizer records: its own, then those moved out of its
        tokenizer.json's normalizer (what `save` writes)."""
        return self.pre_normalize + self._moved()

    def save(self, out_dir: Path) -> list[str]:
        """tokenizer.json (its normalizer removed when `_moved` takes it) and tokenizer_config.json
        (with the steps under CONFIG_KEY)."""
        moved = self._moved()
        normalizer = self.tok.normalizer
        try:
            if moved:
                self.tok.normalizer = None
            self.tok.save(str(out_dir / "tokenizer.json"))
        except Exception as e:  # tokenizers raises a bare Exception ("No space left on device (os error 28)")
            import errno

            msg = str(e)
            code = next((c for c in (errno.ENOSPC, errno.EACCES, errno.EROFS) if f"os error {c})" in msg), None)
            if code is not None:
                raise OSError(code, os.strerror(code), str(out_dir / "tokenizer.json")) from None
            raise
        finally:
            if moved:
                self.tok.normalizer = normalizer
        steps = self.pre_normalize + moved
        config = {**self.config, **({CONFIG_KEY: steps} if steps else {})}
        (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False))
        return ["tokenizer.json", "tokenizer_config.json"]

    # ---- identity ----------------------------------------------------------------------------
    def identity(self) -> dict:
        """What makes two tokenizers one model's, as a bundle stores it: the model (vocabulary,
        merges, its settings), the added tokens, every stage of the pipeline (the normalizer as a
        bundle splits it, `bundle_pre_normalize`) and tokenizer_config.json (special-token strings,
        the BOS/EOS flags, the chat template: what the BOS policy and prompt format derive from).
        Large parts are a count and a sha256 prefix, so a difference is named without printing 100K
        tokens.
        A source's tokenizer and the bundle written from it give the same value (`verify`)."""
        import hashlib

        state = json.loads(self.tok.to_str())
        if self._moved():  # a bundle's tokenizer.json carries these steps in its config instead
            state["normalizer"] = None

        def digest(v) -> str:
            return hashlib.sha256(json.dumps(v, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:16]

        model = dict(state.get("model") or {})
        vocab, merges = model.pop("vocab", None), model.pop("merges", None)
        if merges is not None:  # "a b" (older tokenizers) and ["a", "b"] are one merge
            merges = [m.split(" ", 1) if isinstance(m, str) else m for m in merges]
        return {
            "model": model.get("type"),
            "vocabulary": {"tokens": len(vocab or ()), "sha256": digest(vocab)},
            "merges": None if merges is None else {"count": len(merges), "sha256": digest(merges)},
            "model settings": digest(model),
            "added tokens": {"count": len(state.get("added_tokens") or ()), "sha256": digest(state.get("added_tokens"))},
            "special tokens": {k: _token_str(self.config.get(k)) for k in _TOKEN_KEYS},
            "BOS/EOS flags": {k: self.config.get(k) for k in _FLAG_KEYS},
            "chat template": digest(self.config.get("chat_template")),
            "other tokenizer_config settings": digest({k: v for k, v in self.config.items()
                                                       if k not in (*_TOKEN_KEYS, *_FLAG_KEYS, "chat_template")}),
            "pre-normalization": self.bundle_pre_normalize(),
            **{stage: digest(state.get(key)) for stage, key in (
                ("normalizer", "normalizer"), ("pre-tokenizer", "pre_tokenizer"),
                ("post-processor", "post_processor"), ("decoder", "decoder"))},
        }

    # ---- ids -------------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return self.tok.get_vocab_size(with_added_tokens=True)

    def ids_beyond(self, n: int) -> list[tuple[int, str, bool]]:
        """(id, content, special) for every id >= n: added tokens past a model's embedding table."""
        added = self.tok.get_added_tokens_decoder()
        return [(i, added[i].content if i in added else self.tok.id_to_token(i), i in added and added[i].special)
                for i in range(n, self.vocab_size)]

    def check_ids(self, ids: list[int], n: int) -> list[int]:
        """UserError if a prompt holds a token the model's table lacks (see ids_beyond)."""
        bad = next((i for i in ids if i >= n), None)
        if bad is not None:
            raise UserError(f"the prompt contains token {bad} ({self.tok.id_to_token(bad)!r}), "
                            f"beyond the model's {n}-entry vocabulary")
        return ids

    def token_id(self, key: str) -> int | None:
        s = _token_str(self.config.get(key))
        return self.tok.token_to_id(s) if s else None

    @property
    def bos_id(self) -> int | None:
        return self.token_id("bos_token")

    @property
    def eos_id(self) -> int | None:
        return self.token_id("eos_token")

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """The ids of `text` (pre-normalized first: never pass `runner_text` output here).
        add_special_tokens lets tokenizer.json's post-processor add BOS. Prompts use `prompt_ids`,
        which applies the bundle's BOS policy instead."""
        return encode_bounded(self.tok, self.runner_text(text), add_special_tokens, file_key=self.file_key)

    # ---- BOS policy ------------------------------------------------------------------------
    def bos_policy(self, fallback_id: int | None = None) -> dict:
        """Does a prompt start with BOS? Decided once, recorded in bundle.json, applied everywhere.

        In order: tokenizer_config.json's `add_bos_token`; else whether tokenizer.json's
        post-processor adds BOS (what Python `tokenizers` does; ExecuTorch's C++ tokenizer runs
        that post-processor only when asked for BOS); else whether the chat template starts its
        prompts with `bos_token` (Llama 3's does while its post-processor does not).
        """
        text = _token_str(self.config.get("bos_token"))
        bos = self.tok.token_to_id(text) if text else None
        if bos is None and fallback_id is not None and self.tok.id_to_token(fallback_id) is not None:
            bos, text = fallback_id, self.tok.id_to_token(fallback_id)
        template = self.chat_template or ""
        renders = bool(text) and ("bos_token" in template or text in template)
        policy = {"id": bos, "text": text if bos is not None else None, "template_renders_bos": renders}
        flag = self.config.get("add_bos_token")
        if bos is None:
            return {**policy, "add": False, "reason": "the tokenizer has no BOS token"}
        if isinstance(flag, bool):
            return {**policy, "add": flag, "reason": f"tokenizer_config.json add_bos_token = {str(flag).lower()}"}
        if encode_bounded(self.tok, "a", add_special_tokens=True, file_key=self.file_key)[:1] == [bos]:
            return {**policy, "add": True, "reason": "tokenizer.json's post-processor adds BOS"}
        if renders:
            return {**policy, "add": True, "reason": "the chat template starts prompts with bos_token"}
        return {**policy, "add": False, "reason": "no add_bos_token, post-processor or chat template asks for BOS"}

    @staticmethod
    def with_bos(text: str, policy: dict) -> str:
        """The prompt text with BOS in front where the policy wants one and it is not there yet:
        what every runtime is given (none is asked to add BOS itself)."""
        if policy["add"] and not text.startswith(policy["text"]):
            return policy["text"] + text
        return text

    def prompt_ids(self, text: str, policy: dict) -> list[int]:
        return self.encode(self.with_bos(text, policy), add_special_tokens=False)

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=False)

    # ---- chat ------------------------------------------------------------------------------
    @property
    def chat_template(self) -> str | None:
        t = self.config.get("chat_template")
        if isinstance(t, list):  # named templates: take "default"
            t = next((x["template"] for x in t if x.get("name") == "default"), None)
        return t

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True, **context) -> str:
        """`context`: the template's own switches, e.g. Qwen3's enable_thinking."""
        from mobilellm_export.text.chat_template import render

        template = self.chat_template
        if not template:
            raise UserError("this tokenizer has no chat template; use a plain prompt (--raw)")
        return render(template, messages=messages, add_generation_prompt=add_generation_prompt,
                      bos_token=_token_str(self.config.get("bos_token")) or "",
                      eos_token=_token_str(self.config.get("eos_token")) or "", **context)

    def prompt_text(self, prompt: str, policy: dict, system: str | None = None, raw: bool = False,
                    system_prompts: dict | None = None) -> str:
        """What a user's prompt becomes before tokenization: the chat template applied (unless raw
        or there is none), then BOS by the policy."""
        if not prompt:
            raise UserError("the prompt is empty")
        if raw or not self.chat_template:
            text = prompt
        else:
            prompts = SYSTEM_PROMPTS if system_prompts is None else system_prompts
            msgs = ([{"role": "system", "content": prompts.get(system, system)}] if system else [])
            text = self.apply_chat_template(msgs + [{"role": "user", "content": prompt}])
        return self.with_bos(text, policy)
