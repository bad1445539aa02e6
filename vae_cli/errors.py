"""The one exception type for mistakes a user can fix (bad config values, missing data).

The entry points catch it and print its message without a traceback; anything else
is a bug and keeps its traceback.
"""


class UserError(Exception):
    """A problem in the user's input, with a message naming the value and the fix."""
