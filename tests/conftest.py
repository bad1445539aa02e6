"""Helpers for running the commands as users do. Most tests run a command in this process (its real
Hydra entry point, with sys.argv set: the same config composition, run directory and log file, without
paying for a new Python process); tests of an entry point's process contract (exit status, what
reaches stderr, signals, several processes) run it as a subprocess."""
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

# Short runs with quiet output; every test writes only under its own tmp_path.
QUIET = ["trainer.enable_progress_bar=false", "trainer.enable_model_summary=false"]
os.environ.setdefault("HYDRA_FULL_ERROR", "1")  # an in-process run that fails shows its whole traceback


def _exe(tool: str) -> str:
    exe = Path(sys.executable).parent / tool
    found = str(exe) if exe.exists() else shutil.which(tool)
    if not found:
        pytest.fail(f"{tool} is not installed: run `pip install -e '.[test]'` first")
    return found


def run_tool(tool: str, *args: str, cwd: Path, check: bool = True, timeout: int = 300,
             warnings: bool = True) -> subprocess.CompletedProcess:
    """Run one of the installed console scripts in a new process, as a user would (warnings=True: with
    Python's warnings shown, as a user sees them)."""
    env = {**os.environ}
    env.pop("HYDRA_FULL_ERROR", None)
    env.pop("PYTHONWARNINGS", None) if warnings else env.update(PYTHONWARNINGS="ignore")
    proc = subprocess.run([_exe(tool), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        pytest.fail(f"{tool} {' '.join(args)} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def run_vae_train(*args: str, cwd: Path, check: bool = True, timeout: int = 300,
                  warnings: bool = True) -> subprocess.CompletedProcess:
    return run_tool("vae-train", *args, cwd=cwd, check=check, timeout=timeout, warnings=warnings)


def run_here(tool: str, *args: str, cwd: Path) -> None:
    """Run a command's Hydra entry point in this process, as `tool ARGS` typed in `cwd`."""
    from vae_cli.cli import evaluate, sample, train

    main = {"vae-train": train.main, "vae-eval": evaluate.main, "vae-sample": sample.main}[tool]
    argv, here = sys.argv, os.getcwd()
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)}
    sys.argv = [tool, *args]
    os.chdir(cwd)
    try:
        main()
    finally:
        sys.argv = argv
        os.chdir(here)
        for s, handler in handlers.items():  # a command's own, for the rest of its process, not for pytest's
            signal.signal(s, handler)


def train(tmp_path: Path, name: str, *args: str) -> Path:
    """vae-train ARGS in this process, into the run directory tmp_path/name; returns that directory."""
    run_here("vae-train", *args, *QUIET, f"hydra.run.dir={tmp_path / name}", cwd=tmp_path)
    return tmp_path / name


def compose(config_name: str, *overrides: str):
    """The config a command composes from these overrides, without running it (so without Hydra's
    run directory: vae-train's run_dir is set to a placeholder)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module

    placeholder = ["run_dir=/nonexistent/run"] if config_name == "train" else []
    with initialize_config_module("vae_cli.configs", version_base="1.3"):
        return hydra_compose(config_name, overrides=[*placeholder, *overrides])


def read_scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar in the run directory's TensorBoard event files: tag -> [(step, value)]."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out: dict[str, list[tuple[int, float]]] = {}
    for f in sorted(run_dir.glob("events.out.tfevents.*")):
        acc = EventAccumulator(str(f))
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            out.setdefault(tag, []).extend((e.step, e.value) for e in acc.Scalars(tag))
    return out


@pytest.fixture(scope="session")
def trained_digits_run(tmp_path_factory) -> Path:
    """The default run: the default model trained for 100 epochs on digits, seed 0."""
    return train(tmp_path_factory.mktemp("trained"), "run", "trainer.max_epochs=100", "seed=0")


def refused(tool, *args, cwd, capsys) -> str:
    """A command run in this process that stops on a user error: exit status 2; what it printed to stderr."""
    with pytest.raises(SystemExit) as e:
        run_here(tool, *args, cwd=cwd)
    assert e.value.code == 2
    return capsys.readouterr().err


# Faults injected from inside a run: callbacks that a user (or a test) can add with
# +callbacks.<name>._target_=fault_helpers.<Class>, which Hydra instantiates.
HELPERS = '''
import os, shutil, signal, subprocess, time
import torch
import pytorch_lightning as pl

class AtStep(pl.Callback):
    def __init__(self, step):
        self.step = step
    def on_train_batch_end(self, trainer, pl_module, *args):
        if trainer.global_step == self.step:
            self.act(pl_module)

class KillAtStep(AtStep):
    def act(self, pl_module):
        os.kill(os.getpid(), signal.SIGKILL)

class SignalAtStep(AtStep):
    def __init__(self, step, signum):
        super().__init__(step)
        self.signum = signum
    def act(self, pl_module):
        os.kill(os.getpid(), getattr(signal, self.signum))

class SignalAt(pl.Callback):
    """Sends this process a signal at one point of the run: at="step:N" after training step N, "validation:E" in
    the validation of epoch E (1-based), "setup" when fit begins (before training), "test" in the final test;
    rank=R: only in that process of a data-parallel run."""
    def __init__(self, at, signum, rank=None):
        self.at, self.signum, self.rank = at, getattr(signal, signum), rank
        self.global_rank = 0
    def _send(self, here):
        if here == self.at and self.rank in (None, self.global_rank):
            os.kill(os.getpid(), self.signum)
    def setup(self, trainer, pl_module, stage):
        self.global_rank = trainer.global_rank
        if stage == "fit":
            self._send("setup")
    def on_train_batch_end(self, trainer, *args):
        self._send(f"step:{trainer.global_step}")
    def on_validation_batch_end(self, trainer, *args):
        if not trainer.sanity_checking:
            self._send(f"validation:{trainer.current_epoch + 1}")
    def on_test_batch_end(self, trainer, *args):
        self._send("test")

class SignalTwiceAt(SignalAt):
    """SignalAt, and the same signal again `gap` seconds later from another thread: what SLURM does at a time limit
    (it signals the job's step and its batch shell), or a user pressing Ctrl-C twice."""
    def __init__(self, at, signum, gap, rank=None):
        super().__init__(at, signum, rank)
        self.gap = gap
    def _send(self, here):
        if here == self.at and self.rank in (None, self.global_rank):
            import threading
            os.kill(os.getpid(), self.signum)
            threading.Timer(self.gap, os.kill, (os.getpid(), self.signum)).start()
            time.sleep(2 * self.gap)  # the second arrives while this step is still running

class SignalInsistingAt(SignalAt):
    """SignalAt, then the same signal again `after` seconds later, in the same step: a user who does not wait."""
    def __init__(self, at, signum, after):
        super().__init__(at, signum)
        self.after = after
    def _send(self, here):
        if here == self.at:
            os.kill(os.getpid(), self.signum)
            time.sleep(self.after)
            os.kill(os.getpid(), self.signum)

class SignalWhenBuilt(pl.Callback):
    """A signal while vae-train builds the run (loading data, making the model), before training starts; under
    SLURM, first_start_only: in the job's first start only (SLURM_RESTART_COUNT unset or 0)."""
    def __init__(self, signum, first_start_only=False):
        if not first_start_only or os.environ.get("SLURM_RESTART_COUNT", "0") in ("", "0"):
            os.kill(os.getpid(), getattr(signal, signum))

class SlowAfterRequeue(pl.Callback):
    """A machine too busy to record its stop before SLURM's SIGTERM arrives: the requeue (vae_cli.cli.slurm's,
    real) is followed by `seconds` of waiting, inside which SLURM ends the job's processes with a SIGTERM."""
    def __init__(self, seconds):
        from vae_cli.cli import slurm
        real = slurm.requeue
        def requeue():
            done = real()
            time.sleep(seconds)
            return done
        slurm.requeue = requeue

class SlowEpochs(pl.Callback):
    """A slower machine: `seconds` of waiting after each training epoch, so a job outlasts a SLURM time slot however
    fast the machine is (the numbers trained are unchanged)."""
    def __init__(self, seconds):
        self.seconds = seconds
    def on_train_epoch_end(self, trainer, pl_module):
        time.sleep(self.seconds)

class FillDiskAtStep(AtStep):
    def __init__(self, step, path):
        super().__init__(step)
        self.path = path
    def act(self, pl_module):
        try:
            with open(self.path, "wb") as f:
                while True:
                    f.write(bytes(4096))
                    f.flush()
        except OSError:
            pass

class RemountReadOnlyAtStep(AtStep):
    def __init__(self, step, mount):
        super().__init__(step)
        self.mount = mount
    def act(self, pl_module):
        for _ in range(100):  # busy for the moment TensorBoard's thread has its file open
            if subprocess.run(["mount", "-o", "remount,ro", self.mount], capture_output=True).returncode == 0:
                return
            time.sleep(0.05)
        raise RuntimeError(f"could not remount {self.mount} read-only")

class RemoveAtStep(AtStep):
    def __init__(self, step, path):
        super().__init__(step)
        self.path = path
    def act(self, pl_module):
        shutil.rmtree(self.path)

class RemoveBeforeCheckpoints(pl.Callback):  # at the end of the second epoch's validation
    def __init__(self, path):
        self.path = path
    def on_validation_end(self, trainer, *args):
        if not trainer.sanity_checking and trainer.current_epoch == 1:
            shutil.rmtree(self.path)

class PoisonDecoderAtStep(AtStep):
    def act(self, pl_module):
        with torch.no_grad():
            pl_module.vae.decoder.net[-1].weight.fill_(float("nan"))
'''


@pytest.fixture
def helpers(tmp_path, monkeypatch):
    (tmp_path / "fault_helpers.py").write_text(HELPERS)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.syspath_prepend(str(tmp_path))  # for runs in this process
    return tmp_path


@pytest.fixture
def small_filesystem(tmp_path):
    """A real 3 MB file system (tmpfs), where this machine lets the tests mount one."""
    mount = tmp_path / "fs"
    mount.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip() or proc.returncode})")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def remount(mount: Path, mode: str) -> None:
    """The file system at `mount` made read-only (mode "ro") or writable again ("rw")."""
    subprocess.run(["mount", "-o", f"remount,{mode}", str(mount)], check=True, capture_output=True)
