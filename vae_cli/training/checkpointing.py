"""Checkpoint files: Lightning's writer made atomic (files.py); reading earlier versions' checkpoints is compat.py's."""

from pathlib import Path

import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

from ..writers.files import atomic_write, cannot_write
from . import signals


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
        with signals.saving():  # a signal that would end the run waits until the file is whole
            atomic_write(Path(path), lambda f: torch.save(checkpoint, f), fsync=True)
