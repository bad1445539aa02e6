"""hydra/launcher=slurm: each job of a sweep a SLURM job, submitted through submitit as Hydra's own submitit
launcher submits them, with three differences:

- Before anything is queued, the request is held against the cluster (sinfo): a partition that does not exist, or
  more nodes, CPUs, memory, GPUs or time than the partition's nodes have, stops the sweep with one message naming
  the key to change. SLURM would otherwise refuse the jobs, or leave them pending for ever.
- The launcher waits for the jobs itself, reading SLURM's queue (squeue) and the jobs' result files: a job that
  leaves the queue without a result (cancelled, timed out, its node lost, killed) ends its wait, with or without
  SLURM's accounting. Hydra's waits until accounting reports the job, or, without accounting, for ever.
- When the jobs have ended it says how each that did not finish ended; vae-train's sweep then ends with its table
  and exits non-zero.

A job requeued (after SLURM's warning before its time limit, a preemption, scontrol requeue) stays in the queue,
and the launcher waits for it to start again and finish."""

import getpass
import logging
import re
import subprocess
import time
from pathlib import Path

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from omegaconf import OmegaConf

from vae_cli import inputs
from vae_cli.cli import run_files
from vae_cli.cli.sweep.jobs import STOP_FIELDS, JobFailed
from vae_cli.errors import UserError

try:
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
    from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher as _SubmititSlurmLauncher
except ImportError:  # the sweeps extra is not installed: there is no SLURM launcher to offer
    _SubmititSlurmLauncher = None

log = logging.getLogger(__name__)


def _gpus_per_node(accelerator, devices) -> int:
    """The launcher's default GPUs per node: none for trainer.accelerator=cpu, else one per device."""
    if str(accelerator) == "cpu":
        return 0
    return devices if isinstance(devices, int) and devices > 0 else 1


OmegaConf.register_new_resolver("vae_gpus_per_node", _gpus_per_node, replace=True)


POLL_S = 5  # between looks at the queue
RESULT_GRACE_S = 30  # a job gone from the queue may take this long to show its result on a shared file system
SQUEUE_PATIENCE_S = 600  # how long the queue may go unreadable before the wait gives up


def _run(*command: str) -> tuple[int, str]:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        return 1, str(e)
    return done.returncode, done.stdout if done.returncode == 0 else (done.stderr.strip() or done.stdout.strip())


# ---------------------------------------------------------------------------------------------------------------
# What the cluster can give: checked before anything is submitted.


def _minutes(limit: str) -> float:
    """SLURM's time limit ([days-]hours:minutes:seconds, minutes:seconds, ...) in minutes; inf for infinite."""
    if limit in ("infinite", "UNLIMITED", ""):
        return float("inf")
    days, _, rest = limit.rpartition("-")
    parts = [int(p) for p in rest.split(":")]
    h, m, s = ([0] * (3 - len(parts)) + parts) if len(parts) > 1 else (0, parts[0], 0)
    return int(days or 0) * 1440 + h * 60 + m + s / 60


def _gpus(gres: str) -> int:
    """The GPUs a node's GRES lists (gpu:4, gpu:a100:2(S:0-1), ...)."""
    return sum(int(m.group(1)) for m in re.finditer(r"gpu(?::[^:,(]+)?:(\d+)", gres))


def unmet_request(params: dict) -> str | None:
    """Why the cluster cannot run jobs asking for `params` (the launcher's settings), naming each key to change;
    None when it can, or when sinfo cannot tell."""
    code, out = _run("sinfo", "--noheader", "--Node", "--format=%N|%P|%c|%m|%G|%l")
    if code:
        log.warning("could not read the cluster's nodes (sinfo: %s); submitting without checking the request", out)
        return None
    rows = [line.split("|") for line in out.splitlines() if line.count("|") == 5]
    partition = params.get("partition")
    named = partition or "the default partition"
    nodes = [r for r in rows if (r[1].rstrip("*") == partition if partition else r[1].endswith("*"))]
    if not nodes:
        known = sorted({r[1].rstrip("*") for r in rows})
        return (
            f"hydra.launcher.partition={partition}: SLURM has no such partition; it has {', '.join(known)}."
            if partition
            else f"SLURM has no default partition: set hydra.launcher.partition to one of {', '.join(known)}."
        )
    names = {r[0] for r in nodes}
    cpus, mem_mb = max(int(r[2].rstrip("+")) for r in nodes), max(int(r[3].rstrip("+")) for r in nodes)
    gpus, limit = max(_gpus(r[4]) for r in nodes), _minutes(nodes[0][5])
    tasks = params.get("tasks_per_node") or 1
    asked_gpus = params.get("gpus_per_node") or (params.get("gpus_per_task") or 0) * tasks
    unmet = []
    if asked_gpus and not gpus:
        unmet.append(
            f"hydra.launcher.gpus_per_node={asked_gpus}: {named} has no GPUs. Train on CPUs with "
            "trainer.accelerator=cpu (the launcher then asks for none), or set hydra.launcher.gpus_per_node=0."
        )
    elif asked_gpus > gpus:
        unmet.append(
            f"hydra.launcher.gpus_per_node={asked_gpus}: no node of {named} has more than {gpus} GPUs. Set "
            f"hydra.launcher.gpus_per_node={gpus} (and trainer.devices={gpus}) or fewer."
        )
    if (params.get("nodes") or 1) > len(names):
        unmet.append(
            f"hydra.launcher.nodes={params['nodes']}: {named} has {len(names)} node(s). Set "
            f"hydra.launcher.nodes={len(names)} or fewer."
        )
    if (params.get("cpus_per_task") or 1) * tasks > cpus:
        unmet.append(
            f"hydra.launcher.cpus_per_task={params['cpus_per_task']} (x tasks_per_node={tasks}): no node of "
            f"{named} has more than {cpus} CPUs. Set hydra.launcher.cpus_per_task={max(1, cpus // tasks)} or "
            "fewer."
        )
    if params.get("mem_gb") and params["mem_gb"] * 1024 > mem_mb:
        unmet.append(
            f"hydra.launcher.mem_gb={params['mem_gb']}: no node of {named} has more than {mem_mb} MB of "
            f"memory for jobs. Set hydra.launcher.mem_gb={max(1, mem_mb // 1024)} or less."
        )
    if params.get("timeout_min") and params["timeout_min"] > limit:
        unmet.append(
            f"hydra.launcher.timeout_min={params['timeout_min']}: {named} allows at most {int(limit)} "
            f"minutes. Set hydra.launcher.timeout_min={int(limit)} or less; a job requeues itself at its "
            "limit and goes on."
        )
    return " ".join(unmet) or None


# ---------------------------------------------------------------------------------------------------------------
# Waiting for the jobs.


def _queued(job_ids: list[str]) -> dict[str, tuple[str, str]] | None:
    """This user's jobs among `job_ids` that SLURM still holds (pending, running, requeued, ...): id -> (state,
    reason). None when the queue cannot be read."""
    code, out = _run("squeue", "--noheader", "--array", "--user", getpass.getuser(), "--format=%i|%T|%r")
    if code:
        return None
    wanted = set(job_ids)
    return {
        i: (state, reason)
        for i, state, reason in (line.split("|") for line in out.splitlines() if line.count("|") == 2)
        if i in wanted
    }


def _final_state(job_id: str) -> str:
    """How SLURM says the job ended: from its accounting (sacct) where there is one, else from the controller,
    which remembers a job for a few minutes after it ends."""
    code, out = _run("sacct", "--noheader", "--allocations", "--parsable2", "--format=State", "--jobs", job_id)
    if code == 0 and out.strip():
        return out.split()[0]
    code, out = _run("scontrol", "show", "job", "--oneliner", job_id)
    state = next((w.split("=", 1)[1] for w in out.split() if w.startswith("JobState=")), None) if code == 0 else None
    return state or "UNKNOWN"


def _ended_without_result(num: int, job, job_dir: Path) -> str:
    """What to say of a job that left the queue without a result: SLURM's word for its end, and the run's own
    record of a stop (interrupted.json), with the command that resumes it."""
    state = _final_state(job.job_id)
    said = f"job {num} (SLURM job {job.job_id}) ended {state} without finishing"
    stop = job_dir / run_files.STOP
    if stop.is_file():
        try:
            record = inputs.record(stop, "a run's stop record", STOP_FIELDS)
            said += f": stopped by {record['signal']} {record['stopped']}; resume: {record['resume']}"
        except UserError:
            pass
    return f"{said}. Its log: {job.paths.stderr}"


def _say_state(num: int, job_id: str, state: str, reason: str) -> None:
    waiting = (
        " (requeued: waiting for SLURM to restart it)"
        if reason == "BeginTime"
        else f" ({reason})"
        if reason not in ("None", "")
        else ""
    )
    log.info("job %d (SLURM job %s): %s%s", num, job_id, state, waiting)


def wait(jobs: list, nums: list[int], job_dirs: list[Path], overrides: list[list[str]]) -> list[JobReturn]:
    """Each job's JobReturn: its result, or a failed one saying how it ended without one (the JobDidNotFinish
    it raises)."""
    returns: list[JobReturn | None] = [None] * len(jobs)
    seen: dict[int, tuple[str, str]] = {}
    gone_since: dict[int, float] = {}
    unreadable_since = None
    while any(r is None for r in returns):
        queue = _queued([j.job_id for j, r in zip(jobs, returns) if r is None])
        now = time.monotonic()
        if queue is None:
            unreadable_since = unreadable_since or now
        else:
            unreadable_since = None
        for i, job in enumerate(jobs):
            if returns[i] is not None:
                continue
            if job.paths.result_pickle.exists():
                returns[i] = _result(nums[i], job, overrides[i])
            elif queue is not None and job.job_id in queue:
                gone_since.pop(i, None)
                if queue[job.job_id] != seen.get(i):
                    seen[i] = queue[job.job_id]
                    _say_state(nums[i], job.job_id, *queue[job.job_id])
            elif queue is not None and now - gone_since.setdefault(i, now) > RESULT_GRACE_S:
                returns[i] = _failed(overrides[i], _ended_without_result(nums[i], job, job_dirs[i]))
            elif unreadable_since is not None and now - unreadable_since > SQUEUE_PATIENCE_S:
                returns[i] = _failed(
                    overrides[i],
                    f"job {nums[i]} (SLURM job {job.job_id}): SLURM's queue could not "
                    f"be read for {SQUEUE_PATIENCE_S // 60} minutes; the job may still "
                    f"run. Its log: {job.paths.stderr}",
                )
        if any(r is None for r in returns):
            time.sleep(POLL_S)
    return returns


def _why_not_finished(num: int, job_dir: Path, failed: JobFailed) -> str:
    """One line for a job that did not finish: the launcher's own account of it, or the job's (which it said in
    its SLURM log)."""
    return failed.message if isinstance(failed, _Unfinished) else f"job {num} failed: {failed.message} ({job_dir})"


class _Unfinished(JobFailed):
    """A job that ended without a result, with the launcher's account of it."""


def _failed(overrides: list[str], message: str) -> JobReturn:
    """A job that ended without a result: a result that says so (vae-train ends the sweep with its table, then
    with the count of jobs that did not finish), not an exception Hydra would end the sweep with."""
    ret = JobReturn(overrides=overrides, status=JobStatus.COMPLETED)
    ret.return_value = _Unfinished(message)
    return ret


def _result(num: int, job, overrides: list[str]) -> JobReturn:
    from submitit.core.utils import FailedJobError, UncompletedJobError

    try:
        return job.results()[0]
    except (FailedJobError, UncompletedJobError) as e:  # submitit's own failure, outside vae-train: its last error
        lines = (job.stderr() or str(e)).splitlines()
        last = next((x for x in reversed(lines) if re.match(r"[\w.]+(Error|Exception)\b", x)), type(e).__name__)
        return _failed(
            overrides, f"job {num} (SLURM job {job.job_id}) failed: {last.strip()}. Its log: {job.paths.stderr}"
        )


# ---------------------------------------------------------------------------------------------------------------

if _SubmititSlurmLauncher is not None:

    class SlurmLauncher(_SubmititSlurmLauncher):
        """Hydra's submitit SLURM launcher that checks the request first, and waits for its jobs itself (above)."""

        def setup(self, *, hydra_context, task_function, config) -> None:
            super().setup(hydra_context=hydra_context, task_function=task_function, config=config)
            why = unmet_request(self.params)
            if why:
                from vae_cli.cli.errors import fail

                sweep = Path(str(config.hydra.sweep.dir))
                try:  # made empty by the check that the sweep's directory is writable; nothing is in it
                    sweep.rmdir()
                except OSError:
                    pass
                fail("vae-train", f"SLURM cannot run these jobs, so none was submitted. {why}")

        def _job_dir(self, overrides: list[str], num: int) -> Path:
            cfg = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
            cfg.hydra.job.num = num
            return Path(str(cfg.hydra.sweep.dir)) / str(cfg.hydra.sweep.subdir)

        def launch(self, job_overrides, initial_job_idx: int) -> list[JobReturn]:
            import submitit

            params = dict(self.params)
            executor = submitit.AutoExecutor(
                cluster="slurm",
                folder=params.pop("submitit_folder"),
                slurm_max_num_timeout=params.pop("max_num_timeout"),
            )
            shared = set(OmegaConf.structured(BaseQueueConf).keys())  # the rest are sbatch's own, prefixed
            executor.update_parameters(**{k if k in shared else f"slurm_{k}": v for k, v in params.items()})
            sweep = Path(str(self.config.hydra.sweep.dir))
            sweep.mkdir(parents=True, exist_ok=True)
            if "mode" in self.config.hydra.sweep:
                sweep.chmod(int(str(self.config.hydra.sweep.mode), 8))
            nums = list(range(initial_job_idx, initial_job_idx + len(job_overrides)))
            overrides = [list(o) for o in job_overrides]
            log.info("Submitit 'slurm' sweep output dir : %s", sweep)
            for num, o in zip(nums, overrides):
                log.info("\t#%d : %s", num, " ".join(filter_overrides(o)))
            state = Singleton.get_state()
            try:
                jobs = executor.map_array(
                    self,
                    overrides,
                    ["hydra.sweep.dir"] * len(nums),
                    nums,
                    [f"job_id_for_{n}" for n in nums],
                    [state] * len(nums),
                )
            except Exception as e:  # sbatch refused them: its own words name the setting
                from vae_cli.cli.errors import fail

                said = next((line for line in reversed(str(e).splitlines()) if "error" in line.lower()), str(e))
                fail(
                    "vae-train",
                    f"sbatch refused the sweep's jobs: {said.strip()}. Change the hydra.launcher "
                    "setting it names (configs/hydra/launcher/slurm.yaml lists them).",
                )
            job_dirs = [self._job_dir(o, n) for o, n in zip(overrides, nums)]
            returns = wait(jobs, nums, job_dirs, overrides)
            for num, job_dir, ret in zip(nums, job_dirs, returns):
                if isinstance(ret.return_value, JobFailed):
                    print(f"vae-train: {_why_not_finished(num, job_dir, ret.return_value)}", flush=True)
            return returns
