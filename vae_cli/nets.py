"""Encoder and decoder networks.

The encoder maps x to the parameters (mu, log sigma^2) of q(z|x) = N(mu, diag(sigma^2));
the decoder maps z to the parameters of p(x|z), shaped like x.
"""
import math

import torch
from torch import nn

from .errors import UserError

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "elu": nn.ELU, "gelu": nn.GELU, "silu": nn.SiLU}


def _activation(name: str) -> type[nn.Module]:
    if name not in ACTIVATIONS:
        raise UserError(
            f"model.activation={name!r} is not a known activation; choose one of {', '.join(ACTIVATIONS)}."
        )
    return ACTIVATIONS[name]


def _mlp(sizes: list[int], activation: str) -> nn.Sequential:
    act = _activation(activation)
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(sizes) - 2:
            layers.append(act())
    return nn.Sequential(*layers)


class MLPEncoder(nn.Module):
    def __init__(self, data_shape: tuple[int, ...], hidden_dims: list[int], latent_dim: int, activation: str):
        super().__init__()
        self.latent_dim = latent_dim
        self.net = _mlp([math.prod(data_shape), *hidden_dims, 2 * latent_dim], activation)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.net(x.flatten(1)).chunk(2, dim=-1)
        return mu, logvar


class MLPDecoder(nn.Module):
    def __init__(self, data_shape: tuple[int, ...], hidden_dims: list[int], latent_dim: int, activation: str):
        super().__init__()
        self.data_shape = tuple(data_shape)
        self.net = _mlp([latent_dim, *reversed(hidden_dims), math.prod(data_shape)], activation)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z).view(-1, *self.data_shape)


def reparameterize(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """z = mu + sigma * eps, eps ~ N(0, I): a sample of q(z|x) that is differentiable in (mu, sigma)."""
    return mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)


def check_sizes(latent_dim, hidden_dims) -> None:
    """Fail early, naming the key, on sizes no network can have."""
    if not isinstance(latent_dim, int) or isinstance(latent_dim, bool) or latent_dim < 1:
        raise UserError(
            f"model.latent_dim={latent_dim!r} is not a valid latent dimension K; use an integer >= 1, "
            "e.g. model.latent_dim=16."
        )
    dims = list(hidden_dims)
    if not dims or any(not isinstance(h, int) or isinstance(h, bool) or h < 1 for h in dims):
        raise UserError(
            f"model.hidden_dims={dims!r} is not a list of layer widths; use one or more integers >= 1, "
            "e.g. model.hidden_dims=[512,256]."
        )
