"""The training objective: what is optimised, given the ELBO's terms.

loss = recon + beta * w(step) * KL_opt, w ramping linearly from 0 to 1 over the warm-up, KL_opt the
analytic KL (or its single-sample estimate) with an optional free-bits floor per latent dimension.
What is logged is always the unweighted ELBO with the analytic KL (core.metrics).
"""
from dataclasses import dataclass

import torch

from ..core.elbo import kl_mc_dims
from ..core.vae import Terms

KL_ESTIMATORS = ("analytic", "mc")


def free_bits_kl(kl_dims: torch.Tensor, free_bits: float) -> torch.Tensor:
    """sum_j max(lambda, E_batch[KL_j]) (Kingma et al. 2016, "free bits"): no pressure on a latent
    dimension while its batch-mean KL is below lambda nats, so it can start carrying information."""
    return kl_dims.mean(0).clamp(min=free_bits).sum()


@dataclass(frozen=True)
class Objective:
    beta: float = 1.0         # the KL's weight after warm-up (1: the ELBO)
    warmup_steps: int = 0     # linear KL warm-up over this many steps ...
    warmup_epochs: int = 0    # ... or epochs (at most one of the two is set)
    free_bits: float = 0.0    # nats per latent dimension (0: off)
    kl_estimator: str = "analytic"

    def __post_init__(self):
        if not self.beta >= 0 or not self.free_bits >= 0 or min(self.warmup_steps, self.warmup_epochs) < 0:
            raise ValueError(f"beta, free_bits and the warm-up must be >= 0: {self}")
        if self.warmup_steps and self.warmup_epochs:
            raise ValueError(f"warm-up in steps or in epochs, not both: {self}")
        if self.kl_estimator not in KL_ESTIMATORS:
            raise ValueError(f"unknown kl_estimator {self.kl_estimator!r}; known: {', '.join(KL_ESTIMATORS)}")

    def kl_weight(self, step: int, steps_per_epoch: int) -> float:
        """beta, ramped linearly from 0 over the warm-up."""
        warmup = self.warmup_steps or self.warmup_epochs * steps_per_epoch
        return self.beta * min(1.0, step / warmup) if warmup > 0 else self.beta

    def loss(self, terms: Terms, step: int, steps_per_epoch: int) -> torch.Tensor:
        """The batch's loss to minimise at optimiser step `step`."""
        kl = terms.kl_dims if self.kl_estimator == "analytic" else kl_mc_dims(terms.z, terms.mu, terms.logvar)
        kl = free_bits_kl(kl, self.free_bits) if self.free_bits > 0 else kl.sum(-1).mean()
        return terms.recon.mean() + self.kl_weight(step, steps_per_epoch) * kl
