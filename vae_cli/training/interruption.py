"""A stop signal during training (training/signals.py) ends the run where its exact state can be saved:
- after a step that is not the epoch's last, with the state mid-epoch (Lightning resumes it at the next step);
- after the epoch's last step, its validation or its end-of-epoch work, once the epoch is over: its checkpoints
  written, its means logged, its learning rate stepped. Lightning resumes a state saved after the last step as an
  epoch whose validation and end already ran, so the stop waits for them.
The state goes to checkpoints/interrupted.ckpt (last.ckpt and best.ckpt stay as they are) and the run ends with
training/signals.Interrupted, which the command turns into its record and exit status."""

from pathlib import Path

import torch
from pytorch_lightning.callbacks import Checkpoint

from . import signals


class Interruption(Checkpoint):
    """Lightning's Checkpoint marker puts this callback after the run's own checkpoint callbacks, so that at the end
    of an epoch it saves after they have written theirs (and updated their best score, which the state holds).
    In data-parallel training the processes first agree on the signal (the largest noted: SIGTERM over SIGUSR1
    over SIGINT), each step, so all of them stop at the same step and save one state."""

    def __init__(self, dirpath):
        self.dirpath = Path(dirpath)
        self._saved: signals.Interrupted | None = None  # the stop, once its state is saved at an epoch's end

    def _agreed(self, trainer) -> int | None:
        signum = signals.pending() or 0
        if trainer.world_size > 1:
            signum = int(
                trainer.strategy.reduce(torch.tensor(signum, device=trainer.strategy.root_device), reduce_op="max")
            )
        return signum or None

    def _save(self, trainer, signum: int, epoch_finished: bool) -> signals.Interrupted:
        ckpt = self.dirpath / "interrupted.ckpt"
        trainer.save_checkpoint(ckpt, weights_only=False)  # whole before a later signal can end the stop
        return signals.Interrupted(
            signum, ckpt, trainer.current_epoch + 1, trainer.global_step, epoch_finished, phase=signals.TRAINING
        )

    @staticmethod
    def _progress(trainer):
        return lambda: (trainer.current_epoch + 1, trainer.global_step)

    def on_train_start(self, trainer, pl_module):
        signals.enter(signals.TRAINING, self._progress(trainer))  # over the SIGTERM handler Lightning puts in place

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if batch_idx + 1 >= trainer.num_training_batches:
            return  # the epoch's last step: stop once the epoch is over
        signum = self._agreed(trainer)
        if signum:
            raise self._save(trainer, signum, epoch_finished=False)

    def on_validation_start(self, trainer, pl_module):
        if trainer.state.fn == "fit" and not trainer.sanity_checking:  # not the sanity check, before training
            signals.enter(signals.VALIDATING, self._progress(trainer))

    def on_validation_end(self, trainer, pl_module):
        if signals.phase() == signals.VALIDATING:
            signals.enter(signals.TRAINING, self._progress(trainer))

    def on_test_start(self, trainer, pl_module):
        signals.enter(signals.TESTING)  # nothing to save: a stop noted since training ended acts now

    def on_train_epoch_end(self, trainer, pl_module):
        # Called after the checkpoint callbacks' own (Checkpoint ordering); the loggers get the epoch's
        # means after this, so the stop is raised when the next epoch would start, or training ends.
        signum = self._agreed(trainer)
        if signum:
            self._saved = self._save(trainer, signum, epoch_finished=True)

    def on_train_epoch_start(self, trainer, pl_module):
        if self._saved is not None:
            raise self._saved

    def on_train_end(self, trainer, pl_module):
        if self._saved is not None:
            raise self._saved
        signals.enter(signals.TESTING)  # training is over: what follows is the final test
