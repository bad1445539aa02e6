"""The run directory: where a run writes (a new one, or the one a resumed checkpoint belongs to), its
append-only record of how each invocation made it, the lock that keeps a second vae-train out while one
writes it, why it failed, the command that resumes it, and what a file system that refuses it (full, read-only,
gone) tells the user. The resolvers and the Hydra callback here are named in configs/train.yaml."""

import contextlib
import errno
import json
import logging
import os
import shlex
import shutil
import socket
import traceback
from datetime import datetime
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from ..errors import UserError
from ..training import signals
from ..writers.files import cannot_write, create
from . import run_files
from .errors import fail
from .loading import LATEST, latest
from .secrets import mask, mask_folder

log = logging.getLogger("vae_cli")


def _resume_dir(ckpt_path, default: str) -> str:
    """The run directory: where a resumed checkpoint's run lives (<run>/checkpoints/x.ckpt, <run>, or the
    newest run for `latest`), so the run continues in place; otherwise a new one."""
    if ckpt_path is None:
        return default
    if str(ckpt_path) == LATEST:
        ckpt_path = latest() or default
    p = Path(str(ckpt_path)).expanduser()
    if p.is_dir():
        return str(p)
    if p.parent.name == "checkpoints":
        return str(p.parent.parent)
    return default


OmegaConf.register_new_resolver("vae_resume_dir", _resume_dir, replace=True)
RECORD = ".hydra"  # Hydra's record of the first invocation in a run directory


def _record_subdir(run_dir: str) -> str:
    """Where this invocation's record goes: .hydra for the first in a run directory, else (a resume, or a
    second run pointed at the same directory) .hydra/<date>_<time>, so nothing already written is rewritten.
    Creates that folder: Hydra opens the log file in it before it writes the config."""
    if not (Path(run_dir) / RECORD / "config.yaml").exists():
        return RECORD
    later = Path(RECORD) / datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    (Path(run_dir) / later).mkdir(parents=True, exist_ok=True)
    return str(later)


def _log_file(record_subdir: str | None, job_name: str) -> str:
    # None: Lightning's DDP processes after the first, which keep no record of their own.
    return f"{job_name}.log" if record_subdir in (RECORD, None, "None") else f"{record_subdir}/{job_name}.log"


def _run_name(run_dir: str) -> str:
    """The run's name in trackers that list runs by name (MLflow, W&B): its directory below outputs/, as in
    `tensorboard --logdir outputs` (e.g. 2026-11-25/16-03-10, multirun/2026-11-25/16-03-10/3)."""
    outputs = Path("outputs").resolve()
    path = Path(run_dir).resolve()
    return path.relative_to(outputs).as_posix() if path.is_relative_to(outputs) else str(path)


# Cached: evaluated once per invocation, however often Hydra reads the keys.
OmegaConf.register_new_resolver("vae_record_subdir", _record_subdir, use_cache=True, replace=True)
OmegaConf.register_new_resolver("vae_log_file", _log_file, use_cache=True, replace=True)
OmegaConf.register_new_resolver("vae_run_name", _run_name, replace=True)


def forget_refused_record() -> None:
    """A later invocation refused before it trained (a resume that does not fit, say) leaves the run
    directory as it found it: its record folder and log are removed."""
    hydra = HydraConfig.get()
    if hydra.output_subdir in (None, RECORD):
        return
    record = Path(hydra.runtime.output_dir) / hydra.output_subdir
    for handler in list(logging.getLogger().handlers):
        if isinstance(handler, logging.FileHandler) and Path(handler.baseFilename).parent == record:
            logging.getLogger().removeHandler(handler)
            handler.close()
    shutil.rmtree(record, ignore_errors=True)


def record_failure(run_dir: Path, error: Exception) -> None:
    """Write error.json in the run directory: the exception's type and message, the traceback of a bug (not of
    a UserError, a message for the user), the invocation's overrides and the time. Not for an invocation that
    was refused and withdrew its record (forget_refused_record): that one leaves the directory as it was."""
    from ..writers.files import write_json
    from .errors import own_message

    hydra = HydraConfig.get()
    if hydra.output_subdir is None or not (run_dir / hydra.output_subdir).is_dir():
        return  # a refused resume, or a DDP process after the first
    kind = type(error)
    user = isinstance(error, UserError)
    # A full disk, say: the error itself still reaches the user and the log.
    with contextlib.suppress(OSError, UserError):
        write_json(
            run_dir / run_files.ERROR,
            {
                "type": kind.__qualname__
                if kind.__module__ == "builtins"
                else f"{kind.__module__}.{kind.__qualname__}",
                "message": mask(own_message(error) if user else str(error)),
                "traceback": None if user else mask("".join(traceback.format_exception(error))),
                "overrides": [mask(o) for o in hydra.overrides.task],
                "time": datetime.now().astimezone().isoformat(timespec="seconds"),
            },
        )


def record_stop(cfg: DictConfig, run_dir: Path, stop) -> None:
    """A run a signal stopped: requeue its SLURM job when asked to (SIGUSR1, requeue=true, a batch job), and say
    in interrupted.json and in one line of the log where it stopped, what holds its state, whether SLURM runs it
    again, and otherwise the command that resumes it. Once, from the first process of a data-parallel run."""
    from ..writers.files import write_json
    from . import slurm
    from .loading import newest_state

    # SLURM answers the requeue below with a SIGTERM to every task, which must not cut the record (or the lock's
    # release after it) short: on a busy machine it arrives before the log line, which was then never written.
    signals.finished()
    if not first_process():
        return
    requeued, why = False, None
    if slurm.batch_job() is not None and slurm.requeued_from_outside():
        requeued = True  # scontrol requeue, or a preemption that requeues
    elif slurm.wanted(stop.signum, cfg.requeue):
        requeued, why = slurm.requeue()  # after Lightning has shut down: SLURM then ends the job with a SIGTERM
    ckpt = stop.checkpoint or newest_state(run_dir)
    command = resume_command(ckpt)
    lost = _lost(stop, ckpt)
    write_json(
        run_dir / run_files.STOP,
        {
            "signal": stop.name,
            "stopped": stop.where,
            "epoch": stop.epoch,
            "global_step": stop.global_step,
            "checkpoint": str(ckpt) if ckpt else None,
            "resume": command,
            "requeued": requeued,
            "lost": lost,
        },
    )
    state = (
        f"the exact state is in {stop.checkpoint}"
        if stop.checkpoint
        else f"a later signal ended the stop before it saved: {lost}; the run's state is {ckpt or 'its start'}"
        if stop.abandoned
        else f"nothing new to save; the run's state is {ckpt}"
        if ckpt
        else "nothing was saved"
    )
    if requeued:
        then = (
            f"SLURM has requeued the job: waiting for SLURM to restart it (it holds it {slurm.held_for()}), then "
            "it resumes from there. To resume it yourself instead, cancel the job, then: "
        )
    else:
        then = f"Could not requeue the SLURM job ({why}). Resume with: " if why else "Resume with: "
    log.info("%s: stopped %s; %s. %s%s", stop.name, stop.where, state, then, command)


def _lost(stop, ckpt: Path | None) -> str | None:
    """What an abandoned stop lost: the steps since the state it resumes from."""
    if not stop.abandoned or stop.global_step is None:
        return None
    from .loading import saved_step

    since = saved_step(ckpt) if ckpt else 0
    if since is None or since >= stop.global_step:
        return None
    return f"steps {since + 1} to {stop.global_step} of training (epoch {stop.epoch}), which no checkpoint holds"


def resume_command(ckpt: Path | None) -> str:
    """The command that continues this run from `ckpt`: this one's overrides, with ckpt_path= the checkpoint; with
    no checkpoint (stopped before it saved any), the same command again, in the same run directory."""
    hydra = HydraConfig.get()
    task = hydra.overrides.task
    if any(o.startswith("search.trial=") for o in task):  # a trial of hparams_search=optuna
        return (
            "the search's own command (vae-train --multirun hparams_search=optuna ...), which runs this trial's "
            "settings again as a new trial"
        )
    keep = [o for o in task if not o.startswith(("ckpt_path=", "hydra.run.dir="))]
    where = f"ckpt_path={shlex.quote(str(ckpt))}" if ckpt else f"hydra.run.dir={shlex.quote(hydra.runtime.output_dir)}"
    return mask(" ".join(["vae-train", where, *map(shlex.quote, keep)]))


LOCK = ".vae-train.lock"  # in a run directory while a vae-train writes it: who (process id, host, start time)
NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)  # where the system has it (not Windows)


def first_process() -> bool:
    """False in the processes after the first of a multi-process (data-parallel) run, which share its directory."""
    return all(os.environ.get(k, "0") == "0" for k in ("LOCAL_RANK", "RANK", "SLURM_PROCID"))


def claim(run_dir: Path) -> Path | None:
    """Take the run directory for this process, or refuse when a live vae-train is writing it. None in the
    processes after the first of a multi-process run, which share the first one's directory.

    The lock is made only where there is none (O_EXCL), and never through a link (O_NOFOLLOW). One whose owner is
    gone (ended, or its process id now another process's), or that is not a lock (a link, junk) is replaced."""
    if not first_process():
        return None
    lock = run_dir / LOCK
    for _ in range(3):  # a lock removed as stale may be taken by another process before this one makes its own
        try:
            fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL | NOFOLLOW, 0o644)
            break
        except FileExistsError:
            pass
        except OSError as e:
            raise cannot_write(lock, e) from e
        owner = _owner(lock)
        if owner is not None and _alive(owner):
            raise _held(run_dir, lock, owner)
        if owner is None and lock.is_symlink():
            log.warning("%s is a link, not a lock vae-train made: replaced (what it points to is untouched)", lock)
        try:
            lock.unlink(missing_ok=True)  # a link itself, never what it points to
        except OSError as e:
            raise cannot_write(lock, e) from e
    else:
        raise UserError(
            f"{lock} is made again by another process each time vae-train removes it as stale; stop the "
            f"other vae-train runs in {run_dir}, or train in another directory."
        )
    me = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "start": _start_time(os.getpid()),
        "since": datetime.now().astimezone().isoformat(timespec="seconds"),
        "slurm_job": _slurm_job(),
    }
    try:
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(me) + "\n")
    except OSError as e:
        with contextlib.suppress(OSError):
            lock.unlink()
        raise cannot_write(lock, e) from e
    return lock


def release(lock: Path | None) -> None:
    """Remove this process's lock; one another process has taken meanwhile (this one's judged stale) stays."""
    try:
        if lock is not None and (_owner(lock) or {}).get("pid") == os.getpid():
            lock.unlink()
    except OSError:  # a file system gone read-only keeps it: a lock whose process has ended does not hold
        pass


def _owner(lock: Path) -> dict | None:
    """The process a lock names, {"pid", "host", "start", "since"} (host and start None for an older vae-train's
    lock, which holds the bare process id); None for anything else: a link, a folder, junk."""
    try:  # not through a link; O_NONBLOCK: a FIFO planted there is read as empty, not waited on
        fd = os.open(lock, os.O_RDONLY | NOFOLLOW | getattr(os, "O_NONBLOCK", 0))
        with os.fdopen(fd, "rb") as f:
            owner = json.loads(f.read(4096) or b"")  # None: a FIFO a writer holds open, with nothing to read yet
    except (OSError, ValueError):
        return None
    if type(owner) is int:
        owner = {"pid": owner}
    if not isinstance(owner, dict) or type(owner.get("pid")) is not int or owner["pid"] <= 0:
        return None
    host, start, since, job = (owner.get(k) for k in ("host", "start", "since", "slurm_job"))
    if host is not None and not _text(host):
        return None  # no host vae-train writes: not its lock
    return {
        "pid": owner["pid"],
        "host": host,
        "start": start if type(start) is int else None,
        "since": since if _text(since) else None,
        "slurm_job": job if _text(job) else None,
    }


def _text(value) -> bool:
    """Whether a value read from a lock is short printable text, fit to be quoted in a one-line message."""
    return isinstance(value, str) and 0 < len(value) <= 255 and value.isprintable()


def _start_time(pid: int) -> int | None:
    """When a process started, in clock ticks after boot (field 22 of /proc/PID/stat): with its process id, it names
    one process for as long as the machine runs. None where there is no such process, or no /proc (not Linux)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])  # counted after the command name, which may hold spaces


def _alive(owner: dict) -> bool:
    """Whether the lock's owner may still be writing: on this host, a process with its id and its start time; the
    id alone for a lock without a start time, or where start times cannot be read. On another host it cannot be
    checked, so it holds, unless it is this SLURM job's own: SLURM runs a job once at a time, so that is an earlier
    start of it, ended (a requeued job may start on another node)."""
    if owner["host"] not in (None, socket.gethostname()):
        return owner["slurm_job"] is None or owner["slurm_job"] != _slurm_job()
    if owner["pid"] == os.getpid():
        return False  # an earlier run in this process, or one before it with the same id
    start = _start_time(owner["pid"])
    if start is not None:
        return owner["start"] in (None, start)
    try:  # no /proc (not Linux), a process it does not show (another user's, hidepid), or none at all
        os.kill(owner["pid"], 0)  # signal 0: only whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        pass
    return True


def _slurm_job() -> str | None:
    from . import slurm

    return slurm.batch_job()


def _held(run_dir: Path, lock: Path, owner: dict) -> UserError:
    pid, host = owner["pid"], owner["host"]
    since = f"holding it since {owner['since']}" if owner["since"] else "start time not recorded"
    if host in (None, socket.gethostname()):
        who = f"(process {pid}) on this host ({since})"
        gone = "if that process is gone"
    else:
        who = f"(process {pid}) on host {host} ({since}), which cannot be checked from here"
        gone = f"if that process is gone (check on {host})"
    return UserError(
        f"{run_dir} is being written by another vae-train {who}: its lock file is {lock}. Wait for it to "
        f"end (or stop it), then resume it with ckpt_path={run_dir}; {gone}, delete {lock} first; or "
        "train in another directory."
    )


def outside_fault(error: Exception, run_dir: Path) -> Exception:
    """What to tell the user about an error that ended a run: a run directory that vanished while the run wrote
    it, or a file the file system refused (TensorBoard's event files raise the system's own error), as one
    message; any other error as it is."""
    if not run_dir.is_dir():
        return UserError(
            f"the run directory {run_dir} is gone: it was deleted, moved or unmounted while the run "
            "wrote it, and vae-train stopped without making it again. Restore it (from a backup, or "
            f"mount it again) and resume with ckpt_path={run_dir}, or start a new run."
        )
    if isinstance(error, OSError) and error.errno in _REFUSALS:
        return cannot_write(error.filename or run_dir, error)
    return error


# The file system's refusals: full, over quota, read-only, not permitted, gone, failing.
_REFUSALS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOENT, errno.EIO}


class WritableOutput(Callback):
    """Hydra makes the run (or sweep) directory and writes its record and log file there before vae-train's code
    runs, and reports a refusal with a traceback; so the directory is tried first, and one that cannot be made
    or written stops the command with one message naming it, and exit status 2."""

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        _try_writing(Path(config.hydra.run.dir), "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        _try_writing(Path(config.hydra.sweep.dir), "hydra.sweep.dir")


PROBE_BYTES = 1 << 16  # more than Hydra's record and the first lines of the log


def _try_writing(folder: Path, key: str) -> None:
    try:
        made = [p for p in (folder, *folder.parents) if not p.exists()]  # deepest first
    except OSError as e:  # a name longer than the file system takes, or a folder above it this user cannot enter
        if e.errno != errno.ENAMETOOLONG:
            fail("vae-train", str(cannot_write(folder, e)))
        shown = str(folder) if len(str(folder)) <= 80 else str(folder)[:60] + "..." + str(folder)[-15:]
        fail(
            "vae-train",
            f"{key}={shown!r} cannot be a folder here: {e.strerror}. Choose a shorter path "
            f"(at most {os.pathconf('/', 'PC_NAME_MAX')} characters a name).",
        )
    probe = folder / f".vae-train.{os.getpid()}.probe"  # this process's own: jobs starting together each try
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with create(probe) as f:
            f.write(bytes(PROBE_BYTES))
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        for p in [probe, *made]:  # leave no trace of the attempt
            try:
                p.rmdir() if p.is_dir() else p.unlink(missing_ok=True)
            except OSError:
                break
        fail("vae-train", str(cannot_write(folder, e)))
    probe.unlink()


class Masked(Callback):
    """Hydra's record of a job (.hydra/hydra.yaml lists the overrides, a database URL among them) and of a sweep
    (multirun.yaml, written by the launcher as it starts the jobs), masked once Hydra has written them. The
    configuration in memory keeps the URL: the jobs of a search open the study with it."""

    def on_job_start(self, config: DictConfig, **kwargs) -> None:
        hydra = config.hydra
        if hydra.output_subdir is not None:
            mask_folder(Path(hydra.runtime.output_dir) / hydra.output_subdir)
        if hydra.mode is not None and str(hydra.mode).endswith("MULTIRUN"):
            mask_folder(Path(hydra.sweep.dir))

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        mask_folder(Path(config.hydra.sweep.dir))


def announce(run_dir: Path) -> None:
    """Where the run writes, and the folder to point TensorBoard at (the sweep's, in a sweep)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hydra_cfg = HydraConfig.get()
    where = Path(hydra_cfg.sweep.dir if hydra_cfg.mode == RunMode.MULTIRUN else run_dir)
    curves = "outputs" if where.resolve().is_relative_to(Path("outputs").resolve()) else str(where)
    shown = os.path.relpath(run_dir) if run_dir.resolve().is_relative_to(Path.cwd()) else run_dir
    logging.getLogger("vae_cli").info("run directory: %s   (curves: tensorboard --logdir %s)", shown, curves)
