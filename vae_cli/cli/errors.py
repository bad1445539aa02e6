"""The one error exit of the four commands."""
import logging
import sys

from ..errors import UserError

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


def run_or_exit(tool: str, body, *args):
    """body(*args), for an entry point: a UserError (a mistake the user can fix) becomes one line
    `<tool>: error: <message>` on stderr and exit status 2, with no traceback. Inside a sweep
    (vae-train --multirun) it is raised on instead, so Hydra records the failed job, runs the others
    and fails the sweep at the end. Either way the run's log file records it, and any other
    exception, a bug, with its traceback."""
    try:
        return body(*args)
    except UserError as e:
        message = own_message(e)
        _to_log_files(log.makeRecord(log.name, logging.ERROR, __file__, 0, "%s", (message,), None))
        print(f"{tool}: error: {message}", file=sys.stderr)
        if "hydra" in sys.modules and _in_multirun():
            raise
        raise SystemExit(2) from None
    except Exception:
        _to_log_files(log.makeRecord(log.name, logging.ERROR, __file__, 0, "the run failed", (), sys.exc_info()))
        raise
