"""The objective, as pure functions of tensors.

ELBO(x) = E_q[log p(x|z)] - KL(q(z|x) || p(z)),  q = N(mu, diag(sigma^2)), p(z) = N(0, I).
Every function returns per-example values (summed over data or latent dimensions);
averaging over examples is left to the caller.
"""
import math

import torch


def kl_analytic(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Per-dimension KL(N(mu, sigma^2) || N(0, 1)) in closed form.

    KL = -1/2 (1 + log sigma^2 - mu^2 - sigma^2)   (Kingma & Welling 2014, appendix B).
    Sum over the last axis for the KL of the diagonal Gaussian.
    """
    return -0.5 * (1.0 + logvar - mu.pow(2) - logvar.exp())


def log_normal_diag(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """log N(z; mu, diag(exp(logvar))), summed over the last axis."""
    return -0.5 * (math.log(2 * math.pi) + logvar + (z - mu).pow(2) * torch.exp(-logvar)).sum(-1)


def log_standard_normal(z: torch.Tensor) -> torch.Tensor:
    """log N(z; 0, I), summed over the last axis: the prior p(z)."""
    return -0.5 * (math.log(2 * math.pi) + z.pow(2)).sum(-1)


def kl_mc(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Single-sample Monte Carlo KL estimate log q(z|x) - log p(z) at z ~ q(z|x)."""
    return log_normal_diag(z, mu, logvar) - log_standard_normal(z)


def kl_mc_dims(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """kl_mc per latent dimension (q and p factorise): log q(z_j|x) - log p(z_j). Unbiased for
    kl_analytic, but with the variance the seed's closed form avoids."""
    return -0.5 * (logvar + (z - mu).pow(2) * torch.exp(-logvar) - z.pow(2))


def free_bits_kl(kl_dims: torch.Tensor, free_bits: float) -> torch.Tensor:
    """sum_j max(lambda, E_batch[KL_j]) (Kingma et al. 2016, "free bits"): no pressure on a latent
    dimension while its batch-mean KL is below lambda nats, so it can start carrying information."""
    return kl_dims.mean(0).clamp(min=free_bits).sum()


def kl_weight(step: int, beta: float, warmup_steps: int) -> float:
    """The KL's weight in the optimised loss: beta, ramped linearly from 0 over warmup_steps."""
    if warmup_steps <= 0:
        return beta
    return beta * min(1.0, step / warmup_steps)


def log_importance_weights(log_px_given_z: torch.Tensor, z: torch.Tensor, mu: torch.Tensor,
                           logvar: torch.Tensor) -> torch.Tensor:
    """log w = log p(x|z) + log p(z) - log q(z|x) for z ~ q(z|x): E_q[w] = p(x)."""
    return log_px_given_z + log_standard_normal(z) - log_normal_diag(z, mu, logvar)


def iwae_bound(log_w: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """log (1/k sum_i w_i) over k importance samples along `dim` (Burda et al. 2016, eq. 8):
    a lower bound on log p(x) in expectation that tightens as k grows; k = 1 is the ELBO."""
    return torch.logsumexp(log_w, dim=dim) - math.log(log_w.shape[dim])
