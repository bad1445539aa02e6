"""log p(x|z) of each likelihood against torch.distributions, including normalising constants."""
import pytest
import torch
from torch.distributions import Bernoulli as TorchBernoulli
from torch.distributions import Normal

from vae_cli.errors import UserError
from vae_cli.likelihoods import Bernoulli, Gaussian, make_likelihood


def test_bernoulli_log_prob_matches_torch_distributions():
    g = torch.Generator().manual_seed(0)
    logits = 6 * torch.randn(32, 1, 8, 8, generator=g, dtype=torch.float64)
    logits[0, 0, 0, :4] = torch.tensor([-60.0, 60.0, -60.0, 60.0])  # saturated logits stay finite
    x = torch.bernoulli(torch.full_like(logits, 0.4), generator=g)
    x[0, 0, 0, :4] = torch.tensor([1.0, 0.0, 0.0, 1.0])
    ref = TorchBernoulli(logits=logits).log_prob(x).flatten(1).sum(-1)
    ours = Bernoulli().log_prob(x, logits)
    assert torch.isfinite(ours).all()
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("std", [0.05, 0.1, 1.0, 3.0])
def test_gaussian_log_prob_matches_torch_distributions(std):
    g = torch.Generator().manual_seed(1)
    mean = torch.rand(16, 1, 28, 28, generator=g, dtype=torch.float64)
    x = torch.rand(16, 1, 28, 28, generator=g, dtype=torch.float64)
    ref = Normal(mean, std).log_prob(x).flatten(1).sum(-1)
    torch.testing.assert_close(Gaussian(std).log_prob(x, mean), ref, rtol=1e-10, atol=1e-8)


def test_means_and_samples_have_the_right_shape_and_support():
    params = torch.randn(4, 1, 8, 8)
    b, gauss = Bernoulli(), Gaussian(0.1)
    torch.testing.assert_close(b.mean(params), torch.sigmoid(params))
    assert set(b.sample(params).unique().tolist()) <= {0.0, 1.0}
    assert gauss.sample(params).shape == params.shape
    torch.testing.assert_close(gauss.mean(params), params)


def test_unknown_likelihood_and_bad_std_are_user_errors():
    with pytest.raises(UserError, match="model.likelihood='poisson'"):
        make_likelihood("poisson")
    with pytest.raises(UserError, match="model.gaussian_std=0"):
        make_likelihood("gaussian", 0)
