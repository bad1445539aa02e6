"""The callbacks of a run, in one place: diagnostics for TensorBoard (image grids, the KL per latent
dimension, the importance-weighted NLL on the validation set, the test set's latent means in the
projector), guards (a non-finite loss stops the run before it reaches a checkpoint; the random
generators travel in checkpoints), checkpointing, and the weight average.

The diagnostics read data through the datamodule's data (head() and eval_batches()) and write through the
run's TensorBoard logger. The class names are keys of their state in checkpoints: renaming one
loses that state when an older run resumes."""

import contextlib
import logging
import math
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import TQDMProgressBar, WeightAveraging
from pytorch_lightning.loggers import TensorBoardLogger
from pytorch_lightning.trainer.states import TrainerFn
from torch.optim.swa_utils import get_ema_multi_avg_fn

from ..compat import average_model
from ..core.elbo import kl_analytic
from ..core.metrics import MONITOR
from ..core.scoring import ACTIVE_UNIT_THRESHOLD, score
from ..errors import UserError, number, require
from ..writers import figures, images, projector

log = logging.getLogger("vae_cli")


def _tensorboard(trainer: pl.Trainer):
    for lg in trainer.loggers:
        if isinstance(lg, TensorBoardLogger):
            return lg.experiment
    return None


def _own_random_stream(pl_module):
    """Random draws for diagnostics from a fork of the generators, which are restored after: whether and how
    often the diagnostics run never changes the noise that training draws."""
    return torch.random.fork_rng(devices=[pl_module.device] if pl_module.device.type == "cuda" else [])


def _due(trainer: pl.Trainer, every_n_epochs: int) -> bool:
    return (
        not trainer.sanity_checking
        and every_n_epochs > 0
        and trainer.is_global_zero
        and (trainer.current_epoch + 1) % every_n_epochs == 0
    )


class ImageGrids(pl.Callback):
    """Every `every_n_epochs` and at the end of training: reconstructions of validation images and prior
    samples under IMAGES, and the KL of each latent dimension as a histogram and as sorted bars (an image,
    drawn when matplotlib is installed)."""

    def __init__(self, every_n_epochs: int = 10, n: int = 64):
        self.every_n_epochs, self.n = every_n_epochs, n
        self._written_at: int | None = None  # the step of the last grids written
        self._said_no_matplotlib = False

    def on_validation_epoch_end(self, trainer, pl_module):
        if _due(trainer, self.every_n_epochs):
            self._write(trainer, pl_module)

    def _write(self, trainer, pl_module):
        tb = _tensorboard(trainer)
        if tb is None:
            return
        vae, step = pl_module.vae, trainer.global_step
        self._written_at = step
        x = trainer.datamodule.data.head("val", self.n)[0].to(pl_module.device)
        was_training = vae.training
        vae.eval()
        with _own_random_stream(pl_module):
            tb.add_image("val/reconstructions", images.reconstructions(vae, x), step)
            tb.add_image("samples/prior_mean", images.prior_samples(vae, self.n), step)
        with torch.no_grad():
            x = trainer.datamodule.data.head("val", 2000)[0].to(pl_module.device)
            mu, logvar = vae.encode(x)
            kl = kl_analytic(mu, logvar).mean(0)
        # One value per latent dimension: how many dimensions carry how much information, and in the bars which.
        tb.add_histogram("val/kl_per_dim", kl, step)
        self._kl_bars(tb, kl.tolist(), mu.var(0).tolist(), len(x), step)
        vae.train(was_training)

    def _kl_bars(self, tb, kl: list[float], mu_var: list[float], n: int, step: int) -> None:
        fig = figures.kl_per_dim_figure(
            kl, mu_var, ACTIVE_UNIT_THRESHOLD, f"KL per latent dimension ({n} validation images)"
        )
        if fig is None:
            if not self._said_no_matplotlib:
                log.info(figures.not_installed("TensorBoard's val/kl_per_dim_sorted"))
                self._said_no_matplotlib = True
            return
        data, height, width = figures.rgba(fig)
        rgb = torch.frombuffer(bytearray(data), dtype=torch.uint8).view(height, width, 4)[..., :3]
        tb.add_image("val/kl_per_dim_sorted", rgb, step, dataformats="HWC")

    def on_fit_end(self, trainer, pl_module):
        # Once more with the final weights (the average, when one is kept), whatever the epoch count.
        if trainer.is_global_zero and trainer.global_step != self._written_at:
            self._write(trainer, pl_module)


class ImportanceWeightedNLL(pl.Callback):
    """val/nll_iw: the k-sample importance-weighted estimate of -log p(x) on the validation set every
    `every_n_epochs` (off when iw_samples = 0: it costs k decoder passes per example)."""

    def __init__(self, iw_samples: int = 0, every_n_epochs: int = 10, iw_batch: int = 50_000):
        self.iw_samples, self.every_n_epochs, self.iw_batch = iw_samples, every_n_epochs, iw_batch

    def on_validation_epoch_end(self, trainer, pl_module):
        if self.iw_samples < 1 or trainer.sanity_checking or (trainer.current_epoch + 1) % self.every_n_epochs:
            return
        with _own_random_stream(pl_module):
            log_px = score(
                pl_module.vae,
                trainer.datamodule.data.eval_batches("val"),
                self.iw_samples,
                self.iw_batch,
                pl_module.device,
            ).log_px
        pl_module.log("val/nll_iw", -log_px.mean(), on_epoch=True, sync_dist=True)


class LatentProjector(pl.Callback):
    """After testing: the test set's posterior means in TensorBoard's embedding projector, labelled
    by class, with each image as its thumbnail."""

    def __init__(self, max_points: int = 2_000):
        self.max_points = max_points

    def on_test_end(self, trainer, pl_module):
        tb = _tensorboard(trainer)
        if tb is None or not trainer.is_global_zero or self.max_points < 1:
            return
        xs, ys, mus = [], [], []
        with torch.no_grad():
            for x, y in trainer.datamodule.data.eval_batches("test"):
                x, y = x[: self.max_points - sum(map(len, xs))], y[: self.max_points - sum(map(len, xs))]
                mus.append(pl_module.vae.encode(x.to(pl_module.device))[0].cpu())
                xs.append(x.cpu())
                ys.append(y.cpu())
                if sum(map(len, xs)) >= self.max_points:
                    break
        x, y, mu = torch.cat(xs), torch.cat(ys), torch.cat(mus)
        projector.write(tb.get_logdir(), "test/posterior_mean", trainer.global_step, mu, y.tolist(), x[:, :3])


# What writes to TensorBoard alone (images, histograms, the projector): left out of a run without a TensorBoard logger.
TENSORBOARD_ONLY = (ImageGrids, LatentProjector)


class EpochLines(pl.Callback):
    """What the run optimises, one plain line per epoch in the log: the running epoch means of the loss and the
    ELBO's terms (read from the module's sums on the device), the last validation ELBO, and the time the run has
    left. Where there is no bar to show them: output that is not a terminal (a batch job, nohup, a pipe), or
    trainer.enable_progress_bar=false."""

    SHOWN = ("loss", "recon_loss", "kl", "elbo", "iwae")

    def __init__(self):
        self._start: tuple[float, int] | None = None  # (time, global step) when this invocation began training

    def on_train_start(self, trainer, pl_module):
        self._start = (time.monotonic(), trainer.global_step)

    @staticmethod
    def of(trainer) -> str:
        return f"/{trainer.max_epochs}" if trainer.max_epochs and trainer.max_epochs > 0 else ""

    def _time_left(self, trainer) -> timedelta | None:
        """From this invocation's pace: the steps left to max_steps or max_epochs, capped by max_time."""
        started, first_step = self._start or (time.monotonic(), trainer.global_step)
        done, elapsed = trainer.global_step - first_step, time.monotonic() - started
        ends = [trainer.max_steps] if trainer.max_steps and trainer.max_steps > 0 else []
        if trainer.max_epochs is not None and trainer.max_epochs >= 0:
            ends.append(trainer.max_epochs * trainer.num_training_batches)
        if done <= 0 or not ends or not math.isfinite(min(ends)):
            return None
        left = elapsed / done * max(0, min(ends) - trainer.global_step)
        timer = next((cb for cb in trainer.callbacks if isinstance(cb, pl.callbacks.Timer)), None)
        if timer is not None and timer.time_remaining() is not None:
            left = min(left, max(0.0, timer.time_remaining()))  # negative once the limit has passed
        return timedelta(seconds=round(left))

    def status(self, trainer, pl_module) -> dict[str, str]:
        running = pl_module.epoch_means("train")
        shown = {k: f"{running[k]:.2f}" for k in self.SHOWN if k in running}
        val = trainer.callback_metrics.get(MONITOR)
        if val is not None:
            shown[MONITOR] = f"{float(val):.2f}"
        left = self._time_left(trainer)
        if left is not None:
            shown["left"] = str(left)
        return shown

    def on_train_epoch_end(self, trainer, pl_module):
        items = "  ".join(f"{k} {v}" for k, v in self.status(trainer, pl_module).items())
        log.info("epoch %d%s  step %d  %s", trainer.current_epoch + 1, self.of(trainer), trainer.global_step, items)


class ProgressBar(TQDMProgressBar):
    """Lightning's bar, showing EpochLines' status (read when the bar refreshes, every refresh_rate steps, not
    every step). When the output is not a terminal, EpochLines' one line per epoch instead, in the log too."""

    def __init__(self, refresh_rate: int = 10, lines: bool | None = None):
        super().__init__(refresh_rate=refresh_rate)
        self.lines = not sys.stdout.isatty() if lines is None else lines
        if self.lines:
            self.disable()
        self.epoch_lines = EpochLines()

    def on_train_start(self, trainer, pl_module):
        super().on_train_start(trainer, pl_module)
        self.epoch_lines.on_train_start(trainer, pl_module)

    def on_train_epoch_start(self, trainer, pl_module):
        super().on_train_epoch_start(trainer, pl_module)
        self.train_progress_bar.set_description(f"Epoch {trainer.current_epoch + 1}{EpochLines.of(trainer)}")

    def get_metrics(self, trainer, pl_module):
        return self.epoch_lines.status(trainer, pl_module)

    def on_train_epoch_end(self, trainer, pl_module):
        if self.lines:
            self.epoch_lines.on_train_epoch_end(trainer, pl_module)
        super().on_train_epoch_end(trainer, pl_module)


class NonFiniteGuard(pl.Callback):
    """Keeps each step's logged metrics on the device, without a host sync per step (one copy into a window of
    `every_n_steps` rows); looks at the window when it is full and always before a checkpoint can be written
    (Lightning runs checkpoint callbacks after this one), and stops the run if any was non-finite, naming the
    first term that went and the step."""

    def __init__(self, every_n_steps: int = 50):
        self.every_n_steps = every_n_steps
        self.names: tuple[str, ...] = ()
        self.window: torch.Tensor | None = None  # one row of metrics per step since the last look
        self.steps: list[int] = []  # the step of each row

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.names, values = pl_module.last_step
        if self.window is None:  # the metrics, their number and their device are the run's: fixed once it trains
            self.window = values.new_empty(self.every_n_steps, len(values))
        self.window[len(self.steps)].copy_(values)
        self.steps.append(trainer.global_step - 1)  # the step just taken
        if len(self.steps) == len(self.window):
            self.check(trainer)

    def check(self, trainer) -> None:
        rows, self.steps = self.steps, []
        if not rows:
            return
        bad = (~torch.isfinite(self.window[: len(rows)])).nonzero().tolist()  # (row, metric): earliest step first
        if bad:
            row, i = bad[0]
            name, step = self.names[i], rows[row]
            last = [Path(cb.dirpath) / "last.ckpt" for cb in trainer.checkpoint_callbacks if cb.dirpath]
            ckpt = str(last[0]) if last and last[0].exists() else ""
            raise UserError(
                f"{name} became non-finite at step {step}; the run stopped there. The last good checkpoint "
                f"{'is ' + ckpt if ckpt else 'was not written yet'}. Resume from it (ckpt_path=...) with a lower "
                "optim.lr, gradient clipping (trainer.gradient_clip_val=1.0), or a KL warm-up "
                "(objective.warmup_epochs)."
            )

    def on_validation_end(self, trainer, pl_module):
        if not trainer.sanity_checking:
            self.check(trainer)

    def on_train_epoch_end(self, trainer, pl_module):
        self.check(trainer)


class RNGState(pl.Callback):
    """Saves the CPU and CUDA generators with each checkpoint and restores them when training resumes,
    after Lightning's own start-up (which draws numbers), so the noise sequence continues exactly; or, resumed
    from a state whose training is over (only the test was left), when fit ends, so the test draws the same."""

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

    def on_fit_end(self, trainer, pl_module):
        self.on_train_start(trainer, pl_module)  # Lightning starts no training when none is left


class RunCheckpoint(pl.callbacks.ModelCheckpoint):
    """Lightning's ModelCheckpoint, except that a run resumed from a directory that was moved or
    copied (to another disk, or from the CPU box to the GPU box) keeps its best-so-far. Lightning
    forgets the best score when the checkpoint folder's path changes and then writes best-v1.ckpt
    beside a stale best.ckpt, which `vae-eval ckpt_path=<run>` would score. When the remembered
    files are in the new folder, their paths are read as the same files there."""

    _state_key: str | None = None

    @property
    def state_key(self) -> str:
        # Lightning's own key, so runs checkpointed by ModelCheckpoint resume here and the reverse. Made once: it
        # names settings fixed at construction, and Lightning reads it around every hook of every step.
        if self._state_key is None:
            self._state_key = "ModelCheckpoint" + super().state_key[len(type(self).__qualname__) :]
        return self._state_key

    def load_state_dict(self, state_dict):
        old = state_dict.get("dirpath")
        if old and self.dirpath and old != self.dirpath:

            def moved(path):
                return str(Path(self.dirpath) / Path(path).name) if path and Path(path).parent == Path(old) else path

            best = moved(state_dict.get("best_model_path"))
            if best and Path(best).is_file():  # the run's checkpoints came along; else Lightning's behaviour
                state_dict = {
                    **state_dict,
                    "dirpath": self.dirpath,
                    "best_model_path": best,
                    "kth_best_model_path": moved(state_dict.get("kth_best_model_path")),
                    "last_model_path": moved(state_dict.get("last_model_path")),
                    "best_k_models": {moved(k): v for k, v in state_dict.get("best_k_models", {}).items()},
                }
        super().load_state_dict(state_dict)


class EarlyStopping(pl.callbacks.EarlyStopping):
    """Lightning's EarlyStopping, except that epochs without improvement count only from `start_epoch`
    (1-based) on: the reference protocol does not count the KL warm-up, while the objective being
    optimised still changes. The best score is tracked throughout. The class keeps Lightning's name, which
    keys its state in checkpoints, so runs that stopped early with Lightning's own callback resume here."""

    def __init__(self, *args, start_epoch: int = 0, **kwargs):
        super().__init__(*args, **kwargs)
        self.start_epoch = start_epoch

    # Lightning's EarlyStopping checks in one of these two hooks (which, its setup decides); the check both tracks
    # the best score and counts epochs without improvement, so before start_epoch it runs with no patience limit.
    def on_train_epoch_end(self, trainer, pl_module):
        with self._counting_from_start(trainer):
            super().on_train_epoch_end(trainer, pl_module)

    def on_validation_end(self, trainer, pl_module):
        with self._counting_from_start(trainer):
            super().on_validation_end(trainer, pl_module)

    @contextlib.contextmanager
    def _counting_from_start(self, trainer):
        counting = trainer.current_epoch + 1 >= self.start_epoch
        patience = self.patience
        if not counting:
            self.patience = math.inf  # no stop for patience before start_epoch (a non-finite metric still stops)
        try:
            yield
        finally:
            self.patience = patience
        if not counting:
            self.wait_count = 0

    def on_train_start(self, trainer, pl_module):
        # Resumed from a state saved after this callback decided to stop (the epoch's checkpoints are written
        # after it): the uninterrupted run ended there, and so does this one.
        if self.wait_count >= self.patience:
            trainer.should_stop = True


class Pruning(pl.Callback):
    """For a trial of a hyperparameter search: after each validation epoch, report(epoch, value) hands the
    monitored metric to the search, which answers whether its pruner stops the trial; if so, training ends at
    that epoch and `pruned_at` holds (epoch, value)."""

    def __init__(self, report, monitor: str = MONITOR):
        self.report, self.monitor = report, monitor
        self.pruned_at: tuple[int, float] | None = None

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or self.monitor not in trainer.callback_metrics:
            return
        value = float(trainer.callback_metrics[self.monitor])
        stop = self.report(trainer.current_epoch, value) if trainer.is_global_zero else False
        if trainer.strategy.broadcast(stop, src=0):  # every process stops at the same epoch
            self.pruned_at = (trainer.current_epoch, value)
            trainer.should_stop = True


class EMA(WeightAveraging):
    """An exponential moving average of the weights, theta_ema <- decay * theta_ema + (1 - decay) * theta
    after every optimiser step (Polyak averaging with a horizon of about 1 / (1 - decay) steps): it
    smooths out the optimiser's noise around the end of training, which is what the test log-likelihood
    sees.

    Validation (so early stopping and best.ckpt), the test after training, vae-eval and vae-sample all
    use the average: it is the `state_dict` of every checkpoint. The raw weights travel beside it
    (`current_model_state`) so a resumed run continues the same optimisation."""

    def __init__(self, decay: float = 0.999):
        require(
            "decay",
            decay,
            number(decay) and 0 < decay < 1,
            "decay",
            "a number in (0, 1): e.g. 0.999 for an average over about the last 1,000 steps",
        )
        super().__init__(multi_avg_fn=get_ema_multi_avg_fn(decay))
        self.decay = decay

    def on_fit_start(self, trainer, pl_module):
        # Lightning builds the average in setup(), before the module moves to its device; keep the
        # two on one device so each update is a few fused kernels, not a copy across the bus.
        average_model(self).to(pl_module.device)

    def on_load_checkpoint(self, trainer, pl_module, checkpoint):
        # Lightning would load the raw weights in every stage; only training continues from them.
        # The test after training (and any validate) scores best.ckpt's average, as vae-eval does.
        if trainer.state.fn == TrainerFn.FITTING:
            super().on_load_checkpoint(trainer, pl_module, checkpoint)
