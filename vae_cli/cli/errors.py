"""The one error exit of the four commands."""
import atexit
import gc
import logging
import sys
import threading
from typing import NoReturn

from ..errors import UserError
from .secrets import mask

log = logging.getLogger("vae_cli")


def _to_log_files(record: logging.LogRecord) -> None:
    # The run's log file keeps why it ended; the terminal gets the one line below, or Python's traceback.
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
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


def run_or_exit(tool: str, body, *args, job: bool = True):
    """body(*args), for an entry point: a UserError (a mistake the user can fix) becomes one line
    `<tool>: error: <message>` on stderr and exit status 2, with no traceback. Inside a sweep
    (vae-train --multirun) it is raised on instead, so Hydra records the failed job, runs the others
    and fails the sweep at the end. Either way the run's log file records it, and any other
    exception, a bug, with its traceback. job=False: the body is the sweep itself, which exits either way."""
    # A log file on a full or read-only disk loses its lines without a traceback each; what stops the run
    # reaches stderr as its one message.
    logging.raiseExceptions = False
    threading.excepthook = _quiet_writer_threads
    try:
        return body(*args)
    except UserError as e:
        message = own_message(e)
        _to_log_files(log.makeRecord(log.name, logging.ERROR, __file__, 0, "%s", (message,), None))
        if job and "hydra" in sys.modules and _in_multirun():
            print(f"{tool}: error: {mask(message)}", file=sys.stderr)
            raise
        fail(tool, message)
    except Exception:
        _to_log_files(log.makeRecord(log.name, logging.ERROR, __file__, 0, "the run failed", (), sys.exc_info()))
        raise
