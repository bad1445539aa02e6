"""The signals that stop a run early: SIGINT (Ctrl-C), SIGTERM (kill, scancel, a preemption, a container's stop)
and SIGUSR1 (what SLURM sends before a time limit, asked for with sbatch --signal=USR1@90).

A signal is noted when it arrives and acted on where the run is:
- while training (between Lightning's train start and train end, training/interruption.py), at the next point
  where the exact state can be saved: the end of the step, or, when the step was the epoch's last, the end of the
  epoch (after its validation and checkpoints);
- anywhere else before the run's results are written (start-up, loading data, the final test), at once: there is
  none of this invocation's training to save, and the state it started from is on disk unchanged;
- once the run's results are written, not in that run: a sweep running its jobs in this process stops before the
  next one.
A second signal while a stop is pending stops at once.

Standard library only, so the handlers are in place before torch and Lightning are imported."""
import logging
import signal
import threading

log = logging.getLogger("vae_cli")

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)


class Interrupted(BaseException):
    """The run stopped on a signal. A BaseException, like KeyboardInterrupt, so that nothing between the
    point it is raised and the command's exit takes it for an error of the run.

    checkpoint: the exact state to resume from, when this invocation saved one; epoch (1-based), global_step and
    epoch_finished: where training stood when it was saved."""

    def __init__(self, signum: int, checkpoint=None, epoch: int | None = None, global_step: int | None = None,
                 epoch_finished: bool = False):
        super().__init__(signum)
        self.signum, self.checkpoint, self.epoch, self.global_step = signum, checkpoint, epoch, global_step
        self.epoch_finished = epoch_finished
        self.where: str | None = None  # for a stop with nothing saved: before training, or in the final test

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name


class _Noted:
    signum: int | None = None  # the first signal not yet acted on
    training = False  # a stop waits for the end of the step
    finished = False  # the run's results are written: signals are ignored


_noted = _Noted()


def _handle(signum, frame) -> None:
    if _noted.finished:
        _noted.signum = _noted.signum or signum
        return
    if _noted.training and _noted.signum is None:
        _noted.signum = signum
        log.info("received %s: stopping at the end of this step", signal.Signals(signum).name)
        return
    raise Interrupted(signum)


def catch() -> None:
    """Handle the stop signals here from now on (again: Lightning puts handlers of its own in place while it
    fits and tests). Only the main thread may set handlers; elsewhere (a test calling the command from a
    thread) the signals keep theirs."""
    if threading.current_thread() is threading.main_thread():
        for signum in SIGNALS:
            signal.signal(signum, _handle)


def start(training: bool) -> None:
    """Training starts (True): signals wait for the end of the step. Or it ended (False): they act at once."""
    _noted.training = training
    catch()


def pending() -> int | None:
    """The signal noted and not yet acted on, if any."""
    return _noted.signum


def ignore() -> None:
    """From here to the process's end the stop signals are ignored: the command's work is done. (Python puts the
    default action back for signals with a handler of its own while it shuts down, and SLURM's warning could
    then end a finished job as killed.)"""
    if threading.current_thread() is threading.main_thread():
        for signum in SIGNALS:
            signal.signal(signum, signal.SIG_IGN)


def finished() -> None:
    """From here a signal is noted and stops nothing of this run: its results are written, or its stop is being
    recorded (where a requeued SLURM job gets SLURM's SIGTERM)."""
    _noted.finished = True


def reset() -> None:
    """A new run in this process (a sweep runs its jobs one after another in one process); a signal that came
    after the previous run's results were written stops it before it begins."""
    after_a_run = _noted.signum if _noted.finished else None
    _noted.signum, _noted.training, _noted.finished = None, False, False
    if after_a_run:
        raise Interrupted(after_a_run)
