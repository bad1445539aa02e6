"""The ELBO's formulas, as pure functions of tensors, each defined once.

ELBO(x) = E_q[log p(x|z)] - KL(q(z|x) || p(z)),  q = N(mu, diag(sigma^2)), p(z) = N(0, I).
Functions return per-example values (summed over data or latent dimensions) unless their name
says per dimension; averaging over examples is left to the caller.
"""

import math

import torch


def elbo(recon: torch.Tensor, kl: torch.Tensor) -> torch.Tensor:
    """ELBO = E_q[log p(x|z)] - KL(q(z|x) || p(z)), from recon = -E_q[log p(x|z)] and the KL."""
    return -(recon + kl)


def reparameterize(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """z = mu + sigma * eps, eps ~ N(0, I): a sample of q(z|x) that is differentiable in (mu, sigma).
    Leading axes of mu beyond logvar's (k samples per example) broadcast."""
    return mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)


def kl_analytic(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Per-dimension KL(N(mu, sigma^2) || N(0, 1)) in closed form.

    KL = -1/2 (1 + log sigma^2 - mu^2 - sigma^2)   (Kingma & Welling 2014, appendix B).
    Sum over the last axis for the KL of the diagonal Gaussian.
    """
    return -0.5 * (1.0 + logvar - mu.pow(2) - logvar.exp())


def kl_mc_dims(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Single-sample Monte Carlo KL per latent dimension, log q(z_j|x) - log p(z_j) at z ~ q(z|x)
    (q and p factorise). Unbiased for kl_analytic, with the variance the closed form avoids."""
    return -0.5 * (logvar + (z - mu).pow(2) * torch.exp(-logvar) - z.pow(2))


def log_normal_diag(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """log N(z; mu, diag(exp(logvar))), summed over the last axis: log q(z|x)."""
    return -0.5 * (math.log(2 * math.pi) + logvar + (z - mu).pow(2) * torch.exp(-logvar)).sum(-1)


def log_standard_normal(z: torch.Tensor) -> torch.Tensor:
    """log N(z; 0, I), summed over the last axis: the prior log p(z)."""
    return -0.5 * (math.log(2 * math.pi) + z.pow(2)).sum(-1)


def log_importance_weights(
    log_px_given_z: torch.Tensor, z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor, kl_weight: float = 1.0
) -> torch.Tensor:
    """log w = log p(x|z) + log p(z) - log q(z|x) for z ~ q(z|x): E_q[w] = p(x). With kl_weight c != 1,
    the tempered log p(x|z) + c (log p(z) - log q(z|x)), whose k = 1 bound is recon + c * KL (a KL warm-up)."""
    if kl_weight == 1.0:
        return log_px_given_z + log_standard_normal(z) - log_normal_diag(z, mu, logvar)
    return log_px_given_z + kl_weight * (log_standard_normal(z) - log_normal_diag(z, mu, logvar))


def iwae_bound(log_w: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """log (1/k sum_i w_i) over k importance samples along `dim` (Burda et al. 2016, eq. 8):
    a lower bound on log p(x) in expectation that tightens as k grows; k = 1 is the ELBO."""
    return torch.logsumexp(log_w, dim=dim) - math.log(log_w.shape[dim])
