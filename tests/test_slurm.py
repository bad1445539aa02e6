"""vae-train under a real SLURM (tests/slurm_cluster.py starts one on this machine): a sweep through
hydra/launcher=slurm, a request the cluster cannot meet, a job cancelled mid-sweep, a data-parallel job of two
tasks that one signal reaches in one task only, and the README's batch script reaching its time limit. Every
interrupted job ends exactly where the uninterrupted run ends."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vae_cli.cli import provenance

from conftest import QUIET, SMALL_NET
from slurm_cluster import REQUEUE_DELAY_S, Cluster, missing

pytestmark = pytest.mark.slow  # real SLURM daemons and vae-train jobs

VAE_TRAIN = str(Path(sys.executable).parent / "vae-train")
SMALL = (*SMALL_NET, "seed=2", *QUIET)
CPU_JOBS = ("trainer.accelerator=cpu", "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=1")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    why = missing()
    if why:
        pytest.skip(f"no SLURM here: {why}")
    c = Cluster(tmp_path_factory.mktemp("slurm"))
    try:
        c.start()
    except (OSError, RuntimeError, subprocess.SubprocessError) as e:
        c.stop()
        pytest.skip(f"the SLURM daemons could not start here: {e}")
    yield c
    c.stop()


def _sweep(cluster, tmp_path, *args, wait=True):
    command = [
        VAE_TRAIN,
        "--multirun",
        "hydra/launcher=slurm",
        *CPU_JOBS,
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        *args,
    ]
    if not wait:
        return subprocess.Popen(
            command, cwd=tmp_path, env=cluster.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
    return subprocess.run(command, cwd=tmp_path, env=cluster.env, capture_output=True, text=True, timeout=300)


def _metrics(run: Path) -> dict:
    return json.loads((run / "metrics.json").read_text())


def _reference(tmp_path: Path, *args: str) -> subprocess.Popen:
    """The uninterrupted run outside SLURM, one thread as the jobs have, in a process beside the test's jobs."""
    return subprocess.Popen(
        [VAE_TRAIN, *args, f"hydra.run.dir={tmp_path / 'reference'}"],
        cwd=tmp_path,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_a_sweep_runs_its_jobs_as_slurm_jobs_and_ends(cluster, tmp_path):
    proc = _sweep(cluster, tmp_path, "model.latent_dim=2,3", "trainer.max_epochs=2", *QUIET)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"sweep done: {tmp_path / 'sweep'}" in proc.stdout and "2 jobs: 2 ok" in proc.stdout  # the report
    for job in ("0", "1"):
        assert _metrics(tmp_path / "sweep" / job)["epochs"] == 2
        log = (tmp_path / "sweep" / job / "train.log").read_text()
        assert "torch uses 1 thread(s): the CPUs SLURM gave this task" in log
        assert "srun" not in log  # no hint from Lightning to start it with srun: SLURM did
    # The launcher's jobs ask for SIGUSR1 90 s before their time limit, and may be requeued.
    (script, *_) = (tmp_path / "sweep" / ".submitit").glob("*/*_submission.sh")
    flags = [line for line in script.read_text().splitlines() if line.startswith(("#SBATCH --signal", "#SBATCH --req"))]
    assert flags == ["#SBATCH --requeue", "#SBATCH --signal=USR1@90"]
    assert cluster.drained()


def test_a_request_no_node_can_meet_is_refused_before_anything_is_submitted(cluster, tmp_path):
    proc = _sweep(
        cluster, tmp_path, "model.latent_dim=2,3", "hydra.launcher.cpus_per_task=64", "hydra.launcher.gpus_per_node=1"
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    err = proc.stderr.strip()
    assert err.startswith("vae-train: error: SLURM cannot run these jobs, so none was submitted.")
    assert f"no node of the default partition has more than {cluster.cpus} CPUs" in err
    assert "hydra.launcher.gpus_per_node=1: the default partition has no GPUs" in err
    assert not (tmp_path / "sweep").exists() and cluster.jobs() == []


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"no {path} after {timeout} s"
        time.sleep(0.5)


def test_a_job_cancelled_mid_sweep_ends_the_sweep_with_its_account(cluster, tmp_path):
    sweep = _sweep(cluster, tmp_path, "trainer.max_epochs=2,2000", *SMALL, wait=False)
    _wait_for(tmp_path / "sweep" / "1" / "checkpoints" / "last.ckpt", sweep)  # job 1 is training
    (job,) = [line.split()[0] for line in cluster.jobs() if line.endswith("RUNNING") and line.split()[0].endswith("_1")]
    cluster.run("scancel", job)
    out, err = sweep.communicate(timeout=180)  # it ends: the launcher does not wait for a result that never comes
    assert sweep.returncode != 0
    assert _metrics(tmp_path / "sweep" / "0")["epochs"] == 2  # the other job finished
    stopped = json.loads((tmp_path / "sweep" / "1" / "interrupted.json").read_text())
    assert stopped["signal"] == "SIGTERM" and stopped["requeued"] is False
    said = f"vae-train: job 1 (SLURM job {job}) ended CANCELLED without finishing: stopped by SIGTERM"
    assert said in out and f"resume: {stopped['resume']}" in out, out
    assert "NOT FINISHED (1):" in out and (tmp_path / "sweep" / "report.md").is_file()  # the sweep's table
    assert "Traceback" not in err and "Error executing job" not in err, err
    assert err.splitlines()[-1].startswith("vae-train: error: 1 of the sweep's jobs did not finish"), err
    assert cluster.drained()


def test_a_data_parallel_job_that_one_task_is_signalled_in_saves_once_requeues_once_and_resumes_exactly(
    cluster, tmp_path, helpers
):
    args = (*SMALL, "trainer.max_epochs=3", "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2")
    reference = subprocess.run(
        [
            "srun",
            "--ntasks-per-node=2",
            "--cpus-per-task=1",
            VAE_TRAIN,
            *args,
            f"hydra.run.dir={tmp_path / 'reference'}",
        ],
        cwd=tmp_path,
        env=cluster.env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert reference.returncode == 0, reference.stderr[-3000:]
    run = tmp_path / "run"
    # Two processes of 6 steps per epoch each; the second process alone gets SIGUSR1 after step 8.
    script = tmp_path / "job.sh"
    script.write_text(
        "\n".join(
            [
                "#!/bin/bash",
                "#SBATCH --ntasks-per-node=2",
                "#SBATCH --cpus-per-task=1",
                "#SBATCH --requeue",
                "#SBATCH --open-mode=append",
                f"#SBATCH --output={tmp_path / 'job.out'}",
                f"srun {VAE_TRAIN} {' '.join(args)} hydra.run.dir={run} +callbacks.sig._target_=fault_helpers.SignalAt "
                "+callbacks.sig.at=step:8 +callbacks.sig.signum=SIGUSR1 +callbacks.sig.rank=1",
                "",
            ]
        )
    )
    job = cluster.run("sbatch", "--parsable", f"--chdir={tmp_path}", str(script)).stdout.strip()
    end = cluster.wait_gone(job, timeout=240 + REQUEUE_DELAY_S)
    assert end["JobState"] == "COMPLETED" and end["Restarts"] == "1", (end, (tmp_path / "job.out").read_text())
    stopped = json.loads((run / "interrupted.json").read_text())
    assert stopped["stopped"] == "in epoch 2 at step 8" and stopped["requeued"] is True
    log = (tmp_path / "job.out").read_text()
    assert log.count("SLURM has requeued the job: waiting for SLURM to restart it") == 1
    assert _metrics(run) == _metrics(tmp_path / "reference")


def test_slurms_sigterm_after_the_requeue_does_not_cut_the_record_of_the_stop_short(cluster, tmp_path, helpers):
    args = (*SMALL, "trainer.max_epochs=3")
    reference = _reference(tmp_path, *args)
    run = tmp_path / "run"
    script = tmp_path / "job.sh"
    script.write_text(
        "\n".join(
            [
                "#!/bin/bash",
                "#SBATCH --requeue",
                "#SBATCH --open-mode=append",
                "#SBATCH --cpus-per-task=1",
                f"#SBATCH --output={tmp_path / 'job.out'}",
                f"srun {VAE_TRAIN} hydra.run.dir={run} {' '.join(args)} +callbacks.sig._target_=fault_helpers.SignalAt "
                "+callbacks.sig.at=step:15 +callbacks.sig.signum=SIGUSR1 "
                "+callbacks.slow._target_=fault_helpers.SlowAfterRequeue +callbacks.slow.seconds=4",
                "",
            ]
        )
    )
    job = cluster.run("sbatch", "--parsable", f"--chdir={tmp_path}", str(script)).stdout.strip()
    end = cluster.wait_gone(job, timeout=240 + REQUEUE_DELAY_S)
    log = (tmp_path / "job.out").read_text()
    assert end["JobState"] == "COMPLETED" and end["Restarts"] == "1", (end, log[-3000:])
    assert log.count("SLURM has requeued the job: waiting for SLURM to restart it") == 1, log[-3000:]
    stopped = json.loads((run / "interrupted.json").read_text())
    assert stopped["stopped"] == "in epoch 2 at step 15" and stopped["requeued"] is True
    first, resumed = provenance.read(run)  # the stopped invocation's record was completed too
    assert (first["outcome"], resumed["outcome"]) == ("stopped by SIGUSR1", "finished")
    assert reference.wait(timeout=300) == 0, reference.stderr.read()[-3000:]
    assert _metrics(run) == _metrics(tmp_path / "reference")


@pytest.fixture
def busy():
    """Both cores kept busy by a CPU burner, as on a machine where other work runs: SLURM's warning then often
    arrives while vae-train is still starting (slow imports), which must requeue the job all the same."""
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(os.cpu_count() or 2)]
    yield
    for b in burners:
        b.kill()
        b.wait()


@pytest.mark.parametrize("load", ["idle", "busy"])
def test_the_readme_batch_script_requeues_at_its_time_limit_and_ends_exactly(cluster, tmp_path, helpers, load, request):
    args = (*SMALL, "trainer.max_epochs=500")
    reference = _reference(tmp_path, *args)
    if load == "busy":
        request.getfixturevalue("busy")
    run = tmp_path / "run"
    script = tmp_path / "job.sh"
    script.write_text(
        "\n".join(
            [
                "#!/bin/bash",
                # slurmctld checks time limits every 30 s, so USR1@30 comes 30 to 60 s before the limit: 60 to 90 s
                # after each start. A warning within start-up, as USR1@50 of one minute gave, stopped every
                # restart before it trained (its checks fell a second after each restart), and the job never ended.
                "#SBATCH --time=00:02:00",
                "#SBATCH --signal=USR1@30",
                "#SBATCH --requeue",
                "#SBATCH --open-mode=append",
                "#SBATCH --cpus-per-task=1",
                f"#SBATCH --output={tmp_path / 'job.out'}",
                # Over two minutes of training on any machine, so the first start is warned before it ends.
                f"srun {VAE_TRAIN} hydra.run.dir={run} {' '.join(args)} "
                "+callbacks.slow._target_=fault_helpers.SlowEpochs +callbacks.slow.seconds=0.25",
                "",
            ]
        )
    )
    job = cluster.run("sbatch", "--parsable", f"--chdir={tmp_path}", str(script)).stdout.strip()
    end = cluster.wait_gone(job, timeout=900 if load == "idle" else 1800)
    log = (tmp_path / "job.out").read_text()
    assert end["JobState"] == "COMPLETED" and int(end["Restarts"]) >= 1, (end, log[-3000:])
    assert log.count("SLURM has requeued the job") == int(end["Restarts"]), log[-3000:]
    assert reference.wait(timeout=900) == 0, reference.stderr.read()[-3000:]
    assert _metrics(run) == _metrics(tmp_path / "reference")


def _batch(cluster, tmp_path, run, args, *sbatch: str, extra: str = "") -> str:
    """Submit a batch script running vae-train in `run` with `args` (and `extra` overrides); its job id."""
    script = tmp_path / "job.sh"
    script.write_text(
        "\n".join(
            [
                "#!/bin/bash",
                *(f"#SBATCH {o}" for o in sbatch),
                "#SBATCH --requeue",
                "#SBATCH --open-mode=append",
                "#SBATCH --cpus-per-task=1",
                f"#SBATCH --output={tmp_path / 'job.out'}",
                f"srun {VAE_TRAIN} hydra.run.dir={run} {' '.join(args)} {extra}",
                "",
            ]
        )
    )
    return cluster.run("sbatch", "--parsable", f"--chdir={tmp_path}", str(script)).stdout.strip()


def test_a_time_limit_without_a_warning_saves_requeues_and_ends_exactly(cluster, tmp_path, helpers):
    """SLURM ends a job at its time limit with a SIGTERM (to the step and the batch shell, so two of them), then
    SIGKILL after KillWait: with no --signal to warn it, the run saves at the end of its step, requeues itself and
    resumes there; a cancelled job (scancel, also a SIGTERM) is not requeued (test_a_job_cancelled_mid_sweep_...)."""
    args = (*SMALL, "trainer.max_epochs=400")
    reference = _reference(tmp_path, *args)
    run = tmp_path / "run"
    job = _batch(
        cluster,
        tmp_path,
        run,
        args,
        "--time=00:01:00",
        extra="+callbacks.slow._target_=fault_helpers.SlowEpochs +callbacks.slow.seconds=0.25",
    )
    end = cluster.wait_gone(job, timeout=600)
    log = (tmp_path / "job.out").read_text()
    assert end["JobState"] == "COMPLETED" and int(end["Restarts"]) >= 1, (end, log[-3000:])
    assert log.count("SIGTERM: stopped") == int(end["Restarts"]), log[-3000:]
    assert log.count("SLURM has requeued the job") == int(end["Restarts"]), log[-3000:]
    assert f"it holds it for about {REQUEUE_DELAY_S} s, the cluster's cred_expire" in log  # read from the cluster
    stops = [line for line in log.splitlines() if "SIGTERM: stopped" in line]
    assert all("the exact state is in" in line for line in stops), stops
    assert reference.wait(timeout=300) == 0, reference.stderr.read()[-3000:]
    assert _metrics(run) == _metrics(tmp_path / "reference")


def test_a_warning_while_the_run_starts_requeues_and_ends_exactly(cluster, tmp_path, helpers):
    args = (*SMALL, "trainer.max_epochs=3")
    reference = _reference(tmp_path, *args)
    run = tmp_path / "run"
    job = _batch(
        cluster,
        tmp_path,
        run,
        args,
        extra="+callbacks.sig._target_=fault_helpers.SignalWhenBuilt "
        "+callbacks.sig.signum=SIGUSR1 +callbacks.sig.first_start_only=true",
    )
    end = cluster.wait_gone(job, timeout=240 + REQUEUE_DELAY_S)
    log = (tmp_path / "job.out").read_text()
    assert end["JobState"] == "COMPLETED" and end["Restarts"] == "1", (end, log[-3000:])
    assert "SIGUSR1: stopped before training; nothing was saved. SLURM has requeued the job" in log, log[-3000:]
    assert reference.wait(timeout=300) == 0, reference.stderr.read()[-3000:]
    assert _metrics(run) == _metrics(tmp_path / "reference")


def test_an_interactive_srun_is_not_requeued_and_says_so(cluster, tmp_path, helpers):
    run = tmp_path / "run"
    proc = subprocess.run(
        [
            "srun",
            "--cpus-per-task=1",
            VAE_TRAIN,
            *SMALL,
            "trainer.max_epochs=3",
            f"hydra.run.dir={run}",
            "+callbacks.sig._target_=fault_helpers.SignalAt",
            "+callbacks.sig.at=step:15",
            "+callbacks.sig.signum=SIGUSR1",
        ],
        cwd=tmp_path,
        env=cluster.env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 138, proc.stderr[-3000:]
    stopped = json.loads((run / "interrupted.json").read_text())
    assert stopped["requeued"] is False and stopped["stopped"] == "in epoch 2 at step 15"
    assert "Could not requeue the SLURM job (scontrol requeue" in proc.stdout
    assert f"Resume with: {stopped['resume']}" in proc.stdout


def test_a_job_requeued_from_outside_says_slurm_restarts_it(cluster, tmp_path):
    run = tmp_path / "run"
    script = tmp_path / "job.sh"
    script.write_text(
        "\n".join(
            [
                "#!/bin/bash",
                "#SBATCH --requeue",
                "#SBATCH --open-mode=append",
                "#SBATCH --cpus-per-task=1",
                f"#SBATCH --output={tmp_path / 'job.out'}",
                f"srun {VAE_TRAIN} hydra.run.dir={run} {' '.join(SMALL)} trainer.max_epochs=2000",
                "",
            ]
        )
    )
    job = cluster.run("sbatch", "--parsable", f"--chdir={tmp_path}", str(script)).stdout.strip()
    deadline = time.monotonic() + 120
    while not (run / "checkpoints" / "last.ckpt").exists():
        assert time.monotonic() < deadline
        time.sleep(0.5)
    cluster.run("scontrol", "requeue", job)  # what an administrator, or a preemption, does
    deadline = time.monotonic() + 60
    while not (run / "interrupted.json").exists():
        assert time.monotonic() < deadline, (tmp_path / "job.out").read_text()
        time.sleep(0.5)
    stopped = json.loads((run / "interrupted.json").read_text())
    assert stopped["signal"] == "SIGTERM" and stopped["requeued"] is True
    assert "SLURM has requeued the job: waiting for SLURM to restart it" in (run / "train.log").read_text()
    cluster.run("scancel", job)
