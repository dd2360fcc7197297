"""Evaluation text: the user's file or the built-in sample (an excerpt of Botchan, public domain)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from mobilellm_export.errors import UserError, read_text

SAMPLE = resources.files("mobilellm_export") / "data" / "sample.txt"


def novel_text(raw: str) -> str:
    """Drop a Project Gutenberg licence header/footer: keep `CHAPTER I` .. before `*** END OF`."""
    lines = raw.splitlines()
    start = next((i for i, ln in enumerate(lines) if ln.strip() == "CHAPTER I"), None)
    if start is None:
        start = next((i + 1 for i, ln in enumerate(lines) if ln.startswith("*** START OF")), 0)
    end = next((i for i, ln in enumerate(lines) if ln.startswith("*** END OF")), len(lines))
    return "\n".join(lines[start:end])


def load_text(path: str | None) -> str:
    return novel_text(read_text(Path(path) if path else SAMPLE, "evaluation text"))


def windows(ids: list[int], n_tokens: int, window: int, bos: int | None = None) -> list[list[int]]:
    """Non-overlapping windows over the first n_tokens ids (each scores len-1 predictions).

    With `bos` (the bundle's BOS policy says prompts start with one), every window starts with
    BOS followed by window-1 text tokens: each window is scored as the model is used.
    """
    ids = ids[:n_tokens]
    if len(ids) < 2:
        raise UserError("evaluation text is too short (fewer than 2 tokens)")
    step = window - (bos is not None)
    head = [bos] if bos is not None else []
    return [head + ids[i:i + step] for i in range(0, len(ids), step) if len(head + ids[i:i + step]) >= 2]
