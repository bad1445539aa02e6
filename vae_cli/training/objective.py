"""The training objective: what is optimised, given the VAE and a batch.

With one sample and the standard gradient (the defaults) it is the ELBO's loss
    loss = recon + beta * w(step) * KL_opt,
w ramping linearly from 0 to 1 over the warm-up, KL_opt the analytic KL (or its single-sample estimate)
with an optional free-bits floor per latent dimension.

With k = iw_samples > 1 it is the importance-weighted bound (Burda et al. 2016)
    L_k = log (1/k sum_i w_i),   log w_i = log p(x|z_i) + c (log p(z_i) - log q(z_i|x)),  c = beta * w(step),
the KL weight tempering the weights as it does the ELBO (c = 1: the bound itself; k = 1: recon + c * KL).
The encoder's gradient of it is estimated in one of three ways (`gradient`):
  reparam  the reparameterised gradient of the estimate, as written (Burda et al. 2016);
  stl      "sticking the landing" (Roeder et al. 2017): log q evaluated with its parameters held fixed, which
           drops the score-function term, zero-mean, from the gradient; unbiased for k = 1 only;
  dreg     the doubly reparameterised gradient (Tucker et al. 2019): the score-function term rewritten as a
           path derivative, sum_i ((1 - c) w~_i + c w~_i^2) d log w_i / dz_i dz_i/dphi with w~ the normalised
           weights (at c = 1 the published sum_i w~_i^2 ...); unbiased for every k, equal to stl at k = 1.
The decoder's gradient is the standard one in all three. What is logged is always the one-sample ELBO's
terms with the KL in closed form where the posterior and prior families have one (else its Monte Carlo estimate,
log q(z|x) - log p(z) at the same sample: vae.kl_estimate), plus, for k > 1, the bound L_k (at c = 1) as `iwae`.
With a family whose KL has no closed form, KL_opt is that Monte Carlo estimate whatever kl_estimator says; with a
full-covariance q and p = N(0, I), kl_estimator=mc takes log q - log p at the sample in place of the closed form.
"""

from dataclasses import asdict, dataclass
from typing import NamedTuple

import torch

from ..core.elbo import iwae_bound, kl_analytic, kl_mc_dims, log_standard_normal
from ..core.families import Diagonal, QParams
from ..core.vae import Terms
from ..settings import check_families, check_objective


def free_bits_kl(kl_dims: torch.Tensor, free_bits: float) -> torch.Tensor:
    """sum_j max(lambda, E_batch[KL_j]) (Kingma et al. 2016, "free bits"): no pressure on a latent
    dimension while its batch-mean KL is below lambda nats, so it can start carrying information."""
    return kl_dims.mean(0).clamp(min=free_bits).sum()


class Step(NamedTuple):
    loss: torch.Tensor  # what is minimised
    terms: Terms  # the one-sample ELBO's terms, for logging
    iwae: torch.Tensor | None = None  # the k-sample bound L_k per example, when k > 1


@dataclass(frozen=True)
class Objective:
    beta: float = 1.0  # the KL's weight after warm-up (1: the ELBO)
    warmup_steps: int = 0  # linear KL warm-up over this many steps ...
    warmup_epochs: int = 0  # ... or epochs (at most one of the two is set)
    free_bits: float = 0.0  # nats per latent dimension (0: off; the analytic ELBO only)
    kl_estimator: str = "analytic"  # the KL of the one-sample ELBO with the standard gradient
    iw_samples: int = 1  # k: importance samples per example
    gradient: str = "reparam"  # the encoder's gradient estimator

    def __post_init__(self):
        check_objective(**asdict(self))

    @property
    def sampled(self) -> bool:
        """Whether the bound is estimated from sampled log-weights (k > 1, or the stl/dreg gradient),
        not as the ELBO with its KL in closed form."""
        return self.iw_samples > 1 or self.gradient != "reparam"

    def kl_weight(self, step: int, steps_per_epoch: int) -> float:
        """beta, ramped linearly from 0 over the warm-up."""
        warmup = self.warmup_steps or self.warmup_epochs * steps_per_epoch
        return self.beta * min(1.0, step / warmup) if warmup > 0 else self.beta

    def __call__(self, vae, x: torch.Tensor, step: int, steps_per_epoch: int) -> Step:
        """The loss of a batch at optimiser step `step`, and what is logged about it."""
        c = self.kl_weight(step, steps_per_epoch)
        if self.sampled:
            return self._importance_weighted(vae, x, c)
        terms = vae.terms(x)
        if terms.kl_dims is not None:  # per dimension in closed form (a diagonal q, p = N(0, I))
            kl = terms.kl_dims if self.kl_estimator == "analytic" else kl_mc_dims(terms.z, terms.mu, terms.logvar)
            kl = free_bits_kl(kl, self.free_bits) if self.free_bits > 0 else kl.sum(-1).mean()
        else:
            if self.free_bits > 0:  # vae-train refuses this at start-up (settings.check_families); from Python, here
                check_families(posterior=vae.posterior.family, prior=vae.prior.family, free_bits=self.free_bits)
            kl = (terms.kl if self.kl_estimator == "analytic" else terms.kl_sample).mean()
        return Step(terms.recon.mean() + c * kl, terms)

    def _importance_weighted(self, vae, x: torch.Tensor, c: float) -> Step:
        if not hasattr(vae, "encode_q"):  # a user's own network with encode() and log_px_given_z() only
            vae = _DiagonalStandard(vae)
        q = vae.encode_q(x)
        z, log_q = vae.sample_q(q, self.iw_samples)  # (k, B, K), (k, B)
        log_px_z = vae.log_px_given_z(x, z)  # (k, B)
        # stl and dreg: q's parameters held fixed in log q, so phi's gradient flows through z alone.
        if self.gradient != "reparam":
            log_q = vae.log_q(z, q, detach=True)
        log_p = vae.log_prior(z)
        log_w = _log_weights(log_px_z, log_p, log_q, c)
        if self.gradient == "dreg" and z.requires_grad:
            # dL/dz_i carries w~_i; scaled by (1 - c) + c w~_i it becomes dreg's weight for the path to phi.
            scale = ((1 - c) + c * torch.softmax(log_w, dim=0)).detach().unsqueeze(-1)
            z.register_hook(lambda grad: grad * scale)
        bound = iwae_bound(log_w)
        with torch.no_grad():
            true_bound = bound if c == 1.0 else iwae_bound(_log_weights(log_px_z, log_p, log_q, 1.0))
            kl_dims, kl = vae.kl(q, log_q[:1], log_p[:1])
        terms = Terms(
            -log_px_z[0], kl_dims, z[0], q.mu, q.logvar, None if kl_dims is not None else kl, (log_q - log_p)[0]
        )
        return Step(-bound.mean(), terms, true_bound if self.iw_samples > 1 else None)


class _DiagonalStandard:
    """A network that has only encode(x) -> (mu, log sigma^2) and log_px_given_z (a user's own, written before the
    families), with q = N(mu, diag(sigma^2)) and p(z) = N(0, I), the families' methods the objective calls."""

    def __init__(self, vae):
        self.vae, self.posterior = vae, Diagonal()

    def encode_q(self, x):
        return QParams(*self.vae.encode(x))

    def sample_q(self, q, k=None):
        return self.posterior.rsample(q, k)

    def log_q(self, z, q, detach=False):
        return self.posterior.log_prob(z, q.detached() if detach else q)

    def log_px_given_z(self, x, z):
        return self.vae.log_px_given_z(x, z)

    def log_prior(self, z):
        return log_standard_normal(z)

    def kl(self, q, log_q, log_p):
        kl_dims = kl_analytic(q.mu, q.logvar)
        return kl_dims, kl_dims.sum(-1)


def _log_weights(log_px_z: torch.Tensor, log_p: torch.Tensor, log_q: torch.Tensor, c: float) -> torch.Tensor:
    """log w = log p(x|z) + log p(z) - log q(z|x); with c != 1 the tempered log p(x|z) + c (log p(z) - log q(z|x))
    (elbo.log_importance_weights, for any families)."""
    if c == 1.0:
        return log_px_z + log_p - log_q
    return log_px_z + c * (log_p - log_q)
