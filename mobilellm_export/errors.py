"""The one exception type a user can cause; the CLI turns it into one line and exit code 2."""


class UserError(Exception):
    """Bad input (path, file, architecture, recipe...). The message is shown as-is, on one line."""
