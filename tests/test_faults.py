"""Faults, injected for real, lose nothing: the same seed gives the same run and a killed run resumes to it, a signal
saves the exact state, a non-finite loss stops at the last good checkpoint, checkpoints are written atomically, load
without running code and are named when they do not fit, a failing job does not stop its sweep, and file systems that
refuse to be written (a full tmpfs, a tmpfs remounted read-only, a run directory deleted while the run writes it) end
in one message naming the path and the system's reason, exit status 2, no traceback, and nothing already written
damaged. SLURM's faults are in test_slurm.py; a signal at every point of a run in test_interruption.py."""

import json
import os
import pickle
import subprocess
from pathlib import Path

import pytest
import torch

from conftest import QUIET, SMALL, SMALL_NET, read_scalars, refused, remount, run_tool, run_vae_train, train


def _metrics(run_dir):
    return json.loads((run_dir / "metrics.json").read_text())


def _clean_failure(proc, *texts):
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr and "Logging error" not in proc.stderr, proc.stderr
    for text in texts:
        assert text in proc.stderr, proc.stderr


def _files(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_same_seed_same_metrics_and_kill_then_resume_finishes_the_same(helpers, tmp_path):
    args = ("trainer.max_epochs=4", "seed=5")
    train(tmp_path, "a", *args)
    train(tmp_path, "b", *args)
    assert (tmp_path / "a" / "metrics.json").read_bytes() == (tmp_path / "b" / "metrics.json").read_bytes()

    # SIGKILL (a process of its own) in the middle of the third epoch (11 steps per epoch), then resume in place.
    proc = run_vae_train(
        *args,
        *QUIET,
        f"hydra.run.dir={tmp_path / 'k'}",
        "+callbacks.kill._target_=fault_helpers.KillAtStep",
        "+callbacks.kill.step=27",
        cwd=tmp_path,
        check=False,
    )
    assert proc.returncode == -9 and not (tmp_path / "k" / "metrics.json").exists()
    last = tmp_path / "k" / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == 22
    train(tmp_path, "k", *args, f"ckpt_path={last}")
    resumed, uninterrupted = _metrics(tmp_path / "k"), _metrics(tmp_path / "a")
    assert resumed == uninterrupted


@pytest.mark.slow
def test_non_finite_loss_stops_the_run_naming_the_term_and_keeps_the_last_good_checkpoint(helpers, tmp_path, capsys):
    run_dir = tmp_path / "run"
    err = refused(
        "vae-train",
        "trainer.max_epochs=4",
        f"hydra.run.dir={run_dir}",
        *QUIET,
        "+callbacks.poison._target_=fault_helpers.PoisonDecoderAtStep",
        "+callbacks.poison.step=15",
        cwd=tmp_path,
        capsys=capsys,
    )
    assert "recon_loss became non-finite at step 15" in err
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == 11  # the end of the last good epoch
    assert all(torch.isfinite(t).all() for t in last["state_dict"].values())
    assert "non-finite" in (run_dir / "train.log").read_text()
    train(tmp_path, "run", "trainer.max_epochs=3", f"ckpt_path={run_dir}")
    assert _metrics(run_dir)["global_step"] == 33


def test_checkpoint_writes_are_atomic(tmp_path, monkeypatch):
    from vae_cli.training.checkpointing import AtomicCheckpointIO

    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.ones(3)}}, path)
    good = path.read_bytes()

    def dying_save(obj, f, *a, **k):
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt  # killed mid-write

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"state_dict": {"w": torch.zeros(3)}}, path)
    assert path.read_bytes() == good and [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


class _RunsCode:
    """Unpickling this calls os.system: what a malicious checkpoint would do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.slow
def test_checkpoints_load_without_running_code_from_them(trained_digits_run, tmp_path, capsys):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.ckpt"
    ckpt = torch.load(trained_digits_run / "checkpoints" / "last.ckpt", weights_only=True)
    ckpt["payload"] = _RunsCode(marker)
    torch.save(ckpt, evil, pickle_module=pickle)
    for tool, args in (
        ("vae-eval", [f"ckpt_path={evil}", "iw_samples=2"]),
        ("vae-sample", [f"ckpt_path={evil}"]),
        ("vae-train", [f"ckpt_path={evil}", f"hydra.run.dir={tmp_path / 'r'}", *QUIET]),
    ):
        assert "cannot be read as a vae-cli checkpoint" in refused(tool, *args, cwd=tmp_path, capsys=capsys)
    assert not marker.exists()


@pytest.mark.slow
def test_bad_checkpoints_for_resuming_are_named(trained_digits_run, tmp_path, capsys):
    last = trained_digits_run / "checkpoints" / "last.ckpt"
    err = refused(
        "vae-train",
        f"ckpt_path={last}",
        "model.latent_dim=8",
        f"hydra.run.dir={tmp_path / 'r'}",
        *QUIET,
        cwd=tmp_path,
        capsys=capsys,
    )
    assert "parameter vae.encoder.net.4.weight has shape (32, 256)" in err
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(last.read_bytes()[:5000])
    err = refused(
        "vae-train", f"ckpt_path={truncated}", f"hydra.run.dir={tmp_path / 'r2'}", *QUIET, cwd=tmp_path, capsys=capsys
    )
    assert "cannot be read as a vae-cli checkpoint" in err


@pytest.mark.slow
def test_a_failing_job_does_not_stop_the_sweep(tmp_path):
    proc = run_vae_train(
        "--multirun",
        "model.latent_dim=0,2",
        "trainer.max_epochs=1",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        *QUIET,
        cwd=tmp_path,
        check=False,
    )
    assert proc.returncode != 0
    assert "model.latent_dim=0 is not a valid latent dimension" in (tmp_path / "sweep" / "0" / "train.log").read_text()
    assert (tmp_path / "sweep" / "1" / "metrics.json").is_file()


def test_unknown_choices_and_misspelt_keys_fail_without_a_traceback(tmp_path):
    for override, text in (("data=imagenet", "Could not find 'data/imagenet'"), ("model.latnet_dim=3", "latnet_dim")):
        proc = run_vae_train(override, cwd=tmp_path, check=False)
        assert proc.returncode != 0 and text in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


@pytest.mark.slow
@pytest.mark.parametrize("signum, code", [("SIGTERM", 143), ("SIGINT", 130), ("SIGUSR1", 138)])
def test_a_signal_saves_the_exact_state_and_exits_with_128_plus_its_number(helpers, tmp_path, signum, code):
    args = ("trainer.max_epochs=4", "seed=5", *QUIET)
    run = tmp_path / "k"
    # A real signal to a real process, in the middle of the third epoch (11 steps per epoch).
    proc = run_vae_train(
        *args,
        f"hydra.run.dir={run}",
        "+callbacks.sig._target_=fault_helpers.SignalAtStep",
        "+callbacks.sig.step=27",
        f"+callbacks.sig.signum={signum}",
        cwd=tmp_path,
        check=False,
    )
    assert proc.returncode == code and "Traceback" not in proc.stderr, proc.stderr
    interrupted = run / "checkpoints" / "interrupted.ckpt"
    assert f"Resume with: vae-train ckpt_path={interrupted}" in proc.stdout
    assert torch.load(interrupted, weights_only=True)["global_step"] == 27  # mid-epoch, where it stopped
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 22  # untouched
    stopped = json.loads((run / "interrupted.json").read_text())
    assert stopped["signal"] == signum and stopped["global_step"] == 27 and not (run / "metrics.json").exists()
    if signum != "SIGTERM":
        return
    # Resumed, it ends where an uninterrupted run ends: the same weights, the same metrics and epoch means.
    train(tmp_path, "k", *args[:2], f"ckpt_path={interrupted}")
    uninterrupted = train(tmp_path, "u", *args[:2])
    assert _metrics(run) == _metrics(uninterrupted)
    a, b = (torch.load(r / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"] for r in (run, uninterrupted))
    assert all(torch.equal(a[k], b[k]) for k in a)
    means = [sorted(read_scalars(r)["train/elbo_epoch"]) for r in (run, uninterrupted)]
    assert means[0] == means[1]


@pytest.mark.slow
def test_a_second_run_in_a_directory_a_live_run_writes_is_refused(tmp_path):
    import signal
    import sys
    import time

    run = tmp_path / "run"
    first = subprocess.Popen(
        [str(Path(sys.executable).parent / "vae-train"), "trainer.max_epochs=1000", f"hydra.run.dir={run}", *QUIET],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while not (run / "checkpoints" / "last.ckpt").exists():  # training, and the directory claimed
            assert first.poll() is None and time.monotonic() < deadline
            time.sleep(0.5)
        second = run_vae_train(f"ckpt_path={run}", "trainer.max_epochs=2000", *QUIET, cwd=tmp_path, check=False)
        assert second.returncode == 2 and "Traceback" not in second.stderr
        assert f"is being written by another vae-train (process {first.pid})" in second.stderr
        assert first.poll() is None  # the first run goes on
    finally:
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=120) == 143
    assert not (run / ".vae-train.lock").exists()


# --- File systems that refuse to be written ---------------------------------------------------------------


@pytest.mark.slow
def test_a_full_disk_stops_the_run_with_the_file_and_the_reason_and_damages_nothing(
    helpers, tmp_path, small_filesystem
):
    run = small_filesystem / "run"
    args = SMALL
    proc = run_vae_train(
        *args,
        f"hydra.run.dir={run}",
        "+callbacks.fill._target_=fault_helpers.FillDiskAtStep",
        "+callbacks.fill.step=15",
        f"+callbacks.fill.path={small_filesystem / 'filler'}",
        cwd=tmp_path,
        check=False,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "No space left on device" in proc.stderr and str(run / "checkpoints") in proc.stderr
    # The epoch-1 checkpoints are whole, and no half-written file is left beside them.
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 11
    (small_filesystem / "filler").unlink()  # space again: the run resumes and finishes
    run_vae_train(*args, f"ckpt_path={run}", cwd=tmp_path)
    assert _metrics(run)["global_step"] == 33


@pytest.mark.slow
def test_tensorboard_on_a_full_disk_stops_the_run_cleanly_and_it_resumes_once_there_is_space(
    helpers, tmp_path, small_filesystem
):
    run = small_filesystem / "run"
    # Event records every step, 43 steps an epoch: the event file outgrows the unused end of its last page (tmpfs
    # counts whole pages) well before the epoch's checkpoints, so TensorBoard meets the full disk first.
    args = (*SMALL, "trainer.log_every_n_steps=1", "data.batch_size=32")
    proc = run_vae_train(
        *args,
        f"hydra.run.dir={run}",
        "+callbacks.fill._target_=fault_helpers.FillDiskAtStep",
        "+callbacks.fill.step=45",
        f"+callbacks.fill.path={small_filesystem / 'filler'}",
        cwd=tmp_path,
        check=False,
    )
    _clean_failure(proc, f"could not write in {run}: No space left on device")
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 43
    assert [s for s, _ in read_scalars(run)["train/loss"]][:45] == list(range(45))  # what was written still reads

    # Full from the start: refused before Hydra writes its record, and no directory is left behind.
    fresh = small_filesystem / "new" / "run"
    _clean_failure(
        run_vae_train(*args, f"hydra.run.dir={fresh}", cwd=tmp_path, check=False), "No space left on device", str(fresh)
    )
    assert not (small_filesystem / "new").exists()

    (small_filesystem / "filler").unlink()
    run_vae_train(*args, f"ckpt_path={run}", cwd=tmp_path)
    assert _metrics(run)["global_step"] == 129


@pytest.mark.slow
def test_a_run_directory_remounted_read_only_mid_run_stops_the_run_cleanly(helpers, tmp_path, small_filesystem):
    run = small_filesystem / "run"
    # The log file elsewhere: a file open for writing keeps a file system from being remounted read-only.
    log = f"hydra.job_logging.handlers.file.filename={tmp_path / 'train.log'}"
    proc = run_vae_train(
        *SMALL,
        log,
        f"hydra.run.dir={run}",
        "+callbacks.ro.step=15",
        "+callbacks.ro._target_=fault_helpers.RemountReadOnlyAtStep",
        f"+callbacks.ro.mount={small_filesystem}",
        cwd=tmp_path,
        check=False,
    )
    _clean_failure(proc, "Read-only file system (errno 30)", str(run))
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 11
    remount(small_filesystem, "rw")
    run_vae_train(*SMALL, log, f"ckpt_path={run}", cwd=tmp_path)
    assert _metrics(run)["global_step"] == 33


@pytest.mark.slow
def test_every_command_refuses_a_read_only_file_system_cleanly_and_changes_nothing(tmp_path, small_filesystem, capsys):
    run, sweep = small_filesystem / "run", small_filesystem / "sweep"
    # In a process of its own, which leaves no file open: an open file keeps a file system from going read-only.
    run_vae_train(*SMALL_NET, "trainer.max_epochs=1", *QUIET, f"hydra.run.dir={run}", cwd=tmp_path)
    job = sweep / "0"  # a sweep's job as vae-report reads it
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text("- seed=0\n")
    (job / "metrics.json").write_text((run / "metrics.json").read_text())
    before = _files(small_filesystem)
    remount(small_filesystem, "ro")

    _clean_failure(
        run_vae_train(*SMALL, f"hydra.run.dir={small_filesystem / 'new'}", cwd=tmp_path, check=False),
        f"could not write {small_filesystem / 'new'}: Read-only file system",
    )
    _clean_failure(
        run_vae_train(*SMALL, f"ckpt_path={run}", cwd=tmp_path, check=False),
        f"could not write in {run}: Read-only file system",
    )
    err = refused("vae-eval", f"ckpt_path={run}", "iw_samples=2", cwd=tmp_path, capsys=capsys)
    assert f"could not write {run / 'eval_test_k2_best.json'}: Read-only file system" in err
    err = refused("vae-sample", f"ckpt_path={run}", cwd=tmp_path, capsys=capsys)
    assert f"could not write {run / 'samples'}: Read-only file system" in err
    report = run_tool("vae-report", str(sweep), cwd=tmp_path, check=False)
    _clean_failure(report, f"could not write {sweep / 'report.md'}: Read-only file system")
    assert _files(small_filesystem) == before


@pytest.mark.slow
@pytest.mark.parametrize(
    "when",
    [
        ["+callbacks.rm._target_=fault_helpers.RemoveAtStep", "+callbacks.rm.step=15"],  # TensorBoard's next write
        ["+callbacks.rm._target_=fault_helpers.RemoveBeforeCheckpoints"],
    ],
    ids=["mid-epoch", "before-checkpoints"],
)
def test_a_run_directory_deleted_mid_run_stops_the_run_and_is_not_made_again(helpers, tmp_path, when):
    run = tmp_path / "run"
    proc = run_vae_train(*SMALL, f"hydra.run.dir={run}", *when, f"+callbacks.rm.path={run}", cwd=tmp_path, check=False)
    _clean_failure(proc, f"the run directory {run} is gone")
    assert not run.exists()
