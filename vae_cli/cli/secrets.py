"""Passwords in URLs (a study's database: postgresql+psycopg2://alice:PASSWORD@host/vae, or
postgresql+psycopg2://alice@host/vae?password=PASSWORD as libpq and SQLAlchemy also read it) are never written or
shown in clear: every message, log line, record and tracker setting passes through `mask`, which hides them as
SQLAlchemy hides a URL's password (alice:***@host; likewise ?password=***), also in a URL percent-encoded inside
another. Hydra writes its own record of a command (.hydra/*.yaml, a sweep's multirun.yaml) before vae-train's code
runs: run_dir.Masked rewrites those files as soon as they exist. Standard library only."""

import logging
import re
from pathlib import Path

from ..writers.files import atomic_write

HIDDEN = "***"
# Characters that close a quote or a bracket around a URL, or end a sentence after one.
_CLOSERS = "'\")]}>.,;:!?"
# A query parameter whose name holds "password" or "passwd" (password=, db_password=, PGPASSWORD=).
_NAME = r"[^=&#\s]*?pass(?:word|wd)[^=&#\s]*"
_ENCODED_NAME = r"(?:[^%=&#\s]|%(?!3d|26|23))*?pass(?:word|wd)(?:[^%=&#\s]|%(?!3d|26|23))*"
_QUERY_PASSWORD = re.compile(
    # ?name=value or &name=value: the value runs to the next & or # or white space. A URL has no end of its own in
    # text, so a quote or bracket right after the value is hidden with it rather than a password's last characters
    # shown (a URL may hold ' and ) unencoded).
    rf"(?P<head>[?&]{_NAME}=)(?P<password>[^&#\s]+)"
    # the same, percent-encoded: %3F or %26, the name, %3D, the value up to %26 or %23
    rf"|(?P<encoded_head>(?:%3f|%26){_ENCODED_NAME}%3d)(?P<encoded_password>(?:[^%&#\s]|%(?!26|23))+)",
    re.IGNORECASE,
)
_USERINFO_PASSWORD = re.compile(
    # scheme://user:password@, read as SQLAlchemy reads it: the user may be empty, the password runs to the first @
    # (SQLAlchemy writes a space in either unencoded)
    r"(?P<head>\b[A-Za-z][A-Za-z0-9+.-]*://[^:/@\r\n]*:)(?P<password>[^@\r\n]+)(?=@)"
    # the same, percent-encoded: %3A%2F%2F, the user, %3A, the password up to %40
    r"|(?P<encoded_head>%3a%2f%2f(?:[^%:/@\s]|%(?!3a|40|2f))*%3a)(?P<encoded_password>(?:[^%@\s]|%(?!40))+)(?=%40)",
    re.IGNORECASE,
)


def _hidden(match: re.Match) -> str:
    head = match["head"] if match["head"] is not None else match["encoded_head"]
    password = match["password"] if match["password"] is not None else match["encoded_password"]
    if password.rstrip(_CLOSERS) == HIDDEN:  # masked before: what follows the *** is the text's, kept as it is
        return match[0]
    return head + HIDDEN


def mask(text: str) -> str:
    """`text` with the password of every URL in it replaced by ***."""
    if "://" not in text and "%3" not in text:  # no URL, plain or percent-encoded: most log lines
        return text
    # Query parameters first: a password there may hold an @, which would otherwise end a userinfo password.
    return _USERINFO_PASSWORD.sub(_hidden, _QUERY_PASSWORD.sub(_hidden, text))


class _MaskedRecord(logging.LogRecord):
    def getMessage(self) -> str:  # noqa: N802 (logging's name)
        return mask(super().getMessage())


def mask_log_lines() -> None:
    """Every log line of every logger (ours, Hydra's, Optuna's, Lightning's) masked as it is formatted."""
    logging.setLogRecordFactory(_MaskedRecord)


def mask_file(path: Path) -> None:
    """Rewrite a text file that holds a URL's password, in place and atomically, with the password hidden."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError):
        return
    masked = mask(text)
    if masked != text:
        atomic_write(path, lambda f: f.write(masked.encode()))


def mask_folder(folder: Path) -> None:
    for path in folder.glob("*.yaml"):
        mask_file(path)
