"""The VAE as a LightningModule: a thin layer that computes the ELBO's two terms with
elbo.py, optimises the (optionally KL-weighted) loss, and logs each term separately."""
import math

import pytorch_lightning as pl
import torch

from .elbo import kl_analytic, kl_weight
from .errors import UserError
from .likelihoods import make_likelihood
from .nets import MLPDecoder, MLPEncoder, check_sizes, reparameterize


METRICS = ("loss", "recon_loss", "kl", "elbo", "bpd")


class VAE(pl.LightningModule):
    def __init__(
        self,
        data_shape: tuple[int, ...],
        latent_dim: int = 16,
        hidden_dims: tuple[int, ...] = (512, 256),
        activation: str = "relu",
        likelihood: str = "bernoulli",
        gaussian_std: float = 0.1,
        lr: float = 1e-3,
        beta: float = 1.0,
        warmup_steps: int = 0,
    ):
        super().__init__()
        check_sizes(latent_dim, hidden_dims)
        if not lr > 0:
            raise UserError(f"optim.lr={lr!r} is not a valid learning rate; use a positive number, e.g. optim.lr=1e-3.")
        if not beta >= 0:
            raise UserError(f"objective.beta={beta!r} is not a valid KL weight; use a number >= 0 (1 is the ELBO).")
        if not isinstance(warmup_steps, int) or warmup_steps < 0:
            raise UserError(f"objective.warmup_steps={warmup_steps!r} must be an integer >= 0 (0 turns warm-up off).")
        # Kept in checkpoints; the run's hyperparameters reach TensorBoard from the full config instead.
        self.save_hyperparameters(logger=False)
        hidden_dims = list(hidden_dims)
        self.likelihood = make_likelihood(likelihood, gaussian_std)
        self.encoder = MLPEncoder(data_shape, hidden_dims, latent_dim, activation)
        self.decoder = MLPDecoder(data_shape, hidden_dims, latent_dim, activation)
        self.n_dims = math.prod(data_shape)
        self._epoch_sums, self._epoch_count = None, 0
        self.data_config: dict | None = None  # the data it is trained on, kept in checkpoints

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["data_config"] = self.data_config

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.data_config = checkpoint.get("data_config", self.data_config)

    def terms(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-example (recon_loss, kl): -log p(x|z) at one reparameterised z ~ q(z|x),
        and the analytic KL(q(z|x) || p(z))."""
        # The objective is computed in float32 even when the networks run in bf16 (precision=bf16-mixed):
        # sums over hundreds of dimensions would lose several digits in bf16.
        mu, logvar = (t.float() for t in self.encoder(x))
        z = reparameterize(mu, logvar)
        recon = -self.likelihood.log_prob(x, self.decoder(z).float())
        kl = kl_analytic(mu, logvar).sum(-1)
        return recon, kl

    def _metrics(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Batch means of the unscaled terms in nats per example, and the optimised loss."""
        recon, kl = (t.mean() for t in self.terms(x))
        loss = recon + kl_weight(self.global_step, self.hparams.beta, self.hparams.warmup_steps) * kl
        elbo = -(recon + kl)
        return {"loss": loss, "recon_loss": recon, "kl": kl, "elbo": elbo, "bpd": -elbo / (self.n_dims * math.log(2))}

    def training_step(self, batch, batch_idx):
        x = batch[0]
        metrics = self._metrics(x)
        detached = torch.stack([v.detach() for v in metrics.values()])
        # Epoch sums stay on the device (no host sync per step); logged once per epoch.
        self._epoch_sums = self._epoch_sums + detached * len(x) if self._epoch_sums is not None else detached * len(x)
        self._epoch_count += len(x)
        # self.log costs time on every call, so call it only on the steps the logger writes
        # (Lightning's own test for "this step is written": every trainer.log_every_n_steps).
        if self.trainer._logger_connector.should_update_logs:
            self.log_dict({f"train/{k}": v for k, v in zip(metrics, detached)}, on_step=True, on_epoch=False)
        return metrics["loss"]

    def on_train_epoch_start(self):
        self._epoch_sums, self._epoch_count = None, 0

    def on_train_epoch_end(self):
        if self._epoch_count:
            means = self._epoch_sums / self._epoch_count
            self.log_dict({f"train/{k}_epoch": v for k, v in zip(METRICS, means)}, on_step=False, on_epoch=True, sync_dist=True)

    def _eval_step(self, batch, split: str) -> None:
        x = batch[0]
        # Example-weighted means over the whole split (batch_size weights each batch's mean).
        self.log_dict({f"{split}/{k}": v for k, v in self._metrics(x).items()}, on_step=False, on_epoch=True,
                      batch_size=len(x), sync_dist=True)

    def validation_step(self, batch, batch_idx):
        self._eval_step(batch, "val")

    def test_step(self, batch, batch_idx):
        self._eval_step(batch, "test")

    def configure_optimizers(self):
        # The fused kernel updates all parameters in one pass: about 5x faster than the default
        # per-tensor Adam on the CPU, a large share of a step for models this small.
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr, fused=True)
