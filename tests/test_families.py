"""The posterior and prior families (core/families.py) against independent references: torch.distributions'
densities and KLs, torch.autograd's Jacobian, and the linear-Gaussian model whose posterior is known."""

import math

import pytest
import torch
from torch.distributions import Categorical, Independent, MixtureSameFamily, MultivariateNormal, Normal, kl_divergence

from vae_cli.core.elbo import iwae_bound, kl_analytic, log_standard_normal
from vae_cli.core.families import IAF, Diagonal, Full, MixtureOfGaussians, QParams
from vae_cli.core.vae import VAE
from vae_cli.training.objective import Objective

from linear_gaussian import D, K, LinearGaussian, _data, _Fn


def _full_q(b=4, k=3, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return QParams(
        torch.randn(b, k, generator=g, dtype=dtype),
        0.5 * torch.randn(b, k, generator=g, dtype=dtype),
        torch.randn(b, k * (k - 1) // 2, generator=g, dtype=dtype),
    )


def test_the_mixture_prior_is_torchs_mixture_of_gaussians():
    torch.manual_seed(0)
    prior = MixtureOfGaussians(latent_dim=3, n_components=5).double()
    with torch.no_grad():
        prior.logits.normal_()
        prior.logvars.normal_(0, 0.5)
    reference = MixtureSameFamily(
        Categorical(logits=prior.logits), Independent(Normal(prior.means, torch.exp(0.5 * prior.logvars)), 1)
    )
    z = torch.randn(7, 11, 3, dtype=torch.float64)
    torch.testing.assert_close(prior.log_prob(z), reference.log_prob(z))
    draws = prior.sample(20_000, 3, "cpu")
    torch.testing.assert_close(draws.mean(0), reference.mean.detach(), atol=0.05, rtol=0)


@pytest.mark.parametrize("posterior", ["diagonal", "full", {"family": "iaf", "n_steps": 2, "hidden_dims": [16]}])
def test_a_vampprior_at_training_images_is_the_mixture_of_their_posteriors(posterior):
    torch.manual_seed(0)
    vae = VAE(
        (1, 8, 8), latent_dim=3, hidden_dims=[32], posterior=posterior, prior={"family": "vamp", "n_components": 6}
    ).double()
    images = torch.rand(6, 1, 8, 8, dtype=torch.float64).round()
    with torch.no_grad():
        vae.prior.pseudo_inputs.copy_(images)
        q = vae.encode_q(images)
    z = torch.randn(9, 3, dtype=torch.float64)
    if vae.posterior.family == "iaf":  # q(z|u) = N(f^-1(z); mu, sigma^2) / |det df/dz0|: one inverse for all u
        z0 = vae.posterior.inverse(z)
        _, log_det = vae.posterior.flow(z0)
        base = Independent(Normal(q.mu, torch.exp(0.5 * q.logvar)), 1)
        expected = torch.logsumexp(base.log_prob(z0.unsqueeze(-2)), -1) - math.log(6) - log_det
    else:
        scale_tril = Full.cholesky(q) if vae.posterior.family == "full" else torch.diag_embed(torch.exp(0.5 * q.logvar))
        mixture = MixtureSameFamily(
            Categorical(logits=torch.zeros(6, dtype=torch.float64)), MultivariateNormal(q.mu, scale_tril=scale_tril)
        )
        expected = mixture.log_prob(z)
    torch.testing.assert_close(vae.log_prior(z).detach(), expected.detach())


def test_a_vampprior_samples_the_posterior_of_a_pseudo_input():
    torch.manual_seed(0)
    vae = VAE((1, 8, 8), latent_dim=2, hidden_dims=[16], prior={"family": "vamp", "n_components": 1})
    with torch.no_grad():
        q = vae.encode_q(vae.prior.pseudo_inputs)
        z = vae.prior.sample(20_000, 2, "cpu", vae)
    torch.testing.assert_close(z.mean(0), q.mu[0], atol=0.05, rtol=0)
    torch.testing.assert_close(z.var(0), q.logvar[0].exp(), atol=0.05, rtol=0.05)


def test_the_iafs_log_determinant_is_that_of_its_jacobian_and_its_inverse_undoes_it():
    torch.manual_seed(0)
    flow = IAF(latent_dim=4, n_steps=3, hidden_dims=[16, 16]).double()
    with torch.no_grad():  # away from the near-identity start, so the test sees the flow's full Jacobian
        for p in flow.parameters():
            p.normal_(0, 0.5)
    for z0 in torch.randn(5, 4, dtype=torch.float64):
        jacobian = torch.autograd.functional.jacobian(lambda v: flow.flow(v)[0], z0)
        _, log_det = flow.flow(z0)
        torch.testing.assert_close(log_det, torch.linalg.slogdet(jacobian).logabsdet)
        torch.testing.assert_close(flow.inverse(flow.flow(z0)[0]), z0)


def test_the_iafs_density_at_its_sample_is_the_density_through_its_inverse():
    torch.manual_seed(0)
    flow = IAF(latent_dim=3, n_steps=2, hidden_dims=[8]).double()
    q = _full_q(k=3)._replace(extra=None)
    z, log_q = flow.rsample(q, 4)
    torch.testing.assert_close(flow.log_prob(z, q), log_q)
    torch.testing.assert_close(flow.log_prob(z, q, detach=True), log_q)


def test_the_full_covariance_density_and_kl_are_torchs():
    q = _full_q()
    reference = MultivariateNormal(q.mu, scale_tril=Full.cholesky(q))
    standard = MultivariateNormal(torch.zeros(3, dtype=torch.float64), torch.eye(3, dtype=torch.float64))
    torch.testing.assert_close(Full().kl_standard(q), kl_divergence(reference, standard))
    z = torch.randn(6, 4, 3, dtype=torch.float64)
    torch.testing.assert_close(Full().log_prob(z, q), reference.log_prob(z))
    torch.manual_seed(0)
    draws, log_q = Full().rsample(q, 5)
    torch.testing.assert_close(log_q, reference.log_prob(draws))


@pytest.mark.parametrize("family", [Diagonal(), Full()])
def test_the_monte_carlo_kl_converges_to_the_closed_form(family):
    torch.manual_seed(0)
    q = _full_q(b=3, k=3)
    if family.family == "diagonal":
        q, closed = q._replace(extra=None), kl_analytic(q.mu, q.logvar).sum(-1)
    else:
        closed = family.kl_standard(q)
    z, log_q = family.rsample(q, 200_000)
    mc = log_q - log_standard_normal(z)
    se = mc.std(0) / math.sqrt(len(mc))
    assert ((mc.mean(0) - closed).abs() < 4 * se).all()


def _linear_gaussian_vae(model, posterior, encoder):
    vae = VAE((1, 1, D), latent_dim=K, hidden_dims=[1], likelihood="gaussian", gaussian_std=0.5, posterior=posterior)
    vae.encoder = _Fn(encoder)
    vae.decoder = _Fn(lambda z: (z @ model.w.T + model.b).view(-1, 1, 1, D))
    return vae


def test_on_the_linear_gaussian_model_a_full_covariance_q_closes_the_gap_a_diagonal_one_leaves_its_kl():
    model = LinearGaussian()  # W's columns nearly parallel: the true posterior N(m, C) is strongly correlated
    model.w = torch.stack([model.w[:, 0], 0.9 * model.w[:, 0] + 0.3 * model.w[:, 1]], dim=1)
    x = _data(model, 8)
    m, cov = model.posterior(x)
    assert cov[0, 1].abs() / cov.diagonal().prod().sqrt() > 0.5
    low = torch.linalg.cholesky(cov)
    full = _linear_gaussian_vae(
        model, "full", lambda x: (m, 2 * torch.diagonal(low).log().expand_as(m), low[1, 0].expand(len(x), 1))
    )
    # The best diagonal q (least KL(q || p(z|x))): the posterior mean, variances 1 / diag(C^-1).
    diag_var = 1 / torch.diagonal(torch.linalg.inv(cov))
    diagonal = _linear_gaussian_vae(model, "diagonal", lambda x: (m, diag_var.log().expand_as(m)))
    torch.manual_seed(0)
    log_px = model.log_px(x)
    with torch.no_grad():
        mu, logvar, extra = full.encode_q(x)
        log_w_full, _ = full.log_weights(x.view(-1, 1, 1, D), mu, logvar, 2000, extra)
        log_w_diag, _ = diagonal.log_weights(x.view(-1, 1, 1, D), *diagonal.encode(x), 2000)
    # q = p(z|x): every weight is p(x), so the ELBO (the mean log-weight) is log p(x) and the gap is zero.
    assert (log_w_full - log_px).abs().max() < 1e-3
    # The diagonal q's gap is KL(q || p(z|x)) in closed form.
    gap = kl_divergence(MultivariateNormal(m, torch.diag(diag_var)), MultivariateNormal(m, cov))
    assert gap.min() > 0.1
    elbo_diag = log_w_diag.mean(0)
    se = log_w_diag.std(0) / math.sqrt(len(log_w_diag))
    assert ((log_px - elbo_diag - gap).abs() < 4 * se + 1e-6).all()
    torch.testing.assert_close(iwae_bound(log_w_full), log_px, atol=1e-6, rtol=0)


FAMILY_PAIRS = [
    (q, p)
    for q in ("diagonal", "full", {"family": "iaf", "n_steps": 2, "hidden_dims": [16]})
    for p in ("standard", {"family": "mog", "n_components": 3}, {"family": "vamp", "n_components": 4})
]


@pytest.mark.parametrize("posterior,prior", FAMILY_PAIRS)
def test_the_training_bound_is_the_evaluators_on_the_same_draws(posterior, prior):
    torch.manual_seed(0)
    vae = VAE((1, 8, 8), latent_dim=3, hidden_dims=[16], posterior=posterior, prior=prior).double()
    x = torch.rand(5, 1, 8, 8, dtype=torch.float64).round()
    torch.manual_seed(1)
    step = Objective(iw_samples=6)(vae, x, 0, 1)
    torch.manual_seed(1)
    scored = vae.importance_weighted(x, 6)
    torch.testing.assert_close(step.iwae, scored.log_px)
    torch.testing.assert_close(-step.loss, scored.log_px.mean())
    assert step.terms.kl.shape == (5,) and torch.isfinite(step.terms.kl).all()


@pytest.mark.parametrize("posterior,prior", FAMILY_PAIRS)
def test_dreg_changes_the_encoders_gradient_only(posterior, prior):
    """The decoder's (and the prior's) gradient is the standard one under dreg and stl; the encoder's changes."""

    def grads(gradient):
        torch.manual_seed(0)
        vae = VAE((1, 8, 8), latent_dim=3, hidden_dims=[16], posterior=posterior, prior=prior).double()
        x = torch.rand(5, 1, 8, 8, dtype=torch.float64).round()
        torch.manual_seed(1)
        Objective(iw_samples=4, gradient=gradient)(vae, x, 0, 1).loss.backward()
        return {n: p.grad.clone() for n, p in vae.named_parameters() if p.grad is not None}

    reparam, dreg = grads("reparam"), grads("dreg")
    for name in reparam:
        if name.startswith("decoder."):
            torch.testing.assert_close(dreg[name], reparam[name])
    assert not torch.allclose(dreg["encoder.net.0.weight"], reparam["encoder.net.0.weight"])


def test_the_default_families_draw_and_score_as_before():
    """diagonal + standard: the same random draws and numbers as the VAE before the families (old checkpoints
    rescore and resume exactly)."""
    torch.manual_seed(0)
    vae = VAE((1, 8, 8), latent_dim=3, hidden_dims=[16])
    assert vae.kl_estimate == "analytic"
    assert [n for n, _ in vae.named_parameters()] == [
        n for n, _ in vae.named_parameters() if n.startswith(("encoder.", "decoder.", "likelihood."))
    ]
    x = torch.rand(4, 1, 8, 8).round()
    torch.manual_seed(1)
    t = vae.terms(x)
    mu, logvar = vae.encoder(x)
    torch.manual_seed(1)
    z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
    torch.testing.assert_close(t.z, z)
    torch.testing.assert_close(t.kl_dims, kl_analytic(mu, logvar))


class _FullAffineEncoder(torch.nn.Module):
    """q(z|x) = N(x A + a, L L^T) with L's log-diagonal and below-diagonal entries constant parameters, in float64:
    the linear-Gaussian model's true posterior (its covariance does not depend on x) when set to it."""

    def __init__(self, model):
        super().__init__()
        cov = torch.linalg.inv(torch.eye(K, dtype=torch.float64) + model.w.T @ model.w / 0.5**2)
        low = torch.linalg.cholesky(cov)
        self.a = torch.nn.Parameter(model.w @ cov / 0.5**2)
        self.a0 = torch.nn.Parameter(-(model.b @ model.w) @ cov / 0.5**2)
        self.logvar = torch.nn.Parameter(2 * torch.diagonal(low).log())
        self.below = torch.nn.Parameter(low[1:, :1].flatten())

    def forward(self, x):
        x = x.flatten(1)
        return x @ self.a + self.a0, self.logvar.expand(len(x), K), self.below.expand(len(x), 1)


@pytest.mark.parametrize("k,gradient", [(1, "stl"), (5, "dreg")])
def test_at_a_full_covariance_true_posterior_stl_and_dreg_have_no_encoder_gradient_in_any_draw(k, gradient):
    """With q = p(z|x) every log-weight is log p(x) whatever z: held fixed in log q (stl, dreg), q's parameters get
    no gradient in any draw, while the standard gradient's score-function term moves them in each."""
    model = LinearGaussian()
    model.w = torch.stack([model.w[:, 0], 0.9 * model.w[:, 0] + 0.3 * model.w[:, 1]], dim=1)
    vae = _linear_gaussian_vae(model, "full", _FullAffineEncoder(model))
    x = _data(model, 8).view(-1, 1, 1, D)

    def grads(objective):
        torch.manual_seed(0)
        vae.zero_grad()
        objective(vae, x, 0, 1).loss.backward()
        return torch.cat([p.grad.flatten() for p in vae.encoder.parameters()])

    assert grads(Objective(iw_samples=k, gradient=gradient)).abs().max() < 1e-9
    assert grads(Objective(iw_samples=k)).abs().max() > 1e-3


def test_the_iafs_density_held_fixed_gives_its_parameters_no_gradient_and_z_the_full_one():
    torch.manual_seed(0)
    vae = VAE((1, 8, 8), latent_dim=3, hidden_dims=[16], posterior={"family": "iaf", "hidden_dims": [8]}).double()
    q = vae.encode_q(torch.rand(4, 1, 8, 8, dtype=torch.float64))
    z = torch.randn(2, 4, 3, dtype=torch.float64, requires_grad=True)
    held = vae.log_q(z, q, detach=True).sum()
    free = vae.log_q(z, q).sum()
    params = list(vae.posterior.parameters()) + list(vae.encoder.parameters())
    assert all(g is None for g in torch.autograd.grad(held, params, allow_unused=True, retain_graph=True))
    (dz_held,) = torch.autograd.grad(held, z)
    (dz_free,) = torch.autograd.grad(free, z)
    torch.testing.assert_close(dz_held, dz_free)


@pytest.mark.parametrize("posterior,prior", FAMILY_PAIRS)
def test_the_terms_stay_float32_and_close_under_bf16_autocast(posterior, prior):
    torch.manual_seed(0)
    vae = VAE((1, 8, 8), latent_dim=4, hidden_dims=[64], posterior=posterior, prior=prior)
    x = torch.bernoulli(torch.full((32, 1, 8, 8), 0.3))
    torch.manual_seed(1)
    t32 = vae.terms(x)
    torch.manual_seed(1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        t16 = vae.terms(x)
        iw = vae.importance_weighted(x, 3)
    assert t16.recon.dtype == t16.kl.dtype == iw.log_px.dtype == torch.float32
    torch.testing.assert_close(t16.recon, t32.recon, rtol=0.02, atol=0.5)
    torch.testing.assert_close(t16.kl, t32.kl, rtol=0.05, atol=0.1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_mixtures_expanded_density_is_the_direct_one(dtype):
    """log_normal_diag_mixture (the mixture priors' square expanded into products) against the (..., N, K) form,
    at the log-variance clip's extremes and with IWAE's leading sample axis, values and gradients."""
    from vae_cli.core.elbo import log_normal_diag
    from vae_cli.core.families import log_normal_diag_mixture

    g = torch.Generator().manual_seed(0)
    mu = (2 * torch.randn(7, 40, generator=g, dtype=torch.float64)).requires_grad_()
    logvar = (-6 + 8 * torch.rand(7, 40, generator=g, dtype=torch.float64)).requires_grad_()
    z = (
        mu.detach()[torch.randint(7, (3, 5), generator=g)]
        + 0.01 * torch.randn(3, 5, 40, generator=g, dtype=torch.float64)
    ).requires_grad_()
    direct = log_normal_diag(z.unsqueeze(-2), mu, logvar)
    expanded = log_normal_diag_mixture(z.to(dtype), mu.to(dtype), logvar.to(dtype))
    assert expanded.shape == (3, 5, 7) and expanded.dtype == dtype
    # float32: the inputs' and the output's rounding only (the densities reach -1e4 here)
    tol = dict(rtol=0, atol=1e-9) if dtype == torch.float64 else dict(rtol=1e-6, atol=1e-4)
    torch.testing.assert_close(expanded.double(), direct, **tol)
    w = torch.randn(3, 5, 7, generator=g, dtype=torch.float64)
    grads = torch.autograd.grad((direct * w).sum(), (z, mu, logvar))
    mine = torch.autograd.grad((log_normal_diag_mixture(z, mu, logvar) * w).sum(), (z, mu, logvar))
    for a, b in zip(mine, grads):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-7)
