"""A model whose log p(x) and posterior are known in closed form, as a core VAE: the reference the
estimators are tested against (test_evaluate.py, test_iwae.py)."""

import math

import torch
from torch import nn
from torch.distributions import MultivariateNormal

from vae_cli.core.elbo import kl_analytic
from vae_cli.core.vae import VAE

D, K, S = 6, 2, 0.5  # data dim, latent dim, decoder noise std


class LinearGaussian:
    """p(z) = N(0, I), p(x|z) = N(Wz + b, S^2 I): p(x) = N(b, W W^T + S^2 I), and the posterior
    p(z|x) = N(m, C) with C = (I + W^T W / S^2)^-1, m = C W^T (x - b) / S^2."""

    def __init__(self, orthogonal: bool = False):
        g = torch.Generator().manual_seed(0)
        w = torch.randn(D, K, generator=g, dtype=torch.float64)
        if orthogonal:  # W^T W diagonal, so the true posterior is a diagonal Gaussian
            w = torch.linalg.qr(w).Q * torch.tensor([2.0, 0.7], dtype=torch.float64)
        self.w, self.b = w, torch.randn(D, generator=g, dtype=torch.float64)

    def log_px(self, x):
        return MultivariateNormal(self.b, self.w @ self.w.T + S**2 * torch.eye(D, dtype=torch.float64)).log_prob(x)

    def posterior(self, x):
        cov = torch.linalg.inv(torch.eye(K, dtype=torch.float64) + self.w.T @ self.w / S**2)
        return ((x - self.b) @ self.w / S**2) @ cov, cov

    def elbo(self, x, mu, logvar):
        """Closed form: E_q[log p(x|z)] exactly, minus the analytic KL under test."""
        resid = x - mu @ self.w.T - self.b
        expected_sq = resid.pow(2).sum(-1) + (logvar.exp() * self.w.pow(2).sum(0)).sum(-1)
        e_log_lik = -0.5 * D * math.log(2 * math.pi * S**2) - expected_sq / (2 * S**2)
        return e_log_lik - kl_analytic(mu, logvar).sum(-1)


class _Fn(nn.Module):
    def __init__(self, f):
        super().__init__()
        self.f = f

    def forward(self, x):
        return self.f(x)


def fixed_posterior_vae(model: LinearGaussian, q) -> VAE:
    """The core VAE with the linear-Gaussian model as its decoder and likelihood (p(x|z) = N(Wz + b, S^2 I))
    and q(z|x) = N(q(x)) for a given function q of x as its encoder, in float64."""
    vae = VAE((1, 1, D), latent_dim=K, hidden_dims=[1], likelihood="gaussian", gaussian_std=S)
    vae.encoder = _Fn(lambda x: q(x.flatten(1)))
    vae.decoder = _Fn(lambda z: (z @ model.w.T + model.b).view(-1, 1, 1, D))
    return vae


def _random_q(seed=1):
    """An arbitrary (wrong) encoder: mu and log sigma^2 as fixed random affine functions of x."""
    g = torch.Generator().manual_seed(seed)
    a, c = torch.randn(D, 2 * K, generator=g, dtype=torch.float64), torch.randn(2 * K, generator=g, dtype=torch.float64)
    return lambda x: (0.3 * x @ a + c).chunk(2, dim=-1)


def _data(model, n, seed=2):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, K, generator=g, dtype=torch.float64)
    return z @ model.w.T + model.b + S * torch.randn(n, D, generator=g, dtype=torch.float64)


class AffineEncoder(nn.Module):
    """q(z|x) = N(x A + a, diag(exp(x B + b))) with its parameters trainable, in float64."""

    def __init__(self, seed: int = 1, scale: float = 0.3):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.a_mu = nn.Parameter(scale * torch.randn(D, K, generator=g, dtype=torch.float64))
        self.b_mu = nn.Parameter(torch.randn(K, generator=g, dtype=torch.float64))
        self.a_logvar = nn.Parameter(scale * torch.randn(D, K, generator=g, dtype=torch.float64))
        self.b_logvar = nn.Parameter(torch.randn(K, generator=g, dtype=torch.float64))

    def forward(self, x):
        x = x.flatten(1)
        return x @ self.a_mu + self.b_mu, x @ self.a_logvar + self.b_logvar

    @classmethod
    def at_the_posterior(cls, model: LinearGaussian) -> "AffineEncoder":
        """The encoder whose q(z|x) is the true posterior (needs a diagonal posterior covariance)."""
        enc = cls()
        cov = torch.linalg.inv(torch.eye(K, dtype=torch.float64) + model.w.T @ model.w / S**2)
        assert torch.allclose(cov, torch.diag(torch.diagonal(cov)))
        with torch.no_grad():
            enc.a_mu.copy_(model.w @ cov / S**2)
            enc.b_mu.copy_(-(model.b @ model.w) @ cov / S**2)
            enc.a_logvar.zero_()
            enc.b_logvar.copy_(torch.diagonal(cov).log())
        return enc


def linear_gaussian_vae(model: LinearGaussian, encoder: nn.Module) -> VAE:
    """The core VAE with the model's decoder as a trainable nn.Linear (W, b) and the given encoder."""
    vae = VAE((1, 1, D), latent_dim=K, hidden_dims=[1], likelihood="gaussian", gaussian_std=S)
    decoder = nn.Linear(K, D, dtype=torch.float64)
    with torch.no_grad():
        decoder.weight.copy_(model.w)
        decoder.bias.copy_(model.b)
    vae.encoder = encoder
    vae.decoder = nn.Sequential(decoder, nn.Unflatten(1, (1, 1, D)))
    return vae
