"""Passwords in URLs (a study's database: postgresql+psycopg2://alice:PASSWORD@host/vae) are never written or shown
in clear: every message, log line, record and tracker setting passes through `mask`, which hides them as SQLAlchemy
renders a URL (alice:***@host). Hydra writes its own record of a command (.hydra/*.yaml, a sweep's multirun.yaml)
before vae-train's code runs: run_dir.Masked rewrites those files as soon as they exist. Standard library only."""
import logging
import re
from pathlib import Path

from ..training.files import atomic_write

HIDDEN = "***"
# scheme://user:password@ -- the user may be empty (://:password@), the password holds no @ or white space.
_URL_PASSWORD = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.-]*://[^:/@\s'\"]*:)(?P<password>[^@\s'\"]+)(?=@)")


def mask(text: str) -> str:
    """`text` with the password of every URL in it replaced by ***."""
    return _URL_PASSWORD.sub(lambda m: m["head"] + HIDDEN, text) if "://" in text else text


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
