"""Faults from outside, injected for real: file systems that refuse to be written (a full tmpfs, a tmpfs remounted
read-only, a run directory deleted while the run writes it); SLURM's are in test_slurm.py. Each refusal ends in one
message naming the path and the system's reason, exit status 2, no traceback, and nothing already written damaged."""
import json

import pytest
import torch

from conftest import QUIET, read_scalars, refused, remount, run_tool, run_vae_train

SMALL = ("model.hidden_dims=[16]", "model.latent_dim=3", "trainer.max_epochs=3", *QUIET)  # 11 steps per epoch


def _metrics(run_dir):
    return json.loads((run_dir / "metrics.json").read_text())


def _clean_failure(proc, *texts):
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr and "Logging error" not in proc.stderr, proc.stderr
    for text in texts:
        assert text in proc.stderr, proc.stderr


def _files(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_tensorboard_on_a_full_disk_stops_the_run_cleanly_and_it_resumes_once_there_is_space(helpers, tmp_path,
                                                                                           small_filesystem):
    run = small_filesystem / "run"
    args = (*SMALL, "trainer.log_every_n_steps=1")  # event records every step: TensorBoard meets the full disk first
    proc = run_vae_train(*args, f"hydra.run.dir={run}", "+callbacks.fill._target_=fault_helpers.FillDiskAtStep",
                         "+callbacks.fill.step=13", f"+callbacks.fill.path={small_filesystem / 'filler'}",
                         cwd=tmp_path, check=False)
    _clean_failure(proc, f"could not write in {run}: No space left on device")
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 11
    assert [s for s, _ in read_scalars(run)["train/loss"]][:13] == list(range(13))  # what was written still reads

    # Full from the start: refused before Hydra writes its record, and no directory is left behind.
    fresh = small_filesystem / "new" / "run"
    _clean_failure(run_vae_train(*args, f"hydra.run.dir={fresh}", cwd=tmp_path, check=False),
                   "No space left on device", str(fresh))
    assert not (small_filesystem / "new").exists()

    (small_filesystem / "filler").unlink()
    run_vae_train(*args, f"ckpt_path={run}", cwd=tmp_path)
    assert _metrics(run)["global_step"] == 33


def test_a_run_directory_remounted_read_only_mid_run_stops_the_run_cleanly(helpers, tmp_path, small_filesystem):
    run = small_filesystem / "run"
    # The log file elsewhere: a file open for writing keeps a file system from being remounted read-only.
    log = f"hydra.job_logging.handlers.file.filename={tmp_path / 'train.log'}"
    proc = run_vae_train(*SMALL, log, f"hydra.run.dir={run}", "+callbacks.ro.step=15",
                         "+callbacks.ro._target_=fault_helpers.RemountReadOnlyAtStep",
                         f"+callbacks.ro.mount={small_filesystem}", cwd=tmp_path, check=False)
    _clean_failure(proc, "Read-only file system (errno 30)", str(run))
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 11
    remount(small_filesystem, "rw")
    run_vae_train(*SMALL, log, f"ckpt_path={run}", cwd=tmp_path)
    assert _metrics(run)["global_step"] == 33


def test_every_command_refuses_a_read_only_file_system_cleanly_and_changes_nothing(tmp_path, small_filesystem,
                                                                                  capsys):
    run, sweep = small_filesystem / "run", small_filesystem / "sweep"
    # In a process of its own, which leaves no file open: an open file keeps a file system from going read-only.
    run_vae_train(*SMALL[:2], "trainer.max_epochs=1", *QUIET, f"hydra.run.dir={run}", cwd=tmp_path)
    job = sweep / "0"  # a sweep's job as vae-report reads it
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text("- seed=0\n")
    (job / "metrics.json").write_text((run / "metrics.json").read_text())
    before = _files(small_filesystem)
    remount(small_filesystem, "ro")

    _clean_failure(run_vae_train(*SMALL, f"hydra.run.dir={small_filesystem / 'new'}", cwd=tmp_path, check=False),
                   f"could not write {small_filesystem / 'new'}: Read-only file system")
    _clean_failure(run_vae_train(*SMALL, f"ckpt_path={run}", cwd=tmp_path, check=False),
                   f"could not write in {run}: Read-only file system")
    err = refused("vae-eval", f"ckpt_path={run}", "iw_samples=2", cwd=tmp_path, capsys=capsys)
    assert f"could not write {run / 'eval_test_k2_best.json'}: Read-only file system" in err
    err = refused("vae-sample", f"ckpt_path={run}", cwd=tmp_path, capsys=capsys)
    assert f"could not write {run / 'samples'}: Read-only file system" in err
    report = run_tool("vae-report", str(sweep), cwd=tmp_path, check=False)
    _clean_failure(report, f"could not write {sweep / 'report.md'}: Read-only file system")
    assert _files(small_filesystem) == before


@pytest.mark.parametrize("when", [
    ["+callbacks.rm._target_=fault_helpers.RemoveAtStep", "+callbacks.rm.step=15"],  # TensorBoard's next write
    ["+callbacks.rm._target_=fault_helpers.RemoveBeforeCheckpoints"]], ids=["mid-epoch", "before-checkpoints"])
def test_a_run_directory_deleted_mid_run_stops_the_run_and_is_not_made_again(helpers, tmp_path, when):
    run = tmp_path / "run"
    proc = run_vae_train(*SMALL, f"hydra.run.dir={run}", *when, f"+callbacks.rm.path={run}", cwd=tmp_path, check=False)
    _clean_failure(proc, f"the run directory {run} is gone")
    assert not run.exists()
