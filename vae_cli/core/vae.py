"""The VAE: encoder q(z|x), decoder p(x|z), prior p(z). By default q(z|x) = N(mu(x), diag(sigma^2(x))) and
p(z) = N(0, I); `posterior` and `prior` choose other families (core/families.py).

Its methods return the ELBO's terms by name and the importance-weighted estimate of log p(x);
the formulas they use are written once, in elbo.py, families.py and likelihoods.py.
"""

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ..settings import check_model, kl_estimate
from .elbo import elbo, iwae_bound
from .families import QParams, make_posterior, make_prior
from .likelihoods import make_likelihood
from .nets import make_networks


class Terms(NamedTuple):
    """The one-sample ELBO of each example, by term (nats, float32)."""

    recon: torch.Tensor  # -log p(x|z) at one reparameterised z ~ q(z|x), per example
    kl_dims: torch.Tensor | None  # KL(q(z|x) || p(z)) in closed form per example and latent dimension, where the
    # families have it (diagonal q, standard p); None otherwise
    z: torch.Tensor
    mu: torch.Tensor
    logvar: torch.Tensor
    kl_total: torch.Tensor | None = None  # the KL per example where kl_dims is None: in closed form (full q,
    # standard p) or log q(z|x) - log p(z) at z (settings.kl_estimate)
    kl_sample: torch.Tensor | None = None  # log q(z|x) - log p(z) at z, per example (the Monte Carlo KL)

    @property
    def kl(self) -> torch.Tensor:
        return self.kl_dims.sum(-1) if self.kl_dims is not None else self.kl_total

    @property
    def elbo(self) -> torch.Tensor:
        return elbo(self.recon, self.kl)


class ImportanceWeighted(NamedTuple):
    """Per-example estimates from k samples z_i ~ q(z|x)."""

    log_px: torch.Tensor  # log (1/k sum_i p(x, z_i) / q(z_i|x)): the IWAE bound, -> log p(x) as k grows
    recon: torch.Tensor  # -log p(x|z) averaged over the k samples
    kl_dims: torch.Tensor  # the analytic KL per latent dimension; (B, 0) where the families have none
    mu: torch.Tensor  # the posterior means (of the base Gaussian, for iaf)
    kl: torch.Tensor | None = None  # the KL per example: analytic, or log q - log p averaged over the k samples

    @property
    def elbo(self) -> torch.Tensor:
        return elbo(self.recon, self.kl if self.kl is not None else self.kl_dims.sum(-1))


def _at_least_float32(t: torch.Tensor) -> torch.Tensor:
    # The objective is computed in float32 even when the networks run in bf16 (precision=bf16-mixed):
    # sums over hundreds of dimensions would lose several digits in bf16.
    return t.to(torch.promote_types(t.dtype, torch.float32))


class VAE(nn.Module):
    """q(z|x) = N(mu(x), diag(exp(logvar(x)))) by the encoder, p(x|z) by the decoder and the likelihood
    family, p(z) = N(0, I); posterior and prior (a dict {family: <name>, <its settings>}, a family's name, or None
    for diagonal and standard) choose other families of q and p (core/families.py). logvar_range: bounds [lo, hi]
    clipping the encoder's log-variance (a hardtanh,
    as in the VampPrior / Exemplar VAE models), or None. init_output_bias: whether training starts the
    decoder's output at the data's mean image (init_output_bias(mean), by the trainer, which has the data)."""

    def __init__(
        self,
        data_shape,
        latent_dim: int = 16,
        hidden_dims=(512, 256),
        arch: str = "mlp",
        activation: str = "relu",
        likelihood: str = "bernoulli",
        gaussian_std: float = 0.1,
        logvar_range=None,
        init_output_bias: bool = False,
        posterior=None,
        prior=None,
    ):
        super().__init__()
        check_model(
            latent_dim=latent_dim,
            hidden_dims=hidden_dims,
            arch=arch,
            activation=activation,
            likelihood=likelihood,
            gaussian_std=gaussian_std,
            logvar_range=logvar_range,
            init_output_bias=init_output_bias,
            posterior=posterior,
            prior=prior,
        )
        self.data_shape = tuple(data_shape)
        self.latent_dim = latent_dim
        self.logvar_range = None if logvar_range is None else tuple(logvar_range)
        self.n_dims = math.prod(self.data_shape)  # D
        # Whether training starts p(x|z) at the data's mean image (init_output_bias(), called by who has the data).
        self.starts_at_data_mean = init_output_bias
        # The likelihood first: optimiser states in checkpoints follow this parameter order.
        self.likelihood = make_likelihood(likelihood, gaussian_std)
        posterior_family = make_posterior(posterior, latent_dim)
        self.encoder, self.decoder = make_networks(
            arch,
            self.data_shape,
            list(hidden_dims),
            latent_dim,
            activation,
            self.likelihood.params_per_dim,
            posterior_family.extra_outputs(latent_dim),
        )
        # After the networks (the diagonal and standard families have no parameters: older checkpoints' order).
        self.posterior = posterior_family
        self.prior = make_prior(prior, latent_dim, self.data_shape)
        # Which estimate the logged kl is: "analytic" (closed form) or "mc" (log q(z|x) - log p(z) at the ELBO's z).
        self.kl_estimate = kl_estimate(self.posterior.family, self.prior.family)

    def encode_q(self, x: torch.Tensor) -> QParams:
        """The parameters of q(z|x): (mu, log sigma^2) and the family's extra outputs."""
        mu, logvar, *extra = self.encoder(x)
        if self.logvar_range is not None:
            logvar = F.hardtanh(logvar, *self.logvar_range)
        return QParams(_at_least_float32(mu), _at_least_float32(logvar), _at_least_float32(extra[0]) if extra else None)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mu, log sigma^2) of q(z|x) (of its base Gaussian, for a flow)."""
        q = self.encode_q(x)
        return q.mu, q.logvar

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """The parameters of p(x|z)."""
        return _at_least_float32(self.decoder(z))

    def sample_q(self, q: QParams, k: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(z, log q(z|x)): a reparameterised sample of each example (k None: z (B, K)), or k of each (k, B, K)."""
        return self.posterior.rsample(q, k)

    def log_q(self, z: torch.Tensor, q: QParams, detach: bool = False) -> torch.Tensor:
        """log q(z|x) at any z; detach: q's parameters (the encoder's outputs and the flow's) held fixed, so
        the gradient flows through z alone (stl and dreg)."""
        return self.posterior.log_prob(z, q.detached() if detach else q, detach)

    def log_prior(self, z: torch.Tensor) -> torch.Tensor:
        """log p(z), summed over the latent dimensions."""
        return self.prior.log_prob(z, self)

    def kl(self, q: QParams, log_q: torch.Tensor, log_p: torch.Tensor):
        """(KL per dimension or None, KL per example): in closed form where the families have it, else the Monte
        Carlo estimate log q(z|x) - log p(z) (averaged over leading sample axes)."""
        if self.kl_estimate == "analytic":
            if self.posterior.family == "diagonal":
                kl_dims = self.posterior.kl_standard(q)
                return kl_dims, kl_dims.sum(-1)
            return None, self.posterior.kl_standard(q)
        kl = log_q - log_p
        return None, kl if kl.dim() == 1 else kl.mean(0)

    def terms(self, x: torch.Tensor) -> Terms:
        q = self.encode_q(x)
        z, log_q = self.sample_q(q)
        recon = -self.likelihood.log_prob(x, self.decode(z))
        log_p = self.log_prior(z)
        kl_dims, kl = self.kl(q, log_q, log_p)
        return Terms(recon, kl_dims, z, q.mu, q.logvar, None if kl_dims is not None else kl, log_q - log_p)

    def log_px_given_z(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """log p(x|z), (k, B), for k latent samples z (k, B, K) of each of the B examples x, decoded as one
        batch of k x B rows."""
        k = len(z)
        log_px_z = self.likelihood.log_prob(x.expand(k, *x.shape).flatten(0, 1), self.decode(z.flatten(0, 1)))
        return log_px_z.view(k, len(x))

    def log_weights(self, x: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor, k: int, extra=None):
        """(log w, log p(x|z)), each (k, B), for k samples z ~ q(z|x) per example."""
        return self._log_weights(x, QParams(mu, logvar, extra), k)[:2]

    def _log_weights(self, x: torch.Tensor, q: QParams, k: int):
        """(log w, log p(x|z), log q(z|x) - log p(z)), each (k, B), for k samples z ~ q(z|x) per example."""
        z, log_q = self.sample_q(q, k)
        log_px_z = self.log_px_given_z(x, z)
        log_p = self.log_prior(z)
        return log_px_z + log_p - log_q, log_px_z, log_q - log_p

    def importance_weighted(self, x: torch.Tensor, k: int, max_pairs: int = 50_000) -> ImportanceWeighted:
        """The k-sample estimates of each example, with at most `max_pairs` (example, sample) pairs
        through the decoder at once, so memory is bounded for any k."""
        chunk = min(k, max_pairs)
        out = []
        for xb in x.split(max(1, max_pairs // chunk)):
            q = self.encode_q(xb)
            chunks = [self._log_weights(xb, q, min(chunk, k - start)) for start in range(0, k, chunk)]
            log_w, log_px_z, kl_mc = (torch.cat(parts) for parts in zip(*chunks))  # (k, B) each
            kl_dims, kl = self.kl(q, kl_mc, torch.zeros_like(kl_mc))
            if kl_dims is None:
                kl_dims = q.mu.new_zeros(len(xb), 0)
            out.append((iwae_bound(log_w), -log_px_z.mean(0), kl_dims, q.mu, kl))
        return ImportanceWeighted(*(torch.cat(parts) for parts in zip(*out)))

    def decode_mean(self, z: torch.Tensor) -> torch.Tensor:
        """E[x|z] under p(x|z)."""
        return self.likelihood.mean(self.decode(z))

    def sample_prior(self, n: int, draw: bool = False) -> torch.Tensor:
        """n images from z ~ p(z): the mean of p(x|z), or a draw x ~ p(x|z). A VampPrior's z: a pseudo-input
        drawn uniformly, encoded, and z drawn from its posterior."""
        params = self.decode(self.prior.sample(n, self.latent_dim, self.device, self))
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
