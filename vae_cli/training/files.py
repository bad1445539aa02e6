"""Writing a file so that no reader ever sees half of it: written beside its destination, then renamed
over it. Standard library only, so that commands which load no torch (vae-report) write this way too."""
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
        with open(tmp, "wb") as f:
            write(f)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:
        raise UserError(f"could not write {path}: {_why_not_written(e, path.parent)}. Whatever was there before is "
                        "unchanged. Free some space (or make the folder writable), then run the same command "
                        "again; a training run resumes from its last checkpoint with ckpt_path=<its run directory>.") from e
    finally:
        tmp.unlink(missing_ok=True)


def _why_not_written(error: Exception, folder: Path) -> str:
    if isinstance(error, OSError):
        return f"{error.strerror or error} (errno {error.errno})" if error.errno else str(error)
    # torch.save reports a failed write from its zip writer as a RuntimeError ("unexpected pos ...").
    try:
        if shutil.disk_usage(folder).free < 1 << 20:
            return "No space left on device"
    except OSError:
        pass
    return " ".join(str(error).split())
