"""A stop knows where it is (training/signals.py): signals that come while a stop is under way are the same stop,
a later one abandons it only once what is being written is whole, and the record always says where the run
stopped and what was lost. Real signals, sent to this process by the run's own callbacks."""

import json

import pytest
import torch

from vae_cli.training import signals

from conftest import SMALL, run_here, train

RUN = (*SMALL, "seed=4")  # 11 steps an epoch


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    return train(tmp_path_factory.mktemp("u"), "run", *RUN)


def _stopped(tmp_path, *args) -> int:
    with pytest.raises(SystemExit) as e:
        run_here("vae-train", *RUN, f"hydra.run.dir={tmp_path / 'run'}", *args, cwd=tmp_path)
    return e.value.code


@pytest.mark.parametrize(
    "signum, at, step, stopped",
    [
        ("SIGUSR1", "step:16", 16, "in epoch 2 at step 16"),
        ("SIGINT", "step:22", 22, "after epoch 2 (step 22)"),
        ("SIGTERM", "validation:1", 11, "after epoch 1 (step 11)"),
    ],
)
def test_two_signals_50_ms_apart_are_one_stop_that_saves_and_resumes_exactly(
    helpers, tmp_path, uninterrupted, signum, at, step, stopped
):
    code = _stopped(
        tmp_path,
        "+callbacks.sig._target_=fault_helpers.SignalTwiceAt",
        f"+callbacks.sig.at={at}",
        f"+callbacks.sig.signum={signum}",
        "+callbacks.sig.gap=0.05",
    )
    run = tmp_path / "run"
    record = json.loads((run / "interrupted.json").read_text())
    assert code == 128 + getattr(__import__("signal"), signum)
    assert (record["stopped"], record["global_step"], record["lost"]) == (stopped, step, None)
    assert torch.load(run / "checkpoints" / "interrupted.ckpt", weights_only=True)["global_step"] == step
    assert not (run / ".vae-train.lock").exists()
    run_here("vae-train", *RUN, f"ckpt_path={run}", cwd=tmp_path)
    assert json.loads((run / "metrics.json").read_text()) == json.loads((uninterrupted / "metrics.json").read_text())


def test_a_signal_while_the_run_is_built_records_before_training_and_releases_the_lock(helpers, tmp_path):
    code = _stopped(tmp_path, "+callbacks.sig._target_=fault_helpers.SignalWhenBuilt", "+callbacks.sig.signum=SIGUSR1")
    run = tmp_path / "run"
    record = json.loads((run / "interrupted.json").read_text())
    assert code == 138 and record["stopped"] == "before training" and record["checkpoint"] is None
    assert "before training" in (run / "train.log").read_text()
    assert not (run / ".vae-train.lock").exists() and not (run / "checkpoints" / "interrupted.ckpt").exists()


def test_a_signal_after_the_grace_abandons_the_stop_and_the_record_says_what_was_lost(helpers, tmp_path, monkeypatch):
    monkeypatch.setattr(signals, "GRACE", 0.2)
    code = _stopped(
        tmp_path,
        "+callbacks.sig._target_=fault_helpers.SignalInsistingAt",
        "+callbacks.sig.at=step:16",
        "+callbacks.sig.signum=SIGINT",
        "+callbacks.sig.after=0.5",
    )
    run = tmp_path / "run"
    record = json.loads((run / "interrupted.json").read_text())
    assert code == 130 and record["stopped"] == "in epoch 2 at step 16"
    assert record["checkpoint"].endswith("last.ckpt")  # the end of epoch 1: the state it resumes from
    assert record["lost"] == "steps 12 to 16 of training (epoch 2), which no checkpoint holds"
    assert not (run / "checkpoints" / "interrupted.ckpt").exists()


def test_an_abandon_waits_until_the_checkpoint_being_written_is_whole(helpers, tmp_path, monkeypatch):
    import os
    import signal

    from vae_cli.training import checkpointing

    monkeypatch.setattr(signals, "GRACE", 0.0)
    real = checkpointing.atomic_write

    def insisting(path, write, fsync=False):  # the user's second Ctrl-C arrives while interrupted.ckpt is written
        if path.name == "interrupted.ckpt":
            os.kill(os.getpid(), signal.SIGINT)
        return real(path, write, fsync)

    monkeypatch.setattr(checkpointing, "atomic_write", insisting)
    code = _stopped(
        tmp_path,
        "+callbacks.sig._target_=fault_helpers.SignalAt",
        "+callbacks.sig.at=step:16",
        "+callbacks.sig.signum=SIGINT",
    )
    run = tmp_path / "run"
    saved = torch.load(run / "checkpoints" / "interrupted.ckpt", weights_only=True)  # whole: it loads
    record = json.loads((run / "interrupted.json").read_text())
    assert code == 130 and saved["global_step"] == 16 and record["global_step"] == 16
