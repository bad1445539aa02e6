"""Why a job failed, read from its train.log: in a sweep's job folders written before error.json, the log is the
only record of it, read through vae_cli/inputs.py like every file. Standard library only, so
vae-report stays instant."""

import re
from pathlib import Path

from ... import inputs
from ...errors import UserError

LOG_BYTES = 1 << 28  # a run's log is read whole: one far larger is not a run's
# A record of Hydra's job log: "[2026-11-25 16:03:10,437][vae_cli][ERROR] - message".
LOG_RECORD = re.compile(r"^\[[^\]]*\]\[[^\]]*\]\[([A-Z]+)\] - (.*)$")


def exception_line(lines: list[str]) -> str | None:
    """The "Type: message" line that ends the last traceback in `lines` (with chained exceptions
    the last traceback is the one that was finally raised)."""
    starts = [i for i, line in enumerate(lines) if line.startswith("Traceback (most recent call last):")]
    if not starts:
        return None
    # Frames and source lines are indented; the exception line is the first one that is not.
    return next((line.strip() for line in lines[starts[-1] + 1 :] if line.strip() and not line[0].isspace()), None)


def error_of(log_file: Path) -> str | None:
    """Why the job failed, from its train.log: the first ERROR record's message (with the exception
    when a traceback follows it, as after log.exception("the run failed")), else the end of a
    traceback anywhere in the file; None when the log records no error."""
    if not log_file.is_file():
        return None
    try:
        lines = inputs.read_text(log_file, "a run's log", limit=LOG_BYTES, errors="replace").splitlines()
    except UserError:
        return None
    for i, line in enumerate(lines):
        record = LOG_RECORD.match(line)
        if record and record.group(1) in ("ERROR", "CRITICAL"):
            # The record goes on until the next record starts; a traceback, if any, is in there.
            end = next((k for k in range(i + 1, len(lines)) if LOG_RECORD.match(lines[k])), len(lines))
            exc = exception_line(lines[i + 1 : end])
            return f"{record.group(2)}: {exc}" if exc else record.group(2)
    return exception_line(lines)
