"""A run's files on disk: every file is written beside its destination and renamed over it, so a
reader (or a run killed mid-write) never sees half a file; and the shim that reads checkpoints
written by earlier versions."""
import json
import os
import shutil
from pathlib import Path

import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

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


def write_json(path: Path, obj: dict) -> None:
    atomic_write(path, lambda f: f.write((json.dumps(obj, indent=2) + "\n").encode()))


def write_tensors(path: Path, obj: dict) -> None:
    atomic_write(path, lambda f: torch.save(obj, f))


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, made atomic on the local disk and flushed before the rename, so a
    kill mid-write leaves the previous last.ckpt in place (Lightning's own temporary file may live on
    another file system, where the final move is a copy)."""

    def save_checkpoint(self, checkpoint, path, storage_options=None):
        if "://" in str(path):  # remote storage: keep Lightning's transactional writer
            return super().save_checkpoint(checkpoint, path, storage_options)
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        atomic_write(Path(path), lambda f: torch.save(checkpoint, f), fsync=True)


# Checkpoints written before the VAE moved into its own module had flat hyperparameters and the
# networks' parameters on the LightningModule itself (encoder.*, not vae.encoder.*).
_GROUPS = {"model": ("data_shape", "arch", "latent_dim", "hidden_dims", "activation", "likelihood", "gaussian_std"),
           "objective": ("beta", "warmup_steps", "warmup_epochs", "free_bits", "kl_estimator"),
           "optim": ("lr", "lr_decay")}


def upgrade_checkpoint(ckpt: dict) -> dict:
    """An earlier version's checkpoint in today's layout, in place: the same weights, today's names."""
    hp = ckpt.get("hyper_parameters")
    if not isinstance(hp, dict) or "model" in hp:
        return ckpt
    ckpt["hyper_parameters"] = {group: {k: hp[k] for k in keys if k in hp} for group, keys in _GROUPS.items()}
    ckpt["hyper_parameters"]["model"]["_target_"] = "vae_cli.core.vae.VAE"  # the only network there was
    for key in ("state_dict", "current_model_state"):  # the raw weights beside a weight average
        if key in ckpt:
            ckpt[key] = {f"vae.{name}": value for name, value in ckpt[key].items()}
    return ckpt
