"""Decoder likelihoods p(x|z): the decoder outputs `params` with the shape of x.

log_prob returns log p(x|z) per example in nats, summed over every data dimension and
including every normalising constant, so numbers compare across families.
"""
import math

import torch
import torch.nn.functional as F

from .errors import UserError


def _sum_data_dims(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).sum(-1)


class Bernoulli:
    """p(x|z) = prod_i Bern(x_i; sigmoid(params_i)), for binary x. params are logits."""

    name = "bernoulli"

    def log_prob(self, x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        # -BCE on logits is log p, computed stably (log-sum-exp form).
        return -_sum_data_dims(F.binary_cross_entropy_with_logits(params, x, reduction="none"))

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(params)

    def sample(self, params: torch.Tensor) -> torch.Tensor:
        return torch.bernoulli(torch.sigmoid(params))


class Gaussian:
    """p(x|z) = N(x; params, std^2 I) with a fixed std, for grey values."""

    name = "gaussian"

    def __init__(self, std: float):
        if not std > 0:
            raise UserError(
                f"model.gaussian_std={std} is not a valid standard deviation; "
                "use a positive number such as model.gaussian_std=0.1."
            )
        self.std = float(std)

    def log_prob(self, x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        z = (x - params) / self.std
        return _sum_data_dims(-0.5 * z.pow(2) - math.log(self.std) - 0.5 * math.log(2 * math.pi))

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        return params

    def sample(self, params: torch.Tensor) -> torch.Tensor:
        return params + self.std * torch.randn_like(params)


NAMES = ("bernoulli", "gaussian")


def make_likelihood(name: str, gaussian_std: float = 0.1):
    """The likelihood called `name` in the config (model.likelihood)."""
    if name == "bernoulli":
        return Bernoulli()
    if name == "gaussian":
        return Gaussian(gaussian_std)
    raise UserError(
        f"model.likelihood={name!r} is not a known likelihood; choose one of {', '.join(NAMES)}."
    )
