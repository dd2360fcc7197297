"""The one exception type a user can cause; the CLI turns it into one line and exit code 2."""


class UserError(Exception):
    """Bad input (path, file, architecture, recipe...). The message is shown as-is, on one line."""


def load_json(path) -> dict:
    """Read a JSON file the user supplied; a corrupt one is a UserError naming the file."""
    import json

    try:
        return json.loads(open(path, encoding="utf-8").read())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"corrupt {path}: {e}") from None
