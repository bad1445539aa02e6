"""Training on the importance-weighted bound L_k with the reparameterised, STL and DReG gradients, against
the linear-Gaussian model whose log p(x) and posterior are known in closed form; then from the command line."""

import json

import pytest
import torch

from vae_cli.training.objective import Objective

from conftest import read_scalars, train
from linear_gaussian import AffineEncoder, D, LinearGaussian, _data, linear_gaussian_vae


def _objective(k: int, gradient: str = "reparam", beta: float = 1.0) -> Objective:
    return Objective(iw_samples=k, gradient=gradient, beta=beta)


def test_the_bound_is_the_evaluators_estimate_on_the_same_draws():
    model = LinearGaussian()
    vae = linear_gaussian_vae(model, AffineEncoder())
    x = _data(model, 9).view(-1, 1, 1, D)
    for k in (1, 7):
        torch.manual_seed(k)
        step = _objective(k, "dreg")(vae, x, step=0, steps_per_epoch=0)
        torch.manual_seed(k)
        with torch.no_grad():
            evaluated = vae.importance_weighted(x, k, max_pairs=10_000).log_px
        torch.testing.assert_close(step.loss, -evaluated.mean(), rtol=1e-12, atol=1e-12)
        if k > 1:  # per example too (at k = 1 the bound is the ELBO, and only the ELBO is logged)
            torch.testing.assert_close(step.iwae, evaluated, rtol=1e-12, atol=1e-12)


def test_the_bound_rises_with_k_toward_log_px():
    model = LinearGaussian()
    vae = linear_gaussian_vae(model, AffineEncoder(seed=5))
    x0 = _data(model, 1).view(1, 1, 1, D)
    x = x0.expand(400, -1, -1, -1)  # 400 independent estimates for one x
    log_px = model.log_px(x0.flatten(1)).item()
    torch.manual_seed(0)
    means = []
    with torch.no_grad():
        for k in (1, 5, 50, 500):
            est = -torch.stack([_objective(k)(vae, x[i : i + 1], 0, 0).loss for i in range(len(x))])
            means.append(est.mean().item())
            assert est.mean() < log_px + 3 * est.std() / len(est) ** 0.5, (k, est.mean(), log_px)
    assert all(a < b for a, b in zip(means, means[1:])), means
    assert log_px - means[-1] < 0.2 * (log_px - means[0])


def _encoder_grads(vae, x, objective, draws: int, c_step: tuple[int, int] = (0, 0)) -> torch.Tensor:
    """(draws, n_params): the encoder's gradient of the loss for independent draws of z."""
    params = list(vae.encoder.parameters())
    out = []
    for _ in range(draws):
        vae.zero_grad(set_to_none=True)
        objective(vae, x, *c_step).loss.backward()
        out.append(torch.cat([p.grad.flatten() for p in params]))
    return torch.stack(out)


@pytest.mark.parametrize("k, gradient", [(1, "stl"), (1, "dreg"), (5, "dreg"), (50, "dreg")])
def test_at_the_true_posterior_stl_and_dreg_have_no_encoder_gradient_in_any_draw(k, gradient):
    model = LinearGaussian(orthogonal=True)
    vae = linear_gaussian_vae(model, AffineEncoder.at_the_posterior(model))
    x = _data(model, 8).view(-1, 1, 1, D)
    torch.manual_seed(0)
    assert _encoder_grads(vae, x, _objective(k, gradient), draws=5).abs().max() < 1e-10
    # Every weight is p(x) there: the standard gradient is zero only in expectation, not per draw.
    g = _encoder_grads(vae, x, _objective(k), draws=400)
    assert g.abs().max() > 1e-2
    z = g.mean(0) / (g.std(0) / len(g) ** 0.5)
    assert z.abs().max() < 4.5, z


@pytest.mark.slow
@pytest.mark.parametrize("k, gradient, beta", [(1, "stl", 1.0), (5, "dreg", 1.0), (5, "dreg", 0.5), (1, "stl", 0.3)])
def test_stl_and_dreg_are_unbiased_for_the_standard_gradient(k, gradient, beta):
    # A wrong q, so that every estimator has a non-zero mean; beta != 1 tempers the weights (a KL warm-up).
    model = LinearGaussian()
    vae = linear_gaussian_vae(model, AffineEncoder(seed=3))
    x = _data(model, 4).view(-1, 1, 1, D)
    torch.manual_seed(1)
    standard = _encoder_grads(vae, x, _objective(k, beta=beta), draws=3000)
    other = _encoder_grads(vae, x, _objective(k, gradient, beta=beta), draws=3000)
    se = (standard.var(0) / len(standard) + other.var(0) / len(other)).sqrt()
    z = (other.mean(0) - standard.mean(0)) / se
    assert z.abs().max() < 4.5, z  # 28 parameters: a 4.5 sigma deviation in any is not chance
    assert standard.mean(0).abs().max() > 10 * se.max()  # and the means are far from zero: the test can fail
    assert other.var(0).sum() < standard.var(0).sum()  # with less noise


def test_dreg_changes_the_encoders_gradient_only():
    model = LinearGaussian()
    vae = linear_gaussian_vae(model, AffineEncoder(seed=3))
    x = _data(model, 4).view(-1, 1, 1, D)
    grads = {}
    for gradient in ("reparam", "dreg"):
        torch.manual_seed(2)  # the same draws
        vae.zero_grad(set_to_none=True)
        _objective(5, gradient)(vae, x, 0, 0).loss.backward()
        grads[gradient] = [p.grad.clone() for p in vae.parameters()]
    decoder = [i for i, (name, _) in enumerate(vae.named_parameters()) if name.startswith("decoder")]
    encoder = [i for i, (name, _) in enumerate(vae.named_parameters()) if name.startswith("encoder")]
    assert decoder and encoder
    for i in decoder:
        torch.testing.assert_close(grads["dreg"][i], grads["reparam"][i], rtol=1e-12, atol=1e-12)
    assert any(not torch.allclose(grads["dreg"][i], grads["reparam"][i]) for i in encoder)


def test_one_sample_with_the_standard_gradient_is_todays_elbo():
    model = LinearGaussian()
    vae = linear_gaussian_vae(model, AffineEncoder())
    x = _data(model, 6).view(-1, 1, 1, D)
    torch.manual_seed(4)
    step = Objective()(vae, x, 0, 0)
    torch.manual_seed(4)
    t = vae.terms(x)
    torch.testing.assert_close(step.loss, t.recon.mean() + t.kl.mean(), rtol=0, atol=0)
    assert step.iwae is None


@pytest.mark.slow
def test_training_on_the_bound_from_the_command_line(tmp_path):
    run = train(
        tmp_path,
        "run",
        "objective.iw_samples=5",
        "objective.gradient=dreg",
        "trainer.max_epochs=3",
        "trainer.log_every_n_steps=1",
        "callbacks.model_checkpoint.monitor=val/iwae",
    )
    m = json.loads((run / "metrics.json").read_text())
    # The one-sample ELBO keeps its meaning; the bound is logged beside it and is tighter.
    assert m["test/elbo"] == pytest.approx(-(m["test/recon_loss"] + m["test/kl"]), rel=1e-5)
    assert m["test/iwae"] > m["test/elbo"] and m["test/loss"] == pytest.approx(-m["test/iwae"], rel=1e-5)
    s = read_scalars(run)
    assert len(s["val/iwae"]) == 3 and len(s["train/iwae"]) == 33
    # Checkpointed on the bound, the run's record names the bound, not an ELBO it does not hold.
    best = max(v for _, v in s["val/iwae"])
    assert "best_val_elbo" not in m and m["best_val_iwae"] == pytest.approx(best, rel=1e-6)
    assert s["val/iwae_best"] == [
        (s["val/iwae_best"][0][0], pytest.approx(best, rel=1e-6))
    ]  # one point, no placeholder
