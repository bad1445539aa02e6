"""The VAE under Lightning: a thin layer that asks the core VAE for the ELBO's terms, the objective
for the loss, and logs every metric of core.metrics by name, once per split and epoch (and every
trainer.log_every_n_steps training steps)."""

from collections.abc import Callable
from dataclasses import asdict
from functools import partial
from typing import NamedTuple

import pytorch_lightning as pl
import torch
from pytorch_lightning.trainer.states import TrainerFn

from ..compat import attached_trainer, divide_by_norms
from ..core.metrics import MONITOR, batch_metrics
from ..core.scoring import ACTIVE_UNIT_THRESHOLD
from ..inputs import upgrade_checkpoint
from .objective import Objective


class StepMetrics(NamedTuple):
    """One step's metrics, detached and stacked on the device (no host sync), with their names."""

    names: tuple[str, ...]
    values: torch.Tensor


class VAEModule(pl.LightningModule):
    """vae: the network (a core VAE, or a user's own with its methods), built from `model`, its config, which
    checkpoints keep so vae-eval and vae-sample can build it again. optimizer(parameters) -> a torch optimizer;
    scheduler(optimizer) -> its learning-rate schedule, stepped once per epoch (None: constant), a
    ReduceLROnPlateau on `monitor`. normalize_grads: each parameter tensor's gradient divided by its L2 norm
    before the optimizer's step. data_config: the data it is trained on, kept in checkpoints."""

    def __init__(
        self,
        vae: torch.nn.Module,
        model: dict | None = None,
        objective: Objective = Objective(),
        optimizer: Callable = partial(torch.optim.Adam, lr=1e-3, fused=True),
        scheduler: Callable | None = None,
        normalize_grads: bool = False,
        monitor: str = MONITOR,
        data_config: dict | None = None,
    ):
        super().__init__()
        # The optimizer and its schedule are the run's config's, built again whenever it trains.
        # kl_estimate: whether the logged kl is in closed form ("analytic") or log q(z|x) - log p(z) at the ELBO's
        # sample ("mc"), as the posterior and prior families allow (settings.kl_estimate).
        self.save_hyperparameters(
            {
                "model": model,
                "objective": asdict(objective),
                "normalize_grads": normalize_grads,
                "monitor": monitor,
                "kl_estimate": getattr(vae, "kl_estimate", "analytic"),
            },
            logger=False,
        )
        self.vae, self.objective = vae, objective
        self.optimizer, self.scheduler = optimizer, scheduler
        self.normalize_grads, self.monitor = normalize_grads, monitor
        self.data_config = data_config
        self.steps_per_epoch = 0  # known once training starts; turns a warm-up in epochs into steps
        self.last_step: StepMetrics | None = None  # read by the non-finite guard
        self._step_curves: tuple[int, StepMetrics] | None = None  # (step, metrics) for the loggers
        self._sums: dict[str, tuple] = {}  # per split: (names, example-weighted sums, example count)
        self._resumed_sums: dict | None = None  # the training epoch's sums from a checkpoint saved mid-epoch
        self._mu_sums: tuple | None = None  # validation: (sums of E_q[z] and of its square per dimension, count)

    def _metrics(self, x: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """The batch's metrics, and its posterior means E_q[z|x]."""
        step = self.objective(self.vae, x, self.global_step, self.steps_per_epoch)
        return batch_metrics(step.terms, step.loss, self.vae.n_dims, iwae=step.iwae), step.terms.mu

    def _accumulate(self, split: str, metrics: dict[str, torch.Tensor], n: int) -> StepMetrics:
        """Add this batch's example-weighted sums to the split's running totals, on the device."""
        step = StepMetrics(tuple(metrics), torch.stack([v.detach() for v in metrics.values()]))
        # The count stays a Python int: a new device tensor per step would be a host-to-device copy.
        _, sums, count = self._sums.get(split, (None, 0.0, 0))
        self._sums[split] = (step.names, sums + step.values * n, count + n)
        return step

    def _log_epoch_means(self, split: str, suffix: str = "") -> None:
        """Means over every example the split saw in this epoch, in all processes: sums and counts are
        added across processes first, so the result is the mean over the whole set (not a mean of
        per-process means)."""
        if split not in self._sums:
            return
        names, sums, count = self._sums.pop(split)
        total = self.trainer.strategy.reduce(torch.cat([sums, sums.new_tensor([count])]), reduce_op="sum")
        means = total[:-1] / total[-1]
        # Every process holds the same means now: Lightning's sync (max of equal values, exact) only tells it so.
        self.log_dict(
            {f"{split}/{k}{suffix}": v for k, v in zip(names, means)},
            on_step=False,
            on_epoch=True,
            sync_dist=True,
            reduce_fx="max",
        )

    def _accumulate_posterior_means(self, mu: torch.Tensor) -> None:
        """Add the batch's posterior means and their squares to the validation totals, on the device, in float64
        where the device has it (MPS does not): E[mu^2] - E[mu]^2 cancels the leading digits of both."""
        mu = mu.detach().to(torch.float32 if mu.device.type == "mps" else torch.float64)
        sums, count = self._mu_sums or (0.0, 0)
        self._mu_sums = (sums + torch.stack([mu.sum(0), (mu * mu).sum(0)]), count + len(mu))

    def _log_active_units(self) -> None:
        """val/active_units: the latent dimensions whose posterior mean varies over the validation set,
        Cov_x(E_q[z_j]) > 0.01 (core.scoring), from sums added across processes as in _log_epoch_means."""
        if self._mu_sums is None:
            return
        (sums, count), self._mu_sums = self._mu_sums, None
        total = self.trainer.strategy.reduce(torch.cat([sums.flatten(), sums.new_tensor([count])]), reduce_op="sum")
        n, (s1, s2) = total[-1], total[:-1].view(2, -1)
        mu_var = (s2 - s1 * s1 / n) / (n - 1)  # the sample variance, as vae-eval's
        self.log(
            "val/active_units",
            (mu_var > ACTIVE_UNIT_THRESHOLD).sum().float(),
            on_step=False,
            on_epoch=True,
            sync_dist=True,
            reduce_fx="max",
        )

    def epoch_means(self, split: str) -> dict[str, float]:
        """The running means of this epoch so far, in this process (a host sync: for display only)."""
        if split not in self._sums:
            return {}
        names, sums, count = self._sums[split]
        return dict(zip(names, (sums / count).tolist()))

    def on_train_start(self):
        self.steps_per_epoch = self.trainer.num_training_batches
        resumed, self._resumed_sums = self._resumed_sums, None
        if resumed:  # resuming mid-epoch (Lightning starts no new epoch then): the epoch's sums so far
            self._sums["train"] = (tuple(resumed["names"]), resumed["sums"].to(self.device), resumed["count"])

    def training_step(self, batch, batch_idx):
        metrics, _ = self._metrics(batch[0])
        # Epoch sums stay on the device (no host sync per step); logged once per epoch.
        step = self.last_step = self._accumulate("train", metrics, len(batch[0]))
        if (self.global_step + 1) % self.trainer.log_every_n_steps == 0:
            self._step_curves = (self.global_step, step)  # written once the optimiser has stepped
        return metrics["loss"]

    def on_train_batch_end(self, outputs, batch, batch_idx):
        """The step's train/ curves, at the steps and with the values Lightning's on_step logging writes (the
        last batch's, once the optimiser has stepped), but straight to the loggers: self.log keeps a torchmetrics
        state per metric and costs more per call than a whole step of a small model."""
        if self._step_curves is None or self.global_step == self._step_curves[0]:  # none, or still accumulating
            return
        (at, step), self._step_curves = self._step_curves, None
        values = dict(zip((f"train/{k}" for k in step.names), step.values.tolist()))
        for logger in self.loggers:
            logger.log_metrics(values, step=at)
            logger.save()

    def validation_step(self, batch, batch_idx):
        metrics, mu = self._metrics(batch[0])
        self._accumulate("val", metrics, len(batch[0]))
        self._accumulate_posterior_means(mu)

    def test_step(self, batch, batch_idx):
        self._accumulate("test", self._metrics(batch[0])[0], len(batch[0]))

    def on_train_epoch_start(self):
        self._sums.pop("train", None)

    def on_validation_epoch_start(self):
        self._sums.pop("val", None)
        self._mu_sums = None

    def on_test_epoch_start(self):
        self._sums.pop("test", None)

    def on_train_epoch_end(self):
        self._log_epoch_means("train", suffix="_epoch")

    def on_validation_epoch_end(self):
        self._log_epoch_means("val")
        self._log_active_units()

    def on_test_epoch_end(self):
        self._log_epoch_means("test")

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["data_config"] = self.data_config
        trainer = attached_trainer(self)
        mid_epoch = (
            trainer is not None
            and trainer.fit_loop.epoch_loop.batch_progress.current.processed < trainer.num_training_batches
        )
        if mid_epoch and "train" in self._sums:  # the epoch's means so far carry on after a resume
            names, sums, count = self._sums["train"]
            checkpoint["train_epoch_sums"] = {"names": list(names), "sums": sums, "count": count}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        upgrade_checkpoint(checkpoint)  # one written by an earlier version: same weights, today's names
        self.data_config = checkpoint.get("data_config", self.data_config)
        self._resumed_sums = checkpoint.get("train_epoch_sums")
        # A run trained with a weight average (callbacks.ema) saves the average as its state_dict and
        # the raw weights beside it. Resumed without the average, training goes on from the raw
        # weights, which the optimiser's state belongs to (with it, the EMA callback restores them).
        trainer = attached_trainer(self)
        if (
            "current_model_state" in checkpoint
            and trainer is not None
            and trainer.state.fn == TrainerFn.FITTING
            and not any(isinstance(cb, pl.callbacks.WeightAveraging) for cb in trainer.callbacks)
        ):
            checkpoint["state_dict"] = checkpoint["current_model_state"]

    def on_before_optimizer_step(self, optimizer):
        if self.normalize_grads:
            # Each tensor's gradient to unit L2 norm (+1e-7), as the reference code's AdamNormGrad does:
            # Adam then sees the direction of each tensor's gradient, not its scale.
            divide_by_norms([p.grad for p in self.parameters() if p.grad is not None], 1e-7)

    def configure_optimizers(self):
        optimizer = self.optimizer(self.parameters())
        if self.scheduler is None:
            return optimizer
        schedule = {"scheduler": self.scheduler(optimizer), "interval": "epoch"}
        if isinstance(schedule["scheduler"], torch.optim.lr_scheduler.ReduceLROnPlateau):
            schedule["monitor"] = self.monitor
        return {"optimizer": optimizer, "lr_scheduler": schedule}
