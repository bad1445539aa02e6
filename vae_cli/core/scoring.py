"""Scoring a VAE on a data split: the ELBO's terms and the importance-weighted estimate of log p(x)
per example, their means with standard errors, and the paired difference of two models.

The importance-weighted estimate (the IWAE bound with k samples, Burda et al. 2016) makes the
identity log p(x) = ELBO + KL(q(z|x) || p(z|x)) measurable: the inference gap is log p(x) - ELBO.
"""

import hashlib
import math

import torch

from .metrics import bits_per_dim
from .vae import VAE, ImportanceWeighted

ACTIVE_UNIT_THRESHOLD = 0.01  # Burda et al. 2016: unit j is active when Cov_x(E_q[z_j]) > 0.01


@torch.no_grad()
def score(
    vae: VAE, batches, k: int, max_pairs: int, device, limit: int | None = None, progress=None
) -> ImportanceWeighted:
    """vae.importance_weighted over an iterable of [x, y] batches (the first `limit` examples), concatenated.
    A batch goes through in the pieces of at most max_pairs (example, sample) pairs that vae.importance_weighted
    would cut it into, so the random draws are the same whatever the limit: a limited score is exactly the
    first examples of the whole one (the last piece is scored whole and cut, at most one decoder pass more).
    progress(n), when given, is told of every n examples scored, and nothing waits for the device."""
    rows = max(1, max_pairs // min(k, max_pairs))  # examples per piece, as in vae.importance_weighted
    parts, seen = [], 0
    for piece in (piece for batch in batches for piece in batch[0].to(device).split(rows)):
        if limit is not None and seen >= limit:
            break
        keep = len(piece) if limit is None else min(len(piece), limit - seen)
        parts.append(tuple(None if t is None else t[:keep] for t in vae.importance_weighted(piece, k, max_pairs)))
        seen += keep
        if progress is not None:
            progress(keep)
    return ImportanceWeighted(*(None if p[0] is None else torch.cat(p) for p in zip(*parts)))


def mean_se(v: torch.Tensor) -> tuple[float, float]:
    """The mean over examples and its standard error."""
    v = v.double()
    se = v.std().item() / math.sqrt(len(v)) if len(v) > 1 else float("nan")
    return v.mean().item(), se


def summarize(s: ImportanceWeighted, n_dims: int) -> dict:
    """Means over examples (with standard errors where they are estimates), in nats per example. kl_per_dim is
    empty where the posterior and prior families have no KL per dimension (core/families.py)."""
    elbo, elbo_se = mean_se(s.elbo)
    nll, nll_se = mean_se(-s.log_px)
    gap, gap_se = mean_se(s.log_px - s.elbo)
    mu = s.mu.double()
    mu_var = mu.var(0) if len(mu) > 1 else torch.zeros(mu.shape[1], dtype=mu.dtype)
    return {
        "elbo": elbo,
        "elbo_se": elbo_se,
        "recon_loss": s.recon.double().mean().item(),
        "kl": (s.kl if s.kl is not None else s.kl_dims.sum(-1)).double().mean().item(),
        "bpd": bits_per_dim(-elbo, n_dims),
        "nll_iw": nll,
        "nll_iw_se": nll_se,
        "inference_gap": gap,
        "inference_gap_se": gap_se,
        "active_units": int((mu_var > ACTIVE_UNIT_THRESHOLD).sum()),
        "latent_dim": mu.shape[1],
        "kl_per_dim": s.kl_dims.double().mean(0).tolist(),
        "posterior_mean_var_per_dim": mu_var.tolist(),
        "n_examples": len(mu),
    }


def paired_difference(mine: dict, other: dict) -> dict:
    """This model minus the other on the same images (dicts of per-image log_px and elbo): the mean
    per-image difference in nll_iw and elbo, with the standard error of that mean. Most of the
    per-image variance is the images' own (some are harder for every model), so this is far tighter
    than the two models' standard errors together. Both score one split in one order, so where one stopped
    early (vae-eval limit=N) the images both scored are the first n."""
    n = min(len(mine["log_px"]), len(other["log_px"]))
    d_nll, d_nll_se = mean_se(other["log_px"][:n] - mine["log_px"][:n])
    d_elbo, d_elbo_se = mean_se(mine["elbo"][:n] - other["elbo"][:n])
    return {
        "n_paired": n,
        "nll_iw_diff": d_nll,
        "nll_iw_diff_se": d_nll_se,
        "elbo_diff": d_elbo,
        "elbo_diff_se": d_elbo_se,
    }


def fingerprint(batches) -> tuple[str, int]:
    """SHA-256 of the images in order (two evaluations with the same one scored the same pixels), and their number."""
    h, n = hashlib.sha256(), 0
    for batch in batches:
        h.update(batch[0].detach().cpu().contiguous().numpy().tobytes())
        n += len(batch[0])
    return h.hexdigest(), n
