"""The bundle: one folder per export, written atomically, described by a schema-versioned bundle.json.

The Android and iOS demo apps read bundle.json: its schema is a contract (see tests/test_bundle.py
and the apps' readers). Bump SCHEMA_VERSION on any incompatible change.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

from .errors import UserError, load_json

SCHEMA_VERSION = 1
MANIFEST = "bundle.json"
REQUIRED_KEYS = ("schema_version", "model", "target", "recipe", "files", "generation", "config", "tools", "source")


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def tool_versions() -> dict:
    out = {}
    for pkg in ("mobilellm-export", "torch", "executorch", "torchao", "coremltools", "onnx", "onnxruntime"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


@contextlib.contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield a temp folder beside `final`; on success it replaces `final` in one rename.

    Any exception (including KeyboardInterrupt) removes the temp folder: no half bundle is ever
    visible under the final name, and an existing bundle stays intact until the new one is whole.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".partial", dir=final.parent))
    try:
        yield tmp
        old = None
        if final.exists():
            old = final.with_name(f".{final.name}.old-{os.getpid()}")
            os.rename(final, old)
        os.rename(tmp, final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_manifest(d: Path, *, model: str, source: dict, target: str, recipe: dict, config: dict,
                   artifact_files: list[str], generation: dict, extra: dict | None = None) -> dict:
    files = {f: {"sha256": sha256(d / f), "bytes": (d / f).stat().st_size} for f in artifact_files}
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "model": model,
        "source": source,
        "target": target,
        "recipe": recipe,
        "config": config,
        "files": files,
        "generation": generation,
        "tools": tool_versions(),
        **(extra or {}),
    }
    (d / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return manifest


def read_manifest(d: Path) -> dict:
    p = Path(d) / MANIFEST
    if not p.is_file():
        raise UserError(f"{d} is not a bundle (no {MANIFEST})")
    m = load_json(p)
    missing = [k for k in REQUIRED_KEYS if k not in m]
    if missing:
        raise UserError(f"{p} lacks {missing[0]!r}")
    if m["schema_version"] > SCHEMA_VERSION:
        raise UserError(f"{p} has schema {m['schema_version']}, this tool reads up to {SCHEMA_VERSION}")
    return m


def check_files(d: Path, manifest: dict) -> None:
    """Every listed file exists with its recorded sha256; one clear line otherwise."""
    for name, info in manifest["files"].items():
        p = Path(d) / name
        if not p.is_file():
            raise UserError(f"bundle file {name} is missing")
        if sha256(p) != info["sha256"]:
            raise UserError(f"{name} fails its sha256 check: the bundle was modified or is corrupt")
