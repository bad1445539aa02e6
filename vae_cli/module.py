"""The VAE as a LightningModule: a thin layer that computes the ELBO's two terms with
elbo.py, optimises the (optionally KL-weighted) loss, and logs each term separately."""
import math

import pytorch_lightning as pl
import torch

from .elbo import kl_analytic, kl_weight
from .errors import UserError
from .likelihoods import make_likelihood
from .nets import MLPDecoder, MLPEncoder, check_sizes, reparameterize


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
        self.save_hyperparameters()
        hidden_dims = list(hidden_dims)
        self.likelihood = make_likelihood(likelihood, gaussian_std)
        self.encoder = MLPEncoder(data_shape, hidden_dims, latent_dim, activation)
        self.decoder = MLPDecoder(data_shape, hidden_dims, latent_dim, activation)
        self.n_dims = math.prod(data_shape)

    def terms(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-example (recon_loss, kl): -log p(x|z) at one reparameterised z ~ q(z|x),
        and the analytic KL(q(z|x) || p(z))."""
        mu, logvar = self.encoder(x)
        z = reparameterize(mu, logvar)
        recon = -self.likelihood.log_prob(x, self.decoder(z))
        kl = kl_analytic(mu, logvar).sum(-1)
        return recon, kl

    def _step(self, batch, split: str) -> torch.Tensor:
        x = batch[0]
        recon, kl = (t.mean() for t in self.terms(x))
        loss = recon + kl_weight(self.global_step, self.hparams.beta, self.hparams.warmup_steps) * kl
        elbo = -(recon + kl)
        metrics = {"recon_loss": recon, "kl": kl, "elbo": elbo, "loss": loss, "bpd": -elbo / (self.n_dims * math.log(2))}
        # Unscaled terms, nats per example; epoch values are example-weighted means over the split.
        self.log_dict({f"{split}/{k}": v.detach() for k, v in metrics.items()},
                      on_step=split == "train", on_epoch=True, batch_size=x.shape[0])
        return loss

    def training_step(self, batch, batch_idx):
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx):
        self._step(batch, "val")

    def test_step(self, batch, batch_idx):
        self._step(batch, "test")

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)
