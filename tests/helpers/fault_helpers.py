"""Faults injected from inside a run: callbacks that a user (or a test) adds to vae-train with
+callbacks.<name>._target_=fault_helpers.<Class> on the command line, which Hydra instantiates (a class named on the
command line is the user's own choice; vae_cli/inputs.py's allowlist is for classes named in files).

Imported by the vae-train processes the tests start, in this process and as subprocesses or SLURM jobs: the
`helpers` fixture (tests/conftest.py) puts this folder, tests/helpers, on sys.path and, by its absolute path, on
PYTHONPATH, which every process started from the test inherits (sbatch exports it to the job, srun to its tasks).
Only the modules here are put on that path, not the tests themselves."""

import os
import shutil
import signal
import subprocess
import threading
import time

import pytorch_lightning as pl
import torch


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
            if (
                subprocess.run(["mount", "-o", "remount,ro", self.mount], capture_output=True, check=False).returncode
                == 0
            ):
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
