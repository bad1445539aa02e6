"""Encoder and decoder networks.

The encoder maps x to the parameters (mu, log sigma^2) of q(z|x) = N(mu, diag(sigma^2)) (and, for a posterior
family that needs them, further outputs: core/families.py);
the decoder maps z to the parameters of p(x|z): `params_per_dim` values per data dimension,
shaped (B, params_per_dim * C, H, W) for x of shape (B, C, H, W).
"""

import math

import torch
from torch import nn

from ..settings import GATED

# The activations by the names users choose them by (settings.ACTIVATIONS).
ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "elu": nn.ELU, "gelu": nn.GELU, "silu": nn.SiLU}


class GatedLinear(nn.Module):
    """h = (W x + b) * sigmoid(V x + c): a linear layer gated by a second one (Dauphin et al. 2017),
    the hidden layer of the VampPrior / Exemplar VAE MLPs whose results we compare against."""

    def __init__(self, n_in: int, n_out: int):
        super().__init__()
        self.linear = nn.Linear(n_in, 2 * n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, gate = self.linear(x).chunk(2, dim=-1)
        return h * torch.sigmoid(gate)


def _mlp(sizes: list[int], activation: str) -> nn.Sequential:
    """Hidden layers with the activation (or gated layers, activation=gated), a linear output layer."""
    act = None if activation == GATED else ACTIVATIONS[activation]
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        hidden = i < len(sizes) - 2
        if hidden and act is None:
            layers.append(GatedLinear(n_in, n_out))
        else:
            layers.append(nn.Linear(n_in, n_out))
            if hidden:
                layers.append(act())
    return nn.Sequential(*layers)


def _split(out: torch.Tensor, latent_dim: int) -> tuple[torch.Tensor, ...]:
    """(mu, log sigma^2), or (mu, log sigma^2, extra) where the posterior family takes more outputs."""
    if out.shape[-1] == 2 * latent_dim:
        return tuple(out.chunk(2, dim=-1))
    return out[..., :latent_dim], out[..., latent_dim : 2 * latent_dim], out[..., 2 * latent_dim :]


class MLPEncoder(nn.Module):
    def __init__(self, data_shape, hidden_dims: list[int], latent_dim: int, activation: str, extra_outputs: int = 0):
        super().__init__()
        self.latent_dim = latent_dim
        self.net = _mlp([math.prod(data_shape), *hidden_dims, 2 * latent_dim + extra_outputs], activation)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return _split(self.net(x.flatten(1)), self.latent_dim)


class MLPDecoder(nn.Module):
    def __init__(self, data_shape, hidden_dims: list[int], latent_dim: int, activation: str, params_per_dim: int = 1):
        super().__init__()
        c, *rest = data_shape
        self.out_shape = (params_per_dim * c, *rest)
        self.net = _mlp([latent_dim, *reversed(hidden_dims), math.prod(self.out_shape)], activation)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z).view(-1, *self.out_shape)

    def output_bias(self) -> torch.Tensor:
        """The last layer's bias, viewed as (params_per_dim * C, H, W)."""
        return self.net[-1].bias.view(self.out_shape)


def _halvings(size: tuple[int, int], n: int) -> list[tuple[int, int]]:
    """Spatial sizes after each of n stride-2 convolutions (kernel 3, padding 1): ceil(s / 2)."""
    sizes = [tuple(size)]
    for _ in range(n):
        sizes.append(tuple(-(-s // 2) for s in sizes[-1]))
    return sizes


class ConvEncoder(nn.Module):
    """Stride-2 3x3 convolutions with hidden_dims channels, then a linear map to (mu, log sigma^2).
    Any image size works: each layer halves it, rounding up."""

    def __init__(self, data_shape, hidden_dims: list[int], latent_dim: int, activation: str, extra_outputs: int = 0):
        super().__init__()
        self.latent_dim = latent_dim
        act = ACTIVATIONS[activation]
        c, h, w = data_shape
        layers: list[nn.Module] = []
        for c_in, c_out in zip([c, *hidden_dims[:-1]], hidden_dims):
            layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1), act()]
        self.convs = nn.Sequential(*layers)
        h_last, w_last = _halvings((h, w), len(hidden_dims))[-1]
        self.fc = nn.Linear(hidden_dims[-1] * h_last * w_last, 2 * latent_dim + extra_outputs)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return _split(self.fc(self.convs(x).flatten(1)), self.latent_dim)


class ConvDecoder(nn.Module):
    """The encoder's mirror: a linear map to the smallest feature map, then stride-2 transposed
    convolutions whose output padding restores each of the encoder's sizes exactly."""

    def __init__(self, data_shape, hidden_dims: list[int], latent_dim: int, activation: str, params_per_dim: int = 1):
        super().__init__()
        act = ACTIVATIONS[activation]
        c, h, w = data_shape
        sizes = _halvings((h, w), len(hidden_dims))  # input size first, smallest last
        self.start = (hidden_dims[-1], *sizes[-1])
        self.fc = nn.Linear(latent_dim, math.prod(self.start))
        channels = [*reversed(hidden_dims), params_per_dim * c]
        layers: list[nn.Module] = [act()]
        for i, (c_in, c_out) in enumerate(zip(channels[:-1], channels[1:])):
            target = sizes[-2 - i]
            # (s - 1) * 2 - 2 + 3 + p = 2s - 1 + p: p = 1 where the target size is even.
            pad = tuple(int(t % 2 == 0) for t in target)
            layers.append(nn.ConvTranspose2d(c_in, c_out, 3, stride=2, padding=1, output_padding=pad))
            if i < len(channels) - 2:
                layers.append(act())
        self.deconvs = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.deconvs(self.fc(z).view(-1, *self.start))

    def output_bias(self) -> torch.Tensor:
        """The last layer's bias, one value per output channel, as (params_per_dim * C, 1, 1)."""
        return self.deconvs[-1].bias.view(-1, 1, 1)


def make_networks(
    arch: str,
    data_shape,
    hidden_dims: list[int],
    latent_dim: int,
    activation: str,
    params_per_dim: int,
    extra_outputs: int = 0,
) -> tuple[nn.Module, nn.Module]:
    """(encoder, decoder) of the architecture `arch` (settings the VAE has checked); the encoder has
    `extra_outputs` outputs beyond (mu, log sigma^2) for a posterior family that takes more (core/families.py)."""
    if arch == "mlp":
        return (
            MLPEncoder(data_shape, hidden_dims, latent_dim, activation, extra_outputs),
            MLPDecoder(data_shape, hidden_dims, latent_dim, activation, params_per_dim),
        )
    if arch == "conv":
        if len(data_shape) != 3:
            raise ValueError(f"a conv network needs image data shaped (C, H, W), not {tuple(data_shape)}")
        return (
            ConvEncoder(data_shape, hidden_dims, latent_dim, activation, extra_outputs),
            ConvDecoder(data_shape, hidden_dims, latent_dim, activation, params_per_dim),
        )
