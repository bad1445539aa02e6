"""The VAE: encoder q(z|x) = N(mu(x), diag(sigma^2(x))), decoder p(x|z), prior p(z) = N(0, I).

Its methods return the ELBO's terms by name and the importance-weighted estimate of log p(x);
the formulas they use are written once, in elbo.py and likelihoods.py.
"""
import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .elbo import elbo, iwae_bound, kl_analytic, log_importance_weights, reparameterize
from ..settings import check_model
from .likelihoods import make_likelihood
from .nets import make_networks


class Terms(NamedTuple):
    """The one-sample ELBO of each example, by term (nats, float32)."""

    recon: torch.Tensor    # -log p(x|z) at one reparameterised z ~ q(z|x), per example
    kl_dims: torch.Tensor  # KL(q(z|x) || p(z)) in closed form, per example and latent dimension
    z: torch.Tensor
    mu: torch.Tensor
    logvar: torch.Tensor

    @property
    def kl(self) -> torch.Tensor:
        return self.kl_dims.sum(-1)

    @property
    def elbo(self) -> torch.Tensor:
        return elbo(self.recon, self.kl)


class ImportanceWeighted(NamedTuple):
    """Per-example estimates from k samples z_i ~ q(z|x)."""

    log_px: torch.Tensor   # log (1/k sum_i p(x, z_i) / q(z_i|x)): the IWAE bound, -> log p(x) as k grows
    recon: torch.Tensor    # -log p(x|z) averaged over the k samples
    kl_dims: torch.Tensor  # the analytic KL per latent dimension
    mu: torch.Tensor       # the posterior means

    @property
    def elbo(self) -> torch.Tensor:
        return elbo(self.recon, self.kl_dims.sum(-1))


def _at_least_float32(t: torch.Tensor) -> torch.Tensor:
    # The objective is computed in float32 even when the networks run in bf16 (precision=bf16-mixed):
    # sums over hundreds of dimensions would lose several digits in bf16.
    return t.to(torch.promote_types(t.dtype, torch.float32))


class VAE(nn.Module):
    """q(z|x) = N(mu(x), diag(exp(logvar(x)))) by the encoder, p(x|z) by the decoder and the likelihood
    family, p(z) = N(0, I). logvar_range: bounds [lo, hi] clipping the encoder's log-variance (a hardtanh,
    as in the VampPrior / Exemplar VAE models), or None. init_output_bias: whether training starts the
    decoder's output at the data's mean image (init_output_bias(mean), by the trainer, which has the data)."""

    def __init__(self, data_shape, latent_dim: int = 16, hidden_dims=(512, 256), arch: str = "mlp",
                 activation: str = "relu", likelihood: str = "bernoulli", gaussian_std: float = 0.1,
                 logvar_range=None, init_output_bias: bool = False):
        super().__init__()
        check_model(latent_dim=latent_dim, hidden_dims=hidden_dims, arch=arch, activation=activation,
                   likelihood=likelihood, gaussian_std=gaussian_std, logvar_range=logvar_range,
                   init_output_bias=init_output_bias)
        self.data_shape = tuple(data_shape)
        self.latent_dim = latent_dim
        self.logvar_range = None if logvar_range is None else tuple(logvar_range)
        self.n_dims = math.prod(self.data_shape)  # D
        # Whether training starts p(x|z) at the data's mean image (init_output_bias(), called by who has the data).
        self.starts_at_data_mean = init_output_bias
        # The likelihood first: optimiser states in checkpoints follow this parameter order.
        self.likelihood = make_likelihood(likelihood, gaussian_std)
        self.encoder, self.decoder = make_networks(arch, self.data_shape, list(hidden_dims), latent_dim, activation,
                                                   self.likelihood.params_per_dim)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mu, log sigma^2) of q(z|x)."""
        mu, logvar = self.encoder(x)
        if self.logvar_range is not None:
            logvar = F.hardtanh(logvar, *self.logvar_range)
        return _at_least_float32(mu), _at_least_float32(logvar)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """The parameters of p(x|z)."""
        return _at_least_float32(self.decoder(z))

    def terms(self, x: torch.Tensor) -> Terms:
        mu, logvar = self.encode(x)
        z = reparameterize(mu, logvar)
        recon = -self.likelihood.log_prob(x, self.decode(z))
        return Terms(recon, kl_analytic(mu, logvar), z, mu, logvar)

    def log_px_given_z(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """log p(x|z), (k, B), for k latent samples z (k, B, K) of each of the B examples x, decoded as one
        batch of k x B rows."""
        k = len(z)
        log_px_z = self.likelihood.log_prob(x.expand(k, *x.shape).flatten(0, 1), self.decode(z.flatten(0, 1)))
        return log_px_z.view(k, len(x))

    def log_weights(self, x: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor, k: int):
        """(log w, log p(x|z)), each (k, B), for k samples z ~ q(z|x) per example."""
        z = reparameterize(mu.expand(k, *mu.shape), logvar)
        log_px_z = self.log_px_given_z(x, z)
        return log_importance_weights(log_px_z, z, mu, logvar), log_px_z

    def importance_weighted(self, x: torch.Tensor, k: int, max_pairs: int = 50_000) -> ImportanceWeighted:
        """The k-sample estimates of each example, with at most `max_pairs` (example, sample) pairs
        through the decoder at once, so memory is bounded for any k."""
        chunk = min(k, max_pairs)
        out = []
        for xb in x.split(max(1, max_pairs // chunk)):
            mu, logvar = self.encode(xb)
            chunks = [self.log_weights(xb, mu, logvar, min(chunk, k - start)) for start in range(0, k, chunk)]
            log_w, log_px_z = (torch.cat(parts) for parts in zip(*chunks))  # (k, B) each: k floats per example
            out.append((iwae_bound(log_w), -log_px_z.mean(0), kl_analytic(mu, logvar), mu))
        return ImportanceWeighted(*(torch.cat(parts) for parts in zip(*out)))

    def decode_mean(self, z: torch.Tensor) -> torch.Tensor:
        """E[x|z] under p(x|z)."""
        return self.likelihood.mean(self.decode(z))

    def sample_prior(self, n: int, draw: bool = False) -> torch.Tensor:
        """n images from z ~ p(z): the mean of p(x|z), or a draw x ~ p(x|z)."""
        params = self.decode(torch.randn(n, self.latent_dim, device=self.device))
        return self.likelihood.sample(params) if draw else self.likelihood.mean(params)

    @property
    def device(self) -> torch.device:
        return next(self.encoder.parameters()).device

    @torch.no_grad()
    def init_output_bias(self, data_mean: torch.Tensor) -> None:
        """Start p(x|z) at the data's mean image (the literature's decoder-bias initialisation):
        the first steps then learn structure instead of the average pixel intensity."""
        bias = self.decoder.output_bias()
        loc = self.likelihood.location(data_mean.to(bias))
        c = loc.shape[0]
        bias[:c].copy_(loc.mean((-2, -1), keepdim=True) if bias.shape[-1] == 1 else loc)

