"""A run's files on disk: every file is written beside its destination and renamed over it, so a reader
(or a run killed mid-write) never sees half a file, and a link at either name is replaced, never written through;
and the one message for a file system that refuses a write. Standard library only, so vae-report writes its files
without loading torch."""

import contextlib
import errno
import json
import os
import shutil
from pathlib import Path

from ..errors import UserError


def atomic_write(path: Path, write, fsync: bool = False) -> None:
    """write(f) into a temporary file beside `path`, then rename it over `path`. A file system that refuses
    (full, read-only, gone) stops the run with a UserError naming the file and the reason; `path` itself is
    then as it was."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with create(tmp) as f:
            write(f)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:
        raise cannot_write(path, e) from e
    finally:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:  # a read-only file system, where it was never made
            pass


NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)  # where the system has it (not Windows)


def create(path: Path):
    """A new file at `path`, open for writing, made without following a link: whatever already has that name (a
    temporary file a killed process left, a link someone planted) is removed first, never written through."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)  # a link itself, not what it points to
    return os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | NOFOLLOW, 0o666), "wb")


# What to do about a file system that refuses a write, by the system's error number.
_FIXES = {
    errno.ENOSPC: "Free some space",
    errno.EDQUOT: "Free some space (or raise your disk quota)",
    errno.EROFS: "The file system is mounted read-only: remount it read-write (or write elsewhere)",
    errno.EACCES: "Make the folder writable for this user (or write elsewhere)",
    errno.EPERM: "Make the folder writable for this user (or write elsewhere)",
    errno.ENOENT: "The folder is gone (deleted, moved or unmounted): restore it (or write elsewhere)",
}


def cannot_write(path, error: Exception) -> UserError:
    """The message for a file (or folder) that the file system refused to write: the path, the system's
    reason, and what to do about it."""
    path = Path(os.fsdecode(path))
    reason, number = _reason(error, path.parent)
    fix = _FIXES.get(number, "Free some space (or make the folder writable)")
    try:
        where = f"in {path}" if path.is_dir() else path  # a write whose file the system did not name
    except OSError:  # a folder above it that this user cannot enter
        where = path
    return UserError(
        f"could not write {where}: {reason}. Whatever was there before is unchanged. {fix}, then run the "
        "same command again; a training run resumes from its last checkpoint with "
        "ckpt_path=<its run directory>."
    )


def _reason(error: Exception, folder: Path) -> tuple[str, int | None]:
    """The system's reason and its error number. torch.save reports a failed write from its zip writer as a
    RuntimeError ("unexpected pos ..."), which on a full disk means no space."""
    if isinstance(error, OSError):
        return (f"{error.strerror or error} (errno {error.errno})" if error.errno else str(error)), error.errno
    try:
        if shutil.disk_usage(folder).free < 1 << 20:
            return "No space left on device", errno.ENOSPC
    except OSError:
        pass
    return " ".join(str(error).split()), None


def make_folder(path: Path) -> None:
    """mkdir -p, with the file system's refusal as a UserError naming the folder."""
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise cannot_write(e.filename or path, e) from e


def write_json(path: Path, obj: dict) -> None:
    atomic_write(path, lambda f: f.write((json.dumps(obj, indent=2) + "\n").encode()))


def write_tensors(path: Path, obj: dict) -> None:
    import torch  # here: files.py serves vae-report too, which never needs torch

    atomic_write(path, lambda f: torch.save(obj, f))
