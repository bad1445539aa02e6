"""The LightningModule's terms: what it computes per example, and that both networks learn from it."""
import pytest
import torch
from torch.distributions import Bernoulli, Independent, Normal, kl_divergence

from vae_cli.errors import UserError
from vae_cli.module import VAE


def test_terms_are_the_single_sample_elbo_of_the_seed():
    torch.manual_seed(0)
    model = VAE((1, 8, 8), latent_dim=3, hidden_dims=[16])
    x = torch.bernoulli(torch.full((5, 1, 8, 8), 0.3))
    torch.manual_seed(1)
    recon, kl = model.terms(x)

    # Rebuild both terms from torch.distributions with the same noise.
    mu, logvar = model.encoder(x)
    q = Independent(Normal(mu, torch.exp(0.5 * logvar)), 1)
    torch.manual_seed(1)
    z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
    ref_recon = -Bernoulli(logits=model.decoder(z)).log_prob(x).flatten(1).sum(-1)
    ref_kl = kl_divergence(q, Independent(Normal(torch.zeros(3), torch.ones(3)), 1))
    torch.testing.assert_close(recon, ref_recon)
    torch.testing.assert_close(kl, ref_kl)
    assert recon.shape == kl.shape == (5,)


def test_gradients_reach_encoder_through_both_terms():
    torch.manual_seed(0)
    model = VAE((1, 8, 8), latent_dim=2, hidden_dims=[8])
    x = torch.bernoulli(torch.full((16, 1, 8, 8), 0.5))
    for term in model.terms(x):
        model.zero_grad()
        term.mean().backward(retain_graph=True)
        first = model.encoder.net[0].weight.grad
        assert first is not None and first.abs().sum() > 0


@pytest.mark.parametrize(
    "kwargs, key",
    [
        ({"latent_dim": 0}, "model.latent_dim=0"),
        ({"hidden_dims": []}, "model.hidden_dims=[]"),
        ({"hidden_dims": [64, -1]}, "model.hidden_dims=[64, -1]"),
        ({"lr": 0.0}, "optim.lr=0.0"),
        ({"beta": -1.0}, "objective.beta=-1.0"),
        ({"warmup_steps": -5}, "objective.warmup_steps=-5"),
        ({"activation": "swishy"}, "model.activation='swishy'"),
    ],
)
def test_out_of_range_settings_name_the_key(kwargs, key):
    with pytest.raises(UserError) as e:
        VAE((1, 8, 8), **kwargs)
    assert key in str(e.value)


def test_objective_stays_float32_and_close_under_bf16_autocast():
    torch.manual_seed(0)
    model = VAE((1, 28, 28), latent_dim=8, hidden_dims=[64])
    x = torch.bernoulli(torch.full((32, 1, 28, 28), 0.3))
    torch.manual_seed(1)
    recon32, kl32 = model.terms(x)
    torch.manual_seed(1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        recon16, kl16 = model.terms(x)
    assert recon16.dtype == kl16.dtype == torch.float32
    torch.testing.assert_close(recon16, recon32, rtol=0.02, atol=0.5)
    torch.testing.assert_close(kl16, kl32, rtol=0.05, atol=0.05)
