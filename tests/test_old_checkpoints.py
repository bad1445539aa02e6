"""Checkpoints written before the four-layer restructure (flat hyperparameters, parameters named
encoder.* on the LightningModule) still load: vae-eval scores them as that version did, vae-sample
draws from them, and vae-train resumes them to exactly the metrics of an uninterrupted run of that version.
The fixtures and the numbers they must give were written by that version (tests/fixtures/v1/expected.json)."""

import json
import shutil
from pathlib import Path

import pytest
import torch

from conftest import run_here, train

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "v1"
EXPECTED = json.loads((FIXTURES / "expected.json").read_text())
CHECKPOINTS = ["ema_last.ckpt", "ggv_last.ckpt"]


def test_the_fixtures_are_in_the_old_layout():
    for name in CHECKPOINTS:
        ckpt = torch.load(FIXTURES / name, weights_only=True)
        assert "latent_dim" in ckpt["hyper_parameters"] and "model" not in ckpt["hyper_parameters"]
        assert any(k.startswith("encoder.") for k in ckpt["state_dict"])


@pytest.mark.parametrize("name", CHECKPOINTS)
def test_vae_eval_scores_an_old_checkpoint_as_that_version_did(name, tmp_path):
    out = tmp_path / "eval.json"
    run_here("vae-eval", f"ckpt_path={FIXTURES / name}", "iw_samples=10", f"out={out}", cwd=tmp_path)
    got, expected = json.loads(out.read_text()), EXPECTED[name]["vae_eval_k10"]
    for key, value in expected.items():  # the same weights, the same draws
        # float32 kernels round differently on CPUs of other vector widths (about 1e-9 here); another draw
        # of z or of the test bits would move these means by about 1e-2.
        assert got[key] == pytest.approx(value, rel=1e-6, abs=1e-6), key


@pytest.mark.parametrize("name", CHECKPOINTS)
def test_vae_sample_draws_from_an_old_checkpoint(name, tmp_path):
    run_here("vae-sample", f"ckpt_path={FIXTURES / name}", f"out={tmp_path}", "n=4", cwd=tmp_path)
    assert {p.name for p in tmp_path.glob("*.png")} >= {"prior_samples.png", "reconstructions.png", "traversals.png"}


@pytest.mark.parametrize("name", CHECKPOINTS)
def test_vae_train_resumes_an_old_checkpoint_exactly(name, tmp_path):
    # The weights, the optimiser's state (the same parameter order), the average and the random state
    # all carry on: epoch 3 ends where that version's uninterrupted 3-epoch run ended.
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    shutil.copy(FIXTURES / name, tmp_path / "run" / "checkpoints" / "last.ckpt")
    overrides = EXPECTED[name]["overrides"]  # that version's; today the weight average is a choice to add
    if any(o.startswith("callbacks.ema.") for o in overrides):
        overrides = ["callbacks=[default,ema]", *overrides]
    run = train(
        tmp_path,
        "run",
        *overrides,
        "trainer.max_epochs=3",
        f"ckpt_path={tmp_path / 'run' / 'checkpoints' / 'last.ckpt'}",
    )
    assert json.loads((run / "metrics.json").read_text()) == EXPECTED[name]["metrics_after_3_epochs"]
