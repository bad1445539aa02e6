"""A signal at any point of a run, then a resume from its run directory, ends where the uninterrupted run ends: the
same metrics.json and the same epoch means in TensorBoard. Real signals to a real process, sent by a test callback
at the first and last step of an epoch, during validation, before training and during the final test."""

import json
import shlex

import pytest
import torch

from conftest import QUIET, SMALL, SMALL_NET, read_scalars, run_vae_train, train

pytestmark = pytest.mark.slow  # each test trains, is stopped by a signal and resumes in vae-train processes

RUN = (*SMALL, "seed=4")  # 11 steps per epoch


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    return train(tmp_path_factory.mktemp("u"), "run", *RUN)


def _curves(run):
    scalars = read_scalars(run)
    return {tag: sorted(scalars[tag]) for tag in ("train/elbo_epoch", "val/elbo")}


# (where the signal is sent, the step of the state saved (None: nothing saved), interrupted.json's "stopped")
POINTS = [
    ("step:12", 12, "in epoch 2 at step 12"),  # the first step of an epoch
    ("step:22", 22, "after epoch 2 (step 22)"),  # its last: the stop waits for validation and the epoch's end
    ("validation:2", 22, "after epoch 2 (step 22)"),
    ("step:33", 33, "after epoch 3 (step 33)"),  # the last step of training
    ("setup", None, "before training"),
    ("test", None, "after training, in the final test"),
]


@pytest.mark.parametrize("at, step, stopped", POINTS, ids=[p[0] for p in POINTS])
def test_a_signal_anywhere_stops_cleanly_and_the_run_resumes_exactly(
    helpers, tmp_path, uninterrupted, at, step, stopped
):
    run = tmp_path / "run"
    proc = run_vae_train(
        *RUN,
        f"hydra.run.dir={run}",
        "+callbacks.sig._target_=fault_helpers.SignalAt",
        f"+callbacks.sig.at={at}",
        "+callbacks.sig.signum=SIGTERM",
        cwd=tmp_path,
        check=False,
    )
    assert proc.returncode == 143 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert not (run / "metrics.json").exists() and not (run / ".vae-train.lock").exists()
    record = json.loads((run / "interrupted.json").read_text())
    assert record["stopped"] == stopped and record["requeued"] is False
    saved = run / "checkpoints" / "interrupted.ckpt"
    if step is None:
        assert not saved.exists()
    else:
        assert torch.load(saved, weights_only=True)["global_step"] == step
        assert record["global_step"] == step and record["checkpoint"] == str(saved)
    assert f"Resume with: {record['resume']}" in proc.stdout

    if record["checkpoint"]:  # the natural command: the run directory, whose newest state is taken, and said
        again = run_vae_train(*RUN, f"ckpt_path={run}", cwd=tmp_path)
        assert f"resuming {record['checkpoint']}" in again.stdout
        assert "Warning" not in again.stderr and "exists and is not empty" not in again.stdout + again.stderr
    else:  # nothing was saved: the command it gave runs the run again in its directory (here without the signal)
        command = [a for a in shlex.split(record["resume"]) if not a.startswith("+callbacks.sig")]
        assert command[:2] == ["vae-train", f"hydra.run.dir={run}"]
        run_vae_train(*command[1:], cwd=tmp_path)
    assert json.loads((run / "metrics.json").read_text()) == json.loads((uninterrupted / "metrics.json").read_text())
    assert _curves(run) == _curves(uninterrupted)
    if step is not None:  # timing.json counts the training time of both starts
        before = torch.load(saved, weights_only=True)["callbacks"]["Timer"]["time_elapsed"]["train"]
        # (>=: a stop after the last step leaves the second start nothing to train; timing.json keeps 3 decimals)
        assert json.loads((run / "timing.json").read_text())["train_seconds"] >= round(before, 3) > 0


def test_a_signal_while_the_finished_process_shuts_down_is_ignored(tmp_path):
    """Python gives a signal with a handler of its own back its default action (for SIGUSR1: to end the process)
    while it shuts down, so a warning from SLURM then would record a finished job as killed. After vae-train's
    work the stop signals are ignored instead."""
    import subprocess
    import sys

    argv = ["vae-train", *SMALL_NET, "trainer.max_epochs=1", *QUIET, f"hydra.run.dir={tmp_path / 'r'}"]
    script = (
        f"import os, signal, sys; from vae_cli.cli.train import main; sys.argv = {argv!r}; main(); "
        "print([signal.getsignal(s) is signal.SIG_IGN for s in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)]); "
        "os.kill(os.getpid(), signal.SIGUSR1)"
    )
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "[True, True, True]"
    assert (tmp_path / "r" / "metrics.json").is_file()
