"""Tokenizer: HF `tokenizer.json` through `tokenizers`, plus the chat template through jinja2.

Only `tokenizer.json` (+ `tokenizer_config.json`) is used: it is also what the ExecuTorch LLM
runner and the demo apps read, so the bundle ships exactly what was verified here.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from tokenizers import Tokenizer as HFTokenizer

from .errors import UserError, load_json

# MobileLLM-R1 README system prompts (MODEL_FACTS.md).
SYSTEM_PROMPTS = {
    "math": "Please reason step by step, and put your final answer within \\boxed{}.",
    "code": ("You are a helpful and harmless assistant. You should think step-by-step before responding to "
             "the instruction below.\n\nPlease use python programming language only.\n\nYou must use ```python "
             "for just the final solution code block with the following format:\n```python\n# Your code here\n```\n"),
}


_TOKEN_KEYS = ("bos_token", "eos_token", "pad_token", "unk_token")


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
    config: dict = field(default_factory=dict)  # tokenizer_config.json contents

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
        jinja = tj.parent / "chat_template.jinja"
        if "chat_template" not in cfg and jinja.is_file():
            try:
                cfg["chat_template"] = jinja.read_text(encoding="utf-8")
            except UnicodeDecodeError:
                raise UserError(f"{jinja}: not UTF-8 text") from None
        return cls(tok, cfg)

    def save(self, out_dir: Path) -> list[str]:
        try:
            self.tok.save(str(out_dir / "tokenizer.json"))
        except Exception as e:  # tokenizers raises a bare Exception ("No space left on device (os error 28)")
            import errno

            msg = str(e)
            code = next((c for c in (errno.ENOSPC, errno.EACCES, errno.EROFS) if f"os error {c})" in msg), None)
            if code is not None:
                raise OSError(code, os.strerror(code), str(out_dir / "tokenizer.json")) from None
            raise
        (out_dir / "tokenizer_config.json").write_text(json.dumps(self.config, indent=2, ensure_ascii=False))
        return ["tokenizer.json", "tokenizer_config.json"]

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
        """add_special_tokens lets tokenizer.json's post-processor add BOS. Prompts use `prompt_ids`,
        which applies the bundle's BOS policy instead."""
        return self.tok.encode(text, add_special_tokens=add_special_tokens).ids

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
        if self.tok.encode("a", add_special_tokens=True).ids[:1] == [bos]:
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
        from .chat_template import render

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
