"""The one exception type a user can cause; the CLI turns it into one line and exit code 2."""


class UserError(Exception):
    """Bad input (path, file, architecture, recipe...). The message is shown as-is, on one line."""


def load_json(path) -> dict:
    """Read a JSON object from a file the user supplied; anything else is a UserError naming the file."""
    import json

    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"corrupt {path}: {e}") from None
    except RecursionError:
        raise UserError(f"corrupt {path}: nested too deeply") from None
    if not isinstance(value, dict):
        raise UserError(f"{path}: expected a JSON object, found a JSON {type(value).__name__}")
    return value


# OSError numbers that are the user's to fix (a path, permissions, a full disk), not our bugs.
_USER_ERRNOS = {"ENOSPC", "EACCES", "EROFS", "ENOENT", "ENOTDIR", "EISDIR", "EEXIST", "ENOTEMPTY", "ENAMETOOLONG",
                "ELOOP", "EDQUOT", "EFBIG", "EPERM"}


def user_message(e: BaseException) -> str | None:
    """The one line a user sees for an error they can fix, or None for a bug (shown in full)."""
    import errno

    if isinstance(e, UserError):
        return str(e).splitlines()[0] if str(e) else type(e).__name__
    if isinstance(e, OSError) and errno.errorcode.get(e.errno) in _USER_ERRNOS:
        where = f" while writing {e.filename}" if e.filename else ""
        if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            return f"disk full{where}; nothing was written"
        return f"{e.strerror}: {e.filename}" if e.filename else (e.strerror or str(e))
    return None
