"""Where a results file came from: the commit, the date, the machine and the tool versions. Every
benchmark writes `provenance` into its JSON, so each number in docs/ can be traced to a run."""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TOOLS = ("torch", "executorch", "torchao", "coremltools", "onnx", "onnxruntime", "onnxruntime-genai", "onnxscript",
         "transformers", "tokenizers", "mobilellm-export")


def _git(*args: str) -> str | None:
    try:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=30,
                              check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def machine() -> dict:
    mem = None
    try:
        mem = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError):
        pass
    return {"platform": platform.platform(), "processor": platform.machine(), "cpu_count": os.cpu_count(),
            "memory_gib": mem, "python": platform.python_version()}


def tools() -> dict:
    out = {}
    for t in TOOLS:
        try:
            out[t] = metadata.version(t)
        except metadata.PackageNotFoundError:
            out[t] = None
    return out


def stamp() -> dict:
    commit = _git("rev-parse", "HEAD")
    changed = (_git("diff", "--name-only", "HEAD") or "").splitlines()  # tracked files, staged or not
    return {"commit": commit, "dirty": bool(changed), "dirty_files": changed,  # which edits, not only whether
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": machine(), "tools": tools()}


def thresholds_in_force(recipes, targets) -> dict:
    """The bounds a gate verdict in a results file was judged under: per recipe, its `[gate]`
    tolerances and, per target, the merged thresholds (recipe, then target). A file that records
    them can be checked against the code (tests/unit/test_results_provenance.py): evidence made
    under other bounds fails that test instead of going stale silently."""
    import dataclasses

    from mobilellm_export.pipeline import thresholds_for
    from mobilellm_export.quant.recipe import load_recipe

    out = {}
    for name in recipes:
        rec = load_recipe(name)
        out[name] = {"gate": dataclasses.asdict(rec.gate),
                     "targets": {t: dataclasses.asdict(thresholds_for(rec, t)) for t in targets}}
    return out
