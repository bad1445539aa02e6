"""vae-eval gaps=true (core/gaps.py) on the linear-Gaussian model, whose gaps are known in closed form: the true
posterior N(m, C) is Gaussian, so a full-covariance q* closes the approximation gap and the best diagonal q* leaves
KL(q* || p(z|x)) = the approximation gap; an encoder at q* has no amortisation gap, one off it has a positive one."""

import importlib.util
import json

import pytest
import torch
from torch.distributions import MultivariateNormal, kl_divergence

from vae_cli.core.gaps import optimise_q
from vae_cli.core.vae import VAE

from conftest import refused, run_here, train
from linear_gaussian import D, K, LinearGaussian, _data, _Fn


def _vae(model, posterior, encoder):
    vae = VAE((1, 1, D), latent_dim=K, hidden_dims=[1], likelihood="gaussian", gaussian_std=0.5, posterior=posterior)
    vae.encoder = _Fn(encoder)
    vae.decoder = _Fn(lambda z: (z @ model.w.T + model.b).view(-1, 1, 1, D))
    return vae


def _correlated():
    model = LinearGaussian()  # W's columns nearly parallel: the true posterior is strongly correlated
    model.w = torch.stack([model.w[:, 0], 0.9 * model.w[:, 0] + 0.3 * model.w[:, 1]], dim=1)
    return model


def _encoders(model, x):
    m, cov = model.posterior(x)
    low = torch.linalg.cholesky(cov)
    diag_var = 1 / torch.diagonal(torch.linalg.inv(cov))  # the best diagonal q: least KL(q || p(z|x))

    def at_full(x):
        return m, 2 * torch.diagonal(low).log().expand_as(m), low[1, 0].expand(len(x), 1)

    def at_diag(x):
        return m, diag_var.log().expand_as(m)

    def off_full(x):
        return m + 0.8, torch.zeros_like(m), torch.zeros(len(x), 1, dtype=m.dtype)

    def off_diag(x):
        return m - 0.7, torch.full_like(m, 0.5)

    kl_diag = kl_divergence(MultivariateNormal(m, torch.diag(diag_var)), MultivariateNormal(m, cov))
    return at_full, at_diag, off_full, off_diag, kl_diag


SETTINGS = dict(steps=600, lr=0.1, samples=8, eval_samples=4000)


@pytest.mark.parametrize("posterior", ["full", "diagonal"])
def test_an_encoder_at_the_best_q_has_no_amortisation_gap_and_the_closed_form_approximation_gap(posterior):
    model = _correlated()
    x = _data(model, 6)
    at_full, at_diag, _, _, kl_diag = _encoders(model, x)
    vae = _vae(model, posterior, at_full if posterior == "full" else at_diag)
    g = optimise_q(vae, x.view(-1, 1, 1, D), **SETTINGS)
    log_px = model.log_px(x)
    approximation = log_px - g.optimised_elbo
    amortisation = g.optimised_elbo - g.amortised_elbo
    assert amortisation.abs().max() < 0.02
    expected = torch.zeros_like(log_px) if posterior == "full" else kl_diag
    if posterior == "diagonal":
        assert kl_diag.min() > 0.1
    assert (approximation - expected).abs().max() < 0.03


@pytest.mark.parametrize("posterior", ["full", "diagonal"])
def test_an_encoder_off_the_best_q_has_an_amortisation_gap_and_optimising_reaches_the_best_q(posterior):
    model = _correlated()
    x = _data(model, 6)
    _, _, off_full, off_diag, kl_diag = _encoders(model, x)
    vae = _vae(model, posterior, off_full if posterior == "full" else off_diag)
    g = optimise_q(vae, x.view(-1, 1, 1, D), **SETTINGS)
    log_px = model.log_px(x)
    assert (g.optimised_elbo - g.amortised_elbo).min() > 0.2
    best = log_px if posterior == "full" else log_px - kl_diag
    assert (g.optimised_elbo - best).abs().max() < 0.05  # the estimate: 4000 draws
    if posterior == "diagonal":  # the optimised q itself, in closed form: KL(q* || p(z|x)) is the least
        m, cov = model.posterior(x)
        q = MultivariateNormal(g.q.mu, torch.diag_embed(g.q.logvar.exp()))
        assert (kl_divergence(q, MultivariateNormal(m, cov)) - kl_diag).abs().max() < 0.02


@pytest.mark.slow  # about 4 s: a one-epoch training run first
def test_vae_eval_gaps_on_a_tiny_digits_run(tmp_path, capsys):
    run = train(tmp_path, "run", "model.hidden_dims=[32]", "model.latent_dim=4", "trainer.max_epochs=1")
    out = tmp_path / "eval.json"
    run_here(
        "vae-eval",
        f"ckpt_path={run}",
        "iw_samples=20",
        "limit=40",
        "gaps=true",
        "gaps_images=16",
        "gaps_steps=30",
        "gaps_samples=4",
        "gaps_eval_samples=50",
        f"out={out}",
        cwd=tmp_path,
    )
    printed = capsys.readouterr().out
    assert "approximation_gap" in printed and "amortisation_gap" in printed
    g = json.loads(out.read_text())["gaps"]
    assert g["n_images"] == 16 and g["steps"] == 30 and g["seconds"] > 0
    assert g["approximation_gap"] + g["amortisation_gap"] == pytest.approx(g["log_px"] - g["amortised_elbo"])
    assert g["amortisation_gap"] > 0  # after one epoch the encoder is far from each image's best q
    per_image = torch.load(out.with_suffix(".pt"), weights_only=True)
    assert len(per_image["approximation_gap"]) == len(per_image["amortisation_gap"]) == 16
    if importlib.util.find_spec("matplotlib"):
        assert (tmp_path / "eval_gaps.png").is_file()


def test_vae_eval_refuses_a_bad_gaps_setting(tmp_path, capsys):
    err = refused("vae-eval", "ckpt_path=x", "gaps_steps=-1", cwd=tmp_path, capsys=capsys)
    assert "gaps_steps=-1" in err


@pytest.mark.parametrize(
    "posterior,prior",
    [
        ({"family": "iaf", "n_steps": 2, "hidden_dims": [8]}, {"family": "vamp", "n_components": 3}),
        ("full", {"family": "mog", "n_components": 2}),
    ],
)
def test_optimising_q_leaves_the_model_as_it_was_and_raises_the_elbo(posterior, prior):
    torch.manual_seed(0)
    vae = VAE((1, 4, 4), latent_dim=3, hidden_dims=[16], posterior=posterior, prior=prior)
    before = {k: v.clone() for k, v in vae.state_dict().items()}
    x = (torch.rand(5, 1, 4, 4) > 0.5).float()
    g = optimise_q(vae, x, steps=100, lr=0.05, samples=4, eval_samples=500)
    assert all(torch.equal(before[k], v) for k, v in vae.state_dict().items())  # the flow, prior, networks fixed
    assert all(p.requires_grad and p.grad is None for p in vae.parameters()) and vae.training
    assert (g.optimised_elbo > g.amortised_elbo).all()
    assert g.q.mu.shape == (5, 3) and (g.q.extra is None) == (posterior != "full")
