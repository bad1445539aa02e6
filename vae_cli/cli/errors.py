"""The one error boundary of the four commands.

A user's mistake (UserError, or a config Hydra cannot compose) is one line, `<tool>: error: <message>`, exit
status 2. Anything else is a bug in vae-cli: one line saying so, the exception's summary and where its traceback
was written (the run's log file, or a file in the system's temporary folder when there is no run yet), exit
status 1. No traceback reaches the terminal unless HYDRA_FULL_ERROR=1 (Hydra's own switch for it)."""

import atexit
import contextlib
import datetime
import gc
import logging
import os
import sys
import tempfile
import threading
import traceback
from typing import NoReturn

from ..errors import UserError
from .secrets import mask

log = logging.getLogger("vae_cli")
FULL_ERROR = "HYDRA_FULL_ERROR"
_asked_for_tracebacks: list[bool] = []  # the user's HYDRA_FULL_ERROR, while command() has set it for Hydra


def tracebacks_shown() -> bool:
    """Whether the user asked for tracebacks (HYDRA_FULL_ERROR=1)."""
    return _asked_for_tracebacks[-1] if _asked_for_tracebacks else os.environ.get(FULL_ERROR) == "1"


def _log_files() -> list[logging.FileHandler]:
    return [h for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler)]


def _to_log_files(record: logging.LogRecord) -> None:
    # The run's log file keeps why it ended; the terminal gets one line.
    for handler in _log_files():
        handler.handle(record)


def _in_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def own_message(error: UserError) -> str:
    """The error's message; for one raised in a DataLoader worker process, which PyTorch raises again in this
    process with the worker's traceback in front of the message, the message alone."""
    text = str(error)
    if "in DataLoader worker process" in text and "UserError: " in text:
        return text.rsplit("UserError: ", 1)[1].strip()
    return text


def _quiet_writer_threads(args) -> None:
    # TensorBoard writes event files from a thread of its own; a write the file system refuses ends that thread
    # with a traceback printed, and the same error is raised again in the main thread at its next logging call,
    # where it stops the run with one message.
    if isinstance(args.exc_value, OSError) and type(args.thread).__module__.startswith("tensorboard."):
        return
    threading.__excepthook__(args)


def exit_without_collecting() -> None:
    """At exit, Python's last garbage collection walks every object torch and Lightning created, which a process
    about to end need not do: the objects are frozen out of it instead (at exit, after the other exit handlers,
    which run last-registered first), and go with the process."""
    atexit.register(gc.freeze)


def fail(tool: str, message: str) -> NoReturn:
    """`<tool>: error: <message>` on stderr, exit status 2."""
    print(f"{tool}: error: {mask(message)}", file=sys.stderr)
    raise SystemExit(2)


def _summary(error: BaseException) -> str:
    text = " ".join(str(error).split())
    text = text if len(text) <= 300 else text[:300] + " ..."
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _traceback_file(tool: str, error: BaseException) -> str:
    """Where a bug's traceback goes: the run's log files, or (no run yet) a new file in the temporary folder."""
    logs = _log_files()
    if logs:
        _to_log_files(
            log.makeRecord(
                log.name, logging.ERROR, __file__, 0, "a bug in vae-cli", (), (type(error), error, error.__traceback__)
            )
        )
        return " and ".join(h.baseFilename for h in logs)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    text = mask(f"{tool} {' '.join(sys.argv[1:])}\n\n" + "".join(traceback.format_exception(error)))
    try:  # a new file of its own (mkstemp: made exclusively, never through a link someone left there)
        fd, path = tempfile.mkstemp(prefix=f"{tool}-bug-{stamp}-", suffix=".txt")
        with os.fdopen(fd, "w") as f:
            f.write(text)
    except OSError as e:
        return f"nowhere ({tempfile.gettempdir()}: {e.strerror}); run again with HYDRA_FULL_ERROR=1 to see it"
    return path


def bug(tool: str, error: BaseException) -> NoReturn:
    """One line for an error that is vae-cli's own: its summary and where its traceback is; exit status 1."""
    where = getattr(error, "traceback_in", None) or _traceback_file(tool, error)
    print(
        f"{tool}: bug: this is a bug in vae-cli, not a mistake in your command ({mask(_summary(error))}). "
        f"The traceback is in {where}; please report it with that file.",
        file=sys.stderr,
    )
    raise SystemExit(1)


def _config_errors() -> tuple[type, ...]:
    """What Hydra raises for a command line or config it cannot compose: the user's to fix."""
    import yaml
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    return HydraException, OmegaConfBaseException, yaml.YAMLError


def config_message(error: BaseException) -> str:
    """Hydra's message for a config it cannot compose, on one line, with the OmegaConf error behind it."""
    parts = [" ".join(str(e).split()) for e in (error, error.__cause__) if e is not None and str(e).strip()]
    text = ": ".join(dict.fromkeys(parts)) or type(error).__name__
    return text + ("" if text.endswith(".") else ".") + " Run the command with --cfg job to see the composed config."


@contextlib.contextmanager
def command(tool: str):
    """The error boundary around a command's whole process (see the module's docstring). Hydra is told to raise
    what it catches (it prints its own account otherwise), so that it ends here."""
    full = os.environ.get(FULL_ERROR) == "1"
    os.environ[FULL_ERROR] = "1"
    _asked_for_tracebacks.append(full)
    try:
        yield
    except UserError as e:
        if getattr(e, "shown", False):  # a job of a sweep said it already
            raise SystemExit(2) from None
        fail(tool, own_message(e))
    except Exception as e:
        if full:
            raise
        if isinstance(e, _config_errors()):
            fail(tool, config_message(e))
        bug(tool, e)
    finally:
        _asked_for_tracebacks.pop()
        if not full:
            os.environ.pop(FULL_ERROR, None)


def run_or_exit(tool: str, body, *args, job: bool = True):
    """body(*args), for an entry point: a UserError (a mistake the user can fix) becomes one line
    `<tool>: error: <message>` on stderr and exit status 2, with no traceback; any other exception, a bug, one
    line saying so (exit status 1), its traceback in the run's log file. Inside a sweep (vae-train --multirun) a
    job's error is said at once and raised on, for the task function to return as the job's failure. job=False:
    the body is the sweep itself, whose error is raised on for the command's boundary to say once the sweep's table
    is printed."""
    # A log file on a full or read-only disk loses its lines without a traceback each; what stops the run
    # reaches stderr as its one message.
    logging.raiseExceptions = False
    threading.excepthook = _quiet_writer_threads
    try:
        return body(*args)
    except UserError as e:
        message = own_message(e)
        _to_log_files(log.makeRecord(log.name, logging.ERROR, __file__, 0, "%s", (message,), None))
        if not job:
            raise
        if "hydra" in sys.modules and _in_multirun():
            print(f"{tool}: error: {mask(message)}", file=sys.stderr)
            e.shown = True
            raise
        fail(tool, message)
    except Exception as e:
        if tracebacks_shown():
            _to_log_files(log.makeRecord(log.name, logging.ERROR, __file__, 0, "the run failed", (), sys.exc_info()))
            raise
        e.traceback_in = _traceback_file(tool, e)
        if not job or "hydra" in sys.modules and _in_multirun():
            raise
        bug(tool, e)
