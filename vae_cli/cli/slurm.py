"""Under SLURM: a batch job warned before its time limit (SIGUSR1, asked for with sbatch --signal=USR1@90) saves
its exact state (training/callbacks.py Interruption), requeues itself, and when SLURM starts it again with the
same command in the same run directory, continues from that state.

Lightning's SLURM environment can requeue a job too (SLURMEnvironment(auto_requeue=True)), but its handler saves
a checkpoint from inside the signal handler, in the middle of a step, and lets training run on until SLURM kills
the job; it cannot be made to wait for the end of the step. So Lightning's is switched off (vae-train passes
SLURMEnvironment(auto_requeue=False)) and the requeue is the same scontrol call, made here after the exact state
is saved."""
import logging
import os
import subprocess
from pathlib import Path

log = logging.getLogger("vae_cli")


def batch_job() -> str | None:
    """This process's SLURM job as scontrol names it (an array task: <array job>_<task>); None outside SLURM and
    in an interactive allocation (srun --pty bash), which SLURM does not requeue."""
    from pytorch_lightning.plugins.environments import SLURMEnvironment

    if not SLURMEnvironment.detect():
        return None
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    return f"{array}_{task}" if array and task else os.environ.get("SLURM_JOB_ID")


def restarted() -> bool:
    """Whether SLURM started this job again: requeued (by itself after the warning, or by a preemption) or
    restarted after a node failure. SLURM counts the restarts in SLURM_RESTART_COUNT."""
    return os.environ.get("SLURM_RESTART_COUNT", "0").strip() not in ("", "0")


def saved_state(run_dir: Path) -> Path | None:
    """What a restarted job continues from: checkpoints/interrupted.ckpt, or last.ckpt when that is newer (the
    run went on after an earlier interruption); None when the job stopped before saving either."""
    found = [f for f in (run_dir / "checkpoints" / n for n in ("interrupted.ckpt", "last.ckpt")) if f.is_file()]
    return max(found, key=lambda f: f.stat().st_mtime_ns, default=None)


def requeue() -> None:
    """scontrol requeue this job: SLURM ends it and queues it again, with the same command and job id."""
    job = batch_job()
    try:
        done = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=120)
        why = (done.stderr.strip() or f"exit status {done.returncode}") if done.returncode else None
    except (OSError, subprocess.TimeoutExpired) as e:
        why = str(e)
    if why:
        log.error("could not requeue SLURM job %s (scontrol: %s); resume it with the command above", job, why)
    else:
        log.info("requeued SLURM job %s: when it starts again it continues from the saved state", job)
