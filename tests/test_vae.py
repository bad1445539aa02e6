"""The core VAE's terms: what it computes per example against torch.distributions, that both networks
learn from them, and that they stay float32 under bf16 autocast."""

import pytest
import torch
from torch.distributions import Bernoulli, Independent, Normal, kl_divergence

from vae_cli.core.vae import VAE


def test_terms_are_the_single_sample_elbo():
    torch.manual_seed(0)
    vae = VAE((1, 8, 8), latent_dim=3, hidden_dims=[16])
    x = torch.bernoulli(torch.full((5, 1, 8, 8), 0.3))
    torch.manual_seed(1)
    t = vae.terms(x)

    # Rebuild both terms from torch.distributions with the same noise.
    mu, logvar = vae.encoder(x)
    q = Independent(Normal(mu, torch.exp(0.5 * logvar)), 1)
    torch.manual_seed(1)
    z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
    ref_recon = -Bernoulli(logits=vae.decoder(z)).log_prob(x).flatten(1).sum(-1)
    ref_kl = kl_divergence(q, Independent(Normal(torch.zeros(3), torch.ones(3)), 1))
    torch.testing.assert_close(t.recon, ref_recon)
    torch.testing.assert_close(t.kl, ref_kl)
    torch.testing.assert_close(t.elbo, -(ref_recon + ref_kl))
    torch.testing.assert_close(t.z, z)
    assert t.recon.shape == t.kl.shape == (5,) and t.kl_dims.shape == (5, 3)


def test_gradients_reach_the_encoder_through_both_terms():
    torch.manual_seed(0)
    vae = VAE((1, 8, 8), latent_dim=2, hidden_dims=[8])
    x = torch.bernoulli(torch.full((16, 1, 8, 8), 0.5))
    t = vae.terms(x)
    for term in (t.recon, t.kl):
        vae.zero_grad()
        term.mean().backward(retain_graph=True)
        first = vae.encoder.net[0].weight.grad
        assert first is not None and first.abs().sum() > 0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"latent_dim": 0},
        {"hidden_dims": []},
        {"hidden_dims": [64, -1]},
        {"activation": "swishy"},
        {"arch": "rnn"},
        {"likelihood": "poisson"},
    ],
)
def test_bad_arguments_are_plain_errors(kwargs):
    with pytest.raises(ValueError):
        VAE((1, 8, 8), **kwargs)


def test_terms_stay_float32_and_close_under_bf16_autocast():
    torch.manual_seed(0)
    vae = VAE((1, 28, 28), latent_dim=8, hidden_dims=[64])
    x = torch.bernoulli(torch.full((32, 1, 28, 28), 0.3))
    torch.manual_seed(1)
    t32 = vae.terms(x)
    torch.manual_seed(1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        t16 = vae.terms(x)
    assert t16.recon.dtype == t16.kl.dtype == torch.float32
    torch.testing.assert_close(t16.recon, t32.recon, rtol=0.02, atol=0.5)
    torch.testing.assert_close(t16.kl, t32.kl, rtol=0.05, atol=0.05)


def test_importance_weighted_estimate_is_the_same_however_it_is_chunked():
    torch.manual_seed(0)
    vae = VAE((1, 8, 8), latent_dim=3, hidden_dims=[16])
    x = torch.bernoulli(torch.full((7, 1, 8, 8), 0.4))
    with torch.no_grad():
        torch.manual_seed(3)
        whole = vae.importance_weighted(x, k=12, max_pairs=10_000)  # all 84 pairs in one pass
        torch.manual_seed(3)
        mu, logvar = vae.encode(x)
        log_w, log_px_z = vae.log_weights(x, mu, logvar, 12)
    # The same draws, in one pass: log (1/k sum_i w_i) computed directly, recon averaged over the samples.
    torch.testing.assert_close(whole.log_px, torch.logsumexp(log_w, 0) - torch.log(torch.tensor(12.0)))
    torch.testing.assert_close(whole.recon, -log_px_z.mean(0))
    assert (whole.log_px >= log_w.mean(0)).all()  # Jensen, draw by draw: the bound is above the mean log-weight
    # In chunks of 5 samples and 1 example: other draws (exactness under chunking: test_evaluate.py).
    torch.manual_seed(4)
    chunked = vae.importance_weighted(x, k=12, max_pairs=5)
    assert chunked.log_px.shape == (7,) and torch.isfinite(chunked.log_px).all()
    torch.testing.assert_close(chunked.kl_dims, whole.kl_dims)
    torch.testing.assert_close(chunked.mu, whole.mu)
