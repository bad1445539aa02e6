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
terms with the analytic KL (core.metrics), plus, for k > 1, the bound L_k (at c = 1) as `iwae`.
"""
from dataclasses import asdict, dataclass
from typing import NamedTuple

import torch

from ..core.elbo import iwae_bound, kl_analytic, kl_mc_dims, log_importance_weights, reparameterize
from ..core.vae import Terms
from ..settings import check_objective


def free_bits_kl(kl_dims: torch.Tensor, free_bits: float) -> torch.Tensor:
    """sum_j max(lambda, E_batch[KL_j]) (Kingma et al. 2016, "free bits"): no pressure on a latent
    dimension while its batch-mean KL is below lambda nats, so it can start carrying information."""
    return kl_dims.mean(0).clamp(min=free_bits).sum()


class Step(NamedTuple):
    loss: torch.Tensor               # what is minimised
    terms: Terms                     # the one-sample ELBO's terms, for logging
    iwae: torch.Tensor | None = None  # the k-sample bound L_k per example, when k > 1


@dataclass(frozen=True)
class Objective:
    beta: float = 1.0         # the KL's weight after warm-up (1: the ELBO)
    warmup_steps: int = 0     # linear KL warm-up over this many steps ...
    warmup_epochs: int = 0    # ... or epochs (at most one of the two is set)
    free_bits: float = 0.0    # nats per latent dimension (0: off; the analytic ELBO only)
    kl_estimator: str = "analytic"  # the KL of the one-sample ELBO with the standard gradient
    iw_samples: int = 1       # k: importance samples per example
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
        kl = terms.kl_dims if self.kl_estimator == "analytic" else kl_mc_dims(terms.z, terms.mu, terms.logvar)
        kl = free_bits_kl(kl, self.free_bits) if self.free_bits > 0 else kl.sum(-1).mean()
        return Step(terms.recon.mean() + c * kl, terms)

    def _importance_weighted(self, vae, x: torch.Tensor, c: float) -> Step:
        mu, logvar = vae.encode(x)
        z = reparameterize(mu.expand(self.iw_samples, *mu.shape), logvar)  # (k, B, K)
        log_px_z = vae.log_px_given_z(x, z)  # (k, B)
        # stl and dreg: q's parameters held fixed in log q, so phi's gradient flows through z alone.
        q = (mu, logvar) if self.gradient == "reparam" else (mu.detach(), logvar.detach())
        log_w = log_importance_weights(log_px_z, z, *q, kl_weight=c)
        if self.gradient == "dreg" and z.requires_grad:
            # dL/dz_i carries w~_i; scaled by (1 - c) + c w~_i it becomes dreg's weight for the path to phi.
            scale = ((1 - c) + c * torch.softmax(log_w, dim=0)).detach().unsqueeze(-1)
            z.register_hook(lambda grad: grad * scale)
        bound = iwae_bound(log_w)
        with torch.no_grad():
            true_bound = bound if c == 1.0 else iwae_bound(log_importance_weights(log_px_z, z, *q))
        terms = Terms(-log_px_z[0], kl_analytic(mu, logvar), z[0], mu, logvar)
        return Step(-bound.mean(), terms, true_bound if self.iw_samples > 1 else None)
