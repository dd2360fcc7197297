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
import errno
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from functools import lru_cache
from importlib import metadata, resources
from pathlib import Path

from mobilellm_export.errors import UserError, load_json

SCHEMA_VERSION = 3
# Schema 3 dropped recipe.target_thresholds: a runtime's lowering bounds belong to its backend, not
# to the bundle (the bounds a bundle is judged by never come from the bundle). Schema 2 reads the
# same way with that field ignored, so bundles exported before the change still verify.
READABLE = (2, 3)
MANIFEST = "bundle.json"
UNLISTED = ("bundle.json", "report.json", "report.md")  # written after the manifest; may change on re-verify


def unlisted(rel: str) -> bool:
    """The manifest and the reports (report.json/.md, report-*.png, report-positions.json) are not
    hashed: they are written after the manifest and change on every verify."""
    return rel in UNLISTED or ("/" not in rel and rel.startswith("report-"))


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
    if isinstance(version, int) and not isinstance(version, bool) and version not in READABLE:
        newer = version > SCHEMA_VERSION
        raise UserError(f"{where} has schema {version}; this tool reads schemas {READABLE[0]}-{READABLE[-1]}"
                        + (" (upgrade mobilellm-export)" if newer else " (re-export the bundle)"))
    errors = sorted(jsonschema.Draft202012Validator(schema()).iter_errors(manifest), key=lambda e: list(e.path))
    if errors:
        e = errors[0]
        field = "/".join(str(p) for p in e.absolute_path) or "(top level)"
        raise UserError(f"{where}: {field}: {e.message.splitlines()[0][:200]}")


def outside_bundles(path: Path, flag: str) -> None:
    """The tool never writes into a bundle (a written file would fail the next verify's closed-world
    check, and a bundle nested in a bundle is neither): one line when `path` lies in one."""
    path = Path(os.path.abspath(path))
    for p in (path, *path.parents):
        if (p / MANIFEST).is_file():
            raise UserError(f"{flag} {path} is inside the bundle {p}; the tool never writes into a bundle")


def check_writable(out: Path, flag: str = "--out") -> None:
    """Before any work: `flag`'s folder is (or can become) one we can write in, outside every bundle;
    one line otherwise."""
    out = Path(out)
    outside_bundles(out, flag)
    for p in (out, *out.parents):
        if p.exists() and not p.is_dir():
            raise UserError(f"{flag} {out}: {p} is a file, not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test.", dir=out)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise UserError(f"{flag} {out} is not writable: {e.strerror}") from None


_RENAME_EXCHANGE = 2


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd = -100
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):  # old kernel, or a filesystem without it
        return False
    raise OSError(err, os.strerror(err), str(b))


def _remove(p: Path) -> None:
    """A folder with its contents, or a link alone (rmtree refuses links, silently with ignore_errors)."""
    if p.is_symlink():
        p.unlink(missing_ok=True)
    else:
        shutil.rmtree(p, ignore_errors=True)


def _replace(tmp: Path, final: Path) -> None:
    """Put the complete bundle `tmp` under `final`: a single rename, or an atomic exchange with the
    bundle already there (an interrupt can never leave `final` missing); elsewhere rename the old
    one aside, and restore it if the second rename fails."""
    if not final.exists():
        os.rename(tmp, final)
        return
    if _exchange(tmp, final):
        _remove(tmp)  # tmp now holds the old bundle (or the link that stood at `final`)
        return
    old = final.with_name(f".{final.name}.old-{os.getpid()}.partial")
    os.rename(final, old)
    try:
        os.rename(tmp, final)
    except BaseException:
        os.rename(old, final)
        raise
    _remove(old)


def clean_stale(parent: Path) -> list[str]:
    """Remove `.*.partial` folders left in `parent` by exports that died (SIGKILL, power loss).

    A live export holds an exclusive flock on `<folder>.lock` for as long as it writes; only
    folders whose lock can be taken are removed (a PID check would be fooled by PID reuse). A
    folder without a lock file is removed once it is an hour old (its export died between
    creating it and locking it)."""
    import fcntl
    import time

    removed = []
    for d in Path(parent).glob(".*.partial"):
        lock_path = d.with_name(d.name + ".lock")
        if not lock_path.exists():
            if time.time() - d.lstat().st_mtime > 3600:
                _remove(d)
                removed.append(d.name)
            continue
        with open(lock_path, "a") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # a live export
            _remove(d)
            lock_path.unlink(missing_ok=True)
            removed.append(d.name)
    for lock_path in Path(parent).glob(".*.partial.lock"):  # a lock whose folder is gone
        if not lock_path.with_name(lock_path.name[:-5]).exists():
            with open(lock_path, "a") as lock:
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    lock_path.unlink(missing_ok=True)
                except BlockingIOError:
                    pass
    return removed


@contextlib.contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield a temp folder beside `final`; on success it replaces `final` atomically.

    Any exception (KeyboardInterrupt and the SIGTERM/SIGHUP exit included) removes the temp
    folder: no half bundle is ever visible under the final name, and an existing bundle stays
    intact until the new one is whole. The temp folder is flock-ed while it exists, so the next
    export into the same parent can tell a dead one (removed) from a running one (kept).
    """
    import fcntl

    final = Path(final)
    if final.exists() and not final.is_dir():
        raise UserError(f"{final} exists and is not a bundle folder; move it away first")
    final.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(final.parent)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".partial", dir=final.parent))
    lock_path = tmp.with_name(tmp.name + ".lock")
    lock = open(lock_path, "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        tmp.chmod(0o755)  # mkdtemp makes 0700; a bundle is an ordinary folder
        yield tmp
        _replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        lock_path.unlink(missing_ok=True)
        lock.close()


def bundle_files(d: Path) -> list[str]:
    """Every file under `d` (relative, sorted), except the manifest and reports."""
    return sorted(p.relative_to(d).as_posix() for p in Path(d).rglob("*")
                  if p.is_file() and not unlisted(p.relative_to(d).as_posix()))


def write_manifest(d: Path, *, model: str, source: dict, target: dict, recipe: dict, config: dict,
                   tokenizer: dict, generation: dict, tools: dict, quick_check: dict | None = None) -> dict:
    """Hash every file in the bundle folder and write bundle.json (validated against the schema).
    `quick_check`: where the reference logits `verify --quick` reads are (verify/quick.py)."""
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
        **({"quick_check": quick_check} if quick_check else {}),
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
    """The bundle is a closed world, exactly what bundle.json lists: every listed file a regular file
    inside the folder with its size and sha256, the artifact, data file and tokenizer files among
    them, nothing unlisted, and nothing but regular files and folders (no link, FIFO or device: a
    loader that follows one reads outside the bundle, or hangs). One clear line otherwise. (The
    manifest's own values are checked against the files they come from by `verify.metadata`, and
    references *inside* artifacts by each target's `check_references`.)"""
    import stat

    root = Path(d).resolve()  # the bundle path itself may be a link; nothing inside it may be
    for top, dirs, files in os.walk(root, followlinks=False):
        for name in dirs + files:
            p = Path(top) / name
            mode = p.lstat().st_mode
            if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                what = "a link" if stat.S_ISLNK(mode) else "not a regular file"
                raise UserError(f"bundle file {p.relative_to(root).as_posix()} is {what}: a bundle holds only "
                                f"regular files and folders (a link could point outside the bundle)")
    listed = manifest["files"]
    required = [manifest["target"]["entry"], manifest["target"].get("data_file"), manifest["tokenizer"]["file"],
                manifest["tokenizer"]["config"], (manifest.get("quick_check") or {}).get("file")]
    for name in filter(None, required):
        if name not in listed and not any(f.startswith(name.rstrip("/") + "/") for f in listed):
            raise UserError(f"bundle.json does not list {name}, which the bundle needs")
    for name, info in listed.items():
        p = root / name
        if ".." in Path(name).parts or Path(name).is_absolute() or not p.resolve().is_relative_to(root):
            raise UserError(f"bundle file {name} points outside the bundle")
        if not p.is_file():
            raise UserError(f"bundle file {name} is missing")
        if p.stat().st_size != info["bytes"] or sha256(p) != info["sha256"]:
            raise UserError(f"{name} fails its sha256 check: the bundle was modified or is corrupt")
    extra = sorted(set(bundle_files(root)) - set(listed))
    if extra:
        raise UserError(f"the bundle holds {len(extra)} file(s) bundle.json does not list, e.g. {extra[0]}")
