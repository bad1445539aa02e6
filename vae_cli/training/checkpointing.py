"""A run's files on disk: every file is written beside its destination and renamed over it, so a
reader (or a run killed mid-write) never sees half a file; the run's checkpoint callback; and the
shim that reads checkpoints written by earlier versions."""
import json
import os
from pathlib import Path

import pytorch_lightning as pl
import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO


def atomic_write(path: Path, write, fsync: bool = False) -> None:
    """write(f) into a temporary file beside `path`, then rename it over `path`."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


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


class RunCheckpoint(pl.callbacks.ModelCheckpoint):
    """Lightning's ModelCheckpoint, except that a run resumed from a directory that was moved or
    copied (to another disk, or from the CPU box to the GPU box) keeps its best-so-far. Lightning
    forgets the best score when the checkpoint folder's path changes and then writes best-v1.ckpt
    beside a stale best.ckpt, which `vae-eval ckpt_path=<run>` would score. When the remembered
    files are in the new folder, their paths are read as the same files there."""

    @property
    def state_key(self) -> str:
        # Lightning's own key, so runs checkpointed by ModelCheckpoint resume here and the reverse.
        return "ModelCheckpoint" + super().state_key[len(type(self).__qualname__):]

    def load_state_dict(self, state_dict):
        old = state_dict.get("dirpath")
        if old and self.dirpath and old != self.dirpath:
            def moved(path):
                return str(Path(self.dirpath) / Path(path).name) if path and Path(path).parent == Path(old) else path

            best = moved(state_dict.get("best_model_path"))
            if best and Path(best).is_file():  # the run's checkpoints came along; else Lightning's behaviour
                state_dict = {**state_dict, "dirpath": self.dirpath, "best_model_path": best,
                              "kth_best_model_path": moved(state_dict.get("kth_best_model_path")),
                              "last_model_path": moved(state_dict.get("last_model_path")),
                              "best_k_models": {moved(k): v for k, v in state_dict.get("best_k_models", {}).items()}}
        super().load_state_dict(state_dict)


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
    for key in ("state_dict", "current_model_state"):  # the raw weights beside a weight average
        if key in ckpt:
            ckpt[key] = {f"vae.{name}": value for name, value in ckpt[key].items()}
    return ckpt
