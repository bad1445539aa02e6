"""Decoder likelihoods p(x|z), one class per family, registered under the name users choose it by.

The decoder outputs `params` with `params_per_dim` values per data dimension, stacked along dim 1:
for x of shape (B, C, H, W), params is (B, params_per_dim * C, H, W), first the C mean (or logit)
channels, then the C log-scale channels. log_prob returns log p(x|z) per example in nats, summed
over every data dimension and including every normalising constant, so numbers compare across
families. The classes are nn.Modules so a learned parameter is optimised and checkpointed with
the model; the families without one add nothing to the state dict.

Adding a family: a subclass of Likelihood, its traits in settings.FAMILIES (which the settings are checked
against before torch is imported), and an entry in LIKELIHOODS.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import one_of, require
from ..settings import FAMILIES, STD_MIN, check_std

# Floor of the discretised logistic's scale. Bin probabilities are at most 1, so nothing diverges;
# the floor keeps 1/s, and the gradients that scale with it, finite. It costs nothing: at s = 1e-4
# the bin around the mean already holds all but 1e-8 of the mass.
SCALE_MIN = 1e-4
# Below this |logit| the continuous Bernoulli's closed forms are 0/0-like; series are used instead.
CB_SERIES_BELOW = 0.1


def _sum_data_dims(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).sum(-1)


def _split(params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(means, raw log-scales) from params of the two-outputs-per-dimension families."""
    if params.shape[1] % 2:
        raise ValueError(f"expected 2 decoder outputs per data dimension along dim 1, got {params.shape[1]}")
    return params.chunk(2, dim=1)


def _log_scale(raw: torch.Tensor, minimum: float) -> torch.Tensor:
    """log(minimum + e^raw): a scale that never falls below `minimum`, with a gradient everywhere
    (a hard clamp would freeze a raw value that went past the bound)."""
    return torch.logaddexp(raw, raw.new_tensor(math.log(minimum)))


def _normal_log_density(x: torch.Tensor, mean: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
    return -0.5 * ((x - mean) * torch.exp(-log_std)).pow(2) - log_std - 0.5 * math.log(2 * math.pi)


class Likelihood(nn.Module):
    """A family p(x|z) and the traits the rest of the program reads instead of its name (settings.Family):
    params_per_dim, support and std_floor, set from settings.FAMILIES[name]."""

    name: str
    params_per_dim = 1
    support = "real"
    std_floor: float | None = None

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        traits = FAMILIES.get(getattr(cls, "name", None))
        if traits is not None:  # a family of one's own outside the registry declares its traits itself
            cls.params_per_dim, cls.support, cls.std_floor = traits.params_per_dim, traits.support, traits.std_floor

    @classmethod
    def build(cls, gaussian_std: float) -> "Likelihood":
        return cls() if cls.std_floor is None else cls(gaussian_std)

    def location(self, mean: torch.Tensor) -> torch.Tensor:
        """The decoder output (its first C channels) whose p(x|z) has roughly this mean: what the
        decoder's output bias starts at."""
        return mean

    def log_prob(self, x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def sample(self, params: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


def _logit_of_mean(mean: torch.Tensor) -> torch.Tensor:
    return torch.logit(mean.clamp(1e-3, 1 - 1e-3))


class Bernoulli(Likelihood):
    """p(x|z) = prod_i Bern(x_i; sigmoid(params_i)), for binary x. params are logits."""

    name = "bernoulli"

    def location(self, mean: torch.Tensor) -> torch.Tensor:
        return _logit_of_mean(mean)

    def log_prob(self, x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        # -BCE on logits is log p, computed stably (log-sum-exp form).
        return -_sum_data_dims(F.binary_cross_entropy_with_logits(params, x, reduction="none"))

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(params)

    def sample(self, params: torch.Tensor) -> torch.Tensor:
        return torch.bernoulli(torch.sigmoid(params))


class Gaussian(Likelihood):
    """p(x|z) = N(x; params, std^2 I) with a fixed std, for grey values."""

    name = "gaussian"

    def __init__(self, std: float):
        super().__init__()
        check_std(self.name, std)
        self.std = float(std)

    def log_prob(self, x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        return _sum_data_dims(_normal_log_density(x, params, x.new_tensor(math.log(self.std))))

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        return params

    def sample(self, params: torch.Tensor) -> torch.Tensor:
        return params + self.std * torch.randn_like(params)


class GaussianGlobalVar(Likelihood):
    """p(x|z) = N(x; params, sigma^2 I) with one learned sigma = STD_MIN + e^raw_log_std for all
    dimensions, started at `std`."""

    name = "gaussian_global_var"

    def __init__(self, std: float):
        super().__init__()
        check_std(self.name, std)
        self.raw_log_std = nn.Parameter(torch.tensor(math.log(std - STD_MIN)))

    def log_std(self) -> torch.Tensor:
        return _log_scale(self.raw_log_std, STD_MIN)

    def log_prob(self, x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        return _sum_data_dims(_normal_log_density(x, params, self.log_std()))

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        return params

    def sample(self, params: torch.Tensor) -> torch.Tensor:
        return params + torch.exp(self.log_std()) * torch.randn_like(params)


class GaussianPixelVar(Likelihood):
    """p(x|z) = prod_i N(x_i; mean_i, sigma_i^2), the decoder giving a mean and a raw log-std per
    dimension, sigma_i = STD_MIN + e^raw_i."""

    name = "gaussian_pixel_var"

    def log_prob(self, x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        mean, raw = _split(params)
        return _sum_data_dims(_normal_log_density(x, mean, _log_scale(raw, STD_MIN)))

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        return _split(params)[0]

    def sample(self, params: torch.Tensor) -> torch.Tensor:
        mean, raw = _split(params)
        return mean + torch.exp(_log_scale(raw, STD_MIN)) * torch.randn_like(mean)


def _cb_log_norm(eta: torch.Tensor) -> torch.Tensor:
    """log C of the continuous Bernoulli: log(2 artanh(1 - 2 lam) / (1 - 2 lam)) with lam = sigmoid(eta),
    which in logits is log(eta / tanh(eta / 2)), even in eta."""
    # At eta = 0 (lam = 1/2, C = 2) the closed form is 0/0, and near it the two 1/eta terms of its
    # gradient cancel. There use log 2 + log(u coth u), u = eta/2, whose next term is < 1e-12 here.
    a = eta.abs()
    small = a < CB_SERIES_BELOW
    a_safe = torch.where(small, torch.ones_like(a), a)  # keeps the unused branch and its gradient finite
    closed = torch.log(a_safe) - torch.log(torch.tanh(a_safe / 2))
    u2 = (a / 2) ** 2
    series = math.log(2) + u2 / 3 - 7 * u2**2 / 90 + 62 * u2**3 / 2835
    return torch.where(small, series, closed)


class ContinuousBernoulli(Likelihood):
    """p(x|z) = prod_i C(lam_i) lam_i^x_i (1 - lam_i)^(1 - x_i), a normalised density on [0, 1]
    (Loaiza-Ganem & Cunningham 2019), for grey values. params are logits of lam."""

    name = "continuous_bernoulli"

    def location(self, mean: torch.Tensor) -> torch.Tensor:
        # The logit of the mean approximates it: the family's mean is pulled towards 1/2.
        return _logit_of_mean(mean)

    def log_prob(self, x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        # The Bernoulli term in its stable logits form (valid for x in [0, 1]), plus log C.
        bernoulli = -F.binary_cross_entropy_with_logits(params, x, reduction="none")
        return _sum_data_dims(bernoulli + _cb_log_norm(params))

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        # E[x] = 1/(1 - e^-eta) - 1/eta: both terms ~ 1/eta near 0, so a series there (next term < 1e-13).
        small = params.abs() < CB_SERIES_BELOW
        safe = torch.where(small, torch.ones_like(params), params)
        closed = -1 / torch.expm1(-safe) - 1 / safe
        series = 0.5 + params / 12 - params**3 / 720 + params**5 / 30240
        return torch.where(small, series, closed)

    def sample(self, params: torch.Tensor) -> torch.Tensor:
        # Inverse CDF x = log(1 + u (e^eta - 1)) / eta, evaluated at a = -|eta| <= 0 so e^a cannot
        # overflow; for eta > 0 via the symmetry x -> 1 - x, eta -> -eta, u -> 1 - u. eta = 0 is the
        # uniform limit x = u: moving |eta| up to 1e-7 shifts x by u (1 - u) 1e-7 / 2 < 1.3e-8.
        u = torch.rand_like(params)
        neg = params < 0
        a = -params.abs().clamp_min(1e-7)
        t = torch.log1p(torch.where(neg, u, 1 - u) * torch.expm1(a)) / a
        # The clamp trims rounding past [0, 1], and maps u = 0 at large eta (where expm1(a) rounds to -1,
        # so t = -inf / a = inf) to its right value 0; torch.rand gives 0 about once in 2^24 draws.
        return torch.where(neg, t, 1 - t).clamp(0, 1)


class DiscretizedLogistic(Likelihood):
    """p(x|z) for 8-bit x in {0, 1/255, ..., 1}: per dimension a logistic(mean, s) integrated over
    the bin x +- 1/510, the bins at 0 and 1 taking the tails (PixelCNN++, one component).
    The decoder gives a mean and a raw log-scale per dimension, s = SCALE_MIN + e^raw."""

    name = "discretized_logistic"
    half_bin = 0.5 / 255

    def log_prob(self, x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        mean, raw = _split(params)
        inv_s = torch.exp(-_log_scale(raw, SCALE_MIN))
        # Standardised bin edges; the edge bins reach to -inf and +inf.
        lo = torch.where(x < self.half_bin, -math.inf, (x - self.half_bin - mean) * inv_s)
        hi = torch.where(x > 1 - self.half_bin, math.inf, (x + self.half_bin - mean) * inv_s)
        # log(sigmoid(hi) - sigmoid(lo)) = log sigmoid(hi) + log sigmoid(-lo) + log(1 - e^(lo - hi)):
        # exact, and no CDF difference is formed, so nothing underflows in the tails and no
        # density-times-width fallback is needed. At an edge bin the missing terms are exactly 0.
        log_p = -F.softplus(-hi) - F.softplus(lo) + torch.log(-torch.expm1(lo - hi))
        return _sum_data_dims(log_p)

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        # E[x] = sum_k P(x >= k/255) / 255 for k = 1..255, one logistic tail per inner bin edge
        # (a loop rather than a 255-fold broadcast, to keep memory at the size of params).
        mean, raw = _split(params)
        s = torch.exp(_log_scale(raw, SCALE_MIN))
        total = torch.zeros_like(mean)
        for k in range(1, 256):
            total += torch.sigmoid((mean - (k - 0.5) / 255) / s)
        return total / 255

    def sample(self, params: torch.Tensor) -> torch.Tensor:
        mean, raw = _split(params)
        u = torch.rand_like(mean)
        y = mean + torch.exp(_log_scale(raw, SCALE_MIN)) * (torch.log(u) - torch.log1p(-u))  # inverse CDF
        return torch.round(y.clamp(0, 1) * 255) / 255


LIKELIHOODS: dict[str, type[Likelihood]] = {
    cls.name: cls
    for cls in (Bernoulli, Gaussian, GaussianGlobalVar, GaussianPixelVar, ContinuousBernoulli, DiscretizedLogistic)
}


def make_likelihood(name: str, gaussian_std: float = 0.1) -> Likelihood:
    """The family registered as `name`; gaussian_std is the fixed std of "gaussian" and the starting
    std of "gaussian_global_var"."""
    require("likelihood", name, one_of(name, LIKELIHOODS), "likelihood", f"one of {', '.join(LIKELIHOODS)}")
    return LIKELIHOODS[name].build(gaussian_std)
