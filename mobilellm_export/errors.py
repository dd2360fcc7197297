"""The one exception type a user can cause; the CLI turns it into one line and exit code 2."""


class UserError(Exception):
    """Bad input (path, file, architecture, recipe...). The message is shown as-is, on one line."""


# What a file we are handed may cost us to read. The text caps are far above any real input (Botchan
# is 0.4 MB; a 32K-token context is about 0.15 MB of text); JSON nests only a few levels in any file
# we read (bundle.json, configs, reports, conversations).
TEXT_CAP = 64 << 20
JSON_CAP = 64 << 20
JSON_DEPTH = 64


def read_bytes(path, what: str, cap: int) -> bytes:
    """The bytes of a *regular* file of at most `cap` bytes, or one UserError line. A FIFO would hang
    the read, a character device (/dev/zero) would never end: both are refused before opening."""
    import os
    import stat

    try:
        st = os.stat(path)
    except OSError as e:
        raise UserError(f"cannot read {what} {path}: {e.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise UserError(f"{what} {path} is not a regular file")
    if st.st_size > cap:
        raise UserError(f"{what} {path} is {st.st_size / 1e6:.1f} MB, over the {cap >> 20} MB this tool reads")
    try:
        with open(path, "rb") as f:
            data = f.read(cap + 1)  # the file may have grown since stat
    except OSError as e:
        raise UserError(f"cannot read {what} {path}: {e.strerror}") from None
    if len(data) > cap:
        raise UserError(f"{what} {path} is over the {cap >> 20} MB this tool reads")
    return data


def read_text(path, what: str, cap: int = TEXT_CAP) -> str:
    """A UTF-8 text file, bounded as `read_bytes`."""
    try:
        return read_bytes(path, what, cap).decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{what} {path} is not UTF-8 text ({e.reason} at byte {e.start})") from None


def _depth(s: str) -> int:
    """Deepest [ / { nesting of a JSON text, outside strings (so json.loads cannot recurse away)."""
    import re

    depth = deepest = 0
    for m in re.finditer(r'"(?:[^"\\]|\\.)*"|[\[\]{}]', s):
        ch = m.group()
        if ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest


def parse_json(text: str, where: str, depth: int = JSON_DEPTH):
    """json.loads with a nesting bound; anything malformed is a UserError naming `where`."""
    import json

    if _depth(text) > depth:
        raise UserError(f"corrupt {where}: JSON nested deeper than {depth} levels")
    try:
        return json.loads(text)
    except (json.JSONDecodeError, RecursionError) as e:
        raise UserError(f"corrupt {where}: {e}") from None


def load_json(path, what: str = "JSON file", cap: int = JSON_CAP) -> dict:
    """Read a JSON object from a file the user (or a bundle) supplied: a regular file of bounded size
    and nesting; anything else is a UserError naming the file."""
    try:
        text = read_bytes(path, what, cap).decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"corrupt {path}: {e}") from None
    value = parse_json(text, str(path))
    if not isinstance(value, dict):
        raise UserError(f"{path}: expected a JSON object, found a JSON {type(value).__name__}")
    return value


def same_json(a, b) -> bool:
    """Equal as JSON values, types included: Python's True == 1 and 1 == 1.0, but an app parsing
    bundle.json or genai_config.json may read `true` where it wants a number. (-0.0 is 0.0.)"""
    def canon(v):
        if isinstance(v, dict):
            return ("object", {k: canon(x) for k, x in v.items()})
        if isinstance(v, (list, tuple)):
            return ("array", [canon(x) for x in v])
        return (type(v).__name__, v)

    return canon(a) == canon(b)


# OSError numbers that are the user's to fix (a path, permissions, a full disk), not our bugs.
_USER_ERRNOS = {"ENOSPC", "EACCES", "EROFS", "ENOENT", "ENOTDIR", "EISDIR", "EEXIST", "ENOTEMPTY", "ENAMETOOLONG",
                "ELOOP", "EDQUOT", "EFBIG", "EPERM"}


def user_message(e: BaseException) -> str | None:
    """The one line a user sees for an error they can fix, or None for a bug (shown in full)."""
    import errno

    if isinstance(e, UserError):
        return str(e).splitlines()[0] if str(e) else type(e).__name__
    if type(e).__name__ == "PanicException":  # a Rust panic in a native library (pyo3), on input it was handed
        return f"native code panicked on this input: {str(e).splitlines()[0] if str(e) else '?'}"
    if isinstance(e, OSError) and errno.errorcode.get(e.errno) in _USER_ERRNOS:
        where = f" while writing {e.filename}" if e.filename else ""
        if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            return f"disk full{where}; nothing was written"
        return f"{e.strerror}: {e.filename}" if e.filename else (e.strerror or str(e))
    return None
