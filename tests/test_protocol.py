"""The options that make experiment=fashion_mnist_vae follow the reference code of the published result:
a fixed validation split, numpy's binarisation under seed 777, the clipped log-variance, normalised
gradients, and early stopping counted after the warm-up; each against an independent computation."""

import types

import numpy as np
import pytest
import torch
from pytorch_lightning.trainer.states import TrainerFn

from vae_cli.core.vae import VAE
from vae_cli.data import Digits
from vae_cli.training.callbacks import EarlyStopping
from vae_cli.training.module import VAEModule

from conftest import compose


def test_the_last_split_takes_the_last_examples_of_the_training_file_in_order():
    dm = Digits(val_size=150, val_split="last", binarize=False)
    train_x, train_y, _, _ = dm.load()
    (tr, ytr), (va, yva) = dm.split("train"), dm.split("val")
    assert torch.equal(va, train_x[-150:]) and torch.equal(yva, train_y[-150:])
    assert torch.equal(tr, train_x[:-150]) and torch.equal(ytr, train_y[:-150])
    random = Digits(val_size=150, binarize=False).split("val")[0]
    assert not torch.equal(random, va)


def test_numpy_binarisation_is_the_reference_codes_draws():
    grey = Digits(val_size=150, val_split="last", binarize=False)
    bits = Digits(val_size=150, val_split="last", binarize=True, eval_binarize_numpy_seed=777)
    # The reference: np.random.seed(777), then binomial(1, p) for the validation set, then the test set.
    np.random.seed(777)
    expected_val = np.random.binomial(1, grey.split("val")[0].double().numpy())
    expected_test = np.random.binomial(1, grey.split("test")[0].double().numpy())
    assert np.array_equal(bits.split("val")[0].numpy(), expected_val)
    assert np.array_equal(bits.split("test")[0].numpy(), expected_test)
    assert not torch.equal(bits.split("val")[0], Digits(val_size=150, val_split="last", binarize=True).split("val")[0])


def test_8bit_values_are_binarised_as_numpy_reads_the_original_bytes():
    from vae_cli.data.batching import binarize_numpy

    k = torch.arange(256, dtype=torch.uint8).repeat(40)
    x = k.float() / 255  # as the datamodules hold 8-bit data
    expected = np.random.RandomState(5).binomial(1, k.numpy() / 255.0)  # float64 from the bytes
    assert np.array_equal(binarize_numpy([x], 5)[0].numpy(), expected)


def test_the_log_variance_is_clipped_and_stops_its_gradient_outside_the_range():
    torch.manual_seed(0)
    vae = VAE((1, 8, 8), latent_dim=3, hidden_dims=[16], logvar_range=(-6.0, 2.0))
    with torch.no_grad():
        vae.encoder.net[-1].bias[3:] = torch.tensor([-50.0, 0.5, 50.0])  # the log-variance outputs
    x = torch.rand(4, 1, 8, 8)
    _, logvar = vae.encode(x)
    assert logvar.min() >= -6 and logvar.max() <= 2
    assert torch.allclose(logvar[:, 0], torch.tensor(-6.0)) and torch.allclose(logvar[:, 2], torch.tensor(2.0))
    logvar.sum().backward()
    grad = vae.encoder.net[-1].bias.grad[3:]
    assert grad[0] == 0 and grad[2] == 0 and grad[1] != 0


def test_normalised_gradients_have_unit_norm_per_tensor_before_the_step():
    torch.manual_seed(0)
    module = VAEModule(VAE([1, 8, 8], latent_dim=3, hidden_dims=[16]), normalize_grads=True)
    module._metrics(torch.bernoulli(torch.full((32, 1, 8, 8), 0.3)))[0]["loss"].backward()
    raw = [p.grad.norm().item() for p in module.parameters()]
    module.on_before_optimizer_step(optimizer=None)
    for norm, p in zip(raw, module.parameters()):
        assert p.grad.norm().item() == pytest.approx(norm / (norm + 1e-7), rel=1e-5)
    assert max(raw) > 2 and min(raw) < 0.5  # the raw norms were far from 1


def _stopping_epoch(callback, values) -> int | None:
    """The 1-based epoch after which the callback stops a run whose monitored metric takes these values."""
    trainer = types.SimpleNamespace(
        fast_dev_run=False,
        should_stop=False,
        current_epoch=0,
        callback_metrics={},
        strategy=types.SimpleNamespace(reduce_boolean_decision=lambda d, all: d),
        state=types.SimpleNamespace(fn=TrainerFn.FITTING),
        sanity_checking=False,
    )
    for epoch, v in enumerate(values):
        trainer.current_epoch, trainer.callback_metrics = epoch, {"val/elbo": torch.tensor(v)}
        callback.on_train_epoch_end(trainer, None)  # Lightning's two hooks: the callback checks in one of them
        callback.on_validation_end(trainer, None)
        if trainer.should_stop:
            return epoch + 1
    return None


def test_early_stopping_counts_only_from_its_start_epoch():
    flat = [-100.0] + [-101.0] * 20  # the best at epoch 1, never improved
    assert _stopping_epoch(EarlyStopping(monitor="val/elbo", mode="max", patience=3), flat) == 4
    # The reference's counter: reset while epoch < start (here 10), so epochs 10, 11, 12 count.
    assert _stopping_epoch(EarlyStopping(monitor="val/elbo", mode="max", patience=3, start_epoch=10), flat) == 12
    # An improvement during the warm-up still sets the best that later epochs must beat.
    late = [-100.0] * 5 + [-90.0] + [-95.0] * 15
    callback = EarlyStopping(monitor="val/elbo", mode="max", patience=3, start_epoch=8)
    assert _stopping_epoch(callback, late) == 10 and callback.best_score.item() == -90.0


def test_the_experiment_sets_every_reference_point():
    cfg = compose("train", "experiment=fashion_mnist_vae")
    assert cfg.data.val_split == "last" and cfg.data.eval_binarize_numpy_seed == 777
    assert list(cfg.model.logvar_range) == [-6, 2] and cfg.optim.normalize_grads is True
    assert cfg.callbacks.early_stopping.start_epoch == cfg.objective.warmup_epochs == 100
    assert cfg.callbacks.early_stopping.patience == 51 and cfg.optim.lr_decay == 1.0
