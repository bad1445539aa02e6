"""The one exception type for mistakes a user can fix (a bad setting, missing or unreadable data, a
checkpoint that does not fit). Any layer may raise it; the commands print its message without a
traceback (cli/errors.py). Anything else is a bug and keeps its traceback."""


class UserError(Exception):
    """A problem in the user's input, with a message naming the value and the fix."""
