"""Data-parallel training (trainer=ddp) on two CPU processes: the logged metrics are reduced over the whole
validation set, and each image of a folder is scored by exactly one process."""

import json

import pytest
import torch

from conftest import QUIET, read_scalars, run_here, run_vae_train

pytestmark = pytest.mark.slow  # each test trains in two vae-train processes


def test_ddp_on_two_cpu_processes_reduces_metrics_over_the_whole_set(tmp_path):
    from vae_cli.cli.loading import load_vae, make_datamodule
    from vae_cli.core.elbo import kl_analytic
    from vae_cli.core.scoring import ACTIVE_UNIT_THRESHOLD

    run_dir = tmp_path / "run"
    # 151 validation examples: the processes hold 76 and 75, so a mean of per-process means would be off.
    proc = run_vae_train(
        "trainer=ddp",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "trainer.max_epochs=2",
        "data.val_size=151",
        f"hydra.run.dir={run_dir}",
        *QUIET,
        cwd=tmp_path,
        timeout=600,
    )
    assert "sync_dist" not in proc.stderr  # the epoch means are reduced exactly; nothing to recommend
    lines = proc.stdout.splitlines()  # the first process's lines only, once each
    assert sum("test: elbo" in line for line in lines) == 1 and sum("run directory:" in line for line in lines) == 1
    assert sum(line.startswith("epoch 2/2") or "] - epoch 2/2" in line for line in lines) == 1, proc.stdout[-3000:]
    assert "FileNotFoundError" not in proc.stdout + proc.stderr  # each process probes the directory with its own file
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["global_step"] == 2 * 6  # 1,349 training examples split over 2 processes: 6 batches of 128 each

    # The analytic KL has no sampling noise: the reduced val/kl of the last epoch must equal the mean over
    # all 151 validation examples, computed here in one process with the weights of that epoch.
    vae, data_config = load_vae(run_dir / "checkpoints" / "last.ckpt")
    x = make_datamodule(data_config).split("val")[0]
    assert len(x) == 151
    with torch.no_grad():
        mu, logvar = vae.encode(x)
        kl = kl_analytic(mu, logvar).sum(-1).mean().item()
    logged = read_scalars(run_dir)["val/kl"][-1][1]
    assert logged == pytest.approx(kl, rel=1e-5, abs=1e-6)
    # So are the sums behind val/active_units: the count over all 151 posterior means.
    active = (mu.var(0) > ACTIVE_UNIT_THRESHOLD).sum().item()
    assert read_scalars(run_dir)["val/active_units"][-1][1] == active

    # The test metrics agree with a single-process evaluation of the same checkpoint (vae-eval, k = 1):
    # the KL exactly, the ELBO within the estimator's noise.
    out = tmp_path / "eval.json"
    run_here(
        "vae-eval", f"ckpt_path={run_dir / metrics['best_checkpoint']}", "iw_samples=1", f"out={out}", cwd=tmp_path
    )
    single = json.loads(out.read_text())
    assert metrics["test/kl"] == pytest.approx(single["kl"], rel=1e-5)
    assert abs(metrics["test/elbo"] - single["elbo"]) < 4 * single["elbo_se"]


def test_ddp_scores_an_image_folder_split_exactly_once(tmp_path):
    """Image folders go through DataLoaders; under DDP each validation image must be scored by exactly one
    process (Lightning's default sampler pads the shards by repeating images, which skews the mean)."""
    import numpy as np
    from PIL import Image

    from vae_cli.cli.loading import load_vae, make_datamodule
    from vae_cli.core.elbo import kl_analytic

    rng = np.random.default_rng(0)
    folder = tmp_path / "pictures"
    folder.mkdir()
    for i in range(30):
        Image.fromarray(rng.integers(0, 256, size=(8, 8), dtype=np.uint8)).save(folder / f"im{i:02d}.png")
    run_dir = tmp_path / "run"
    # 7 validation images: the processes hold 4 and 3; a padded sampler would score one of them twice.
    run_vae_train(
        "trainer=ddp",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "trainer.max_epochs=1",
        "data=image_folder",
        f"data.path={folder}",
        "data.image_size=[8,8]",
        "data.channels=1",
        "data.val_size=7",
        "data.test_size=5",
        "data.num_workers=0",
        "model.hidden_dims=[16]",
        "callbacks.latent_projector.max_points=0",
        f"hydra.run.dir={run_dir}",
        *QUIET,
        cwd=tmp_path,
        timeout=600,
    )
    vae, data_config = load_vae(run_dir / "checkpoints" / "last.ckpt")
    dm = make_datamodule(data_config)
    with torch.no_grad():
        kl = {
            split: torch.cat([kl_analytic(*vae.encode(x)).sum(-1) for x, _ in dm.eval_batches(split)])
            for split in ("val", "test")
        }
    assert [len(kl["val"]), len(kl["test"])] == [7, 5]
    assert read_scalars(run_dir)["val/kl"][-1][1] == pytest.approx(kl["val"].mean().item(), rel=1e-5, abs=1e-6)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["best_checkpoint"].endswith("best.ckpt")  # one epoch: best and last hold the same weights
    assert metrics["test/kl"] == pytest.approx(kl["test"].mean().item(), rel=1e-5, abs=1e-6)
