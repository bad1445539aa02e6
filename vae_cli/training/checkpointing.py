"""Checkpoint files: Lightning's writer made atomic (files.py), and the shim that reads checkpoints
written by earlier versions."""
from pathlib import Path

import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

from .files import atomic_write, cannot_write, write_json  # noqa: F401 (write_json: the name callers know here)


def write_tensors(path: Path, obj: dict) -> None:
    atomic_write(path, lambda f: torch.save(obj, f))


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, made atomic on the local disk and flushed before the rename, so a
    kill mid-write leaves the previous last.ckpt in place (Lightning's own temporary file may live on
    another file system, where the final move is a copy)."""

    def save_checkpoint(self, checkpoint, path, storage_options=None):
        if "://" in str(path):  # remote storage: keep Lightning's transactional writer
            return super().save_checkpoint(checkpoint, path, storage_options)
        folder = Path(path).parent
        try:  # the checkpoints folder, not its parents: a run directory that has vanished is not made again
            folder.mkdir(exist_ok=True)
        except OSError as e:
            raise cannot_write(folder, e) from e
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
