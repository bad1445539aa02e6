"""The inference gap log p(x) - ELBO split into the approximation gap and the amortisation gap (Cremer, Li and
Duvenaud 2018, "Inference Suboptimality in Variational Autoencoders"):

  log p(x) - ELBO(q_amortised) = [log p(x) - ELBO(q*)] + [ELBO(q*) - ELBO(q_amortised)]
                                 approximation gap       amortisation gap

q* is the best q in the posterior's family for that one image: q's own per-image parameters, started at the
encoder's output, optimised by Adam on the Monte Carlo ELBO with the decoder and the prior held fixed.
The per-image parameters are the family's: (mu, log sigma^2) for diagonal; (mu, log sigma^2, the entries below
the Cholesky factor's diagonal) for full; the base Gaussian's (mu, log sigma^2) for iaf, the flow's weights (shared
by every image) held fixed. Where the encoder clips the log-variance (logvar_range) the optimised one is clipped
the same way, so q* stays in the family the encoder can output.
"""

from typing import NamedTuple

import torch
import torch.nn.functional as F

from .families import QParams


class Gaps(NamedTuple):
    """Per image: the amortised ELBO and the optimised ELBO, each estimated with the same draws."""

    amortised_elbo: torch.Tensor
    optimised_elbo: torch.Tensor
    q: QParams  # the optimised parameters


def _clip(vae, q: QParams) -> QParams:
    if vae.logvar_range is None:
        return q
    return q._replace(logvar=F.hardtanh(q.logvar, *vae.logvar_range))


def elbo_estimate(vae, x: torch.Tensor, q: QParams, samples: int) -> torch.Tensor:
    """The ELBO of each image under q (B,), with `samples` draws: E_q[log p(x|z)] by Monte Carlo, and the KL in
    closed form where the families have it (as vae-eval's elbo), else log q(z|x) - log p(z) averaged."""
    q = _clip(vae, q)
    z, log_q = vae.sample_q(q, samples)
    log_px_z = vae.log_px_given_z(x, z)
    log_p = vae.log_prior(z)
    _, kl = vae.kl(q, log_q, log_p)
    return log_px_z.mean(0) - kl


def _stl_objective(vae, x: torch.Tensor, q: QParams, samples: int) -> torch.Tensor:
    """The ELBO of each image with the "sticking the landing" gradient (Roeder et al. 2017): log q(z|x) with q's
    parameters held fixed, so the gradient flows through z alone; unbiased, and with no variance at q = p(z|x)."""
    q = _clip(vae, q)
    z, _ = vae.sample_q(q, samples)
    log_w = vae.log_px_given_z(x, z) + vae.log_prior(z) - vae.log_q(z, q, detach=True)
    return log_w.mean(0)


def optimise_q(vae, x: torch.Tensor, steps: int, lr: float, samples: int, eval_samples: int, seed: int = 0) -> Gaps:
    """Each image's q optimised from the encoder's output: `steps` Adam steps on the ELBO with `samples` draws per
    step and the sticking-the-landing gradient, the learning rate decayed to 0 on a cosine (the images are
    independent: Adam's updates are per coordinate, so one optimiser serves the batch), then the amortised and the
    optimised ELBO each estimated with `eval_samples` draws from the same seed."""
    was_training = vae.training
    vae.eval()
    frozen = [p for p in vae.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    try:
        with torch.no_grad():
            q0 = vae.encode_q(x)
        params = [t.detach().clone().requires_grad_(True) for t in q0 if t is not None]
        opt = torch.optim.Adam(params, lr=lr)
        decay = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, steps))
        generator_state = torch.get_rng_state()
        torch.manual_seed(seed)
        for _ in range(steps):
            q = QParams(*params, *([None] if q0.extra is None else []))
            loss = -_stl_objective(vae, x, q, samples).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            decay.step()
        q_opt = QParams(*(p.detach() for p in params), *([None] if q0.extra is None else []))
        with torch.no_grad():
            torch.manual_seed(seed + 1)
            amortised = elbo_estimate(vae, x, q0, eval_samples)
            torch.manual_seed(seed + 1)  # the same draws: the difference is the q's, not the noise's
            optimised = elbo_estimate(vae, x, q_opt, eval_samples)
        torch.set_rng_state(generator_state)
    finally:
        for p in frozen:
            p.requires_grad_(True)
        vae.train(was_training)
    return Gaps(amortised, optimised, _clip(vae, q_opt))


def gaps(
    vae,
    batches,
    device,
    n_images: int,
    steps: int,
    lr: float,
    samples: int,
    eval_samples: int,
    max_pairs: int,
    seed: int = 0,
    progress=None,
) -> Gaps:
    """optimise_q over the first n_images of [x, y] batches, in pieces of at most max_pairs (image, draw) pairs
    through the decoder at once."""
    rows = max(1, max_pairs // max(samples, eval_samples))
    parts, seen = [], 0
    for piece in (piece for batch in batches for piece in batch[0].to(device).split(rows)):
        if seen >= n_images:
            break
        piece = piece[: n_images - seen]
        parts.append(optimise_q(vae, piece, steps, lr, samples, eval_samples, seed + seen))
        seen += len(piece)
        if progress is not None:
            progress(len(piece))
    return Gaps(
        torch.cat([p.amortised_elbo for p in parts]),
        torch.cat([p.optimised_elbo for p in parts]),
        QParams(*(None if p[0] is None else torch.cat(p) for p in zip(*(part.q for part in parts)))),
    )
