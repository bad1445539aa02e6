"""Under SLURM: a batch job warned before its time limit (SIGUSR1, asked for with sbatch --signal=USR1@90) saves
its exact state (training/interruption.py), requeues itself, and when SLURM starts it again with the same command
in the same run directory, continues from that state. torch uses the CPUs the job was given.

Lightning's SLURM environment can requeue a job too (SLURMEnvironment(auto_requeue=True)), but its handler saves
a checkpoint from inside the signal handler, in the middle of a step, and lets training run on until SLURM kills
the job; it cannot be made to wait for the end of the step. So Lightning's is switched off (vae-train passes
SLURMEnvironment(auto_requeue=False)) and the requeue is the same scontrol call, made here after the exact state
is saved."""

import logging
import os
import subprocess

log = logging.getLogger("vae_cli")


def in_slurm() -> bool:
    """Whether SLURM started this process as a task of a job (Lightning's rule, without its hint to use srun, which
    vae-train's own README gives where it applies): not in an interactive allocation (srun --pty bash)."""
    return "SLURM_NTASKS" in os.environ and os.environ.get("SLURM_JOB_NAME") not in ("bash", "interactive")


def batch_job() -> str | None:
    """This process's SLURM job as scontrol names it (an array task: <array job>_<task>); None outside SLURM and
    in an interactive allocation (srun --pty bash), which SLURM does not requeue."""
    if not in_slurm():
        return None
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    return f"{array}_{task}" if array and task else os.environ.get("SLURM_JOB_ID")


def restarted() -> bool:
    """Whether SLURM started this job again: requeued (by itself after the warning, or by a preemption) or
    restarted after a node failure. SLURM counts the restarts in SLURM_RESTART_COUNT."""
    return os.environ.get("SLURM_RESTART_COUNT", "0").strip() not in ("", "0")


def follow_cpus_per_task() -> None:
    """torch's threads: the CPUs SLURM gave each task (--cpus-per-task), not every core of the node, which jobs
    sharing the node would oversubscribe. OMP_NUM_THREADS, when set, is the user's choice and stays."""
    cpus = os.environ.get("SLURM_CPUS_PER_TASK", "").strip()
    if not cpus.isdigit() or int(cpus) < 1 or "OMP_NUM_THREADS" in os.environ:
        return
    import torch

    torch.set_num_threads(int(cpus))
    os.environ["OMP_NUM_THREADS"] = cpus  # Lightning's data-parallel start-up sets its own guess otherwise
    log.info("torch uses %s thread(s): the CPUs SLURM gave this task (SLURM_CPUS_PER_TASK)", cpus)


def _scontrol(*args: str) -> tuple[int, str]:
    try:
        done = subprocess.run(["scontrol", *args], capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as e:
        return 1, str(e)
    return done.returncode, (done.stderr.strip() or done.stdout.strip())


def requeue() -> tuple[bool, str | None]:
    """scontrol requeue this job: SLURM ends it and queues it again, with the same command and job id. Returns
    whether SLURM took it and, when not, why (outside a batch job, SLURM accepts no requeue)."""
    job = batch_job()
    if job is None:
        return False, "this is not a SLURM batch job" if "SLURM_JOB_ID" in os.environ else None
    code, out = _scontrol("requeue", job)
    if code:
        return False, f"scontrol requeue {job}: {out or f'exit status {code}'}"
    return True, None


def _job_fields() -> dict[str, str]:
    """This batch job's fields as `scontrol show job` gives them (JobState, Reason, BeginTime, Restarts, ...)."""
    job = batch_job()
    if job is None:
        return {}
    code, out = _scontrol("show", "job", "--oneliner", job)
    return dict(w.split("=", 1) for w in out.split() if "=" in w) if code == 0 else {}


def at_time_limit() -> bool:
    """Whether SLURM is ending this job for its time limit (a SIGTERM then, when sbatch --signal asked for no
    warning), not cancelling it (scancel) or ending it for another reason."""
    fields = _job_fields()
    return fields.get("JobState") == "TIMEOUT" or fields.get("Reason") == "TimeLimit"


def wanted(signum: int, requeue: bool) -> bool:
    """Whether a stop on this signal requeues the job (requeue=true): SLURM's warning before the time limit
    (SIGUSR1), or the time limit itself (SIGTERM while the job times out); never a cancellation."""
    import signal

    return requeue and (
        signum == signal.SIGUSR1 or signum == signal.SIGTERM and batch_job() is not None and at_time_limit()
    )


def held_for() -> str:
    """How long SLURM holds this requeued job before it may start again: the cluster's cred_expire (its AuthInfo
    setting; 120 s by default). The job's own EligibleTime says it only once the job is pending again, after this
    process has ended."""
    import re

    code, out = _scontrol("show", "config")
    found = re.search(r"\bcred_expire=(\d+)", out) if code == 0 else None
    seconds = int(found.group(1)) if found else 120
    return f"for about {seconds} s, the cluster's cred_expire"


def requeued_from_outside() -> bool:
    """Whether SLURM is requeueing this job (scontrol requeue from outside, or a preemption that requeues), so
    that it starts it again; not when it is cancelled or ends. Either way the job is COMPLETING while it stops;
    a requeue has already counted one more restart than this start of the job was given."""
    code, out = _scontrol("show", "job", "--oneliner", batch_job() or "")
    restarts = next((w.split("=", 1)[1] for w in out.split() if w.startswith("Restarts=")), "") if code == 0 else ""
    own = os.environ.get("SLURM_RESTART_COUNT", "").strip() or "0"
    return restarts.isdigit() and own.isdigit() and int(restarts) > int(own)


def requeued_note(signum: int, argv: list[str]) -> str:
    """What a command stopped before its run began says of its SLURM job: requeued (where wanted), or why not."""
    if batch_job() is None or not wanted(signum, "requeue=false" not in argv):
        return ""
    requeued, why = requeue()  # nothing to save: the restart starts (or resumes) the run afresh
    return "; SLURM has requeued the job" if requeued else f"; could not requeue the SLURM job ({why})"
