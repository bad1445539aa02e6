"""The objective's formulas against torch.distributions and against each other."""

import math

import pytest
import torch
from torch.distributions import Independent, Normal, kl_divergence

from vae_cli.core.elbo import (
    iwae_bound,
    kl_analytic,
    kl_mc_dims,
    log_importance_weights,
    log_normal_diag,
    log_standard_normal,
    reparameterize,
)
from vae_cli.core.metrics import bits_per_dim
from vae_cli.training.objective import Objective


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
        samples = kl_mc_dims(z, mu, logvar).sum(-1)
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
    assert Objective().kl_weight(0, steps_per_epoch=11) == 1.0
    assert Objective(beta=0.5).kl_weight(123, steps_per_epoch=11) == 0.5
    ramp = Objective(beta=2.0, warmup_steps=4)
    assert [ramp.kl_weight(s, steps_per_epoch=11) for s in (0, 1, 2, 4, 10)] == [0.0, 0.5, 1.0, 2.0, 2.0]
    by_epoch = Objective(warmup_epochs=2)  # 2 epochs of 11 steps
    assert [by_epoch.kl_weight(s, steps_per_epoch=11) for s in (0, 11, 22, 30)] == [0.0, 0.5, 1.0, 1.0]


def test_importance_weights_and_the_iwae_bound_match_torch_distributions():
    g = torch.Generator().manual_seed(2)
    k, b, dim = 7, 5, 3
    mu, logvar = (
        torch.randn(b, dim, generator=g, dtype=torch.float64),
        torch.randn(b, dim, generator=g, dtype=torch.float64),
    )
    z = mu + torch.exp(0.5 * logvar) * torch.randn(k, b, dim, generator=g, dtype=torch.float64)
    log_px_z = torch.randn(k, b, generator=g, dtype=torch.float64)
    q = Independent(Normal(mu, torch.exp(0.5 * logvar)), 1)
    prior = Independent(Normal(torch.zeros(dim, dtype=torch.float64), torch.ones(dim, dtype=torch.float64)), 1)
    log_w = log_importance_weights(log_px_z, z, mu, logvar)
    torch.testing.assert_close(log_w, log_px_z + prior.log_prob(z) - q.log_prob(z), rtol=1e-12, atol=1e-12)
    # log of the mean of the weights, computed directly in float64 (no overflow at these values).
    torch.testing.assert_close(iwae_bound(log_w), log_w.exp().mean(0).log(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(iwae_bound(log_w[:1]), log_w[0])  # k = 1: the single-sample ELBO


def test_bits_per_dim_is_nats_over_d_ln_2():
    assert bits_per_dim(784 * math.log(2), 784) == pytest.approx(1.0)
    assert bits_per_dim(torch.tensor(100.0), 64).item() == pytest.approx(100 / (64 * math.log(2)))
