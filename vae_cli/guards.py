"""Run guards: stop on a non-finite loss before it reaches a checkpoint, carry the random number
generators' states in checkpoints so a resumed run draws what an uninterrupted one would, and keep
a run's best checkpoint when its directory was moved or copied before resuming."""
from pathlib import Path

import pytorch_lightning as pl
import torch

from .errors import UserError


class NonFiniteLoss(UserError):
    pass


class NonFiniteGuard(pl.Callback):
    """Tracks, on the device and without a host sync per step, whether recon_loss or kl has been
    non-finite and at which step first; looks at the flags every `every_n_steps` steps and always
    before a checkpoint can be written (Lightning runs checkpoint callbacks after this one), and
    then stops the run, naming the term and the step."""

    def __init__(self, every_n_steps: int = 50):
        self.every_n_steps = every_n_steps
        self.first_bad: torch.Tensor | None = None  # per term: first step it was non-finite, or -1

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        terms = pl_module.last_terms  # (recon_loss, kl) of this step, detached
        bad = ~torch.isfinite(terms)
        if self.first_bad is None or self.first_bad.device != bad.device:
            self.first_bad = torch.full_like(bad, -1, dtype=torch.long)
        step = trainer.global_step - 1  # the step just taken
        self.first_bad = torch.where(bad & (self.first_bad < 0), step, self.first_bad)
        if self.every_n_steps > 0 and trainer.global_step % self.every_n_steps == 0:
            self.check(trainer)

    def check(self, trainer) -> None:
        if self.first_bad is None:
            return
        first = self.first_bad.tolist()
        bad = [(s, name) for s, name in zip(first, ("recon_loss", "kl")) if s >= 0]
        if bad:
            step, name = min(bad)
            last = [Path(cb.dirpath) / "last.ckpt" for cb in trainer.checkpoint_callbacks if cb.dirpath]
            ckpt = str(last[0]) if last and last[0].exists() else ""
            raise NonFiniteLoss(
                f"{name} became non-finite at step {step}; the run stopped there. The last good checkpoint "
                f"{'is ' + ckpt if ckpt else 'was not written yet'}. Resume from it (ckpt_path=...) with a lower "
                "optim.lr, gradient clipping (trainer.gradient_clip_val=1.0), or a KL warm-up (objective.warmup_epochs)."
            )

    def on_validation_end(self, trainer, pl_module):
        if not trainer.sanity_checking:
            self.check(trainer)

    def on_train_epoch_end(self, trainer, pl_module):
        self.check(trainer)


class RNGState(pl.Callback):
    """Saves the CPU and CUDA generators with each checkpoint and restores them when training resumes,
    after Lightning's own start-up (which draws numbers), so the noise sequence continues exactly."""

    def __init__(self):
        self._to_restore = None

    def state_dict(self):
        state = {"cpu": torch.get_rng_state()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state_dict):
        self._to_restore = state_dict

    def on_train_start(self, trainer, pl_module):
        if self._to_restore is not None:
            torch.set_rng_state(self._to_restore["cpu"])
            if "cuda" in self._to_restore and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(self._to_restore["cuda"])
            self._to_restore = None


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
