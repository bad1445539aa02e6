"""Faults from outside, injected for real: SLURM's warning before a time limit (a real SIGUSR1, a stand-in
scontrol on PATH), and file systems that refuse to be written (a full tmpfs, a tmpfs remounted read-only, a run
directory deleted while the run writes it). Each refusal ends in one message naming the path and the system's
reason, exit status 2, no traceback, and nothing already written damaged."""
import json
import os
import stat

import pytest
import torch

from conftest import QUIET, read_scalars, refused, remount, run_tool, run_vae_train, train

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


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch):
    """SLURM's environment of a batch job (a task of an array, as a sweep's jobs are) and an scontrol that
    records its arguments."""
    bin_dir, calls = tmp_path / "bin", tmp_path / "scontrol.calls"
    bin_dir.mkdir()
    scontrol = bin_dir / "scontrol"
    scontrol.write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    scontrol.chmod(scontrol.stat().st_mode | stat.S_IEXEC)
    env = {"SLURM_JOB_ID": "4245", "SLURM_ARRAY_JOB_ID": "4242", "SLURM_ARRAY_TASK_ID": "3", "SLURM_NTASKS": "1",
           "SLURM_JOB_NAME": "vae", "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0",
           "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    return env, calls


def test_slurms_warning_saves_requeues_and_the_restarted_job_resumes_exactly(helpers, tmp_path, fake_slurm,
                                                                             monkeypatch):
    uninterrupted = train(tmp_path, "u", *SMALL[:3])
    env, calls = fake_slurm
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    run = tmp_path / "job"
    # The job's command, as its sbatch script runs it each time SLURM starts the job.
    command = (*SMALL, f"hydra.run.dir={run}", "+callbacks.sig._target_=fault_helpers.SignalAtStep",
               "+callbacks.sig.step=15", "+callbacks.sig.signum=SIGUSR1")
    first = run_vae_train(*command, cwd=tmp_path, check=False)
    assert first.returncode == 128 + 10 and "Traceback" not in first.stderr, first.stderr
    assert calls.read_text().split("\n") == ["requeue 4242_3", ""]  # the array task, by its array job's id
    assert torch.load(run / "checkpoints" / "interrupted.ckpt", weights_only=True)["global_step"] == 15
    assert json.loads((run / "interrupted.json").read_text())["requeued"] is True

    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")  # what SLURM sets in a job it starts again
    again = run_vae_train(*command, cwd=tmp_path)
    assert f"resuming {run / 'checkpoints' / 'interrupted.ckpt'}" in again.stdout
    assert calls.read_text().count("requeue") == 1
    assert _metrics(run) == _metrics(uninterrupted)


def test_the_slurm_launcher_asks_for_sigusr1_before_the_time_limit_and_allows_requeueing(tmp_path, monkeypatch):
    """The sbatch script that hydra/launcher=slurm submits, built by submitit from the launcher's config as
    the Hydra plugin builds it."""
    submitit = pytest.importorskip("submitit")
    from hydra import compose, initialize_config_module
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
    from omegaconf import OmegaConf

    with initialize_config_module("vae_cli.configs", version_base="1.3"):
        cfg = compose("train", overrides=["run_dir=/nonexistent/run", "hydra/launcher=slurm"], return_hydra_config=True)
    params = {k: v for k, v in OmegaConf.to_container(cfg.hydra.launcher, resolve=True).items() if k != "_target_"}
    (tmp_path / "srun").write_text("#!/bin/sh\n")  # submitit looks for srun before it writes a script
    (tmp_path / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    executor = submitit.AutoExecutor(cluster="slurm", folder=tmp_path / "submitit",
                                     slurm_max_num_timeout=params.pop("max_num_timeout"))
    params.pop("submitit_folder")
    base = set(OmegaConf.structured(BaseQueueConf).keys())
    executor.update_parameters(**{k if k in base else f"slurm_{k}": v for k, v in params.items()})
    script = executor._executor._make_submission_file_text("vae-train", "0")
    flags = [line for line in script.splitlines() if line.startswith("#SBATCH --signal") or line == "#SBATCH --requeue"]
    assert flags == ["#SBATCH --requeue", "#SBATCH --signal=USR1@90"], script


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
