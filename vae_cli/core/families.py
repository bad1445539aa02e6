"""The families of q(z|x) and of p(z) the VAE can use (settings.POSTERIORS, settings.PRIORS name them).

Posteriors, each parameterised by the encoder's outputs (mu, log sigma^2 and `extra_outputs(K)` values more):
  diagonal  N(mu, diag(sigma^2)): today's q, with KL(q || N(0, I)) per latent dimension in closed form;
  full      N(mu, L L^T), L lower triangular with diagonal sigma and the extra K(K-1)/2 outputs below it:
            KL(q || N(0, I)) = 1/2 (tr(L L^T) + mu^T mu - K - log det(L L^T)) in closed form (not per dimension);
  iaf       the diagonal Gaussian followed by n_steps of an inverse autoregressive flow (Kingma et al. 2016):
            z <- sigma * z + (1 - sigma) * m, (m, s) = MADE(z), sigma = sigmoid(s), the order of z reversed
            between steps; log q(z_T|x) = log N(z_0; mu, sigma_0^2) - sum_t sum_i log sigma_t,i.
            The flow's networks take z only (no context from the encoder): one flow shared by every x.
Priors:
  standard  N(0, I);
  mog       a mixture of n_components Gaussians N(m_k, diag(s_k^2)) with learned weights, means and variances;
  vamp      the VampPrior (Tomczak & Welling 2018): (1/N) sum_k q(z|u_k), the encoder's posteriors at N learned
            pseudo-inputs u_k (a mixture in the posterior's own family), uniform weights.
Only diagonal + standard has the KL per dimension in closed form, full + standard its total; every other pair's KL
is the Monte Carlo estimate log q(z|x) - log p(z) on the sample the ELBO is taken at.
"""

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .elbo import kl_analytic, log_normal_diag, log_standard_normal, reparameterize

LOG_2PI = math.log(2 * math.pi)


class QParams(NamedTuple):
    """The parameters of q(z|x) for a batch: mu and log sigma^2 (B, K) and the family's extra outputs (B, E)."""

    mu: torch.Tensor
    logvar: torch.Tensor
    extra: torch.Tensor | None = None

    def detached(self) -> "QParams":
        return QParams(*(None if t is None else t.detach() for t in self))

    def index(self, i) -> "QParams":
        return QParams(*(None if t is None else t[i] for t in self))


def _float32(t: torch.Tensor) -> torch.Tensor:
    """At least float32: a network's output under bf16 autocast, before the densities' sums (as vae.py's)."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


def _no_autocast(f):
    """f with autocast off: its matrix products stay in the inputs' precision (float32 at least), not bf16."""

    def wrapped(*args, **kwargs):
        device = next(a for a in args if torch.is_tensor(a) or isinstance(a, QParams))
        device = (device.mu if isinstance(device, QParams) else device).device.type
        with torch.autocast(device_type=device, enabled=False):
            return f(*args, **kwargs)

    wrapped.__doc__, wrapped.__name__ = f.__doc__, f.__name__
    return wrapped


def log_normal_diag_mixture(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """log N(z; mu_n, diag(exp(logvar_n))) of every z (..., K) under every component n of mu, logvar (N, K): (..., N).
    The square sum_k (z_k - mu_nk)^2 / s_nk^2 expanded into three (..., K) x (K, N) products, so the (..., N, K)
    differences are never made (the mixture priors' cost at N = 500 was that tensor's, in time and memory); in
    float64 (float32 on MPS), where the expansion's cancellation costs no digit a float32 density would keep."""
    wide = torch.float32 if z.device.type == "mps" else torch.float64
    with torch.autocast(device_type=z.device.type, enabled=False):
        zw, mw, lw = z.to(wide), mu.to(wide), logvar.to(wide)
        precision = torch.exp(-lw)  # (N, K)
        square = (zw * zw) @ precision.T - 2 * zw @ (mw * precision).T + (mw * mw * precision).sum(-1)
        log_density = -0.5 * (z.shape[-1] * LOG_2PI + lw.sum(-1) + square)
    return log_density.to(torch.promote_types(torch.promote_types(z.dtype, mu.dtype), torch.float32))


def _samples(mu: torch.Tensor, k: int | None) -> torch.Tensor:
    return mu if k is None else mu.expand(k, *mu.shape)


class Diagonal(nn.Module):
    family = "diagonal"

    @staticmethod
    def extra_outputs(latent_dim: int) -> int:
        return 0

    def rsample(self, q: QParams, k: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(z, log q(z|x)): one sample per example (k None, z (B, K)) or k of each (z (k, B, K))."""
        z = reparameterize(_samples(q.mu, k), q.logvar)
        return z, log_normal_diag(z, q.mu, q.logvar)

    def log_prob(self, z: torch.Tensor, q: QParams, detach: bool = False) -> torch.Tensor:
        """log q(z|x) at any z, broadcasting z's leading axes against q's."""
        return log_normal_diag(z, q.mu, q.logvar)

    def kl_standard(self, q: QParams) -> torch.Tensor:
        """KL(q || N(0, I)) per latent dimension, (B, K)."""
        return kl_analytic(q.mu, q.logvar)


class Full(nn.Module):
    family = "full"

    @staticmethod
    def extra_outputs(latent_dim: int) -> int:
        return latent_dim * (latent_dim - 1) // 2

    @staticmethod
    def cholesky(q: QParams) -> torch.Tensor:
        """L (..., K, K): sigma = exp(logvar / 2) on the diagonal, the extra outputs strictly below it."""
        k = q.mu.shape[-1]
        rows, cols = torch.tril_indices(k, k, -1, device=q.mu.device)
        lower = q.mu.new_zeros(*q.mu.shape, k)
        lower[..., rows, cols] = q.extra
        return lower + torch.diag_embed(torch.exp(0.5 * q.logvar))

    @_no_autocast
    def rsample(self, q: QParams, k: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        eps = torch.randn_like(_samples(q.mu, k))
        z = q.mu + (self.cholesky(q) @ eps.unsqueeze(-1)).squeeze(-1)
        return z, log_standard_normal(eps) - 0.5 * q.logvar.sum(-1)

    @_no_autocast
    def log_prob(self, z: torch.Tensor, q: QParams, detach: bool = False) -> torch.Tensor:
        """log N(z; mu, L L^T) = log N(L^-1 (z - mu); 0, I) - sum_i log L_ii, z's leading axes broadcast."""
        low = self.cholesky(q)
        eye = torch.eye(low.shape[-1], dtype=low.dtype, device=low.device).expand_as(low)
        inverse = torch.linalg.solve_triangular(low, eye, upper=False)
        eps = torch.einsum("...ij,...j->...i", inverse, z - q.mu)
        return log_standard_normal(eps) - 0.5 * q.logvar.sum(-1)

    def kl_standard(self, q: QParams) -> torch.Tensor:
        """KL(N(mu, L L^T) || N(0, I)) per example, (B,)."""
        trace = q.logvar.exp().sum(-1) + q.extra.pow(2).sum(-1)
        return 0.5 * (trace + q.mu.pow(2).sum(-1) - q.mu.shape[-1] - q.logvar.sum(-1))


class MaskedLinear(nn.Linear):
    """A linear layer whose weight is multiplied by a fixed 0/1 mask (MADE, Germain et al. 2015)."""

    def __init__(self, n_in: int, n_out: int, mask: torch.Tensor):
        super().__init__(n_in, n_out)
        self.register_buffer("mask", mask.to(self.weight.dtype), persistent=False)

    def forward(self, x: torch.Tensor, detach: bool = False) -> torch.Tensor:
        weight, bias = (self.weight.detach(), self.bias.detach()) if detach else (self.weight, self.bias)
        return F.linear(x, weight * self.mask, bias)


class MADE(nn.Module):
    """(m, s) = MADE(z), each (..., K): output i depends on z_1..z_{i-1} only (the autoregressive masks)."""

    def __init__(self, latent_dim: int, hidden_dims: list[int]):
        super().__init__()
        k = latent_dim
        degrees = [torch.arange(1, k + 1)]
        for h in hidden_dims:
            degrees.append(torch.arange(h) % max(1, k - 1) + 1)
        layers = [
            MaskedLinear(len(d_in), len(d_out), (d_out[:, None] >= d_in[None, :]))
            for d_in, d_out in zip(degrees[:-1], degrees[1:])
        ]
        out = torch.arange(1, k + 1).repeat(2)  # (m, s): each output i after the units of degree < i
        layers.append(MaskedLinear(len(degrees[-1]), 2 * k, out[:, None] > degrees[-1][None, :]))
        self.layers = nn.ModuleList(layers)
        with torch.no_grad():  # sigma = sigmoid(s) starts near 1 (sigmoid(2) = 0.88): the flow starts near identity
            self.layers[-1].bias[k:].fill_(2.0)

    def forward(self, z: torch.Tensor, detach: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        h = z
        for layer in self.layers[:-1]:
            h = F.elu(layer(h, detach))
        m, s = self.layers[-1](h, detach).chunk(2, dim=-1)
        return _float32(m), _float32(s)


class IAF(nn.Module):
    family = "iaf"

    def __init__(self, latent_dim: int, n_steps: int = 2, hidden_dims=(128,)):
        super().__init__()
        self.steps = nn.ModuleList(MADE(latent_dim, list(hidden_dims)) for _ in range(n_steps))

    @staticmethod
    def extra_outputs(latent_dim: int) -> int:
        return 0

    def flow(self, z0: torch.Tensor, detach: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(z_T, sum_t sum_i log sigma_t,i): the flow from z_0, and its log-determinant."""
        z, log_det = z0, z0.new_zeros(z0.shape[:-1])
        for t, made in enumerate(self.steps):
            if t > 0:
                z = z.flip(-1)
            m, s = made(z, detach)
            gate = torch.sigmoid(s)
            z = gate * z + (1 - gate) * m
            log_det = log_det + F.logsigmoid(s).sum(-1)
        return z, log_det

    def inverse(self, z: torch.Tensor, detach: bool = False) -> torch.Tensor:
        """z_0 from z_T: each step solved one coordinate more per pass (K passes per step, output i depending
        on coordinates before i only)."""
        for t in reversed(range(len(self.steps))):
            target, z = z, torch.zeros_like(z)
            for _ in range(z.shape[-1]):
                m, s = self.steps[t](z, detach)
                gate = torch.sigmoid(s)
                z = (target - (1 - gate) * m) / gate
            if t > 0:
                z = z.flip(-1)
        return z

    def rsample(self, q: QParams, k: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        z0 = reparameterize(_samples(q.mu, k), q.logvar)
        z, log_det = self.flow(z0)
        return z, log_normal_diag(z0, q.mu, q.logvar) - log_det

    def log_prob(self, z: torch.Tensor, q: QParams, detach: bool = False) -> torch.Tensor:
        """log q(z|x) at any z, through the flow's inverse (the flow is the same for every x, so z is inverted
        once whatever q's leading axes); detach: the flow's parameters held fixed (stl and dreg)."""
        z0 = self.inverse(z, detach)
        _, log_det = self.flow(z0, detach)
        return log_normal_diag(z0, q.mu, q.logvar) - log_det

    kl_standard = None


class Standard(nn.Module):
    family = "standard"

    def log_prob(self, z: torch.Tensor, vae=None) -> torch.Tensor:
        return log_standard_normal(z)

    def sample(self, n: int, latent_dim: int, device, vae=None) -> torch.Tensor:
        return torch.randn(n, latent_dim, device=device)


class MixtureOfGaussians(nn.Module):
    family = "mog"

    def __init__(self, latent_dim: int, n_components: int = 10):
        super().__init__()
        self.logits = nn.Parameter(torch.zeros(n_components))
        self.means = nn.Parameter(torch.randn(n_components, latent_dim))
        self.logvars = nn.Parameter(torch.zeros(n_components, latent_dim))

    def log_prob(self, z: torch.Tensor, vae=None) -> torch.Tensor:
        """log sum_k pi_k N(z; m_k, diag(s_k^2)), z (..., K) -> (...)."""
        log_components = log_normal_diag_mixture(z, self.means, self.logvars)  # (..., n)
        return torch.logsumexp(F.log_softmax(self.logits, -1) + log_components, dim=-1)

    def sample(self, n: int, latent_dim: int, device, vae=None) -> torch.Tensor:
        k = torch.multinomial(F.softmax(self.logits, -1), n, replacement=True)
        return reparameterize(self.means[k], self.logvars[k])


class VampPrior(nn.Module):
    family = "vamp"

    def __init__(self, data_shape, n_components: int = 500):
        super().__init__()
        self.pseudo_inputs = nn.Parameter(0.05 + 0.01 * torch.randn(n_components, *data_shape))

    def log_prob(self, z: torch.Tensor, vae) -> torch.Tensor:
        """log (1/N) sum_k q(z|u_k), z (..., K) -> (...), in the posterior's family."""
        q = vae.encode_q(self.pseudo_inputs)  # once per call: each of z's leading axes (IWAE's k too) shares it
        if vae.posterior.family == "diagonal":
            log_components = log_normal_diag_mixture(z, q.mu, q.logvar)  # (..., N), without a (..., N, K) tensor
        else:
            log_components = vae.posterior.log_prob(z.unsqueeze(-2), q)  # (..., N)
        return torch.logsumexp(log_components, dim=-1) - math.log(len(self.pseudo_inputs))

    def sample(self, n: int, latent_dim: int, device, vae=None) -> torch.Tensor:
        """A pseudo-input drawn uniformly for each of the n, encoded, and z drawn from its posterior."""
        k = torch.randint(len(self.pseudo_inputs), (n,), device=device)
        return vae.posterior.rsample(vae.encode_q(self.pseudo_inputs[k]))[0]


def _with_defaults(spec, default_family: str) -> dict:
    if spec is None:
        return {"family": default_family}
    if isinstance(spec, str):
        return {"family": spec}
    return {"family": default_family, **dict(spec)}


def make_posterior(spec, latent_dim: int) -> nn.Module:
    """The posterior family a config (a dict {family: ..., its settings}, a family's name, or None: diagonal)
    describes; settings.check_model has checked it."""
    spec = _with_defaults(spec, "diagonal")
    family = spec.pop("family")
    if family == "diagonal":
        return Diagonal()
    if family == "full":
        return Full()
    return IAF(latent_dim, **spec)


def make_prior(spec, latent_dim: int, data_shape) -> nn.Module:
    """The prior a config (a dict, a family's name, or None: standard) describes."""
    spec = _with_defaults(spec, "standard")
    family = spec.pop("family")
    if family == "standard":
        return Standard()
    if family == "mog":
        return MixtureOfGaussians(latent_dim, **spec)
    return VampPrior(data_shape, **spec)
