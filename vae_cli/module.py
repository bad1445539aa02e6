"""The VAE as a LightningModule: a thin layer that computes the ELBO's two terms with
elbo.py, optimises the (optionally KL-weighted) loss, and logs each term separately."""
import math

import pytorch_lightning as pl
from pytorch_lightning.trainer.states import TrainerFn
import torch

from .elbo import free_bits_kl, kl_analytic, kl_mc_dims, kl_weight
from .errors import UserError
from .likelihoods import location_from_mean, make_likelihood
from .nets import check_sizes, make_networks, reparameterize

METRICS = ("loss", "recon_loss", "kl", "elbo", "bpd")
KL_ESTIMATORS = ("analytic", "mc")


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


class VAE(pl.LightningModule):
    def __init__(
        self,
        data_shape: tuple[int, ...],
        arch: str = "mlp",
        latent_dim: int = 16,
        hidden_dims: tuple[int, ...] = (512, 256),
        activation: str = "relu",
        likelihood: str = "bernoulli",
        gaussian_std: float = 0.1,
        lr: float = 1e-3,
        lr_decay: float = 1.0,
        beta: float = 1.0,
        warmup_steps: int = 0,
        warmup_epochs: int = 0,
        free_bits: float = 0.0,
        kl_estimator: str = "analytic",
    ):
        super().__init__()
        check_sizes(latent_dim, hidden_dims)
        if not _is_number(lr) or not lr > 0:
            raise UserError(f"optim.lr={lr!r} is not a valid learning rate; use a positive number, e.g. optim.lr=1e-3.")
        if not _is_number(lr_decay) or not 0 < lr_decay <= 1:
            raise UserError(f"optim.lr_decay={lr_decay!r} must be in (0, 1]: the learning rate's factor per epoch (1: constant).")
        if not _is_number(beta) or not beta >= 0:
            raise UserError(f"objective.beta={beta!r} is not a valid KL weight; use a number >= 0 (1 is the ELBO).")
        for key, value in (("warmup_steps", warmup_steps), ("warmup_epochs", warmup_epochs)):
            if not isinstance(value, int) or value < 0:
                raise UserError(f"objective.{key}={value!r} must be an integer >= 0 (0 turns warm-up off).")
        if warmup_steps and warmup_epochs:
            raise UserError(f"objective.warmup_steps={warmup_steps} and objective.warmup_epochs={warmup_epochs} "
                            "are both set; set one of them, the other to 0.")
        if not _is_number(free_bits) or not free_bits >= 0:
            raise UserError(f"objective.free_bits={free_bits!r} must be >= 0 nats per latent dimension (0 turns it off).")
        if kl_estimator not in KL_ESTIMATORS:
            raise UserError(f"objective.kl_estimator={kl_estimator!r} is not known; choose analytic or mc.")
        # Kept in checkpoints; the run's hyperparameters reach TensorBoard from the full config instead.
        self.save_hyperparameters(logger=False)
        self.likelihood = make_likelihood(likelihood, gaussian_std)
        self.encoder, self.decoder = make_networks(arch, data_shape, list(hidden_dims), latent_dim, activation,
                                                   self.likelihood.params_per_dim)
        self.n_dims = math.prod(data_shape)
        self._warmup = warmup_steps
        self._sums: dict[str, tuple] = {}  # per split: (example-weighted metric sums, example count)
        self.data_config: dict | None = None  # the data it is trained on, kept in checkpoints

    def init_output_bias(self, data_mean: torch.Tensor) -> None:
        """Start p(x|z) at the data's mean image (the literature's decoder-bias initialisation):
        the first steps then learn structure instead of the average pixel intensity."""
        bias = self.decoder.output_bias()
        loc = location_from_mean(self.likelihood, data_mean.to(bias))
        c = loc.shape[0]
        with torch.no_grad():
            bias[:c].copy_(loc.mean((-2, -1), keepdim=True) if bias.shape[-1] == 1 else loc)

    def _forward(self, x: torch.Tensor):
        # The objective is computed in float32 even when the networks run in bf16 (precision=bf16-mixed):
        # sums over hundreds of dimensions would lose several digits in bf16.
        mu, logvar = (t.float() for t in self.encoder(x))
        z = reparameterize(mu, logvar)
        recon = -self.likelihood.log_prob(x, self.decoder(z).float())
        return recon, z, mu, logvar

    def terms(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-example (recon_loss, kl): -log p(x|z) at one reparameterised z ~ q(z|x),
        and the analytic KL(q(z|x) || p(z))."""
        recon, _, mu, logvar = self._forward(x)
        return recon, kl_analytic(mu, logvar).sum(-1)

    def _metrics(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Batch means of the unscaled terms in nats per example, and the optimised loss."""
        recon, z, mu, logvar = self._forward(x)
        kl_dims = kl_analytic(mu, logvar)  # exact: what is logged, whatever the estimator
        recon, kl = recon.mean(), kl_dims.sum(-1).mean()
        hp = self.hparams
        kl_opt = kl_dims if hp.kl_estimator == "analytic" else kl_mc_dims(z, mu, logvar)
        kl_opt = free_bits_kl(kl_opt, hp.free_bits) if hp.free_bits > 0 else kl_opt.sum(-1).mean()
        loss = recon + kl_weight(self.global_step, hp.beta, self._warmup) * kl_opt
        elbo = -(recon + kl)
        return {"loss": loss, "recon_loss": recon, "kl": kl, "elbo": elbo, "bpd": -elbo / (self.n_dims * math.log(2))}

    def on_train_start(self):
        if self.hparams.warmup_epochs:
            self._warmup = self.hparams.warmup_epochs * self.trainer.num_training_batches

    def _accumulate(self, split: str, metrics: dict[str, torch.Tensor], n: int) -> torch.Tensor:
        """Add this batch's example-weighted sums to the split's running totals, on the device."""
        detached = torch.stack([v.detach() for v in metrics.values()])
        # The count stays a Python int: a new device tensor per step would be a host-to-device copy.
        sums, count = self._sums.get(split, (0.0, 0))
        self._sums[split] = (sums + detached * n, count + n)
        return detached

    def _log_epoch_means(self, split: str, suffix: str = "") -> None:
        """Means over every example the split saw in this epoch, in all processes: sums and counts are
        added across processes first, so the result is the mean over the whole set (not a mean of
        per-process means)."""
        if split not in self._sums:
            return
        sums, count = self._sums.pop(split)
        total = self.trainer.strategy.reduce(torch.cat([sums, sums.new_tensor([count])]), reduce_op="sum")
        means = total[:-1] / total[-1]
        self.log_dict({f"{split}/{k}{suffix}": v for k, v in zip(METRICS, means)}, on_step=False, on_epoch=True)

    def training_step(self, batch, batch_idx):
        x = batch[0]
        metrics = self._metrics(x)
        # Epoch sums stay on the device (no host sync per step); logged once per epoch.
        detached = self._accumulate("train", metrics, len(x))
        self.last_terms = detached[1:3]  # (recon_loss, kl), for the non-finite guard
        # self.log costs time on every call, so call it only on the steps the logger writes
        # (Lightning's own test for "this step is written": every trainer.log_every_n_steps).
        if self.trainer._logger_connector.should_update_logs:
            self.log_dict({f"train/{k}": v for k, v in zip(metrics, detached)}, on_step=True, on_epoch=False)
        return metrics["loss"]

    def on_train_epoch_start(self):
        self._sums.pop("train", None)

    def on_train_epoch_end(self):
        self._log_epoch_means("train", suffix="_epoch")

    def validation_step(self, batch, batch_idx):
        self._accumulate("val", self._metrics(batch[0]), len(batch[0]))

    def on_validation_epoch_start(self):
        self._sums.pop("val", None)

    def on_validation_epoch_end(self):
        self._log_epoch_means("val")

    def test_step(self, batch, batch_idx):
        self._accumulate("test", self._metrics(batch[0]), len(batch[0]))

    def on_test_epoch_start(self):
        self._sums.pop("test", None)

    def on_test_epoch_end(self):
        self._log_epoch_means("test")

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["data_config"] = self.data_config

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.data_config = checkpoint.get("data_config", self.data_config)
        # A run trained with a weight average (callbacks.ema) saves the average as its state_dict and
        # the raw weights beside it. Resumed without the average, training goes on from the raw
        # weights, which the optimiser's state belongs to (with it, the EMA callback restores them).
        trainer = self._trainer
        if ("current_model_state" in checkpoint and trainer is not None and trainer.state.fn == TrainerFn.FITTING
                and not any(isinstance(cb, pl.callbacks.WeightAveraging) for cb in trainer.callbacks)):
            checkpoint["state_dict"] = checkpoint["current_model_state"]

    def configure_optimizers(self):
        # The fused kernel updates all parameters in one pass: about 5x faster than the default
        # per-tensor Adam on the CPU, a large share of a step for models this small.
        optimizer = torch.optim.Adam(self.parameters(), lr=self.hparams.lr, fused=True)
        if self.hparams.lr_decay == 1.0:
            return optimizer
        decay = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=self.hparams.lr_decay)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": decay, "interval": "epoch"}}
