"""The one exception family the CLI turns into a one-line message instead of a traceback."""


class UserError(Exception):
    """Bad input or environment the user can fix; the message names the file, key or record."""
