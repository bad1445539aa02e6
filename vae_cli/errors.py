"""The one exception type for mistakes a user can fix (bad config values, missing data).

The entry points catch it and print its message without a traceback; anything else
is a bug and keeps its traceback.
"""


class UserError(Exception):
    """A problem in the user's input, with a message naming the value and the fix."""


def exit_on_user_error(tool: str, run, cfg) -> None:
    """Run an entry point's body: a UserError becomes one line on stderr and exit status 2."""
    import sys

    try:
        run(cfg)
    except UserError as e:
        print(f"{tool}: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
