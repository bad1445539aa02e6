"""A real single-node SLURM for the tests: munged, slurmctld and slurmd from Debian's slurm-wlm and munge, started
on localhost from a generated slurm.conf in a temporary folder, and stopped by their process ids. Commands (sbatch,
squeue, scancel, and vae-train's launcher) find it through SLURM_CONF in the environment the tests pass on."""

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd")
REQUEUE_DELAY_S = 10  # cred_expire: how long SLURM holds a requeued job before it may start again (default 120)


def missing() -> str | None:
    """Why no cluster can be started here, or None."""
    if os.geteuid() != 0:
        return "slurmd runs jobs as their users, which needs root"
    absent = [d for d in (*DAEMONS, "sbatch") if not shutil.which(d) and not Path("/usr/sbin", d).exists()]
    if absent:
        return f"{', '.join(absent)} not installed (Debian: apt-get install slurm-wlm munge)"
    return None


def _alive(pid: int) -> bool:
    """Running (not ended, and not a zombie its parent has yet to collect)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _exe(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


class Cluster:
    def __init__(self, folder: Path):
        self.folder = folder
        self.conf = folder / "slurm.conf"
        self.host = socket.gethostname().split(".")[0]
        self.cpus = os.cpu_count() or 1
        self.mem_mb = 4000
        self.pids: dict[str, int] = {}

    @property
    def env(self) -> dict[str, str]:
        """This process's environment, as a test has set it, with the cluster's configuration."""
        env = {**os.environ, "SLURM_CONF": str(self.conf)}
        env.pop("HYDRA_FULL_ERROR", None)  # what users see: Hydra's short report of an error
        return env

    def run(self, *command: str, check: bool = True) -> subprocess.CompletedProcess:
        done = subprocess.run(command, env=self.env, capture_output=True, text=True, timeout=60)
        if check and done.returncode:
            raise RuntimeError(f"{' '.join(command)}: {done.stderr or done.stdout}")
        return done

    def start(self) -> None:
        f = self.folder
        for d in ("state", "spool"):
            (f / d).mkdir()
        key = f / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
        self.run(
            _exe("munged"),
            f"--key-file={key}",
            f"--socket={f / 'munge.sock'}",
            f"--pid-file={f / 'munged.pid'}",
            f"--log-file={f / 'munged.log'}",
            f"--seed-file={f / 'munged.seed'}",
            "--force",
        )
        self.conf.write_text(
            "\n".join(
                [
                    "ClusterName=vaecli",
                    f"SlurmctldHost={self.host}(127.0.0.1)",
                    "SlurmUser=root",
                    "SlurmdUser=root",
                    "AuthType=auth/munge",
                    "CredType=cred/munge",
                    f"AuthInfo=socket={f / 'munge.sock'},cred_expire={REQUEUE_DELAY_S}",
                    f"SlurmctldPort={_free_port()}",
                    f"SlurmdPort={_free_port()}",
                    f"StateSaveLocation={f / 'state'}",
                    f"SlurmdSpoolDir={f / 'spool'}",
                    f"SlurmctldPidFile={f / 'slurmctld.pid'}",
                    f"SlurmdPidFile={f / 'slurmd.pid'}",
                    f"SlurmctldLogFile={f / 'slurmctld.log'}",
                    f"SlurmdLogFile={f / 'slurmd.log'}",
                    "ProctrackType=proctrack/linuxproc",
                    "TaskPlugin=task/none",
                    "SchedulerType=sched/builtin",
                    "SelectType=select/cons_tres",
                    "SelectTypeParameters=CR_CPU",
                    "ReturnToService=2",
                    "MpiDefault=none",
                    "JobAcctGatherType=jobacct_gather/none",
                    "AccountingStorageType=accounting_storage/none",
                    "PlugStackConfig=/dev/null",
                    "KillWait=10",
                    "InactiveLimit=0",
                    f"NodeName={self.host} NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory={self.mem_mb} State=UNKNOWN",
                    "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP",
                    "",
                ]
            )
        )
        self.run(_exe("slurmctld"), "-f", str(self.conf), "-i")
        self.run(_exe("slurmd"), "-f", str(self.conf))
        deadline = time.monotonic() + 60
        while "idle" not in self.run("sinfo", "--noheader", "--format=%t", check=False).stdout:
            if time.monotonic() > deadline:
                raise RuntimeError("SLURM did not come up: " + (f / "slurmctld.log").read_text()[-2000:])
            time.sleep(0.5)
        self.pids = {d: int((f / f"{d}.pid").read_text()) for d in DAEMONS}  # the files go when they stop

    def stop(self) -> None:
        """Cancel what runs, then end the daemons by their process ids (killed if they do not end in 10 s)."""
        if self.pids.get("slurmctld"):
            self.run("scancel", "--user", "root", check=False)
            self.drained(30)
        for daemon in reversed(DAEMONS):
            pid = self.pids.get(daemon)
            if pid is None:
                continue
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 10
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.2)
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL) if _alive(pid) else None

    def jobs(self) -> list[str]:
        """The jobs SLURM holds: 'id state' lines."""
        return self.run("squeue", "--noheader", "--array", "--format=%i %T").stdout.split("\n")[:-1]

    def drained(self, timeout: float = 60) -> bool:
        """Whether every job has left SLURM's queue within `timeout` (a job that wrote its result still exits)."""
        deadline = time.monotonic() + timeout
        while self.jobs():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.5)
        return True

    def state(self, job_id: str) -> dict[str, str]:
        out = self.run("scontrol", "show", "job", "--oneliner", job_id, check=False).stdout
        return dict(w.split("=", 1) for w in out.split() if "=" in w)

    def wait_gone(self, job_id: str, timeout: float) -> dict[str, str]:
        """Wait until the job has ended for good (not pending or requeued again); its last state."""
        deadline = time.monotonic() + timeout
        while True:
            state = self.state(job_id)
            if state.get("JobState") in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"):
                return state
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {state.get('JobState')} after {timeout} s")
            time.sleep(1)
