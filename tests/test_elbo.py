"""The objective's formulas against torch.distributions and against each other."""
import math

import pytest
import torch
from torch.distributions import Independent, Normal, kl_divergence

from vae_cli.elbo import kl_analytic, kl_mc, kl_weight, log_normal_diag, log_standard_normal
from vae_cli.nets import reparameterize


def _reference_kl(mu, logvar):
    q = Normal(mu, torch.exp(0.5 * logvar))
    return kl_divergence(q, Normal(torch.zeros_like(mu), torch.ones_like(mu))).sum(-1)


def test_analytic_kl_matches_torch_distributions():
    g = torch.Generator().manual_seed(0)
    mu = 3 * torch.randn(512, 16, generator=g, dtype=torch.float64)
    logvar = 8 * torch.rand(512, 16, generator=g, dtype=torch.float64) - 4
    torch.testing.assert_close(kl_analytic(mu, logvar).sum(-1), _reference_kl(mu, logvar), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("logvar_value", [-30.0, -12.0, 0.0, 12.0, 30.0])
def test_analytic_kl_at_extreme_log_variances(logvar_value):
    mu = torch.linspace(-50, 50, 11, dtype=torch.float64).unsqueeze(0)
    logvar = torch.full_like(mu, logvar_value)
    ours, ref = kl_analytic(mu, logvar).sum(-1), _reference_kl(mu, logvar)
    assert torch.isfinite(ours).all()
    torch.testing.assert_close(ours, ref, rtol=1e-9, atol=1e-9)
    # float32, as in training: finite and close in relative terms.
    ours32 = kl_analytic(mu.float(), logvar.float()).sum(-1).double()
    assert torch.isfinite(ours32).all()
    torch.testing.assert_close(ours32, ref, rtol=1e-5, atol=1e-3)


def test_kl_is_zero_only_at_the_prior():
    zero = torch.zeros(1, 4)
    assert kl_analytic(zero, zero).abs().max() == 0
    assert (kl_analytic(torch.full((1, 4), 0.1), zero) > 0).all()
    assert (kl_analytic(zero, torch.full((1, 4), 0.1)) > 0).all()


def test_log_densities_match_torch_distributions():
    g = torch.Generator().manual_seed(1)
    z, mu = torch.randn(64, 8, generator=g), torch.randn(64, 8, generator=g)
    logvar = torch.randn(64, 8, generator=g)
    ref_q = Independent(Normal(mu, torch.exp(0.5 * logvar)), 1).log_prob(z)
    ref_p = Independent(Normal(torch.zeros(8), torch.ones(8)), 1).log_prob(z)
    torch.testing.assert_close(log_normal_diag(z, mu, logvar), ref_q, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(log_standard_normal(z), ref_p, rtol=1e-5, atol=1e-4)


def test_monte_carlo_kl_converges_to_the_analytic_kl():
    torch.manual_seed(0)
    mu = torch.tensor([[0.5, -1.0, 2.0, 0.0, 0.3]], dtype=torch.float64)
    logvar = torch.tensor([[-1.0, 0.5, -3.0, 0.0, 1.5]], dtype=torch.float64)
    exact = kl_analytic(mu, logvar).sum().item()
    for n in (1_000, 100_000, 1_000_000):
        z = reparameterize(mu.expand(n, -1), logvar.expand(n, -1))
        samples = kl_mc(z, mu, logvar)
        se = samples.std().item() / math.sqrt(n)
        assert abs(samples.mean().item() - exact) < 5 * se, (n, samples.mean().item(), exact, se)
    assert se < 0.005  # the estimate has converged to within a few thousandths of a nat


def test_reparameterised_samples_have_the_posterior_moments_and_carry_gradients():
    torch.manual_seed(0)
    mu = torch.tensor([1.0, -2.0], requires_grad=True)
    logvar = torch.tensor([0.0, math.log(0.25)], requires_grad=True)
    z = reparameterize(mu.expand(200_000, -1), logvar.expand(200_000, -1))
    torch.testing.assert_close(z.mean(0), mu.detach(), atol=0.01, rtol=0)
    torch.testing.assert_close(z.std(0), torch.tensor([1.0, 0.5]), atol=0.01, rtol=0)
    z.sum().backward()
    torch.testing.assert_close(mu.grad, torch.full((2,), 200_000.0))  # dz/dmu = 1
    assert logvar.grad.abs().min() > 0


def test_kl_weight_ramps_linearly_to_beta():
    assert kl_weight(0, 1.0, 0) == 1.0
    assert kl_weight(123, 0.5, 0) == 0.5
    assert [kl_weight(s, 2.0, 4) for s in (0, 1, 2, 4, 10)] == [0.0, 0.5, 1.0, 2.0, 2.0]
