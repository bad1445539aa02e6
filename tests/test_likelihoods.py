"""log p(x|z) of each likelihood against an independent reference, including normalising constants:
torch.distributions, or mpmath at high precision where torch.distributions is itself inexact."""

import math

import mpmath
import pytest
import torch
from torch.distributions import AffineTransform, Normal, SigmoidTransform, TransformedDistribution, Uniform
from torch.distributions import Bernoulli as TorchBernoulli
from torch.distributions import ContinuousBernoulli as TorchContinuousBernoulli

from vae_cli.core import likelihoods
from vae_cli.core.likelihoods import (
    LIKELIHOODS,
    Bernoulli,
    ContinuousBernoulli,
    DiscretizedLogistic,
    Gaussian,
    GaussianPixelVar,
    make_likelihood,
)

F64 = torch.float64
NAMES = list(LIKELIHOODS)


def test_bernoulli_log_prob_matches_torch_distributions():
    g = torch.Generator().manual_seed(0)
    logits = 6 * torch.randn(32, 1, 8, 8, generator=g, dtype=F64)
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
    mean = torch.rand(16, 1, 28, 28, generator=g, dtype=F64)
    x = torch.rand(16, 1, 28, 28, generator=g, dtype=F64)
    ref = Normal(mean, std).log_prob(x).flatten(1).sum(-1)
    torch.testing.assert_close(Gaussian(std).log_prob(x, mean), ref, rtol=1e-10, atol=1e-8)


def _global_std(lik) -> torch.Tensor:
    """The global-variance likelihood's sigma, from its parameter: sigma = STD_MIN + e^raw."""
    return likelihoods.STD_MIN + lik.raw_log_std.detach().exp()


@pytest.mark.parametrize("std", [0.05, 0.2, 1.0])
def test_global_var_gaussian_starts_at_gaussian_std_and_matches_torch(std):
    lik = make_likelihood("gaussian_global_var", std).double()
    assert _global_std(lik).item() == pytest.approx(std, rel=1e-6)  # the parameter is float32
    g = torch.Generator().manual_seed(2)
    mean = torch.rand(8, 1, 8, 8, generator=g, dtype=F64)
    x = torch.rand(8, 1, 8, 8, generator=g, dtype=F64)
    ref = Normal(mean, _global_std(lik)).log_prob(x).flatten(1).sum(-1)
    torch.testing.assert_close(lik.log_prob(x, mean), ref, rtol=1e-10, atol=1e-8)


def test_global_var_has_one_trainable_parameter_and_its_gradient_is_right():
    lik = make_likelihood("gaussian_global_var", 0.3).double()
    trainable = [p for p in lik.parameters() if p.requires_grad]
    assert len(trainable) == 1 and trainable[0].numel() == 1
    assert list(lik.state_dict()) == ["raw_log_std"]  # checkpointed with the model

    g = torch.Generator().manual_seed(3)
    mean = torch.rand(4, 1, 8, 8, generator=g, dtype=F64)
    x = torch.rand(4, 1, 8, 8, generator=g, dtype=F64)
    lik.log_prob(x, mean).sum().backward()
    # d/dsigma sum log N = sum (z^2 - 1) / sigma, and dsigma/draw = e^raw for sigma = STD_MIN + e^raw.
    sigma = _global_std(lik)
    expected = (((x - mean) / sigma) ** 2 - 1).sum() / sigma * (sigma - likelihoods.STD_MIN)
    grad = trainable[0].grad
    assert grad is not None and abs(grad.item()) > 1
    torch.testing.assert_close(grad, expected, rtol=1e-9, atol=0)


def test_pixel_var_gaussian_matches_torch_and_its_std_has_a_floor():
    g = torch.Generator().manual_seed(4)
    mean = torch.rand(8, 3, 4, 4, generator=g, dtype=F64)
    raw = 6 * torch.rand(8, 3, 4, 4, generator=g, dtype=F64) - 4  # std from about 0.02 to 7
    x = torch.rand(8, 3, 4, 4, generator=g, dtype=F64)
    params = torch.cat([mean, raw], dim=1)
    ref = Normal(mean, likelihoods.STD_MIN + raw.exp()).log_prob(x).flatten(1).sum(-1)
    torch.testing.assert_close(GaussianPixelVar().log_prob(x, params), ref, rtol=1e-10, atol=1e-8)

    # A decoder driving its log-std to -infinity on exactly reproduced pixels gets a bounded density.
    collapsed = GaussianPixelVar().log_prob(mean, torch.cat([mean, torch.full_like(raw, -1e4)], dim=1))
    bound = (-math.log(likelihoods.STD_MIN) - 0.5 * math.log(2 * math.pi)) * mean[0].numel()
    torch.testing.assert_close(collapsed, torch.full_like(collapsed, bound), rtol=1e-12, atol=0)


def _mp_cb_log_prob(x: float, eta: float) -> float:
    """log p(x) from the paper's form, lam^x (1 - lam)^(1 - x) 2 artanh(1 - 2 lam) / (1 - 2 lam), at 50 digits."""
    with mpmath.workdps(50):
        eta = mpmath.mpf(eta)
        lam = 1 / (1 + mpmath.exp(-eta))
        c = 2 if eta == 0 else 2 * mpmath.atanh(1 - 2 * lam) / (1 - 2 * lam)
        return float(x * mpmath.log(lam) + (1 - x) * mpmath.log(1 - lam) + mpmath.log(c))


# 0 is the 0/0 point of the closed form; +-0.1 is where the implementation switches to a series.
CB_LOGITS = [0.0, 1e-6, -1e-6, 1e-3, -0.05, 0.0999, -0.1, 0.1001, 1.0, -3.0, 15.0, -30.0]


def test_continuous_bernoulli_log_prob_matches_torch_distributions():
    g = torch.Generator().manual_seed(5)
    logits = torch.tensor(CB_LOGITS, dtype=F64).repeat(20, 1)
    logits[10:] = 8 * torch.randn(10, len(CB_LOGITS), generator=g, dtype=F64)
    x = torch.rand(20, len(CB_LOGITS), generator=g, dtype=F64)
    x[0, :2] = torch.tensor([0.0, 1.0])
    ref = TorchContinuousBernoulli(logits=logits).log_prob(x).sum(-1)
    ours = ContinuousBernoulli().log_prob(x, logits)
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-10)


def test_continuous_bernoulli_large_logits_match_a_high_precision_reference():
    # torch.distributions loses digits here (it forms 1 - 2 sigmoid(eta), which cancels for large
    # positive eta: about 3e-5 nats off at eta = 30 in float64), so the reference is mpmath.
    logits = torch.tensor([30.0, -30.0, 80.0, -80.0] + CB_LOGITS, dtype=F64)
    x = torch.linspace(0, 1, len(logits), dtype=F64)
    ours = ContinuousBernoulli().log_prob(x[:, None], logits[:, None])
    ref = torch.tensor([_mp_cb_log_prob(xi, eta) for xi, eta in zip(x.tolist(), logits.tolist())], dtype=F64)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-12)


def test_continuous_bernoulli_mean_is_the_cb_mean_not_lambda():
    logits = torch.tensor(CB_LOGITS + [30.0, 80.0, -80.0], dtype=F64)
    with mpmath.workdps(50):

        def mp_mean(eta):
            if eta == 0:
                return 0.5
            lam = 1 / (1 + mpmath.exp(-mpmath.mpf(eta)))
            return float(lam / (2 * lam - 1) + 1 / (2 * mpmath.atanh(1 - 2 * lam)))

        ref = torch.tensor([mp_mean(e) for e in logits.tolist()], dtype=F64)
    ours = ContinuousBernoulli().mean(logits)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-12)
    moderate = logits.abs() < 20  # where torch.distributions is accurate
    torch.testing.assert_close(
        ours[moderate], TorchContinuousBernoulli(logits=logits[moderate]).mean, rtol=0, atol=1e-10
    )
    assert not torch.allclose(ours, torch.sigmoid(logits), atol=1e-3)


@pytest.mark.parametrize("eta", [-60.0, -5.0, -0.5, 0.0, 0.5, 5.0, 60.0])
def test_continuous_bernoulli_samples_follow_its_cdf(eta):
    torch.manual_seed(6)
    x = ContinuousBernoulli().sample(torch.full((100_000,), eta, dtype=F64))
    assert ((x >= 0) & (x <= 1)).all()
    t = torch.linspace(0.05, 0.95, 10, dtype=F64)
    empirical = (x[:, None] <= t).double().mean(0)
    if abs(eta) < 20:
        cdf = TorchContinuousBernoulli(logits=torch.tensor(eta, dtype=F64)).cdf(t)
    else:  # torch.distributions clamps probabilities to [eps, 1 - eps], i.e. |logit| to about 36
        cdf = torch.expm1(eta * t) / math.expm1(eta)
    torch.testing.assert_close(empirical, cdf, rtol=0, atol=0.008)


@pytest.mark.parametrize("eta", [-60.0, -2.0, -1e-7, 0.0, 0.3, 2.0, 60.0])
def test_continuous_bernoulli_samples_are_its_inverse_cdf_up_to_the_ends_of_rand(eta, monkeypatch):
    u = torch.tensor([0.0, 0.1, 0.5, 0.9, 1 - 2.0**-53], dtype=F64)  # torch.rand's range is [0, 1)
    monkeypatch.setattr(torch, "rand_like", lambda t: u)
    x = ContinuousBernoulli().sample(torch.full((5,), eta, dtype=F64))
    assert torch.isfinite(x).all() and x[0] == 0 and (x <= 1).all() and (x.diff() >= 0).all()
    with mpmath.workdps(50):  # F^-1(u) = log(1 + u (e^eta - 1)) / eta, the uniform's u at eta = 0
        ref = [float(mpmath.log1p(ui * mpmath.expm1(eta)) / eta) if eta else ui for ui in u[1:4].tolist()]
    torch.testing.assert_close(x[1:4], torch.tensor(ref, dtype=F64), rtol=0, atol=2e-8)


def _logistic_params(mean: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Decoder outputs for the given means and scales (s = SCALE_MIN + e^raw)."""
    return torch.cat([mean, torch.log(scale - likelihoods.SCALE_MIN)], dim=1)


BINS = torch.arange(256, dtype=F64) / 255


@pytest.mark.parametrize(
    "mean, scale",
    [(0.0, 1e-3), (1.0, 1e-3), (0.5, 0.1), (0.3, 0.02), (-0.5, 0.1), (1.5, 5.0), (0.5 + 0.5 / 255, 2e-4), (0.0, 50.0)],
)
def test_discretized_logistic_bins_sum_to_one_and_mean_is_their_mean(mean, scale):
    m = torch.full((256, 1), mean, dtype=F64)
    params = _logistic_params(m, torch.full_like(m, scale))
    log_p = DiscretizedLogistic().log_prob(BINS[:, None], params)
    assert torch.isfinite(log_p).all()
    torch.testing.assert_close(torch.logsumexp(log_p, 0), torch.zeros((), dtype=F64), rtol=0, atol=1e-12)
    expected_mean = (log_p.exp() * BINS).sum()
    torch.testing.assert_close(DiscretizedLogistic().mean(params[:1]), expected_mean.view(1, 1), rtol=0, atol=1e-12)


def test_discretized_logistic_matches_logistic_cdf_differences():
    g = torch.Generator().manual_seed(7)
    x = torch.randint(0, 256, (64, 2, 4, 4), generator=g).to(F64) / 255
    x[0, 0, 0] = torch.tensor([0.0, 1.0, 0.0, 1.0])  # the edge bins
    # Moderate values: bins within about 11 scales of the mean, where torch's sigmoid (clamped
    # to [eps, 1 - eps]) still resolves the CDF difference.
    mean = 0.8 * torch.rand(x.shape, generator=g, dtype=F64) + 0.1
    scale = torch.exp(-2.5 * torch.rand(x.shape, generator=g, dtype=F64))  # 0.08 to 1
    logistic = TransformedDistribution(
        Uniform(torch.zeros_like(mean), torch.ones_like(mean)), [SigmoidTransform().inv, AffineTransform(mean, scale)]
    )
    half = 0.5 / 255
    upper = torch.where(x == 1, 1.0, logistic.cdf((x + half).clamp(max=1)))
    lower = torch.where(x == 0, 0.0, logistic.cdf((x - half).clamp(min=0)))
    ref = torch.log(upper - lower).flatten(1).sum(-1)
    ours = DiscretizedLogistic().log_prob(x, _logistic_params(mean, scale))
    torch.testing.assert_close(ours, ref, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize(
    "x, mean, scale",
    [(1.0, 0.0, 1e-3), (0.0, 1.0, 1e-3), (128 / 255, 0.2, 1e-4), (3 / 255, 0.9, 2e-4), (200 / 255, 0.1, 2e-3)],
)
def test_discretized_logistic_far_tails_are_exact_in_float32_and_float64(x, mean, scale):
    # Bins hundreds of scales from the mean, where the CDF difference is far below float range.
    with mpmath.workdps(2000):
        cdf = lambda t: 1 / (1 + mpmath.exp(-(t - mpmath.mpf(mean)) / mpmath.mpf(scale)))  # noqa: E731
        upper = 1 if x == 1 else cdf(mpmath.mpf(x) + mpmath.mpf(0.5) / 255)
        lower = 0 if x == 0 else cdf(mpmath.mpf(x) - mpmath.mpf(0.5) / 255)
        ref = float(mpmath.log(upper - lower))
    assert ref < -200
    for dtype, rtol in [(F64, 1e-12), (torch.float32, 1e-5)]:
        params = _logistic_params(torch.tensor([[mean]], dtype=F64), torch.tensor([[scale]], dtype=F64)).to(dtype)
        params.requires_grad_()
        ours = DiscretizedLogistic().log_prob(torch.tensor([[x]], dtype=dtype), params)
        ours.sum().backward()
        assert torch.isfinite(params.grad).all()
        assert ours.item() == pytest.approx(ref, rel=rtol)


def test_discretized_logistic_samples_follow_its_bin_probabilities():
    torch.manual_seed(8)
    lik = DiscretizedLogistic()
    for mean, scale in [(0.5, 0.02), (0.02, 0.05)]:
        m = torch.full((200_000, 1), mean, dtype=F64)
        x = lik.sample(_logistic_params(m, torch.full_like(m, scale)))
        k = torch.round(x * 255)
        torch.testing.assert_close(x, k / 255, rtol=0, atol=0)  # on the 8-bit grid
        freq = torch.bincount(k.long().flatten(), minlength=256).double() / len(k)
        m256 = torch.full((256, 1), mean, dtype=F64)
        probs = lik.log_prob(BINS[:, None], _logistic_params(m256, torch.full_like(m256, scale))).exp()
        torch.testing.assert_close(freq, probs, rtol=0, atol=3e-3)


def test_discretized_logistic_samples_at_the_ends_of_rand_are_the_edge_bins(monkeypatch):
    monkeypatch.setattr(torch, "rand_like", lambda t: torch.tensor([[0.0, 1 - 2.0**-24]]))
    params = torch.tensor([[0.5, 0.5, -3.0, -3.0]])  # means 0.5, scales about 0.05
    torch.testing.assert_close(DiscretizedLogistic().sample(params), torch.tensor([[0.0, 1.0]]))


@pytest.mark.parametrize("name", NAMES)
def test_every_likelihood_has_the_interface_and_right_shapes(name):
    lik = make_likelihood(name)
    assert isinstance(lik, torch.nn.Module) and lik.name == name
    assert lik.params_per_dim == (2 if name in ("gaussian_pixel_var", "discretized_logistic") else 1)
    torch.manual_seed(9)
    x = torch.randint(0, 256, (5, 3, 4, 6)).float() / 255
    if name == "bernoulli":
        x = (x > 0.5).float()
    for data in (x, x.flatten(1)):  # image-shaped and flat (MLP) data
        params = torch.randn(data.shape[0], lik.params_per_dim * data.shape[1], *data.shape[2:])
        log_p = lik.log_prob(data, params)
        assert log_p.shape == (5,) and torch.isfinite(log_p).all()
        assert lik.mean(params).shape == lik.sample(params).shape == data.shape

    params = 3 * torch.randn(5, lik.params_per_dim * 3, 4, 6)
    sample, mean = lik.sample(params), lik.mean(params)
    if name == "bernoulli":
        assert set(sample.unique().tolist()) <= {0.0, 1.0}
    if name in ("bernoulli", "continuous_bernoulli", "discretized_logistic"):
        assert ((sample >= 0) & (sample <= 1)).all() and ((mean >= 0) & (mean <= 1)).all()
    if name == "discretized_logistic":
        assert torch.equal(sample, torch.round(sample * 255) / 255)


@pytest.mark.parametrize("name", NAMES)
def test_gradients_stay_finite_at_extreme_outputs(name):
    lik = make_likelihood(name)
    # Logits and log-scales at the series switch, at 0, and far out; data at the edges.
    values = torch.tensor([0.0, 1e-7, -1e-6, 0.1, -0.1, 80.0, -80.0, 50.0, -50.0, 3.0])
    params = values.repeat(lik.params_per_dim).view(1, -1).requires_grad_()
    x = torch.tensor([[0.0, 1.0, 0.0, 1 / 255, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0]])
    lik.log_prob(x, params).sum().backward()
    assert torch.isfinite(params.grad).all()


def test_only_the_global_variance_likelihood_has_state():
    # Checkpoints written before these families existed still load into the same model.
    for name in NAMES:
        assert (len(make_likelihood(name).state_dict()) > 0) == (name == "gaussian_global_var")


def test_two_output_families_reject_a_decoder_with_one_output_per_dimension():
    x = torch.rand(2, 1, 4, 4)
    with pytest.raises(ValueError, match="2 decoder outputs"):
        DiscretizedLogistic().log_prob(x, torch.randn(2, 1, 4, 4))


def test_unknown_likelihood_and_bad_std_are_plain_errors_about_the_arguments():
    with pytest.raises(ValueError, match="likelihood='poisson' is not a valid likelihood") as err:
        make_likelihood("poisson")
    assert all(name in str(err.value) for name in NAMES)
    with pytest.raises(
        ValueError,
        match="gaussian_std=0 is not a valid standard deviation for likelihood=gaussian; use a positive number",
    ):
        make_likelihood("gaussian", 0)
    with pytest.raises(ValueError, match=r"gaussian_std=0.0005 .* use a number above 0.001"):
        make_likelihood("gaussian_global_var", 0.0005)


# --- the registry: every family, checked against an independent reference by walking LIKELIHOODS ---------


def _logistic_bins(x, mean, scale):
    """log P(bin of x) of a logistic(mean, scale) rounded to the 8-bit grid, the edge bins taking the tails."""
    logistic = TransformedDistribution(
        Uniform(torch.zeros_like(mean), torch.ones_like(mean)), [SigmoidTransform().inv, AffineTransform(mean, scale)]
    )
    half = 0.5 / 255
    upper = torch.where(x == 1, 1.0, logistic.cdf((x + half).clamp(max=1)))
    lower = torch.where(x == 0, 0.0, logistic.cdf((x - half).clamp(min=0)))
    return torch.log(upper - lower)


def _split_scale(params, floor):
    mean, raw = params.chunk(2, dim=1)
    return mean, floor + raw.exp()


# name -> log p(x | params) per data dimension, written with torch.distributions (not with the code under test).
REFERENCES = {
    "bernoulli": lambda lik, x, p: TorchBernoulli(logits=p).log_prob(x),
    "gaussian": lambda lik, x, p: Normal(p, lik.std).log_prob(x),
    "gaussian_global_var": lambda lik, x, p: Normal(p, likelihoods.STD_MIN + lik.raw_log_std.detach().exp()).log_prob(
        x
    ),
    "gaussian_pixel_var": lambda lik, x, p: Normal(*_split_scale(p, likelihoods.STD_MIN)).log_prob(x),
    "continuous_bernoulli": lambda lik, x, p: TorchContinuousBernoulli(logits=p).log_prob(x),
    "discretized_logistic": lambda lik, x, p: _logistic_bins(x, *_split_scale(p, likelihoods.SCALE_MIN)),
}


def _data_on_support(support: str, shape, g) -> torch.Tensor:
    if support == "binary":
        return torch.randint(0, 2, shape, generator=g).to(F64)
    if support == "8bit":
        return torch.randint(0, 256, shape, generator=g).to(F64) / 255
    if support == "unit":
        return torch.rand(shape, generator=g, dtype=F64)
    return torch.randn(shape, generator=g, dtype=F64)


@pytest.mark.parametrize("name", NAMES)
def test_every_registered_family_matches_its_reference_on_its_support(name):
    if name not in REFERENCES:
        pytest.fail(
            f"likelihood {name!r} is registered without a reference: add log p(x|z) written with "
            "torch.distributions (or mpmath) to REFERENCES in this file"
        )
    lik = make_likelihood(name, 0.3).double()
    g = torch.Generator().manual_seed(11)
    x = _data_on_support(lik.support, (16, 2, 3, 3), g)
    # Moderate decoder outputs (means near the data, log-scales around -1), where the references are exact.
    params = torch.cat(
        [
            torch.rand(16, 2, 3, 3, generator=g, dtype=F64) * 0.8 + 0.1,
            -1 - torch.rand(16, 2 * (lik.params_per_dim - 1), 3, 3, generator=g, dtype=F64),
        ],
        dim=1,
    )
    ref = REFERENCES[name](lik, x, params).flatten(1).sum(-1)
    torch.testing.assert_close(lik.log_prob(x, params), ref, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name", NAMES)
def test_every_family_starts_its_decoder_near_the_data_mean(name):
    # The trait behind model.init_output_bias: the decoder output (other channels at a small scale)
    # whose p(x|z) has the given mean: to the 8-bit grid's rounding, or, for the continuous Bernoulli,
    # whose mean the logit of m pulls towards 1/2, between m and 1/2.
    lik = make_likelihood(name).double()
    m = torch.linspace(0.05, 0.95, 10, dtype=F64).view(1, 1, 10, 1)
    params = torch.cat([lik.location(m), torch.full((1, lik.params_per_dim - 1, 10, 1), -8.0, dtype=F64)], dim=1)
    got = lik.mean(params)
    if name == "continuous_bernoulli":
        assert ((got - m) * (0.5 - m) >= 0).all() and ((got - 0.5) * (m - 0.5) >= 0).all()
        assert (got.flatten().diff() > 0).all()
    else:
        torch.testing.assert_close(got, m, rtol=0, atol=0.5 / 255)
