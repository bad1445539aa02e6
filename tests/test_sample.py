"""vae-sample writes the promised grids with the expected sizes; the training callbacks write
images, histograms, val/nll_iw, the projector and the HPARAMS tab."""

import json
import math

import pytest
from PIL import Image

from conftest import read_scalars, run_here, train

pytestmark = pytest.mark.slow  # each test trains a model first

CELL = 8 * 4 + 2  # an 8x8 digit upscaled x4 to reach 28+ pixels, plus the grid's 2-pixel padding


def _size(path):
    with Image.open(path) as im:
        return im.size  # (width, height)


@pytest.fixture(scope="module")
def k2_run(tmp_path_factory):
    return train(
        tmp_path_factory.mktemp("k2"),
        "run",
        "model.latent_dim=2",
        "trainer.max_epochs=3",
        "callbacks.image_grids.every_n_epochs=1",
        "callbacks.val_nll_iw.iw_samples=8",
        "callbacks.val_nll_iw.every_n_epochs=1",
    )


def test_sample_grids_for_k_equal_2(k2_run, tmp_path):
    out = tmp_path / "png"
    run_here(
        "vae-sample",
        f"ckpt_path={k2_run}",
        f"out={out}",
        "n=16",
        "steps=5",
        "manifold_steps=6",
        "draw=true",
        cwd=tmp_path,
    )
    assert _size(out / "prior_samples.png") == (4 * CELL + 2, 4 * CELL + 2)  # 16 samples, 4 per row
    assert _size(out / "prior_draws.png") == (4 * CELL + 2, 4 * CELL + 2)
    assert _size(out / "reconstructions.png") == (8 * CELL + 2, 4 * CELL + 2)  # 2 input rows, each with its recon row
    assert _size(out / "traversals.png") == (5 * CELL + 2, 2 * CELL + 2)  # one row per latent dimension
    assert _size(out / "interpolations.png") == (5 * CELL + 2, 8 * CELL + 2)  # 8 pairs from 16 images
    assert _size(out / "manifold.png") == (6 * CELL + 2, 6 * CELL + 2)


def test_sample_grids_for_k_above_2(trained_digits_run, tmp_path):
    run_here("vae-sample", f"ckpt_path={trained_digits_run / 'checkpoints' / 'best.ckpt'}", cwd=tmp_path)
    out = trained_digits_run / "samples"
    assert _size(out / "traversals.png") == (11 * CELL + 2, 16 * CELL + 2)  # K = 16 rows of 11 steps
    assert _size(out / "prior_samples.png") == (8 * CELL + 2, 8 * CELL + 2)
    assert not (out / "manifold.png").exists() and not (out / "prior_draws.png").exists()


def test_training_writes_images_histograms_iw_nll_projector_and_hparams(k2_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = {"images": set(), "histograms": set()}
    for f in k2_run.glob("events.out.tfevents.*"):
        acc = EventAccumulator(str(f))
        acc.Reload()
        for kind in tags:
            tags[kind] |= set(acc.Tags()[kind])
    assert {"val/reconstructions", "samples/prior_mean"} <= tags["images"]
    assert "val/kl_per_dim" in tags["histograms"]
    scalars = read_scalars(k2_run)
    assert len(scalars["val/nll_iw"]) == 3
    # The k-sample bound is tighter than the ELBO in expectation; here loosely, as k = 8 and 150 examples.
    assert scalars["val/nll_iw"][-1][1] < -scalars["val/elbo"][-1][1] + 0.5
    # TensorBoard's first cards are the ELBO's terms: no `epoch` line, no hp/ placeholders, no NaN anywhere.
    assert "epoch" not in scalars and not any(tag.startswith("hp/") for tag in scalars)
    assert not any(math.isnan(v) for points in scalars.values() for _, v in points)
    best = json.loads((k2_run / "metrics.json").read_text())["best_val_elbo"]
    assert scalars["val/elbo_best"] == [(scalars["val/elbo_best"][0][0], pytest.approx(best))]
    projector = list(k2_run.glob("*/test%2fposterior_mean"))
    assert projector and (projector[0] / "metadata.tsv").read_text().count("\n") == 297
    assert (k2_run / "projector_config.pbtxt").is_file()
    # The HPARAMS tab: one session with the run's settings and, as its metrics, the test stage's own scalars.
    from tensorboard.plugins.hparams import plugin_data_pb2

    found = False
    for f in k2_run.glob("events.out.tfevents.*"):
        acc = EventAccumulator(str(f))
        acc.Reload()
        try:
            contents = acc.PluginTagToContent("hparams").values()
        except KeyError:  # an event file without hyperparameters (e.g. the test stage's)
            continue
        for content in contents:
            data = plugin_data_pb2.HParamsPluginData.FromString(content)
            if data.HasField("session_start_info"):
                found = True
                hp = data.session_start_info.hparams
                assert hp["model.latent_dim"].number_value == 2 and hp["model"].string_value == "mlp"
                # Every setting, not a hand-picked list: whatever a sweep varies is a column.
                assert {
                    "optim.lr_decay",
                    "callbacks.model_checkpoint.monitor",
                    "data.val_size",
                    "trainer.precision",
                    "objective.iw_samples",
                    "callbacks.image_grids.every_n_epochs",
                } <= set(hp)
                assert not any(k.endswith(("dirpath", "_target_")) or k == "run_dir" for k in hp)
            if data.HasField("experiment"):
                assert {m.name.tag for m in data.experiment.metric_infos} == {
                    "test/elbo",
                    "test/recon_loss",
                    "test/kl",
                    "test/bpd",
                    "val/elbo_best",
                }
                assert data.experiment.hparam_infos  # the settings' columns, with the versions among them
    assert found


@pytest.mark.parametrize(
    "shape, nrow", [((16, 1, 8, 8), 4), ((7, 3, 5, 6), 3), ((1, 1, 4, 4), 8), ((10, 3, 8, 8), 10), ((5, 1, 3, 3), 2)]
)
def test_grids_and_pngs_are_torchvisions_pixel_for_pixel(shape, nrow):
    # Our own grid keeps torchvision out of vae-sample's start-up; torchvision's make_grid and save_image are
    # the reference.
    import io

    import torch
    from torchvision.utils import make_grid, save_image

    from vae_cli.writers.images import make_grid as our_grid
    from vae_cli.writers.images import png

    x = torch.rand(shape, generator=torch.Generator().manual_seed(0))
    ours, theirs = our_grid(x, nrow), make_grid(x, nrow=nrow, padding=2, pad_value=0.5)
    assert torch.equal(ours, theirs)
    written = io.BytesIO()
    save_image(theirs, written, format="png")
    assert png(ours) == written.getvalue()
