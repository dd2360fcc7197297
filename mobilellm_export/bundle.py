"""The bundle: one folder per export, written atomically, described by a schema-versioned bundle.json.

The schema has one owner: `schemas/bundle.schema.json` (JSON Schema), read by `validate()` and
checked by tests/test_bundle.py; the Android and iOS demo apps read the same file. Later changes
extend it there and bump SCHEMA_VERSION.

The manifest is deterministic: the same inputs and tool versions give the same bytes (the export
time lives in report.json). `files` lists every file of the bundle except bundle.json and
report.*, by path relative to the bundle (a folder artifact such as a .mlpackage is listed file
by file).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from functools import lru_cache
from importlib import metadata, resources
from pathlib import Path

from .errors import UserError, load_json

SCHEMA_VERSION = 2
MANIFEST = "bundle.json"
UNLISTED = ("bundle.json", "report.json", "report.md")  # written after the manifest; may change on re-verify


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def tool_versions(packages: Iterable[str]) -> dict:
    out = {}
    for pkg in ("mobilellm-export", "torch", *packages):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


@lru_cache(maxsize=1)
def schema() -> dict:
    return json.loads(resources.files("mobilellm_export").joinpath("schemas/bundle.schema.json").read_text())


def validate(manifest, where: str = MANIFEST) -> None:
    """UserError naming the first field that breaks the schema."""
    import jsonschema

    if not isinstance(manifest, dict):
        raise UserError(f"{where}: expected a JSON object")
    version = manifest.get("schema_version")
    if isinstance(version, int) and not isinstance(version, bool) and version != SCHEMA_VERSION:
        newer = version > SCHEMA_VERSION
        raise UserError(f"{where} has schema {version}; this tool reads schema {SCHEMA_VERSION}"
                        + (" (upgrade mobilellm-export)" if newer else " (re-export the bundle)"))
    errors = sorted(jsonschema.Draft202012Validator(schema()).iter_errors(manifest), key=lambda e: list(e.path))
    if errors:
        e = errors[0]
        field = "/".join(str(p) for p in e.absolute_path) or "(top level)"
        raise UserError(f"{where}: {field}: {e.message.splitlines()[0][:200]}")


@contextlib.contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield a temp folder beside `final`; on success it replaces `final` in one rename.

    Any exception (including KeyboardInterrupt) removes the temp folder: no half bundle is ever
    visible under the final name, and an existing bundle stays intact until the new one is whole.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".partial", dir=final.parent))
    try:
        tmp.chmod(0o755)  # mkdtemp makes 0700; a bundle is an ordinary folder
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


def bundle_files(d: Path) -> list[str]:
    """Every file under `d` (relative, sorted), except the manifest and reports."""
    return sorted(p.relative_to(d).as_posix() for p in Path(d).rglob("*")
                  if p.is_file() and p.relative_to(d).as_posix() not in UNLISTED)


def write_manifest(d: Path, *, model: str, source: dict, target: dict, recipe: dict, config: dict,
                   tokenizer: dict, generation: dict, tools: dict) -> dict:
    """Hash every file in the bundle folder and write bundle.json (validated against the schema)."""
    files = {f: {"sha256": sha256(d / f), "bytes": (d / f).stat().st_size} for f in bundle_files(d)}
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "model": model,
        "source": source,
        "target": target,
        "recipe": recipe,
        "config": config,
        "files": files,
        "tokenizer": tokenizer,
        "generation": generation,
        "tools": tools,
    }
    validate(manifest)
    (d / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


def read_manifest(d: Path) -> dict:
    p = Path(d) / MANIFEST
    if not p.is_file():
        raise UserError(f"{d} is not a bundle (no {MANIFEST})")
    m = load_json(p)
    validate(m, str(p))
    return m


def check_files(d: Path, manifest: dict) -> None:
    """Every listed file exists inside the bundle with its recorded sha256; one clear line otherwise."""
    root = Path(d).resolve()
    for name, info in manifest["files"].items():
        p = Path(d) / name
        if not p.resolve().is_relative_to(root):
            raise UserError(f"bundle file {name} points outside the bundle")
        if not p.is_file():
            raise UserError(f"bundle file {name} is missing")
        if sha256(p) != info["sha256"]:
            raise UserError(f"{name} fails its sha256 check: the bundle was modified or is corrupt")
