"""hydra/launcher=slurm's own parts, in this process against a fake SLURM (sinfo, squeue, sacct and scontrol answered
from tables, time from a fake clock): what it accepts before submitting, how it waits, and what it says of a job that
ended without a result. The same launcher against a real SLURM is in test_slurm.py (slow)."""

import getpass
import json
import logging
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import OmegaConf

from hydra_plugins.vae_cli_slurm import slurm_launcher as sl
from vae_cli.cli import run_files
from vae_cli.cli.sweep.jobs import JobFailed

USER = getpass.getuser()
START = 1000.0  # the fake clock's reading at the test's time 0 (a monotonic clock's zero is no moment of ours)
SINFO = ("sinfo", "--noheader", "--Node", "--format=%N|%P|%c|%m|%G|%l")
SQUEUE = ("squeue", "--noheader", "--array", "--user", USER, "--format=%i|%T|%r")

# Three partitions: cpu (the default) of two nodes that differ, gpu of one node with four GPUs of two kinds, and
# bigX, whose name ends in a letter as sinfo's default mark (*) is stripped.
NODES = """\
node1|cpu*|8|16384|(null)|1-00:00:00
node2|cpu*|4+|8192+|(null)|1-00:00:00
node3|gpu|16|65536|gpu:a100:2(S:0-1),gpu:v100:2|02:00:00
node4|bigX|64|262144|(null)|infinite
a line that is not a node
"""


class FakeSlurm:
    """SLURM's commands as the launcher runs them (_run), answered from what the test sets, on a fake clock that
    the launcher's sleeps advance; `at` runs a step of the test once the clock reaches a time."""

    def __init__(self, nodes: str = NODES):
        self.nodes = nodes
        self.now = 0.0
        self.queue: dict[str, tuple[str, str]] | None = {}
        self.sacct: dict[str, str] = {}
        self.scontrol: dict[str, str] = {}
        self.calls: list[tuple[str, ...]] = []
        self.sleeps: list[float] = []
        self.looks = 0
        self.steps: list[tuple[float, object]] = []

    def run(self, *command: str) -> tuple[int, str]:
        self.calls.append(command)
        name = command[0]
        if name == "sinfo":
            assert command == SINFO
            return (0, self.nodes) if self.nodes is not None else (1, "sinfo: error: cannot reach slurmctld")
        if name == "squeue":
            assert command == SQUEUE
            self.looks += 1  # one look at the queue per pause: a wait that polls without pausing fails at once
            assert self.looks == 1, "the queue was read again without a pause"
            if self.queue is None:
                return 1, "slurm_load_jobs error: Socket timed out"
            # squeue lists every job of the user's, not only those asked about, and a line of its own noise.
            rows = [f"{i}|{s}|{r}" for i, (s, r) in self.queue.items()] + ["99999|RUNNING|None", "garbage"]
            return 0, "\n".join(rows) + "\n"
        if name == "sacct":
            assert command[:-1] == ("sacct", "--noheader", "--allocations", "--parsable2", "--format=State", "--jobs")
            return (0, self.sacct[command[-1]]) if command[-1] in self.sacct else (1, "sacct: accounting disabled")
        if name == "scontrol":
            assert command[:-1] == ("scontrol", "show", "job", "--oneliner")
            found = self.scontrol.get(command[-1])
            return (0, found) if found is not None else (1, "slurm_load_jobs error: Invalid job id specified")
        raise AssertionError(command)

    def monotonic(self) -> float:
        return START + self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        self.looks = 0
        assert self.now < 86400, "the wait went on for a day of fake time"  # fails at once, not at a timeout
        for step in [s for s in self.steps if s[0] <= self.now]:
            self.steps.remove(step)
            step[1]()

    def at(self, when: float, step) -> None:
        self.steps.append((when, step))


@pytest.fixture
def slurm(monkeypatch):
    fake = FakeSlurm()
    monkeypatch.setattr(sl, "_run", fake.run)
    monkeypatch.setattr(sl, "time", SimpleNamespace(monotonic=fake.monotonic, sleep=fake.sleep))
    return fake


# ---------------------------------------------------------------------------------------------------------------
# What the cluster can give


@pytest.mark.parametrize(
    "accelerator, devices, gpus",
    [("cpu", 4, 0), ("gpu", 4, 4), ("auto", 1, 1), ("gpu", "auto", 1), ("gpu", 0, 1), ("gpu", -1, 1)],
)
def test_the_launcher_asks_for_one_gpu_per_device_and_none_on_cpus(accelerator, devices, gpus):
    assert sl._gpus_per_node(accelerator, devices) == gpus
    # configs/hydra/launcher/slurm.yaml reads it through this resolver.
    resolved = OmegaConf.create({"a": accelerator, "d": devices, "g": "${vae_gpus_per_node:${a},${d}}"})
    assert resolved.g == gpus


@pytest.mark.parametrize(
    "limit, minutes",
    [
        ("1-02:03:30", 1440 + 120 + 3.5),
        ("2-00:00:00", 2880),
        ("02:00:00", 120),
        ("45:30", 45.5),
        ("45", 45),
        ("infinite", float("inf")),
        ("UNLIMITED", float("inf")),
        ("", float("inf")),
    ],
)
def test_slurms_time_limits_are_read_in_minutes(limit, minutes):
    assert sl._minutes(limit) == minutes


@pytest.mark.parametrize(
    "gres, gpus",
    [("gpu:4", 4), ("gpu:a100:2(S:0-1)", 2), ("gpu:a100:2(S:0-1),gpu:v100:1", 3), ("(null)", 0), ("mps:100", 0)],
)
def test_a_nodes_gpus_are_counted_from_its_gres(gres, gpus):
    assert sl._gpus(gres) == gpus


@pytest.mark.parametrize(
    "params",
    [
        {},  # the default partition, one CPU
        {"partition": "cpu", "nodes": 2},  # the default partition by its name (sinfo marks it cpu*)
        {"partition": "bigX", "cpus_per_task": 64, "timeout_min": 100000},
        {"nodes": 2, "cpus_per_task": 8, "mem_gb": 16, "timeout_min": 1440},  # exactly what the cpu nodes have
        {"tasks_per_node": 2, "cpus_per_task": 4},
        {"partition": "gpu", "gpus_per_node": 4, "cpus_per_task": 16, "mem_gb": 64, "timeout_min": 120},
        {"partition": "gpu", "gpus_per_task": 2, "tasks_per_node": 2},
        {"partition": "gpu", "gpus_per_node": 0, "nodes": None, "cpus_per_task": None, "mem_gb": None},
    ],
)
def test_a_request_the_partitions_nodes_can_meet_is_accepted(slurm, params):
    assert sl.unmet_request(params) is None
    assert slurm.calls == [SINFO]


@pytest.mark.parametrize(
    "params, said",
    [
        (
            {"partition": "debug"},
            "hydra.launcher.partition=debug: SLURM has no such partition; it has bigX, cpu, gpu.",
        ),
        (
            {"gpus_per_node": 1},
            "hydra.launcher.gpus_per_node=1: the default partition has no GPUs. Train on CPUs with "
            "trainer.accelerator=cpu (the launcher then asks for none), or set hydra.launcher.gpus_per_node=0.",
        ),
        (
            {"partition": "gpu", "gpus_per_node": 5},
            "hydra.launcher.gpus_per_node=5: no node of gpu has more than 4 GPUs. Set hydra.launcher.gpus_per_node=4 "
            "(and trainer.devices=4) or fewer.",
        ),
        (
            {"partition": "gpu", "gpus_per_task": 3, "tasks_per_node": 2},
            "hydra.launcher.gpus_per_node=6: no node of gpu has more than 4 GPUs. Set hydra.launcher.gpus_per_node=4 "
            "(and trainer.devices=4) or fewer.",
        ),
        (
            {"nodes": 3},
            "hydra.launcher.nodes=3: the default partition has 2 node(s). Set hydra.launcher.nodes=2 or fewer.",
        ),
        (
            {"cpus_per_task": 9},
            "hydra.launcher.cpus_per_task=9 (x tasks_per_node=1): no node of the default partition has more than "
            "8 CPUs. Set hydra.launcher.cpus_per_task=8 or fewer.",
        ),
        (
            {"cpus_per_task": 3, "tasks_per_node": 3},
            "hydra.launcher.cpus_per_task=3 (x tasks_per_node=3): no node of the default partition has more than "
            "8 CPUs. Set hydra.launcher.cpus_per_task=2 or fewer.",
        ),
        (
            {"cpus_per_task": 1, "tasks_per_node": 9},
            "hydra.launcher.cpus_per_task=1 (x tasks_per_node=9): no node of the default partition has more than "
            "8 CPUs. Set hydra.launcher.cpus_per_task=1 or fewer.",
        ),
        (
            {"mem_gb": 17},
            "hydra.launcher.mem_gb=17: no node of the default partition has more than 16384 MB of memory for jobs. "
            "Set hydra.launcher.mem_gb=16 or less.",
        ),
        (
            {"timeout_min": 1441},
            "hydra.launcher.timeout_min=1441: the default partition allows at most 1440 minutes. Set "
            "hydra.launcher.timeout_min=1440 or less; a job requeues itself at its limit and goes on.",
        ),
        (
            {"partition": "gpu", "timeout_min": 121, "nodes": 2},
            "hydra.launcher.nodes=2: gpu has 1 node(s). Set hydra.launcher.nodes=1 or fewer. "
            "hydra.launcher.timeout_min=121: gpu allows at most 120 minutes. Set hydra.launcher.timeout_min=120 or "
            "less; a job requeues itself at its limit and goes on.",
        ),
    ],
)
def test_a_request_no_node_can_meet_is_refused_naming_the_key_and_what_to_set(slurm, params, said):
    assert sl.unmet_request(params) == said


def test_a_node_with_less_than_a_gigabyte_is_offered_one(slurm):
    slurm.nodes = "tiny|small*|1|512|(null)|10:00\n"
    assert sl.unmet_request({"mem_gb": 1}) == (
        "hydra.launcher.mem_gb=1: no node of the default partition has more than 512 MB of memory for jobs. "
        "Set hydra.launcher.mem_gb=1 or less."
    )


def test_a_cluster_without_a_default_partition_is_asked_for_one(slurm):
    slurm.nodes = "node1|cpu|8|16384|(null)|infinite\nnode3|gpu|16|65536|gpu:4|infinite\n"
    assert sl.unmet_request({}) == "SLURM has no default partition: set hydra.launcher.partition to one of cpu, gpu."
    assert sl.unmet_request({"partition": "cpu", "timeout_min": 100000}) is None


def test_a_cluster_sinfo_cannot_read_is_submitted_to_unchecked_with_a_warning(slurm, caplog):
    slurm.nodes = None
    with caplog.at_level(logging.WARNING, logger=sl.__name__):
        assert sl.unmet_request({"nodes": 1000}) is None
    assert caplog.messages == [
        "could not read the cluster's nodes (sinfo: sinfo: error: cannot reach slurmctld); submitting without "
        "checking the request"
    ]


# ---------------------------------------------------------------------------------------------------------------
# SLURM's commands


def test_a_command_that_succeeds_gives_its_output_and_one_that_fails_its_error():
    assert sl._run("sh", "-c", "echo out; echo err >&2") == (0, "out\n")
    assert sl._run("sh", "-c", "echo out; echo ' err ' >&2; exit 3") == (3, "err")
    assert sl._run("sh", "-c", "echo ' out '; exit 4") == (4, "out")


def test_a_command_that_cannot_run_or_hangs_is_a_failure_not_a_crash(monkeypatch):
    code, said = sl._run("/nonexistent/sinfo")
    assert code == 1 and "/nonexistent/sinfo" in said

    def hang(command, **kwargs):
        assert command == ("squeue",) and kwargs == {"capture_output": True, "text": True, "timeout": 60}
        raise subprocess.TimeoutExpired("squeue", kwargs["timeout"])

    monkeypatch.setattr(sl.subprocess, "run", hang)
    assert sl._run("squeue") == (1, "Command 'squeue' timed out after 60 seconds")


def test_the_queue_holds_the_users_jobs_asked_about_with_state_and_reason(slurm):
    slurm.queue = {"12": ("PENDING", "Priority"), "13_1": ("RUNNING", "None"), "14": ("PENDING", "BeginTime")}
    assert sl._queued(["12", "13_1", "15"]) == {"12": ("PENDING", "Priority"), "13_1": ("RUNNING", "None")}
    slurm.sleep(sl.POLL_S)
    slurm.queue = None
    assert sl._queued(["12"]) is None


def test_how_a_job_ended_comes_from_accounting_else_from_the_controller(slurm):
    slurm.sacct = {"12": "CANCELLED by 1000\n", "13": "TIMEOUT\nCANCELLED\n", "14": ""}
    slurm.scontrol = {
        "14": "JobId=14 JobName=x JobState=NODE_FAIL Reason=NodeDown Dependency=(null)",
        "15": "JobId=15 JobName=x Reason=None",
    }
    assert [sl._final_state(i) for i in ("12", "13", "14", "15", "16")] == [
        "CANCELLED",
        "TIMEOUT",
        "NODE_FAIL",
        "UNKNOWN",
        "UNKNOWN",
    ]


def test_a_failed_scontrol_is_not_read_for_a_state(monkeypatch):
    monkeypatch.setattr(sl, "_run", lambda *c: (1, "JobState=COMPLETED") if c[0] == "scontrol" else (1, ""))
    assert sl._final_state("12") == "UNKNOWN"


# ---------------------------------------------------------------------------------------------------------------
# Waiting for the jobs


class Job:
    """A submitit job as the launcher reads it: its id, its files, and its result once result_pickle exists."""

    def __init__(self, folder: Path, job_id: str, value=None, error: Exception | None = None, stderr: str = ""):
        folder.mkdir(parents=True, exist_ok=True)
        self.job_id = job_id
        self.paths = SimpleNamespace(result_pickle=folder / f"{job_id}_result.pkl", stderr=folder / f"{job_id}.err")
        self.value, self.error, self.log = value, error, stderr

    def finish(self):
        self.paths.result_pickle.touch()

    def results(self):
        if self.error is not None:
            raise self.error
        ret = JobReturn(overrides=[], status=JobStatus.COMPLETED)
        ret.return_value = self.value
        return [ret]

    def stderr(self):
        return self.log


def waited(tmp_path, jobs, first=0):
    nums = list(range(first, first + len(jobs)))
    return sl.wait(jobs, nums, [tmp_path / str(n) for n in nums], [[f"seed={n}"] for n in nums])


def test_the_wait_ends_with_each_jobs_result_whenever_it_shows(tmp_path, slurm, caplog):
    quick, slow = Job(tmp_path, "12", value=-90.5), Job(tmp_path, "13", value=-91.5)
    slurm.queue = {"12": ("RUNNING", "None"), "13": ("PENDING", "Priority")}
    slurm.at(5, lambda: slurm.queue.__setitem__("13", ("RUNNING", "None")))
    slurm.at(10, quick.finish)
    slurm.at(10, lambda: slurm.queue.pop("12"))
    slurm.at(600, slow.finish)
    with caplog.at_level(logging.INFO, logger=sl.__name__):
        returns = waited(tmp_path, [quick, slow], first=3)
    assert [r.return_value for r in returns] == [-90.5, -91.5]
    assert slurm.now == 600 and set(slurm.sleeps) == {sl.POLL_S}
    # One line per change of state, not one per look at the queue.
    assert caplog.messages == [
        "job 3 (SLURM job 12): RUNNING",
        "job 4 (SLURM job 13): PENDING (Priority)",
        "job 4 (SLURM job 13): RUNNING",
    ]


def test_a_job_requeued_by_slurm_is_waited_for_and_said_to_wait_for_its_restart(tmp_path, slurm, caplog):
    job = Job(tmp_path, "12", value=1.0)
    slurm.queue = {"12": ("RUNNING", "None")}
    slurm.at(5, lambda: slurm.queue.update({"12": ("PENDING", "BeginTime")}))
    slurm.at(300, lambda: slurm.queue.update({"12": ("RUNNING", "")}))
    slurm.at(900, job.finish)
    with caplog.at_level(logging.INFO, logger=sl.__name__):
        assert waited(tmp_path, [job])[0].return_value == 1.0
    assert caplog.messages == [
        "job 0 (SLURM job 12): RUNNING",
        "job 0 (SLURM job 12): PENDING (requeued: waiting for SLURM to restart it)",
        "job 0 (SLURM job 12): RUNNING",
    ]


def test_a_result_that_shows_after_the_job_left_the_queue_is_still_its_result(tmp_path, slurm):
    # A shared file system may show the result some seconds after SLURM forgets the job.
    job = Job(tmp_path, "12", value=2.0)
    slurm.at(sl.RESULT_GRACE_S + 1, job.finish)
    assert waited(tmp_path, [job])[0].return_value == 2.0


def test_a_job_that_left_the_queue_without_a_result_ends_its_wait_with_slurms_word(tmp_path, slurm):
    job, other = Job(tmp_path, "12"), Job(tmp_path, "13", value=3.0)
    slurm.queue = {"12": ("RUNNING", "None"), "13": ("RUNNING", "None")}
    slurm.sacct = {"12": "CANCELLED by 0\n"}
    slurm.at(20, lambda: slurm.queue.pop("12"))
    slurm.at(100, other.finish)
    failed, done = waited(tmp_path, [job, other])
    assert done.return_value == 3.0
    assert failed.status == JobStatus.COMPLETED and failed.overrides == ["seed=0"]
    assert isinstance(failed.return_value, sl._Unfinished) and isinstance(failed.return_value, JobFailed)
    assert failed.return_value.message == (
        f"job 0 (SLURM job 12) ended CANCELLED without finishing. Its log: {job.paths.stderr}"
    )
    assert ("sacct", "--noheader", "--allocations", "--parsable2", "--format=State", "--jobs", "12") in slurm.calls


def test_a_job_gone_from_the_queue_is_given_up_on_after_the_grace_period_and_not_before(tmp_path, slurm):
    job = Job(tmp_path, "12")
    slurm.queue = {"12": ("RUNNING", "None")}
    slurm.at(50, lambda: slurm.queue.pop("12"))
    slurm.at(60, lambda: slurm.queue.update({"12": ("RUNNING", "None")}))  # back: squeue had missed it
    slurm.at(70, lambda: slurm.queue.pop("12"))
    waited(tmp_path, [job])
    # Gone at 70, the grace starts again there; given up on at the first look more than 30 s later.
    assert slurm.now == 105


def test_a_job_stopped_by_a_signal_says_how_it_stopped_and_how_to_resume(tmp_path, slurm):
    job = Job(tmp_path, "12")
    run_dir = tmp_path / "0"
    run_dir.mkdir()
    stop = {
        "signal": "SIGTERM",
        "stopped": "at epoch 2, step 22",
        "global_step": 22,
        "requeued": False,
        "checkpoint": "checkpoints/last.ckpt",
        "resume": "vae-train resume=true",
    }
    (run_dir / run_files.STOP).write_text(json.dumps(stop))
    slurm.scontrol = {"12": "JobId=12 JobState=PREEMPTED Reason=None"}
    assert waited(tmp_path, [job])[0].return_value.message == (
        "job 0 (SLURM job 12) ended PREEMPTED without finishing: stopped by SIGTERM at epoch 2, step 22; "
        f"resume: vae-train resume=true. Its log: {job.paths.stderr}"
    )
    # A stop record that cannot be read leaves SLURM's word alone.
    (run_dir / run_files.STOP).write_text(json.dumps({**stop, "signal": None}))
    assert sl._ended_without_result(0, job, run_dir) == (
        f"job 0 (SLURM job 12) ended PREEMPTED without finishing. Its log: {job.paths.stderr}"
    )


def test_a_queue_that_cannot_be_read_is_waited_for_ten_minutes_then_given_up_on(tmp_path, slurm):
    job = Job(tmp_path, "12")
    slurm.queue = {"12": ("RUNNING", "None")}
    slurm.at(10, lambda: setattr(slurm, "queue", None))
    ret = waited(tmp_path, [job])[0]
    assert slurm.now == 10 + sl.SQUEUE_PATIENCE_S + sl.POLL_S and ret.overrides == ["seed=0"]
    assert ret.return_value.message == (
        "job 0 (SLURM job 12): SLURM's queue could not be read for 10 minutes; the job may still run. "
        f"Its log: {job.paths.stderr}"
    )


def test_a_queue_readable_again_restarts_the_patience_and_a_result_ends_the_wait_meanwhile(tmp_path, slurm):
    job = Job(tmp_path, "12", value=4.0)
    slurm.queue = None
    slurm.at(500, lambda: setattr(slurm, "queue", {"12": ("RUNNING", "None")}))
    slurm.at(505, lambda: setattr(slurm, "queue", None))
    slurm.at(1100, job.finish)
    assert waited(tmp_path, [job])[0].return_value == 4.0
    # A job absent from no queue at all is not taken for gone: the grace does not run while squeue is unreadable.
    job2 = Job(tmp_path / "b", "13", value=5.0)
    slurm.now, slurm.queue, slurm.sleeps, slurm.looks = 0.0, {}, [], 0
    slurm.at(5, lambda: setattr(slurm, "queue", None))
    slurm.at(300, job2.finish)
    assert waited(tmp_path, [job2])[0].return_value == 5.0


def test_a_job_that_failed_inside_submitit_is_told_by_its_last_error_line(tmp_path, slurm):
    from submitit.core.utils import FailedJobError, UncompletedJobError

    log = "Traceback (most recent call last):\nKeyError: 'x'\n  during it\ntorch.OutOfMemoryError: CUDA out \n  x\n"
    oom = Job(tmp_path, "12", error=FailedJobError("job failed"), stderr=log)
    oom.finish()
    bare = Job(tmp_path, "13", error=UncompletedJobError("no line matches\nhere"), stderr=None)
    bare.finish()
    said = Job(tmp_path, "14", error=UncompletedJobError("sbatch said\nsubmitit.UncompletedJobError: lost"))
    said.finish()
    returns = waited(tmp_path, [oom, bare, said], first=1)
    assert [r.overrides for r in returns] == [["seed=1"], ["seed=2"], ["seed=3"]]
    first, second, third = (r.return_value.message for r in returns)
    assert first == f"job 1 (SLURM job 12) failed: torch.OutOfMemoryError: CUDA out. Its log: {oom.paths.stderr}"
    assert second == f"job 2 (SLURM job 13) failed: UncompletedJobError. Its log: {bare.paths.stderr}"
    assert third == f"job 3 (SLURM job 14) failed: submitit.UncompletedJobError: lost. Its log: {said.paths.stderr}"


def test_a_jobs_own_failure_is_said_with_its_folder_and_the_launchers_account_as_it_is():
    assert sl._why_not_finished(3, Path("/s/3"), JobFailed("bad config")) == "job 3 failed: bad config (/s/3)"
    assert sl._why_not_finished(3, Path("/s/3"), sl._Unfinished("job 3 ended")) == "job 3 ended"
