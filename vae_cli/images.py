"""Image grids of what a VAE has learned, as (C, H, W) tensors in [0, 1] made with torchvision's
make_grid: shared by vae-sample (PNG files) and the TensorBoard image callback."""
import math

import torch
import torch.nn.functional as F
from torchvision.utils import make_grid

MIN_SIDE = 28  # upscale tiny images (8x8 digits) so a grid is readable


def _grid(images: torch.Tensor, nrow: int) -> torch.Tensor:
    images = images.float().clamp(0, 1).cpu()
    scale = max(1, math.ceil(MIN_SIDE / images.shape[-1]))
    if scale > 1:
        images = F.interpolate(images, scale_factor=scale, mode="nearest")
    return make_grid(images, nrow=nrow, padding=2, pad_value=0.5)


def _decode_mean(model, z: torch.Tensor) -> torch.Tensor:
    return model.likelihood.mean(model.decoder(z))


@torch.no_grad()
def prior_samples(model, n: int, draw: bool = False) -> torch.Tensor:
    """n samples z ~ p(z) = N(0, I), shown as the mean of p(x|z), or as a draw x ~ p(x|z)."""
    z = torch.randn(n, model.hparams.latent_dim, device=model.device)
    params = model.decoder(z)
    x = model.likelihood.sample(params) if draw else model.likelihood.mean(params)
    return _grid(x, nrow=math.ceil(math.sqrt(n)))


@torch.no_grad()
def reconstructions(model, x: torch.Tensor, per_row: int = 8) -> torch.Tensor:
    """Rows of inputs, each followed by a row of their reconstructions (mean of p(x|z) at z = mu)."""
    x = x[: (len(x) // per_row) * per_row or len(x)]
    mu, _ = model.encoder(x)
    recon = _decode_mean(model, mu)
    per_row = min(per_row, len(x))
    rows = [t for i in range(0, len(x), per_row) for t in (x[i:i + per_row], recon[i:i + per_row])]
    return _grid(torch.cat(rows), nrow=per_row)


@torch.no_grad()
def kl_per_dim(model, x: torch.Tensor) -> torch.Tensor:
    from .elbo import kl_analytic

    return kl_analytic(*model.encoder(x)).mean(0)


@torch.no_grad()
def traversals(model, x: torch.Tensor, steps: int = 11, span: float = 3.0, max_dims: int = 32) -> torch.Tensor:
    """One row per latent dimension, sorted by its KL on x (most informative first): the decoded mean
    as z_j sweeps [-span, span] while the other coordinates stay at the posterior mean of x[0]."""
    order = torch.argsort(kl_per_dim(model, x), descending=True)[:max_dims]
    base = model.encoder(x[:1])[0][0]
    values = torch.linspace(-span, span, steps, device=x.device)
    z = base.repeat(len(order), steps, 1)
    z[torch.arange(len(order)), :, order] = values
    return _grid(_decode_mean(model, z.flatten(0, 1)), nrow=steps)


@torch.no_grad()
def interpolations(model, x: torch.Tensor, pairs: int = 8, steps: int = 10) -> torch.Tensor:
    """Rows that decode straight lines between the posterior means of two inputs (x[2i], x[2i+1])."""
    pairs = min(pairs, len(x) // 2)
    mu, _ = model.encoder(x[: 2 * pairs])
    a, b = mu[0::2], mu[1::2]
    t = torch.linspace(0, 1, steps, device=x.device).view(1, steps, 1)
    z = a.unsqueeze(1) * (1 - t) + b.unsqueeze(1) * t
    return _grid(_decode_mean(model, z.flatten(0, 1)), nrow=steps)


@torch.no_grad()
def manifold(model, steps: int = 20) -> torch.Tensor:
    """For K = 2: the decoded mean over a grid of z at evenly spaced quantiles of N(0, 1) in each axis."""
    q = torch.distributions.Normal(0.0, 1.0).icdf(torch.linspace(0.05, 0.95, steps))
    z = torch.stack(torch.meshgrid(q.flip(0), q, indexing="ij"), dim=-1).flip(-1).reshape(-1, 2).to(model.device)
    return _grid(_decode_mean(model, z), nrow=steps)
