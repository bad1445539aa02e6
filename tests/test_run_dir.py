"""The run directory's own parts (cli/run_dir.py), in this process: where a resumed run writes and records each
invocation, the lock (who holds it, when it holds, what replaces it, what a refusal says), the records a stop and a
failure leave with the command that resumes the run, the message for a file system that refuses the run, the check
that the output folder can be written before Hydra writes there, and the masking of Hydra's records. Real files, real
processes (a live one, and the id of one that has ended), a real fake `scontrol` for SLURM's answers."""

import contextlib
import errno
import json
import logging
import os
import re
import resource
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
import traceback
import types
from pathlib import Path

import pytest
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import OmegaConf

from vae_cli.cli import run_dir
from vae_cli.cli.run_dir import LOCK, claim, release
from vae_cli.errors import UserError
from vae_cli.training import signals

ISO_SECONDS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d")
URL = "postgresql://vae:hunter2@db.example/optuna"
MASKED_URL = "postgresql://vae:***@db.example/optuna"


@pytest.fixture(autouse=True)
def first_process_outside_slurm(monkeypatch):
    for var in ("LOCAL_RANK", "RANK", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_JOB_NAME", "SLURM_JOB_ID"):
        monkeypatch.delenv(var, raising=False)
    for var in ("SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_RESTART_COUNT"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def sleeper():
    """A live process that is not a vae-train, stopped by its id at the end."""
    proc = subprocess.Popen(["sleep", "600"])
    yield proc
    proc.kill()
    proc.wait()


def _ended_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def _proc_start(pid: int) -> int:
    """Field 22 of /proc/PID/stat, read here independently of vae-cli's own reading."""
    text = Path(f"/proc/{pid}/stat").read_text()
    return int(text[text.rindex(")") + 2 :].split()[19])


def _hydra(monkeypatch, output_dir: Path, subdir=".hydra", task=(), mode=RunMode.RUN, sweep_dir=None):
    """HydraConfig.get() as Hydra answers it inside a job."""
    config = types.SimpleNamespace(
        output_subdir=subdir,
        runtime=types.SimpleNamespace(output_dir=str(output_dir)),
        overrides=types.SimpleNamespace(task=list(task)),
        mode=mode,
        sweep=types.SimpleNamespace(dir=str(sweep_dir)),
    )
    monkeypatch.setattr(HydraConfig, "get", staticmethod(lambda: config))
    return config


@contextlib.contextmanager
def _file_size_limit(size: int):
    """Files of this process may grow to `size` bytes only: a larger write fails with EFBIG (SIGXFSZ ignored)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)


def _slurm_job(monkeypatch, tmp_path, restarts=0, requeue_status=1):
    """This process as SLURM's batch job 42, with an `scontrol` on PATH that answers for it: the job's restarts,
    the cluster's cred_expire (300 s), and a requeue that exits with requeue_status (1: refused, with a reason)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(parents=True)
    scontrol = bin_dir / "scontrol"
    scontrol.write_text(
        "#!/bin/sh\n"
        'case "$1 $2" in\n'
        f'  "show job") echo "JobId=42 JobState=COMPLETING Restarts={restarts}" ;;\n'
        '  "show config") echo "AuthInfo = cred_expire=300" ;;\n'
        f'  "requeue 42") [ {requeue_status} = 0 ] || echo "Access/permission denied" >&2; exit {requeue_status} ;;\n'
        "  *) exit 9 ;;\n"
        "esac\n"
    )
    scontrol.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    for var, value in {"SLURM_NTASKS": "1", "SLURM_JOB_NAME": "train", "SLURM_JOB_ID": "42"}.items():
        monkeypatch.setenv(var, value)


# --- where a run writes and records -----------------------------------------------------------------------------


def test_a_resumed_checkpoint_continues_in_its_own_run_directory_and_anything_else_starts_a_new_one(
    tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "outputs" / "2026-11-25" / "16-03-10"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.ckpt").write_bytes(b"")
    (tmp_path / "loose.ckpt").write_bytes(b"")
    assert run_dir._resume_dir(None, "new") == "new"
    assert run_dir._resume_dir(run, "new") == str(run)
    assert run_dir._resume_dir(run / "checkpoints" / "last.ckpt", "new") == str(run)
    assert run_dir._resume_dir(str(tmp_path / "loose.ckpt"), "new") == "new"
    assert run_dir._resume_dir("latest", "new") == "outputs/2026-11-25/16-03-10"
    monkeypatch.setenv("HOME", str(tmp_path))
    assert run_dir._resume_dir("~/outputs/2026-11-25/16-03-10", "new") == str(run)


def test_latest_with_no_run_under_outputs_is_a_new_run_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert run_dir._resume_dir("latest", str(tmp_path / "new")) == str(tmp_path / "new")


def test_the_first_invocation_records_in_dot_hydra_and_each_later_one_in_a_dated_folder_of_its_own(tmp_path):
    assert run_dir._record_subdir(str(tmp_path)) == ".hydra"
    assert not (tmp_path / ".hydra").exists()
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "config.yaml").write_text("{}\n")
    later = run_dir._record_subdir(str(tmp_path))
    assert re.fullmatch(r"\.hydra/\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d", later) and (tmp_path / later).is_dir()
    again = run_dir._record_subdir(str(tmp_path))  # in the same second, the same folder: already there
    assert (tmp_path / again).is_dir()


def test_the_record_folder_is_chosen_once_however_often_hydra_reads_it(tmp_path):
    config = OmegaConf.create({"subdir": f"${{vae_record_subdir:{tmp_path}}}"})
    assert config.subdir == ".hydra"
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "config.yaml").write_text("{}\n")  # Hydra writes it once the folder is chosen
    assert config.subdir == ".hydra"


def test_the_log_of_the_first_invocation_is_in_the_run_directory_and_a_later_ones_in_its_record_folder():
    for first in (".hydra", None, "None"):
        assert run_dir._log_file(first, "train") == "train.log"
    assert run_dir._log_file(".hydra/2026-11-25_16-03-10", "train") == ".hydra/2026-11-25_16-03-10/train.log"


def test_a_runs_name_is_its_folder_below_outputs_else_its_whole_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert run_dir._run_name("outputs/2026-11-25/16-03-10") == "2026-11-25/16-03-10"
    assert run_dir._run_name(str(tmp_path / "outputs/multirun/2026-11-25/16-03-10/3")) == (
        "multirun/2026-11-25/16-03-10/3"
    )
    assert run_dir._run_name("elsewhere/run") == str(tmp_path / "elsewhere" / "run")


def test_a_refused_later_invocation_takes_its_record_folder_and_log_away_and_the_first_keeps_its_own(
    tmp_path, monkeypatch
):
    record = tmp_path / ".hydra" / "2026-11-25_16-03-10"
    record.mkdir(parents=True)
    own, other = logging.FileHandler(record / "train.log"), logging.FileHandler(tmp_path / "other.log")
    root = logging.getLogger()
    root.addHandler(own)
    root.addHandler(other)
    try:
        for kept in (".hydra", None):
            _hydra(monkeypatch, tmp_path, subdir=kept)
            run_dir.forget_refused_record()
            assert record.is_dir() and own in root.handlers
        _hydra(monkeypatch, tmp_path, subdir=".hydra/2026-11-25_16-03-10")
        run_dir.forget_refused_record()
        assert not record.exists() and (tmp_path / ".hydra").is_dir()
        assert own not in root.handlers and own.stream is None and other in root.handlers
        run_dir.forget_refused_record()  # already gone: nothing to do
    finally:
        for handler in (own, other):
            root.removeHandler(handler)
            handler.close()


# --- the failure record -----------------------------------------------------------------------------------------


def test_a_bugs_failure_record_has_its_qualified_type_message_traceback_overrides_and_time(tmp_path, monkeypatch):
    (tmp_path / ".hydra").mkdir()
    _hydra(monkeypatch, tmp_path, task=["model.latent_dim=3", f"optuna.storage={URL}"])
    try:
        raise ValueError(f"bad value at {URL}")
    except ValueError as e:
        run_dir.record_failure(tmp_path, e)
        whole = "".join(traceback.format_exception(e)).replace("hunter2", "***")
    record = json.loads((tmp_path / "error.json").read_text())
    assert record["traceback"] == whole
    assert record["type"] == "ValueError" and record["message"] == f"bad value at {MASKED_URL}"
    assert record["traceback"].startswith("Traceback (most recent call last):")
    assert (
        record["traceback"].endswith(f"ValueError: bad value at {MASKED_URL}\n")
        and "hunter2" not in record["traceback"]
    )
    assert record["overrides"] == ["model.latent_dim=3", f"optuna.storage={MASKED_URL}"]
    assert ISO_SECONDS.fullmatch(record["time"])
    assert list(record) == ["type", "message", "traceback", "overrides", "time"]


def test_a_user_errors_failure_record_names_the_module_and_has_its_message_without_a_traceback(tmp_path, monkeypatch):
    (tmp_path / ".hydra" / "2026-11-25_16-03-10").mkdir(parents=True)
    _hydra(monkeypatch, tmp_path, subdir=".hydra/2026-11-25_16-03-10")
    worker = "Caught UserError in DataLoader worker process 0.\nTraceback ...\nvae_cli.errors.UserError: no such file\n"
    run_dir.record_failure(tmp_path, UserError(worker))
    record = json.loads((tmp_path / "error.json").read_text())
    assert record["type"] == "vae_cli.errors.UserError" and record["message"] == "no such file"
    assert record["traceback"] is None and record["overrides"] == []
    run_dir.record_failure(tmp_path, RuntimeError(worker))
    assert json.loads((tmp_path / "error.json").read_text())["message"] == worker


def test_no_failure_record_without_this_invocations_record_folder_nor_when_it_cannot_be_written(tmp_path, monkeypatch):
    _hydra(monkeypatch, tmp_path, subdir=None)  # a process of a data-parallel run after the first
    run_dir.record_failure(tmp_path, ValueError("x"))
    _hydra(monkeypatch, tmp_path, subdir=".hydra/2026-11-25_16-03-10")  # withdrawn: a refused resume
    run_dir.record_failure(tmp_path, ValueError("x"))
    assert not (tmp_path / "error.json").exists()
    (tmp_path / ".hydra" / "2026-11-25_16-03-10").mkdir(parents=True)
    (tmp_path / "error.json").mkdir()  # cannot be replaced by a file
    run_dir.record_failure(tmp_path, ValueError("x"))
    run_dir.record_failure(tmp_path, UserError("x"))
    assert (tmp_path / "error.json").is_dir()


# --- the stop record and the resume command ---------------------------------------------------------------------


def _checkpoint(run: Path, name: str, step) -> Path:
    path = run / "checkpoints" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"global_step": step}, path)
    return path


def _stopped(tmp_path, monkeypatch, caplog, stop, requeue=False, task=("model.latent_dim=3",)) -> tuple[dict, str]:
    (tmp_path / ".hydra").mkdir(exist_ok=True)
    _hydra(monkeypatch, tmp_path, task=task)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="vae_cli"):
        run_dir.record_stop(OmegaConf.create({"requeue": requeue}), tmp_path, stop)
    (line,) = [r.getMessage() for r in caplog.records if r.name == "vae_cli"]
    return json.loads((tmp_path / "interrupted.json").read_text()), line


def test_a_stop_that_saved_records_where_it_stopped_and_the_command_that_resumes_from_its_checkpoint(
    tmp_path, monkeypatch, caplog
):
    ckpt = _checkpoint(tmp_path, "interrupted.ckpt", 16)
    stop = signals.Interrupted(signal.SIGTERM, checkpoint=ckpt, epoch=2, global_step=16, phase=signals.TRAINING)
    record, line = _stopped(tmp_path, monkeypatch, caplog, stop)
    resume = f"vae-train ckpt_path={ckpt} model.latent_dim=3"
    assert record == {
        "signal": "SIGTERM",
        "stopped": "in epoch 2 at step 16",
        "epoch": 2,
        "global_step": 16,
        "checkpoint": str(ckpt),
        "resume": resume,
        "requeued": False,
        "lost": None,
    }
    assert line == f"SIGTERM: stopped in epoch 2 at step 16; the exact state is in {ckpt}. Resume with: {resume}"
    assert signals._state.phase == signals.FINISHED


def test_a_stop_with_nothing_new_to_save_names_the_newest_state_and_one_before_any_says_nothing_was_saved(
    tmp_path, monkeypatch, caplog
):
    stop = signals.Interrupted(signal.SIGINT, phase=signals.STARTING)
    record, line = _stopped(tmp_path, monkeypatch, caplog, stop)
    resume = f"vae-train hydra.run.dir={tmp_path} model.latent_dim=3"
    assert record["checkpoint"] is None and record["resume"] == resume and record["lost"] is None
    assert line == f"SIGINT: stopped before training; nothing was saved. Resume with: {resume}"
    _checkpoint(tmp_path, "last.ckpt", 11)
    last = _checkpoint(tmp_path, "interrupted.ckpt", 15)
    record, line = _stopped(tmp_path, monkeypatch, caplog, signals.Interrupted(signal.SIGINT, phase=signals.TESTING))
    resume = f"vae-train ckpt_path={last} model.latent_dim=3"
    assert record["checkpoint"] == str(last) and record["resume"] == resume
    assert line == (
        f"SIGINT: stopped after training, in the final test; nothing new to save; the run's state is {last}. "
        f"Resume with: {resume}"
    )


def test_an_abandoned_stop_says_which_steps_no_checkpoint_holds(tmp_path, monkeypatch, caplog):
    def abandoned(step):
        return signals.Interrupted(signal.SIGTERM, epoch=2, global_step=step, abandoned=True)

    record, line = _stopped(tmp_path, monkeypatch, caplog, abandoned(20))
    lost = "steps 1 to 20 of training (epoch 2), which no checkpoint holds"
    assert record["lost"] == lost and record["checkpoint"] is None
    assert line == (
        f"SIGTERM: stopped in epoch 2 at step 20; a later signal ended the stop before it saved: {lost}; the run's "
        f"state is its start. Resume with: vae-train hydra.run.dir={tmp_path} model.latent_dim=3"
    )
    last = _checkpoint(tmp_path, "last.ckpt", 11)
    record, line = _stopped(tmp_path, monkeypatch, caplog, abandoned(20))
    lost = "steps 12 to 20 of training (epoch 2), which no checkpoint holds"
    assert record["lost"] == lost and f"before it saved: {lost}; the run's state is {last}. Resume" in line
    assert _stopped(tmp_path, monkeypatch, caplog, abandoned(11))[0]["lost"] is None  # the checkpoint holds it all
    assert _stopped(tmp_path, monkeypatch, caplog, abandoned(12))[0]["lost"] == (
        "steps 12 to 12 of training (epoch 2), which no checkpoint holds"
    )
    assert _stopped(tmp_path, monkeypatch, caplog, abandoned(None))[0]["lost"] is None  # before training
    last.write_bytes(b"not a checkpoint")  # its step unknown: what was lost cannot be said
    assert _stopped(tmp_path, monkeypatch, caplog, abandoned(20))[0]["lost"] is None
    not_abandoned = signals.Interrupted(signal.SIGTERM, epoch=2, global_step=20, phase=signals.TRAINING)
    assert _stopped(tmp_path, monkeypatch, caplog, not_abandoned)[0]["lost"] is None


def test_only_the_first_process_of_a_data_parallel_run_records_the_stop(tmp_path, monkeypatch):
    _hydra(monkeypatch, tmp_path)
    for var in ("LOCAL_RANK", "RANK", "SLURM_PROCID"):
        monkeypatch.setenv(var, "1")
        run_dir.record_stop(OmegaConf.create({"requeue": False}), tmp_path, signals.Interrupted(signal.SIGTERM))
        assert not (tmp_path / "interrupted.json").exists()
        assert signals._state.phase == signals.FINISHED
        monkeypatch.setenv(var, "0")


def test_a_slurm_job_requeued_from_outside_says_slurm_restarts_it_and_how_long_it_holds_it(
    tmp_path, monkeypatch, caplog
):
    _slurm_job(monkeypatch, tmp_path / "slurm", restarts=1)
    record, line = _stopped(tmp_path, monkeypatch, caplog, signals.Interrupted(signal.SIGTERM, phase="starting"))
    assert record["requeued"] is True
    assert line == (
        "SIGTERM: stopped before training; nothing was saved. SLURM has requeued the job: waiting for SLURM to "
        "restart it (it holds it for about 300 s, the cluster's cred_expire), then it resumes from there. To "
        f"resume it yourself instead, cancel the job, then: vae-train hydra.run.dir={tmp_path} model.latent_dim=3"
    )


def test_a_slurm_job_stopped_by_its_warning_is_requeued_when_asked_to_and_a_refused_requeue_says_why(
    tmp_path, monkeypatch, caplog
):
    _slurm_job(monkeypatch, tmp_path / "refusing", restarts=0, requeue_status=1)
    stop = signals.Interrupted(signal.SIGUSR1, phase="starting")
    record, line = _stopped(tmp_path, monkeypatch, caplog, stop, requeue=True)
    assert record["requeued"] is False
    assert line == (
        "SIGUSR1: stopped before training; nothing was saved. Could not requeue the SLURM job (scontrol requeue "
        f"42: Access/permission denied). Resume with: vae-train hydra.run.dir={tmp_path} model.latent_dim=3"
    )
    record, line = _stopped(tmp_path, monkeypatch, caplog, stop, requeue=False)
    assert record["requeued"] is False and ". Resume with: vae-train" in line and "SLURM" not in line
    _slurm_job(monkeypatch, tmp_path / "taking", restarts=0, requeue_status=0)
    record, line = _stopped(tmp_path, monkeypatch, caplog, stop, requeue=True)
    assert record["requeued"] is True and "SLURM has requeued the job" in line


def test_the_resume_command_is_this_ones_overrides_quoted_and_masked_with_the_checkpoint_in_place_of_the_old(
    tmp_path, monkeypatch
):
    run = tmp_path / "my run"
    task = ["ckpt_path=old.ckpt", "model.latent_dim=3", f"hydra.run.dir={run}", "data.name=my data"]
    _hydra(monkeypatch, run, task=[*task, f"optuna.storage={URL}"])
    assert run_dir.resume_command(run / "checkpoints" / "last.ckpt") == (
        f"vae-train ckpt_path='{run}/checkpoints/last.ckpt' model.latent_dim=3 'data.name=my data' "
        f"optuna.storage={MASKED_URL}"
    )
    assert run_dir.resume_command(None) == (
        f"vae-train hydra.run.dir='{run}' model.latent_dim=3 'data.name=my data' optuna.storage={MASKED_URL}"
    )


def test_a_search_trial_is_resumed_by_the_searchs_own_command(tmp_path, monkeypatch):
    _hydra(monkeypatch, tmp_path, task=["model.latent_dim=3", "search.trial=4"])
    assert run_dir.resume_command(tmp_path / "last.ckpt") == (
        "the search's own command (vae-train --multirun hparams_search=optuna ...), which runs this trial's "
        "settings again as a new trial"
    )


# --- the lock ---------------------------------------------------------------------------------------------------


def test_a_process_after_the_first_of_a_data_parallel_run_shares_the_directory_without_a_lock(tmp_path, monkeypatch):
    assert run_dir.first_process()
    for var in ("LOCAL_RANK", "RANK", "SLURM_PROCID"):
        monkeypatch.setenv(var, "0")
        assert run_dir.first_process()
        monkeypatch.setenv(var, "2")
        assert not run_dir.first_process()
        assert claim(tmp_path) is None and not (tmp_path / LOCK).exists()
        monkeypatch.delenv(var)


def test_the_lock_is_readable_by_all_and_names_this_process_since_now_outside_slurm(tmp_path):
    umask = os.umask(0)
    try:
        lock = claim(tmp_path)
    finally:
        os.umask(umask)
    assert lock == tmp_path / LOCK and stat.S_IMODE(lock.stat().st_mode) == 0o644
    owner = json.loads(lock.read_text())
    assert lock.read_text().endswith("}\n") and lock.read_text().count("\n") == 1
    assert set(owner) == {"pid", "host", "start", "since", "slurm_job"}
    assert ISO_SECONDS.fullmatch(owner["since"]) and owner["slurm_job"] is None
    release(lock)
    assert not lock.exists()
    release(None)


def test_a_lock_left_by_a_dead_process_is_taken_over(tmp_path):
    dead = _ended_pid()
    (tmp_path / LOCK).write_text(json.dumps({"pid": dead, "host": socket.gethostname(), "start": None}))
    assert json.loads(claim(tmp_path).read_text())["pid"] == os.getpid()


def test_a_lock_that_is_a_link_is_replaced_with_a_warning_and_what_it_points_to_is_untouched(tmp_path, caplog):
    victim = tmp_path / "victim.txt"
    victim.write_text(json.dumps({"pid": 1, "host": socket.gethostname(), "start": _proc_start(1)}))
    run = tmp_path / "run"
    run.mkdir()
    (run / LOCK).symlink_to(victim)
    with caplog.at_level(logging.WARNING, logger="vae_cli"):
        lock = claim(run)
    assert not lock.is_symlink() and json.loads(lock.read_text())["pid"] == os.getpid()
    assert json.loads(victim.read_text())["pid"] == 1
    (message,) = [r.getMessage() for r in caplog.records if r.name == "vae_cli"]
    assert message == f"{run / LOCK} is a link, not a lock vae-train made: replaced (what it points to is untouched)"
    caplog.clear()
    lock.write_text("junk")
    with caplog.at_level(logging.WARNING, logger="vae_cli"):
        claim(run)
    assert not [r for r in caplog.records if r.name == "vae_cli"]  # junk is replaced without a word


def test_a_lock_that_cannot_be_made_or_removed_is_a_refusal_naming_it(tmp_path):
    with pytest.raises(UserError, match=f"^could not write {tmp_path / 'gone' / LOCK}: No such file"):
        claim(tmp_path / "gone")
    (tmp_path / LOCK).mkdir()  # a folder: not a lock, and not removed as one
    with pytest.raises(UserError, match=f"^could not write in {tmp_path / LOCK}: Is a directory"):
        claim(tmp_path)


def test_a_live_owners_lock_is_refused_naming_the_run_directory(tmp_path, sleeper):
    (tmp_path / LOCK).write_text(json.dumps({"pid": sleeper.pid, "host": None}))
    with pytest.raises(
        UserError, match=f"^{tmp_path} is being written by another vae-train \\(process {sleeper.pid}\\)"
    ):
        claim(tmp_path)


def test_a_stale_lock_its_owner_removes_while_it_is_read_is_no_obstacle(tmp_path, monkeypatch):
    lock, real_open = tmp_path / LOCK, os.open
    lock.write_text(json.dumps({"pid": _ended_pid()}))

    def owner_ends_meanwhile(path, flags, *args):
        fd = real_open(path, flags, *args)
        if not flags & os.O_CREAT and Path(path).exists():
            os.unlink(path)
        return fd

    monkeypatch.setattr(os, "open", owner_ends_meanwhile)
    assert claim(tmp_path) == lock
    assert json.loads(lock.read_text())["pid"] == os.getpid()


def test_a_lock_that_cannot_be_written_nor_removed_is_refused_for_the_write(tmp_path, monkeypatch):
    def refuse(path, *args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(Path, "unlink", refuse)
    with _file_size_limit(16), pytest.raises(UserError, match=f"^could not write {tmp_path / LOCK}: File too large"):
        claim(tmp_path)


def test_a_lock_that_cannot_be_written_is_removed_and_refused(tmp_path):
    with _file_size_limit(16), pytest.raises(UserError, match=f"^could not write {tmp_path / LOCK}: File too large"):
        claim(tmp_path)
    assert not (tmp_path / LOCK).exists()


def test_a_lock_made_again_by_another_process_each_time_it_is_removed_is_given_up_after_three_tries(
    tmp_path, monkeypatch
):
    lock, tries, real_open = tmp_path / LOCK, [], os.open

    def another_process_makes_it_first(path, flags, *args):
        if flags & os.O_CREAT:
            tries.append(path)
            Path(path).write_text("junk")
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", another_process_makes_it_first)
    with pytest.raises(UserError) as e:
        claim(tmp_path)
    assert tries == [lock] * 3
    assert str(e.value) == (
        f"{lock} is made again by another process each time vae-train removes it as stale; stop the other vae-train "
        f"runs in {tmp_path}, or train in another directory."
    )


def test_a_fifo_at_the_lock_is_read_without_waiting_and_replaced(tmp_path):
    os.mkfifo(tmp_path / LOCK)
    writer = os.open(tmp_path / LOCK, os.O_RDWR)  # a writer that never writes: a blocking read would wait for it
    unblock = threading.Timer(1, os.write, (writer, b"x"))
    unblock.start()
    try:
        began = time.monotonic()
        lock = claim(tmp_path)
        assert time.monotonic() - began < 0.9
    finally:
        unblock.cancel()
        os.close(writer)
    assert lock.is_file() and json.loads(lock.read_text())["pid"] == os.getpid()


def test_release_leaves_a_lock_it_cannot_remove_on_a_read_only_file_system(small_filesystem):
    from conftest import remount

    lock = claim(small_filesystem)
    remount(small_filesystem, "ro")
    try:
        release(lock)
        assert lock.is_file()
    finally:
        remount(small_filesystem, "rw")
    release(lock)
    assert not lock.exists()


def _owner_of(tmp_path, content) -> dict | None:
    lock = tmp_path / LOCK
    lock.write_bytes(content if isinstance(content, bytes) else json.dumps(content).encode())
    return run_dir._owner(lock)


def test_a_locks_owner_is_read_with_only_the_fields_fit_to_show(tmp_path):
    full = {"pid": 7, "host": "node-7", "start": 12, "since": "2026-11-25T16:03:10+00:00", "slurm_job": "42"}
    assert _owner_of(tmp_path, {**full, "x": 1}) == full
    assert _owner_of(tmp_path, 7) == {"pid": 7, "host": None, "start": None, "since": None, "slurm_job": None}
    assert _owner_of(tmp_path, {"pid": 1}) == {"pid": 1, "host": None, "start": None, "since": None, "slurm_job": None}
    unfit = {"pid": 7, "host": None, "start": 1.5, "since": "", "slurm_job": "a\nb"}
    assert _owner_of(tmp_path, unfit) == {"pid": 7, "host": None, "start": None, "since": None, "slurm_job": None}
    assert _owner_of(tmp_path, {"pid": 7, "start": True, "since": 5, "slurm_job": 42}) == {
        "pid": 7,
        "host": None,
        "start": None,
        "since": None,
        "slurm_job": None,
    }
    assert _owner_of(tmp_path, {"pid": 7, "since": "x" * 255})["since"] == "x" * 255
    assert _owner_of(tmp_path, {"pid": 7, "since": "x"})["since"] == "x"
    assert _owner_of(tmp_path, {"pid": 7, "since": "x" * 256})["since"] is None


@pytest.mark.parametrize(
    "content",
    [
        0,
        -3,
        True,
        "7",
        [7],
        {"pid": 0},
        {"pid": -1},
        {"pid": "7"},
        {"pid": 7.0},
        {"pid": True},
        {"host": "node-7"},
        {"pid": 7, "host": ""},
        {"pid": 7, "host": 5},
        {"pid": 7, "host": "node\x007"},
        {"pid": 7, "host": "n" * 256},
    ],
)
def test_a_lock_naming_no_process_or_a_host_vae_train_would_not_write_has_no_owner(tmp_path, content):
    assert _owner_of(tmp_path, content) is None


def test_a_lock_is_read_up_to_its_first_4096_bytes(tmp_path):
    whole = json.dumps({"pid": 7}).encode()
    padded = whole[:-1] + b" " * (4096 - len(whole)) + b"}"
    assert len(padded) == 4096
    assert _owner_of(tmp_path, padded + b"junk")["pid"] == 7
    assert _owner_of(tmp_path, b" " + padded) is None
    accented = json.dumps({"pid": 7, "x": "\u00e9" * 100}, ensure_ascii=False).encode()
    padded = accented[:-1] + b" " * (4096 - len(accented)) + b"}"
    assert len(padded) == 4096 and _owner_of(tmp_path, padded + b"junk")["pid"] == 7  # bytes, not characters


def test_a_lock_that_is_a_link_or_a_folder_or_missing_has_no_owner(tmp_path):
    target = tmp_path / "target"
    target.write_text(json.dumps({"pid": 7}))
    (tmp_path / "link").symlink_to(target)
    (tmp_path / "folder").mkdir()
    for name in ("link", "folder", "missing"):
        assert run_dir._owner(tmp_path / name) is None


def test_a_start_time_is_read_after_a_command_name_holding_spaces_and_parentheses(tmp_path):
    odd = tmp_path / "a) b c"
    shutil.copy(shutil.which("sleep"), odd)
    proc = subprocess.Popen([str(odd), "600"])
    try:
        assert run_dir._start_time(proc.pid) == _proc_start(proc.pid)
        assert run_dir._start_time(os.getpid()) == _proc_start(os.getpid())
    finally:
        proc.kill()
        proc.wait()
    assert run_dir._start_time(proc.pid) is None


def test_a_process_on_this_host_holds_only_while_its_id_and_start_time_name_a_live_process(sleeper):
    host, start = socket.gethostname(), _proc_start(sleeper.pid)
    assert run_dir._alive({"pid": sleeper.pid, "host": host, "start": start, "slurm_job": None})
    assert run_dir._alive({"pid": sleeper.pid, "host": None, "start": None, "slurm_job": None})
    assert not run_dir._alive({"pid": sleeper.pid, "host": host, "start": start + 1, "slurm_job": None})
    assert not run_dir._alive({"pid": os.getpid(), "host": host, "start": None, "slurm_job": None})
    assert not run_dir._alive({"pid": _ended_pid(), "host": host, "start": None, "slurm_job": None})


def test_without_start_times_a_process_holds_while_its_id_is_a_live_process(sleeper, monkeypatch):
    monkeypatch.setattr(run_dir, "_start_time", lambda pid: None)  # no /proc, as on macOS
    assert run_dir._alive({"pid": sleeper.pid, "host": None, "start": 5, "slurm_job": None})
    with pytest.raises(subprocess.TimeoutExpired):  # asked whether it exists, not signalled
        sleeper.wait(timeout=0.3)
    assert not run_dir._alive({"pid": _ended_pid(), "host": None, "start": 5, "slurm_job": None})


def test_a_process_on_another_host_holds_unless_it_is_an_earlier_start_of_this_slurm_job(tmp_path, monkeypatch):
    elsewhere = {"pid": os.getpid(), "host": "node-7", "start": None}
    assert run_dir._alive({**elsewhere, "slurm_job": None})
    assert run_dir._alive({**elsewhere, "slurm_job": "42"})
    _slurm_job(monkeypatch, tmp_path)
    assert not run_dir._alive({**elsewhere, "slurm_job": "42"})
    assert run_dir._alive({**elsewhere, "slurm_job": "41"})
    assert run_dir._alive({**elsewhere, "slurm_job": None})
    assert json.loads(claim(tmp_path).read_text())["slurm_job"] == "42"


def test_the_refusal_names_the_owner_where_it_runs_since_when_and_what_to_do(tmp_path):
    lock = tmp_path / LOCK
    here = {"pid": 7, "host": socket.gethostname(), "since": "2026-11-25T16:03:10+00:00"}
    assert str(run_dir._held(tmp_path, lock, here)) == (
        f"{tmp_path} is being written by another vae-train (process 7) on this host (holding it since "
        f"2026-11-25T16:03:10+00:00): its lock file is {lock}. Wait for it to end (or stop it), then resume it with "
        f"ckpt_path={tmp_path}; if that process is gone, delete {lock} first; or train in another directory."
    )
    assert "(process 7) on this host (start time not recorded)" in str(
        run_dir._held(tmp_path, lock, {"pid": 7, "host": None, "since": None})
    )
    assert str(run_dir._held(tmp_path, lock, {"pid": 7, "host": "node-7", "since": None})) == (
        f"{tmp_path} is being written by another vae-train (process 7) on host node-7 (start time not recorded), "
        f"which cannot be checked from here: its lock file is {lock}. Wait for it to end (or stop it), then resume "
        f"it with ckpt_path={tmp_path}; if that process is gone (check on node-7), delete {lock} first; or train in "
        "another directory."
    )


# --- a file system that refuses the run -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "number", [errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOENT, errno.EIO]
)
def test_a_write_the_file_system_refuses_is_one_message_naming_the_file_or_else_the_run_directory(tmp_path, number):
    named = run_dir.outside_fault(OSError(number, os.strerror(number), str(tmp_path / "m.json")), tmp_path)
    assert isinstance(named, UserError)
    assert str(named).startswith(f"could not write {tmp_path / 'm.json'}: {os.strerror(number)} (errno {number})")
    unnamed = run_dir.outside_fault(OSError(number, os.strerror(number)), tmp_path)
    assert str(unnamed).startswith(f"could not write in {tmp_path}: {os.strerror(number)} (errno {number})")


def test_any_other_error_of_a_run_whose_directory_is_there_is_left_as_it_is(tmp_path):
    for error in (OSError(errno.EBADF, "Bad file descriptor"), OSError("no number"), ValueError("x")):
        assert run_dir.outside_fault(error, tmp_path) is error


def test_a_run_directory_that_vanished_is_said_so_whatever_the_error(tmp_path):
    gone = tmp_path / "run"
    fault = run_dir.outside_fault(ValueError("x"), gone)
    assert isinstance(fault, UserError) and str(fault) == (
        f"the run directory {gone} is gone: it was deleted, moved or unmounted while the run wrote it, and vae-train "
        f"stopped without making it again. Restore it (from a backup, or mount it again) and resume with "
        f"ckpt_path={gone}, or start a new run."
    )


# --- the output folder is tried before Hydra writes there -------------------------------------------------------


def _hydra_config(run: Path | None = None, sweep: Path | None = None):
    return OmegaConf.create({"hydra": {"run": {"dir": str(run)}, "sweep": {"dir": str(sweep)}}})


def test_a_writable_output_folder_is_made_and_left_without_the_probe(tmp_path):
    run = tmp_path / "a" / "b" / "run"
    run_dir.WritableOutput().on_run_start(_hydra_config(run=run))
    assert run.is_dir() and list(run.iterdir()) == []
    sweep = tmp_path / "sweep"
    run_dir.WritableOutput().on_multirun_start(_hydra_config(sweep=sweep))
    assert sweep.is_dir() and list(sweep.iterdir()) == []


def test_a_probe_left_by_a_killed_process_with_this_id_or_a_link_there_is_replaced(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    run = tmp_path / "run"
    run.mkdir()
    (run / f".vae-train.{os.getpid()}.probe").symlink_to(victim)
    run_dir.WritableOutput().on_run_start(_hydra_config(run=run))
    assert list(run.iterdir()) == [] and victim.read_text() == "precious"


def test_an_output_folder_that_cannot_take_the_probe_is_refused_and_what_was_made_for_it_removed(tmp_path, capsys):
    run = tmp_path / "a" / "b" / "run"
    with _file_size_limit(run_dir.PROBE_BYTES - 1), pytest.raises(SystemExit) as e:
        run_dir.WritableOutput().on_run_start(_hydra_config(run=run))
    assert e.value.code == 2 and list(tmp_path.iterdir()) == []
    assert capsys.readouterr().err.startswith(f"vae-train: error: could not write {run}: File too large (errno 27)")
    with _file_size_limit(run_dir.PROBE_BYTES):
        run_dir.WritableOutput().on_run_start(_hydra_config(run=run))
    assert run.is_dir()


@pytest.fixture
def three_inodes(tmp_path):
    """A real file system (tmpfs) with room for its root and two more files or folders, where this machine lets the
    tests mount one."""
    mount = tmp_path / "fs"
    mount.mkdir()
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m,nr_inodes=3", "tmpfs", str(mount)], capture_output=True, text=True
    )
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip() or proc.returncode})")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_folders_made_for_an_output_folder_the_file_system_cannot_hold_are_removed(three_inodes, capsys):
    run = three_inodes / "a" / "b" / "run"
    with pytest.raises(SystemExit) as e:
        run_dir.WritableOutput().on_run_start(_hydra_config(run=run))
    assert e.value.code == 2 and list(three_inodes.iterdir()) == []
    assert capsys.readouterr().err.startswith(f"vae-train: error: could not write {run}: No space left on device")


def test_an_output_folder_under_a_file_is_refused_and_the_file_left_alone(tmp_path, capsys):
    (tmp_path / "file").write_text("precious")
    with pytest.raises(SystemExit) as e:
        run_dir.WritableOutput().on_multirun_start(_hydra_config(sweep=tmp_path / "file" / "sweep"))
    assert e.value.code == 2 and (tmp_path / "file").read_text() == "precious"
    assert capsys.readouterr().err.startswith(f"vae-train: error: could not write {tmp_path / 'file' / 'sweep'}: ")


def test_an_output_folder_with_a_name_too_long_is_refused_naming_the_key_and_the_longest_name_allowed(tmp_path, capsys):
    for key, config in (("hydra.run.dir", "run"), ("hydra.sweep.dir", "sweep")):
        folder = tmp_path / ("x" * 300) / "run"
        shown = str(folder)[:60] + "..." + str(folder)[-15:]
        with pytest.raises(SystemExit) as e:
            callback = run_dir.WritableOutput()
            (callback.on_run_start if config == "run" else callback.on_multirun_start)(_hydra_config(folder, folder))
        assert e.value.code == 2
        assert capsys.readouterr().err == (
            f"vae-train: error: {key}={shown!r} cannot be a folder here: File name too long. Choose a shorter path "
            f"(at most {os.pathconf('/', 'PC_NAME_MAX')} characters a name).\n"
        )
    assert list(tmp_path.iterdir()) == []


def _as_another_user(action) -> tuple[int, str]:
    """`action` run in a child of this process as an ordinary user (nobody, when the tests run as root): its exit
    status and what it wrote to stderr."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns to pytest
        code = 1
        try:
            os.close(read)
            sys.stderr = os.fdopen(write, "w")
            if os.geteuid() == 0:
                os.setgid(65534)
                os.setuid(65534)
            action()
            code = 0
        except SystemExit as e:
            code = e.code
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stderr.flush()
            os._exit(code)
    os.close(write)
    with os.fdopen(read) as f:
        err = f.read()
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), err


def test_an_output_folder_under_one_this_user_cannot_enter_is_refused_as_not_writable(tmp_path):
    closed = tmp_path / "closed"
    closed.mkdir(mode=0o700)
    if os.geteuid() != 0:
        closed.chmod(0o000)
    run = closed / "x" / "run"
    beside = tmp_path / "open" / "run"
    run_dir.WritableOutput().on_run_start(_hydra_config(run=beside))
    assert beside.is_dir()
    try:
        code, err = _as_another_user(lambda: run_dir.WritableOutput().on_run_start(_hydra_config(run=run)))
    finally:
        closed.chmod(0o700)
    assert code == 2 and "shorter path" not in err, err
    assert err.startswith(f"vae-train: error: could not write {run}: Permission denied (errno 13).")


# --- Hydra's records, masked; where the run writes, announced ----------------------------------------------------


def _hydra_record(folder: Path, name: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(f"overrides:\n- optuna.storage={URL}\n")
    return folder / name


def test_hydras_records_of_a_job_and_of_its_sweep_are_masked(tmp_path):
    run, sweep = tmp_path / "sweep" / "3", tmp_path / "sweep"
    job = _hydra_record(run / ".hydra", "hydra.yaml")
    multirun = _hydra_record(sweep, "multirun.yaml")
    hydra = {"output_subdir": ".hydra", "runtime": {"output_dir": str(run)}, "sweep": {"dir": str(sweep)}}
    run_dir.Masked().on_job_start(OmegaConf.create({"hydra": {**hydra, "mode": "RunMode.RUN"}}))
    assert MASKED_URL in job.read_text() and URL in multirun.read_text()
    run_dir.Masked().on_job_start(OmegaConf.create({"hydra": {**hydra, "mode": None, "output_subdir": None}}))
    assert URL in multirun.read_text()
    run_dir.Masked().on_job_start(OmegaConf.create({"hydra": {**hydra, "mode": "RunMode.MULTIRUN"}}))
    assert MASKED_URL in multirun.read_text()
    later = _hydra_record(sweep, "multirun.yaml")
    run_dir.Masked().on_multirun_end(OmegaConf.create({"hydra": hydra}))
    assert MASKED_URL in later.read_text()


def test_a_job_without_a_record_of_its_own_masks_nothing_of_its_run_directory(tmp_path):
    job = _hydra_record(tmp_path / "run", "hydra.yaml")
    hydra = {"output_subdir": None, "runtime": {"output_dir": str(tmp_path / "run")}, "mode": None}
    run_dir.Masked().on_job_start(OmegaConf.create({"hydra": {**hydra, "sweep": {"dir": str(tmp_path / "s")}}}))
    assert URL in job.read_text()


def test_the_run_directory_is_announced_relative_to_here_with_the_folder_for_tensorboard(tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)

    def announced(run, **hydra):
        _hydra(monkeypatch, run, **hydra)
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="vae_cli"):
            run_dir.announce(run)
        (line,) = [r.getMessage() for r in caplog.records if r.name == "vae_cli"]
        return line

    run = tmp_path / "outputs" / "2026-11-25" / "16-03-10"
    assert announced(run) == "run directory: outputs/2026-11-25/16-03-10   (curves: tensorboard --logdir outputs)"
    assert announced(tmp_path / "mine") == f"run directory: mine   (curves: tensorboard --logdir {tmp_path / 'mine'})"
    elsewhere = tmp_path.parent / "elsewhere"
    assert announced(elsewhere) == f"run directory: {elsewhere}   (curves: tensorboard --logdir {elsewhere})"
    sweep = tmp_path / "sweeps" / "s"
    assert announced(sweep / "3", mode=RunMode.MULTIRUN, sweep_dir=sweep) == (
        f"run directory: sweeps/s/3   (curves: tensorboard --logdir {sweep})"
    )
    multirun = tmp_path / "outputs" / "multirun" / "2026-11-25" / "16-03-10"
    assert announced(multirun / "0", mode=RunMode.MULTIRUN, sweep_dir=multirun) == (
        "run directory: outputs/multirun/2026-11-25/16-03-10/0   (curves: tensorboard --logdir outputs)"
    )
