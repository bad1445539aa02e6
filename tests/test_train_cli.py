"""vae-train end to end, run as a user runs it: Hydra overrides on its real entry point, in this process
or, for its process contract (exit status, stderr, several jobs), as a subprocess."""

import json
import shutil
from pathlib import Path

import pytest
import torch

from vae_cli.data import DEBIAN_FASHION_MNIST

from conftest import QUIET, read_scalars, refused, run_here, run_vae_train, train

TERMS = ("recon_loss", "kl", "elbo", "loss", "bpd")
STEPS_PER_EPOCH = 11  # digits: 1350 training examples in batches of 128


@pytest.fixture(scope="module")
def short_run(tmp_path_factory):
    return train(tmp_path_factory.mktemp("short"), "run", "trainer.max_epochs=2", "trainer.log_every_n_steps=2")


@pytest.mark.slow
def test_run_directory_holds_config_checkpoints_events_and_metrics(short_run):
    assert (short_run / ".hydra" / "config.yaml").is_file()
    assert (short_run / "checkpoints" / "best.ckpt").is_file()
    assert (short_run / "checkpoints" / "last.ckpt").is_file()
    assert list(short_run.glob("events.out.tfevents.*"))
    metrics = json.loads((short_run / "metrics.json").read_text())
    assert metrics["global_step"] == 2 * STEPS_PER_EPOCH and metrics["epochs"] == 2
    assert metrics["best_checkpoint"] == "checkpoints/best.ckpt"
    for t in TERMS:
        assert f"test/{t}" in metrics
    assert metrics["test/elbo"] == pytest.approx(-(metrics["test/recon_loss"] + metrics["test/kl"]), rel=1e-6)
    assert metrics["test/bpd"] == pytest.approx(
        -metrics["test/elbo"] / (64 * torch.log(torch.tensor(2.0)).item()), rel=1e-6
    )


@pytest.mark.slow
def test_event_file_has_each_term_as_its_own_scalar(short_run):
    scalars = read_scalars(short_run)
    for t in TERMS:
        assert len(scalars[f"train/{t}"]) == STEPS_PER_EPOCH  # every 2nd of 22 steps
        assert len(scalars[f"train/{t}_epoch"]) == 2
        assert len(scalars[f"val/{t}"]) == 2
        assert len(scalars[f"test/{t}"]) == 1
    # The terms are logged unscaled: elbo = -(recon_loss + kl) at every logged point.
    for (_, e), (_, r), (_, k) in zip(scalars["val/elbo"], scalars["val/recon_loss"], scalars["val/kl"]):
        assert e == pytest.approx(-(r + k), rel=1e-5)
    assert all(k > 0 for _, k in scalars["train/kl"])


def test_with_gradient_accumulation_the_steps_curves_are_written_once_per_optimiser_step(tmp_path):
    # 11 batches an epoch, 3 to a step: steps 0-3 of each epoch (the last takes 2); every 2nd step is written,
    # once, at the step it ends (as Lightning's own on_step logging writes it), not at each batch of the step.
    run = train(
        tmp_path,
        "run",
        "trainer.max_epochs=2",
        "+trainer.accumulate_grad_batches=3",
        "trainer.log_every_n_steps=2",
        "callbacks=none",
    )
    scalars = read_scalars(run)
    assert json.loads((run / "metrics.json").read_text())["global_step"] == 8
    for t in TERMS:
        assert [s for s, _ in scalars[f"train/{t}"]] == [1, 3, 5, 7]
    assert "epoch" not in scalars


@pytest.mark.slow
def test_resume_from_last_checkpoint_continues_the_step_count(short_run, tmp_path):
    train(tmp_path, "resumed", f"ckpt_path={short_run / 'checkpoints' / 'last.ckpt'}", "trainer.max_epochs=4")
    metrics = json.loads((tmp_path / "resumed" / "metrics.json").read_text())
    assert metrics["global_step"] == 4 * STEPS_PER_EPOCH and metrics["epochs"] == 4
    steps = [s for s, _ in read_scalars(tmp_path / "resumed")["train/loss"]]
    assert min(steps) > 2 * STEPS_PER_EPOCH  # only the new steps were trained here
    # A run directory works as ckpt_path too (its checkpoints/last.ckpt).
    train(tmp_path, "resumed2", f"ckpt_path={short_run}", "trainer.max_epochs=3")
    assert json.loads((tmp_path / "resumed2" / "metrics.json").read_text())["global_step"] == 3 * STEPS_PER_EPOCH


@pytest.mark.slow
def test_multirun_writes_one_run_directory_per_job(tmp_path):
    run_vae_train(
        "--multirun",
        "model.latent_dim=2,4",
        "trainer.max_epochs=1",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        *QUIET,
        cwd=tmp_path,
    )
    for job, k in ((0, 2), (1, 4)):
        job_dir = tmp_path / "sweep" / str(job)
        assert (job_dir / "metrics.json").is_file() and (job_dir / "checkpoints" / "last.ckpt").is_file()
        assert f"model.latent_dim={k}" in (job_dir / ".hydra" / "overrides.yaml").read_text()


def test_help_and_cfg_show_the_composed_config(tmp_path):
    help_text = run_vae_train("--help", cwd=tmp_path).stdout
    assert "vae-train" in help_text and "latent_dim" in help_text
    assert "data: cifar10, digits, fashion_mnist, image_folder, mnist" in help_text and "model: conv, mlp" in help_text
    cfg = run_vae_train("--cfg", "job", "model.latent_dim=7", "data=fashion_mnist", cwd=tmp_path).stdout
    assert "latent_dim: 7" in cfg and "vae_cli.data.FashionMNIST" in cfg


@pytest.mark.slow
@pytest.mark.parametrize(
    "override, expected",
    [
        ("model.latent_dim=0", "model.latent_dim=0"),  # every other key and value: test_config.py, in this process
        ("data.val_size=5000", "data.val_size=5000"),  # checked where the data is read
    ],
)
def test_bad_values_stop_before_training_with_a_message(tmp_path, override, expected):
    proc = run_vae_train(override, f"hydra.run.dir={tmp_path / 'run'}", *QUIET, cwd=tmp_path, check=False)
    assert proc.returncode == 2
    assert expected in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_broken_yaml_file_of_the_users_own_is_named_with_its_line_and_column(tmp_path):
    (tmp_path / "mine" / "experiment").mkdir(parents=True)
    (tmp_path / "mine" / "experiment" / "small.yaml").write_text(
        "# @package _global_\nmodel:\n  latent_dim: [3\ntrainer:\n  max_epochs: 1\n"
    )
    proc = run_vae_train("--config-dir", "mine", "+experiment=small", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "vae-train: error: mine/experiment/small.yaml:4:8: not valid YAML (expected ',' or ']', but got ':'). "
        "Fix that line of the file, then run the command again."
    ]
    assert not (tmp_path / "outputs").exists()


@pytest.mark.parametrize(
    "run_dir", ["x" * 300, "x/" * 3000, "/etc/hostname/run"], ids=["long name", "long path", "below a file"]
)
def test_a_run_directory_the_file_system_cannot_make_is_refused_before_anything_is_written(run_dir, tmp_path, capsys):
    err = refused("vae-train", f"hydra.run.dir={run_dir}", cwd=tmp_path, capsys=capsys)
    assert err.startswith("vae-train: error: hydra.run.dir=") and len(err.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_a_duplicate_key_in_a_yaml_file_of_the_users_own_is_named_with_its_line(tmp_path, capsys):
    (tmp_path / "mine" / "experiment").mkdir(parents=True)
    (tmp_path / "mine" / "experiment" / "dup.yaml").write_text(
        "# @package _global_\nmodel:\n  latent_dim: 3\n  latent_dim: 4\n"
    )
    err = refused("vae-train", "--config-dir", "mine", "experiment=dup", cwd=tmp_path, capsys=capsys)
    assert err.strip() == (
        "vae-train: error: mine/experiment/dup.yaml:4:3: not valid YAML (the key 'latent_dim' "
        "appears twice). Fix that line of the file, then run the command again."
    )


@pytest.mark.slow
def test_learning_beats_initialisation_and_the_best_factorised_model(trained_digits_run):
    """After a short CPU budget the test ELBO must clearly beat (a) the untrained model and (b) the best
    model that ignores z (independent Bernoulli pixels at the training means), which a VAE whose encoder
    learns nothing, or whose KL has the wrong sign, cannot beat."""
    from vae_cli.core.vae import VAE
    from vae_cli.data import Digits

    trained = json.loads((trained_digits_run / "metrics.json").read_text())["test/elbo"]

    dm = Digits(binarize=True)
    x = dm.split("test")[0]
    p = dm.train_pixel_mean().clamp(1e-6, 1 - 1e-6)
    factorised = (x * p.log() + (1 - x) * (1 - p).log()).flatten(1).sum(-1).mean().item()
    torch.manual_seed(0)
    with torch.no_grad():
        initial = VAE(tuple(dm.shape)).terms(x).elbo.mean().item()
    assert trained > initial + 15, (trained, initial)
    assert trained > factorised + 2.0, (trained, factorised)


@pytest.mark.slow
@pytest.mark.skipif(not DEBIAN_FASHION_MNIST.is_dir(), reason="Debian package dataset-fashion-mnist not installed")
def test_fashion_mnist_run_reads_the_real_files(tmp_path):
    train(
        tmp_path,
        "run",
        "data=fashion_mnist",
        f"data.data_dir={tmp_path / 'data'}",
        "trainer.max_steps=30",
        "trainer.limit_val_batches=2",
        "trainer.limit_test_batches=2",
    )
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["global_step"] == 30
    assert metrics["test/bpd"] == pytest.approx(-metrics["test/elbo"] / (784 * 0.6931471805599453), rel=1e-6)
    assert "fashion_mnist: 50000 train, 10000 val, 10000 test" in (tmp_path / "run" / "train.log").read_text()


@pytest.mark.slow
def test_resume_in_a_moved_run_directory_keeps_its_best_checkpoint(short_run, tmp_path):
    # A run copied elsewhere (another disk, the GPU machine) and resumed there in place.
    moved = tmp_path / "moved"
    shutil.copytree(short_run, moved)
    best_before = json.loads((short_run / "metrics.json").read_text())["best_val_elbo"]
    train(tmp_path, "moved", f"ckpt_path={moved / 'checkpoints' / 'last.ckpt'}", "trainer.max_epochs=3")
    assert sorted(p.name for p in (moved / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]  # no best-v1.ckpt
    metrics = json.loads((moved / "metrics.json").read_text())
    val = [v for _, v in read_scalars(moved)["val/elbo"]]
    assert metrics["best_checkpoint"] == "checkpoints/best.ckpt"
    assert metrics["best_val_elbo"] == pytest.approx(max(best_before, val[-1]))
    assert torch.load(moved / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 2


def _files(run_dir):
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in sorted(run_dir.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_a_refused_resume_leaves_the_run_directory_as_it_was(short_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(short_run, run)
    before = _files(run)
    with pytest.raises(SystemExit) as e:
        train(tmp_path, "run", f"ckpt_path={run}", "model.latent_dim=8")
    assert e.value.code == 2
    assert "model.latent_dim=16 (here 8)" in capsys.readouterr().err
    assert _files(run) == before  # no record, no log line, nothing


@pytest.mark.slow
def test_a_resume_adds_its_own_record_and_keeps_the_first(short_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(short_run, run)
    first = {name: data for name, data in _files(run).items() if name.startswith(".hydra/") or name == "train.log"}
    train(tmp_path, "run", f"ckpt_path={run}", "trainer.max_epochs=3")
    after = _files(run)
    assert all(after[name] == data for name, data in first.items())  # the first composition, as it was
    records = sorted(p for p in (run / ".hydra").iterdir() if p.is_dir())
    assert len(records) == 1 and {p.name for p in records[0].iterdir() if not p.name.startswith("events.")} == {
        "config.yaml",
        "hydra.yaml",
        "overrides.yaml",
        "train.log",
        "hparams.yaml",
        "provenance.yaml",
    }
    assert "trainer.max_epochs=3" in (records[0] / "overrides.yaml").read_text()
    assert "max_epochs: 3" in (records[0] / "config.yaml").read_text()
    assert f"resuming {run / 'checkpoints' / 'last.ckpt'}" in (records[0] / "train.log").read_text()
    # Its own HPARAMS row (TensorBoard keeps the first session of a run directory): its settings, its metrics.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    (events,) = records[0].glob("events.out.tfevents.*")
    acc = EventAccumulator(str(events))
    acc.Reload()
    sessions = [plugin_data_pb2.HParamsPluginData.FromString(c) for c in acc.PluginTagToContent("hparams").values()]
    (start,) = [d.session_start_info for d in sessions if d.HasField("session_start_info")]
    assert start.hparams["trainer.max_epochs"].number_value == 3
    final = json.loads((run / "metrics.json").read_text())["test/elbo"]
    assert [v for _, v in read_scalars(records[0])["test/elbo"]] == [pytest.approx(final)]


@pytest.mark.slow
def test_latest_is_the_newest_run_below_the_working_directory(short_run, tmp_path):
    for name in ("2026-01-02/09-00-00", "2026-01-01/23-00-00"):
        shutil.copytree(short_run, tmp_path / "outputs" / name)
    (tmp_path / "outputs" / "multirun" / "2026-12-31" / "00-00-00" / "checkpoints").mkdir(parents=True)
    run_here("vae-train", "ckpt_path=latest", "trainer.max_epochs=3", *QUIET, cwd=tmp_path)  # resumes in place
    newest = tmp_path / "outputs" / "2026-01-02" / "09-00-00"
    assert json.loads((newest / "metrics.json").read_text())["epochs"] == 3
    assert json.loads((tmp_path / "outputs" / "2026-01-01" / "23-00-00" / "metrics.json").read_text())["epochs"] == 2
    run_here("vae-eval", "ckpt_path=latest", "iw_samples=2", cwd=tmp_path)
    assert (newest / "eval_test_k2_best.json").is_file()


@pytest.mark.slow
def test_a_default_run_prints_no_warning_and_says_where_it_writes(tmp_path):
    proc = run_vae_train("trainer.max_epochs=1", cwd=tmp_path)  # as the README's main command, one epoch
    assert proc.stderr == "", proc.stderr
    assert "warn" not in proc.stdout.lower() and "Tip" not in proc.stdout, proc.stdout
    (run,) = (tmp_path / "outputs").glob("*/*")
    assert f"run directory: outputs/{run.parent.name}/{run.name}" in proc.stdout
    assert "tensorboard --logdir outputs" in proc.stdout
    # Not a terminal: one line per epoch instead of a bar, with the running means and the validation ELBO.
    line = next(line for line in proc.stdout.splitlines() if "epoch 1/1" in line)
    assert all(f"{k} " in line for k in ("loss", "recon_loss", "kl", "elbo", "val/elbo"))
    assert "\r" not in proc.stdout and "\x1b[" not in proc.stdout  # no bar redraws, no escape codes


def test_without_the_bar_the_log_still_has_a_line_per_epoch(short_run):
    # short_run has trainer.enable_progress_bar=false (QUIET): no bar, and still the status in train.log.
    lines = [line for line in (short_run / "train.log").read_text().splitlines() if "  step " in line]
    assert [line.split("] - ")[1].split("  step")[0] for line in lines] == ["epoch 1/2", "epoch 2/2"]
    assert f"step {2 * STEPS_PER_EPOCH}  " in lines[-1]
    assert all(f"{k} " in lines[-1] for k in ("loss", "recon_loss", "kl", "elbo", "val/elbo"))


@pytest.mark.slow
def test_images_are_written_at_the_end_whatever_the_epoch_count(short_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    steps = []
    for f in short_run.glob("events.out.tfevents.*"):
        acc = EventAccumulator(str(f))
        acc.Reload()
        if "val/reconstructions" in acc.Tags()["images"]:
            steps += [e.step for e in acc.Images("val/reconstructions")]
    assert steps == [2 * STEPS_PER_EPOCH]  # 2 epochs, grids every 10: once, at the end


@pytest.mark.slow
def test_diagnostics_do_not_change_what_training_draws(tmp_path):
    args = ("trainer.max_epochs=3", "seed=4")
    quiet = train(tmp_path, "quiet", *args)
    busy = train(
        tmp_path,
        "busy",
        *args,
        "callbacks.image_grids.every_n_epochs=1",
        "callbacks.val_nll_iw.iw_samples=3",
        "callbacks.val_nll_iw.every_n_epochs=1",
    )
    assert (quiet / "metrics.json").read_text() == (busy / "metrics.json").read_text()


@pytest.mark.slow
def test_in_a_terminal_the_bar_shows_the_running_means_and_the_time_left(tmp_path):
    import fcntl
    import os
    import pty
    import struct
    import subprocess
    import sys
    import termios

    main, tty = pty.openpty()
    fcntl.ioctl(tty, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 200, 0, 0))
    exe = str(Path(sys.executable).parent / "vae-train")
    proc = subprocess.Popen(
        [exe, "trainer.max_epochs=3", f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=tmp_path,
        stdin=tty,
        stdout=tty,
        stderr=tty,
        close_fds=True,
    )
    os.close(tty)
    out = bytearray()
    while True:
        try:
            chunk = os.read(main, 65536)
        except OSError:
            break
        if not chunk:
            break
        out.extend(chunk)
    assert proc.wait(timeout=120) == 0
    frames = [f for f in out.decode(errors="replace").replace("\r", "\n").splitlines() if f.startswith("Epoch 3/3")]
    assert frames and all(f"{k}=" in frames[-1] for k in ("loss", "recon_loss", "kl", "elbo", "val/elbo", "left"))


def test_the_time_left_is_capped_by_the_time_limit_and_never_below_zero(monkeypatch):
    from datetime import timedelta
    from types import SimpleNamespace

    import pytorch_lightning as pl

    from vae_cli.training.callbacks import EpochLines

    class Limit(pl.callbacks.Timer):
        def __init__(self, remaining):
            super().__init__(duration=timedelta(hours=1))
            self.remaining = remaining

        def time_remaining(self, stage="train"):
            return self.remaining

    lines = EpochLines()
    lines._start = (0.0, 0)
    monkeypatch.setattr("time.monotonic", lambda: 10.0)  # 10 s for 10 steps: 90 steps left take 90 s
    trainer = SimpleNamespace(global_step=10, max_steps=-1, max_epochs=10, num_training_batches=10, callbacks=[])
    assert lines._time_left(trainer) == timedelta(seconds=90)
    trainer.callbacks = [Limit(30.0)]
    assert lines._time_left(trainer) == timedelta(seconds=30)
    trainer.callbacks = [Limit(-3.0)]  # the epoch that crossed the limit ends after it
    assert lines._time_left(trainer) == timedelta(0)
