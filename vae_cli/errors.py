"""The two exception types of vae-cli. Any layer may raise them.

UserError: a mistake a user can fix (a bad setting, missing or unreadable data, a checkpoint that does not
fit); the commands print its message without a traceback (cli/errors.py).
BadArgument: a constructor's refusal of its own arguments, which names them as {name}; the command that
built the object from its config names them by their config keys instead (cli/checks.py).
Anything else is a bug and keeps its traceback."""


class UserError(Exception):
    """A problem in the user's input, with a message naming the value and the fix."""


class BadArgument(ValueError):
    """A refused argument, its name written {name} in the message: str() shows the bare name, named() the
    name a caller gives it (the config key)."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def named(self, key) -> str:
        """The message with each {name} replaced by key(name)."""
        return self.message.format_map(_Keys(key))

    def __str__(self) -> str:
        return self.named(str)


class _Keys(dict):
    def __init__(self, key):
        super().__init__()
        self.key = key

    def __missing__(self, name: str) -> str:
        return self.key(name)


def _shown(value) -> str:
    text = repr(value)
    text = text if len(text) <= 120 else f"{text[:90]}...{text[-20:]} ({len(text)} characters)"
    return text.replace("{", "{{").replace("}", "}}")


def require(name: str, value, ok: bool, what: str, use: str) -> None:
    """Refuse argument `name` unless ok: "{name}=<value> is not a valid <what>; use <use>." """
    if not ok:
        raise BadArgument(f"{{{name}}}={_shown(value)} is not a valid {what}; use {use}.")


def integer(v, lo: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= lo


def number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def one_of(v, choices) -> bool:
    return not isinstance(v, (bool, list, dict)) and v in choices  # True == 1 in Python
