"""Architectures, objective options and the decoder-bias initialisation (issue: objectives,
likelihoods, architectures), each against an independent computation."""

import json

import pytest
import torch

from vae_cli.cli.checks import check_fits_data
from vae_cli.core.elbo import kl_analytic, kl_mc_dims, log_normal_diag, log_standard_normal, reparameterize
from vae_cli.core.likelihoods import LIKELIHOODS
from vae_cli.core.vae import VAE
from vae_cli.data import DEBIAN_FASHION_MNIST
from vae_cli.errors import UserError
from vae_cli.training.module import VAEModule
from vae_cli.training.objective import Objective, free_bits_kl

from conftest import read_scalars, run_here, train


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32), (1, 8, 8), (3, 17, 23), (2, 5, 64)])
@pytest.mark.parametrize("likelihood", ["bernoulli", "discretized_logistic"])
def test_conv_model_fits_any_image_size(shape, likelihood):
    model = VAE(shape, arch="conv", latent_dim=4, hidden_dims=[8, 16], likelihood=likelihood)
    x = torch.rand(3, *shape)
    mu, logvar = model.encoder(x)
    assert mu.shape == logvar.shape == (3, 4)
    params = model.decoder(mu)
    assert params.shape == (3, model.likelihood.params_per_dim * shape[0], *shape[1:])
    t = model.terms((x * 255).round() / 255)
    assert t.recon.shape == t.kl.shape == (3,) and torch.isfinite(t.recon).all()


@pytest.mark.parametrize("likelihood", LIKELIHOODS)
def test_mlp_model_sizes_its_output_for_each_likelihood(likelihood):
    model = VAE((1, 8, 8), latent_dim=3, hidden_dims=[16], likelihood=likelihood)
    x = torch.randint(0, 2, (5, 1, 8, 8)).float()
    assert model.decoder(torch.zeros(5, 3)).shape == (5, model.likelihood.params_per_dim, 8, 8)
    assert torch.isfinite(model.terms(x).recon).all()


@pytest.mark.parametrize("arch", ["mlp", "conv"])
def test_output_bias_starts_the_decoder_at_the_data_mean(arch):
    torch.manual_seed(0)
    model = VAE((1, 8, 8), arch=arch, latent_dim=2, hidden_dims=[8], likelihood="bernoulli")
    mean = torch.rand(1, 8, 8) * 0.8 + 0.1
    model.init_output_bias(mean)
    last = model.decoder.net[-1] if arch == "mlp" else model.decoder.deconvs[-1]
    torch.nn.init.zeros_(last.weight)  # isolate the bias: the output is then the bias alone
    out = model.likelihood.mean(model.decoder(torch.randn(4, 2)))
    expected = mean if arch == "mlp" else torch.full_like(mean, 0.0) + torch.sigmoid(torch.logit(mean).mean())
    torch.testing.assert_close(out, expected.expand(4, 1, 8, 8), rtol=1e-5, atol=1e-5)


def test_mc_kl_per_dimension_sums_to_log_q_minus_log_p_and_averages_to_the_analytic_kl():
    torch.manual_seed(0)
    mu, logvar = torch.randn(1, 6, dtype=torch.float64), torch.randn(1, 6, dtype=torch.float64)
    z = reparameterize(mu.expand(200_000, -1), logvar.expand(200_000, -1))
    per_dim = kl_mc_dims(z, mu, logvar)
    torch.testing.assert_close(per_dim.sum(-1), log_normal_diag(z, mu, logvar) - log_standard_normal(z))
    se = per_dim.std(0) / 200_000**0.5
    assert ((per_dim.mean(0) - kl_analytic(mu, logvar)[0]).abs() < 5 * se).all()


def test_free_bits_floor_each_dimension_and_stop_its_gradient():
    kl_dims = torch.tensor([[0.1, 2.0, 0.5], [0.3, 1.0, 0.7]], requires_grad=True)
    out = free_bits_kl(kl_dims, 0.5)
    assert out.item() == pytest.approx(0.5 + 1.5 + 0.6)  # batch means 0.2 -> 0.5, 1.5, 0.6
    out.backward()
    torch.testing.assert_close(kl_dims.grad, torch.tensor([[0.0, 0.5, 0.5], [0.0, 0.5, 0.5]]))


def test_logged_kl_is_analytic_whatever_is_optimised():
    torch.manual_seed(0)
    x = torch.bernoulli(torch.full((64, 1, 8, 8), 0.3))
    for options in ({"kl_estimator": "mc"}, {"free_bits": 2.0}, {"beta": 4.0}):
        module = VAEModule(VAE([1, 8, 8], latent_dim=4, hidden_dims=[16]), objective=Objective(**options))
        torch.manual_seed(1)
        m = module._metrics(x)[0]
        mu, logvar = module.vae.encoder(x)
        torch.testing.assert_close(m["kl"], kl_analytic(mu, logvar).sum(-1).mean())
        torch.testing.assert_close(m["elbo"], -(m["recon_loss"] + m["kl"]))
        assert not torch.isclose(m["loss"], -m["elbo"]), options  # each option changes what is optimised


@pytest.mark.slow
def test_warmup_in_epochs_becomes_steps(tmp_path):
    # 2 epochs of 11 steps: the KL weight reaches 1 at step 22; loss = recon + w * kl in between.
    run = train(tmp_path, "run", "objective.warmup_epochs=2", "trainer.max_epochs=1", "trainer.log_every_n_steps=1")
    s = read_scalars(run)
    assert len(s["train/loss"]) == 11
    for (step, loss), (_, recon), (_, kl) in zip(s["train/loss"], s["train/recon_loss"], s["train/kl"]):
        assert loss == pytest.approx(recon + min(1.0, step / 22) * kl, rel=1e-5, abs=1e-5), step


def test_likelihood_must_fit_the_data():
    grey = torch.rand(10, 1, 8, 8)
    with pytest.raises(UserError, match="model.likelihood=bernoulli needs binary data"):
        check_fits_data("bernoulli", grey, binarize=False)
    check_fits_data("bernoulli", grey, binarize=True)
    with pytest.raises(UserError, match="8-bit images"):
        check_fits_data("discretized_logistic", torch.randint(0, 17, (10, 64)) / 16, binarize=False)
    check_fits_data("discretized_logistic", torch.randint(0, 256, (10, 64)) / 255, binarize=False)
    with pytest.raises(UserError, match=r"values in \[0, 1\]"):
        check_fits_data("continuous_bernoulli", grey * 2, binarize=False)
    check_fits_data("gaussian", grey * 2, binarize=False)  # real-valued: anything goes


@pytest.mark.slow
def test_conv_model_with_a_learned_variance_trains_from_the_command_line(tmp_path):
    run = train(
        tmp_path,
        "run",
        "model=conv",
        "model.hidden_dims=[16,32]",
        "model.likelihood=gaussian_pixel_var",
        "trainer.max_epochs=2",
    )
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test/elbo"] == pytest.approx(-(metrics["test/recon_loss"] + metrics["test/kl"]), rel=1e-5)


@pytest.mark.slow
@pytest.mark.skipif(not DEBIAN_FASHION_MNIST.is_dir(), reason="Debian package dataset-fashion-mnist not installed")
def test_discretized_logistic_on_8bit_fashion_mnist_reports_bits_per_dim(tmp_path):
    run = train(
        tmp_path,
        "run",
        "data=fashion_mnist",
        f"data.data_dir={tmp_path / 'data'}",
        "model.likelihood=discretized_logistic",
        "trainer.max_steps=20",
        "trainer.limit_val_batches=1",
        "trainer.limit_test_batches=1",
        "callbacks.latent_projector.max_points=0",
    )
    m = json.loads((run / "metrics.json").read_text())
    # 256 bins per pixel: a model no better than uniform is at 8 bits/dim; training from the
    # mean-image bias must already be well below that.
    assert 0 < m["test/bpd"] < 8


def test_gated_mlp_layers_gate_a_linear_map_with_a_sigmoid():
    from vae_cli.core.nets import GatedLinear

    layer = GatedLinear(5, 3)
    x = torch.randn(4, 5)
    w, b = layer.linear.weight, layer.linear.bias
    expected = (x @ w[:3].T + b[:3]) * torch.sigmoid(x @ w[3:].T + b[3:])
    torch.testing.assert_close(layer(x), expected)
    model = VAE((1, 8, 8), latent_dim=2, hidden_dims=[6, 4], activation="gated")
    assert [type(m).__name__ for m in model.encoder.net] == ["GatedLinear", "GatedLinear", "Linear"]


@pytest.mark.slow
@pytest.mark.skipif(not DEBIAN_FASHION_MNIST.is_dir(), reason="Debian package dataset-fashion-mnist not installed")
def test_fashion_mnist_experiment_runs_end_to_end_on_the_real_files(tmp_path):
    """The reference protocol, cut to a few hundred steps: the real files, the 50,000 / 10,000 split,
    the gated 2x300 MLP with K = 40, warm-up, early stopping, then vae-eval's importance-weighted NLL."""
    run_dir = train(
        tmp_path,
        "run",
        "experiment=fashion_mnist_vae",
        f"data.data_dir={tmp_path / 'data'}",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=200",
        "callbacks.latent_projector.max_points=0",
    )
    log = (run_dir / "train.log").read_text()
    assert "fashion_mnist: 50000 train, 10000 val, 10000 test" in log
    cfg = (run_dir / ".hydra" / "config.yaml").read_text()
    assert "latent_dim: 40" in cfg and "activation: gated" in cfg and "warmup_epochs: 100" in cfg
    out = tmp_path / "eval.json"
    run_here("vae-eval", f"ckpt_path={run_dir}", "iw_samples=5", f"out={out}", cwd=tmp_path)
    e = json.loads(out.read_text())
    assert e["n_examples"] == 10000 and e["latent_dim"] == 40
    assert e["nll_iw"] < -e["elbo"] + 3 * e["nll_iw_se"]
    # 200 steps into a 100-epoch warm-up: far from converged, but already better than coin flips per pixel.
    assert 150 < e["nll_iw"] < 784 * 0.6931471805599453
