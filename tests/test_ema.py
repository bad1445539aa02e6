"""The weight average (callbacks=[default,ema], callbacks.ema.decay): its update is the EMA recursion, it is what
validation, best.ckpt, the test after training and vae-eval score, and a resumed run continues it exactly."""

import json

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from vae_cli.training.callbacks import EMA

from conftest import run_here, train

EMA_ON = "callbacks=[default,ema]"  # the weight average is a choice of the callbacks group


class _Regression(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(3, 1)
        self.validated = []  # the weight each validation saw

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.mse_loss(self.lin(x), y)

    def validation_step(self, batch, batch_idx):
        self.validated.append(self.lin.weight.detach().clone())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class _RawWeights(pl.Callback):
    def __init__(self):
        self.raw = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.raw.append(pl_module.lin.weight.detach().clone())


def test_the_average_follows_the_ema_recursion_and_validation_sees_it():
    torch.manual_seed(0)
    x = torch.randn(64, 3)
    data = DataLoader(TensorDataset(x, x @ torch.tensor([[1.0], [-2.0], [0.5]])), batch_size=8)  # 8 steps an epoch
    model, rec, decay = _Regression(), _RawWeights(), 0.8
    trainer = pl.Trainer(
        max_epochs=2,
        callbacks=[rec, EMA(decay)],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=1,
        accelerator="cpu",
    )
    trainer.fit(model, data, data)

    # Written out: the first step's weights, then avg <- decay * avg + (1 - decay) * theta_t.
    avg, at_epoch_end = rec.raw[0], []
    for t, theta in enumerate(rec.raw[1:], start=1):
        avg = decay * avg + (1 - decay) * theta
        if t % 8 == 7:
            at_epoch_end.append(avg)
    assert len(rec.raw) == 16 and len(model.validated) == 2
    for seen, expected in zip(model.validated, at_epoch_end):
        torch.testing.assert_close(seen, expected)
    torch.testing.assert_close(model.lin.weight.detach(), at_epoch_end[-1])  # training ends on the average
    assert not torch.allclose(rec.raw[-1], at_epoch_end[-1], atol=1e-4)  # which is not the last iterate


@pytest.mark.parametrize("decay", [-0.1, 0.0, 1.0])
def test_a_decay_outside_0_1_is_refused(decay):  # as callbacks.ema.decay: test_config.py
    with pytest.raises(ValueError, match=f"decay={decay}"):
        EMA(decay)


def _eval_kl(ckpt, tmp_path, name):
    out = tmp_path / f"{name}.json"
    run_here("vae-eval", f"ckpt_path={ckpt}", "iw_samples=1", f"out={out}", cwd=tmp_path)
    return json.loads(out.read_text())["kl"]


@pytest.mark.slow
def test_best_checkpoint_the_test_and_vae_eval_score_the_average(tmp_path):
    run = train(tmp_path, "run", "trainer.max_epochs=10", EMA_ON, "callbacks.ema.decay=0.95")
    ckpt = torch.load(run / "checkpoints" / "best.ckpt", weights_only=True)
    average, raw = ckpt["state_dict"], ckpt["current_model_state"]
    assert average.keys() == raw.keys() and not all(torch.equal(average[k], raw[k]) for k in average)

    # The analytic KL is deterministic given the weights, so it tells which weights were scored.
    torch.save({**ckpt, "state_dict": raw}, tmp_path / "raw.ckpt")
    kl_average = _eval_kl(run / "checkpoints" / "best.ckpt", tmp_path, "average")
    kl_raw = _eval_kl(tmp_path / "raw.ckpt", tmp_path, "raw")
    test_kl = json.loads((run / "metrics.json").read_text())["test/kl"]
    assert abs(kl_average - kl_raw) > 1e-3 * abs(kl_raw)
    assert test_kl == pytest.approx(kl_average, rel=1e-4)


@pytest.mark.slow
def test_a_resumed_run_continues_the_average_exactly(tmp_path):
    args = (EMA_ON, "callbacks.ema.decay=0.9", "seed=3")
    train(tmp_path, "a", "trainer.max_epochs=4", *args)
    train(tmp_path, "b", "trainer.max_epochs=2", *args)
    train(tmp_path, "b", "trainer.max_epochs=4", *args, f"ckpt_path={tmp_path / 'b' / 'checkpoints' / 'last.ckpt'}")
    a, b = (torch.load(tmp_path / r / "checkpoints" / "last.ckpt", weights_only=True) for r in "ab")
    assert a["global_step"] == b["global_step"] == 44
    for key in ("state_dict", "current_model_state", "averaging_state"):
        assert a[key].keys() == b[key].keys()
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), (key, name)
    assert (tmp_path / "a" / "metrics.json").read_text() == (tmp_path / "b" / "metrics.json").read_text()


@pytest.mark.slow
def test_a_run_resumed_without_the_average_continues_the_raw_weights(tmp_path):
    # The average never feeds back into the optimisation, so epoch 3 of an averaged run and epoch 3 of
    # the same run resumed at epoch 2 without the average (callbacks=default) start from, and reach, the same weights.
    train(tmp_path, "a", "trainer.max_epochs=3", EMA_ON, "callbacks.ema.decay=0.9", "seed=3")
    train(tmp_path, "b", "trainer.max_epochs=2", EMA_ON, "callbacks.ema.decay=0.9", "seed=3")
    train(tmp_path, "b", "trainer.max_epochs=3", "seed=3", f"ckpt_path={tmp_path / 'b' / 'checkpoints' / 'last.ckpt'}")
    a, b = (torch.load(tmp_path / r / "checkpoints" / "last.ckpt", weights_only=True) for r in "ab")
    assert a["global_step"] == b["global_step"] == 33 and "current_model_state" not in b
    assert a["current_model_state"].keys() == b["state_dict"].keys()
    for name, raw in a["current_model_state"].items():
        assert torch.equal(raw, b["state_dict"][name]), name
