"""Image grids of what a VAE (core.vae.VAE) has learned, as (C, H, W) tensors in [0, 1]: shared by vae-sample
(PNG files) and the TensorBoard image callback. Torch only (importing torchvision would double vae-sample's
start-up); the grids are torchvision's make_grid's, pixel for pixel (a test compares them)."""

import io
import math

import torch
import torch.nn.functional as F

from ..core.elbo import kl_analytic

MIN_SIDE = 28  # upscale tiny images (8x8 digits) so a grid is readable


def make_grid(images: torch.Tensor, nrow: int, padding: int = 2, pad_value: float = 0.5) -> torch.Tensor:
    """(B, C, H, W) images tiled nrow to a row, `padding` pixels of pad_value around each (one image alone: itself,
    unpadded); grey images as RGB."""
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    b, c, h, w = images.shape
    if b == 1:
        return images[0]
    cols = min(nrow, b)
    rows = math.ceil(b / cols)
    grid = images.new_full((c, rows * (h + padding) + padding, cols * (w + padding) + padding), pad_value)
    for i, image in enumerate(images):
        top, left = (i // cols) * (h + padding) + padding, (i % cols) * (w + padding) + padding
        grid[:, top : top + h, left : left + w] = image
    return grid


def png(grid: torch.Tensor, compress_level: int = 6) -> bytes:
    """A (C, H, W) grid in [0, 1], C = 1 (grey) or 3, as PNG bytes, each value rounded to the nearest of 256
    levels; compress_level from 0 (none) to 9 (PIL's default, 6, is slow on large images)."""
    from PIL import Image

    pixels = grid.mul(255).add_(0.5).clamp_(0, 255).permute(1, 2, 0).to("cpu", torch.uint8).numpy()
    buffer = io.BytesIO()
    Image.fromarray(pixels[..., 0] if grid.shape[0] == 1 else pixels).save(
        buffer, format="png", compress_level=compress_level
    )
    return buffer.getvalue()


def _grid(images: torch.Tensor, nrow: int) -> torch.Tensor:
    images = images.float().clamp(0, 1).cpu()
    scale = max(1, math.ceil(MIN_SIDE / images.shape[-1]))
    if scale > 1:
        images = F.interpolate(images, scale_factor=scale, mode="nearest")
    return make_grid(images, nrow=nrow, padding=2, pad_value=0.5)


@torch.no_grad()
def prior_samples(vae, n: int, draw: bool = False) -> torch.Tensor:
    """n samples z ~ p(z) = N(0, I), shown as the mean of p(x|z), or as a draw x ~ p(x|z)."""
    return _grid(vae.sample_prior(n, draw), nrow=math.ceil(math.sqrt(n)))


@torch.no_grad()
def reconstructions(vae, x: torch.Tensor, per_row: int = 8) -> torch.Tensor:
    """Rows of inputs, each followed by a row of their reconstructions (mean of p(x|z) at z = mu)."""
    x = x[: (len(x) // per_row) * per_row or len(x)]
    recon = vae.decode_mean(vae.encode(x)[0])
    per_row = min(per_row, len(x))
    rows = [t for i in range(0, len(x), per_row) for t in (x[i : i + per_row], recon[i : i + per_row])]
    return _grid(torch.cat(rows), nrow=per_row)


@torch.no_grad()
def kl_per_dim(vae, x: torch.Tensor) -> torch.Tensor:
    return kl_analytic(*vae.encode(x)).mean(0)


@torch.no_grad()
def traversals(vae, x: torch.Tensor, steps: int = 11, span: float = 3.0, max_dims: int = 32) -> torch.Tensor:
    """One row per latent dimension, sorted by its KL on x (most informative first): the decoded mean
    as z_j sweeps [-span, span] while the other coordinates stay at the posterior mean of x[0]."""
    order = torch.argsort(kl_per_dim(vae, x), descending=True)[:max_dims]
    base = vae.encode(x[:1])[0][0]
    values = torch.linspace(-span, span, steps, device=x.device)
    z = base.repeat(len(order), steps, 1)
    z[torch.arange(len(order)), :, order] = values
    return _grid(vae.decode_mean(z.flatten(0, 1)), nrow=steps)


@torch.no_grad()
def interpolations(vae, x: torch.Tensor, pairs: int = 8, steps: int = 10) -> torch.Tensor:
    """Rows that decode straight lines between the posterior means of two inputs (x[2i], x[2i+1])."""
    pairs = min(pairs, len(x) // 2)
    mu, _ = vae.encode(x[: 2 * pairs])
    a, b = mu[0::2], mu[1::2]
    t = torch.linspace(0, 1, steps, device=x.device).view(1, steps, 1)
    z = a.unsqueeze(1) * (1 - t) + b.unsqueeze(1) * t
    return _grid(vae.decode_mean(z.flatten(0, 1)), nrow=steps)


@torch.no_grad()
def manifold(vae, steps: int = 20) -> torch.Tensor:
    """For K = 2: the decoded mean over a grid of z at evenly spaced quantiles of N(0, 1) in each axis."""
    q = torch.distributions.Normal(0.0, 1.0).icdf(torch.linspace(0.05, 0.95, steps))
    z = torch.stack(torch.meshgrid(q.flip(0), q, indexing="ij"), dim=-1).flip(-1).reshape(-1, 2)
    return _grid(vae.decode_mean(z.to(vae.device)), nrow=steps)
