"""The debug= presets: a fast dev run, overfitting a few batches, the simple profiler."""

import json

import pytest

from vae_cli.cli.loading import resolve_checkpoint
from vae_cli.errors import UserError

from conftest import compose, run_here, train


def test_presets_compose_to_lightnings_settings():
    assert compose("train", "debug=fdr").trainer.fast_dev_run is True
    assert compose("train", "debug=overfit").trainer.overfit_batches == 3
    assert compose("train", "debug=profiler").trainer.profiler == "simple"


def test_a_fast_dev_run_writes_no_checkpoint_and_stays_out_of_latest(tmp_path, monkeypatch):
    run_here("vae-train", "debug=fdr", "trainer.enable_progress_bar=false", cwd=tmp_path)
    (run,) = (tmp_path / "outputs" / "debug").glob("*/*")
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["global_step"] == 1 and metrics["best_checkpoint"] is None
    assert not (run / "checkpoints").exists()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match="no run directory with checkpoints"):
        resolve_checkpoint("latest")  # `vae-train ckpt_path=latest` there resumes no debug run


@pytest.mark.slow
def test_overfit_trains_on_the_same_few_batches(tmp_path):
    run = train(tmp_path, "overfit", "debug=overfit", "trainer.max_epochs=2")
    assert json.loads((run / "metrics.json").read_text())["global_step"] == 2 * 3
    import pytorch_lightning as pl

    from vae_cli.data import Digits
    from vae_cli.data.lightning import LightningData

    dm = LightningData(Digits())
    dm.trainer = pl.Trainer(overfit_batches=3, logger=False, enable_progress_bar=False, enable_model_summary=False)
    assert dm.train_dataloader().shuffle is False  # in order: the same 3 batches every epoch
    dm.trainer = pl.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False)
    assert dm.train_dataloader().shuffle is True


def test_the_profiler_reports_in_the_log(tmp_path):
    run = train(tmp_path, "profiled", "debug=profiler", "trainer.limit_train_batches=2", "trainer.log_every_n_steps=1")
    log = (run / "train.log").read_text()
    assert "FIT Profiler Report" in log and "run_training_epoch" in log
