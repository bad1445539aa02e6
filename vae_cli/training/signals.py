"""The signals that stop a run early: SIGINT (Ctrl-C), SIGTERM (kill, scancel, a preemption, a time limit, a
container's stop) and SIGUSR1 (what SLURM sends before a time limit, asked for with sbatch --signal=USR1@90).

A stop knows where it is: the run says which phase it is in (`phase`), and every signal is judged by it.
- starting (from the command's start to training's), or testing (the final test): at once, there is none of this
  invocation's training to save and the state it started from is on disk unchanged;
- training or validating: at the next point where the exact state can be saved (the end of the step; when the step
  was the epoch's last, or the signal came in validation, the end of the epoch);
- saving (a checkpoint being written): once it is whole;
- finished (the run's results are written): noted only; a sweep running its jobs in this process stops before the
  next one.
Signals that come while a stop is under way are the same stop: SLURM signals a job's step and its batch shell
(two SIGTERMs, about 100 ms apart), a user presses Ctrl-C twice. One that comes later than GRACE seconds after the
first abandons the stop (the user insists): at once, or, while a checkpoint is being written, once it is whole;
what the stop was to save is then lost, and the record says so.

A stop that acts at once waits for an import under way to end (it acts as the import returns): an exception raised
inside Python's import machinery can leave a module in sys.modules but not bound to its package, and a vae-train
warned by SLURM during its imports once went on to fail in numpy with a RecursionError instead of stopping.

Standard library only, so the handlers are in place before torch and Lightning are imported."""

import logging
import signal
import threading
import time
from contextlib import contextmanager

log = logging.getLogger("vae_cli")

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)
GRACE = 10.0  # seconds after a stop's first signal in which the others are the same stop
STARTING, TRAINING, VALIDATING, SAVING, TESTING, FINISHED = (
    "starting",
    "training",
    "validating",
    "saving",
    "testing",
    "finished",
)


class Interrupted(BaseException):
    """The run stopped on a signal. A BaseException, like KeyboardInterrupt, so that nothing between the
    point it is raised and the command's exit takes it for an error of the run.

    phase: where the run was; checkpoint: the exact state to resume from, when this invocation saved one; epoch
    (1-based), global_step and epoch_finished: where training stood; abandoned: a later signal ended the stop
    before it saved (its steps since the last saved state are lost)."""

    def __init__(
        self,
        signum: int,
        checkpoint=None,
        epoch: int | None = None,
        global_step: int | None = None,
        epoch_finished: bool = False,
        phase: str | None = None,
        abandoned: bool = False,
    ):
        super().__init__(signum)
        self.signum, self.checkpoint, self.epoch, self.global_step = signum, checkpoint, epoch, global_step
        self.epoch_finished, self.abandoned = epoch_finished, abandoned
        self.phase = phase or _state.phase

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def where(self) -> str:
        """Where the run stopped, in the words of its record and log."""
        if self.checkpoint and self.epoch_finished:
            return f"after epoch {self.epoch} (step {self.global_step})"
        if self.checkpoint or self.abandoned:
            return f"in epoch {self.epoch} at step {self.global_step}"
        return {
            STARTING: "before training",
            TESTING: "after training, in the final test",
            FINISHED: "after its run finished",
        }.get(self.phase, f"in {self.phase}")


class _State:
    phase = STARTING
    progress = None  # while training: () -> (epoch, 1-based, and optimiser steps taken), read when a signal comes
    signum: int | None = None  # the stop's first signal, not yet acted on
    since: float | None = None  # when it came
    abandon: int | None = None  # a later signal, waiting for a save to be whole
    deferred: "Interrupted | None" = None  # a stop waiting for an import to end


_state = _State()


def _importing(frame) -> bool:
    """Whether `frame` runs inside an import (Python's import machinery is on its stack)."""
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib"):
            return True
        frame = frame.f_back
    return False


def _redeliver(signum: int) -> None:
    """Send `signum` to the main thread every 10 ms while the stop waits: its handler raises the stop once the
    main thread is outside any import."""
    main = threading.main_thread()

    def watch():
        while _state.deferred is not None:
            signal.pthread_kill(main.ident, signum)
            time.sleep(0.01)

    threading.Thread(target=watch, name="vae-cli-stop", daemon=True).start()


def _stop(stop: "Interrupted", frame) -> None:
    """Raise `stop` now, or, inside an import, as soon as the import ends."""
    if not _importing(frame):
        _state.deferred, _state.since = None, time.monotonic()  # a delivery still on its way is the same stop
        raise stop
    waiting, _state.deferred = _state.deferred, stop
    if waiting is None:
        _redeliver(stop.signum)


def _handle(signum, frame) -> None:
    s = _state
    if s.deferred is not None:  # the stop's own delivery once the import ended, or another signal meanwhile
        _stop(s.deferred, frame)
        return
    if s.phase == FINISHED:
        s.signum = s.signum or signum
        return
    if s.signum is not None:  # a stop is under way
        if time.monotonic() - s.since < GRACE:
            return  # the same stop
        if s.phase == SAVING:
            s.abandon = signum  # once the checkpoint being written is whole
            return
        raise _abandoned(signum)
    s.signum, s.since = signum, time.monotonic()
    if s.phase in (TRAINING, VALIDATING):
        log.info(
            "received %s: stopping at the end of this %s",
            signal.Signals(signum).name,
            "step" if s.phase == TRAINING else "epoch",
        )
        return
    if s.phase == SAVING:
        return  # acted on by the training phase the save belongs to
    _stop(Interrupted(signum), frame)


def catch() -> None:
    """Handle the stop signals here from now on (again: Lightning puts handlers of its own in place while it
    fits and tests). Only the main thread may set handlers; elsewhere (a test calling the command from a
    thread) the signals keep theirs."""
    if threading.current_thread() is threading.main_thread():
        for signum in SIGNALS:
            signal.signal(signum, _handle)


def _abandoned(signum: int) -> Interrupted:
    epoch, step = _state.progress() if _state.progress else (None, None)
    return Interrupted(signum, epoch=epoch, global_step=step, abandoned=_state.progress is not None)


def enter(phase: str, progress=None) -> None:
    """The run is now in `phase`; while training, progress() says where (epoch, 1-based, and steps taken). A stop
    noted in a phase that saves nothing acts when the run enters one that cannot wait (testing)."""
    deferred, _state.deferred = _state.deferred, None
    if deferred is not None:  # a stop of the phase that ends here, waiting for an import: it acts now
        raise deferred
    _state.phase = phase
    _state.progress = progress if phase in (TRAINING, VALIDATING) else None
    catch()
    if phase == TESTING and _state.signum is not None:
        raise Interrupted(_state.signum)


@contextmanager
def saving():
    """A checkpoint is being written: a signal that would abandon the stop waits until it is whole."""
    before = _state.phase
    _state.phase = SAVING
    try:
        yield
    finally:
        _state.phase = before
        abandon, _state.abandon = _state.abandon, None
        if abandon is not None:
            raise _abandoned(abandon)


def phase() -> str:
    return _state.phase


def pending() -> int | None:
    """The signal noted and not yet acted on, if any."""
    return _state.signum


def ignore() -> None:
    """From here to the process's end the stop signals are ignored: the command's work is done. (Python puts the
    default action back for signals with a handler of its own while it shuts down, and SLURM's warning could
    then end a finished job as killed.)"""
    if threading.current_thread() is threading.main_thread():
        for signum in SIGNALS:
            signal.signal(signum, signal.SIG_IGN)


def finished() -> None:
    """From here a signal is noted and stops nothing of this run: its results are written, or its stop is being
    recorded (where a requeued SLURM job gets SLURM's SIGTERM). A signal noted from here on stops the next run in
    this process before it begins; the one this run has acted on does not."""
    _state.phase, _state.signum, _state.abandon, _state.deferred = FINISHED, None, None, None


def reset() -> None:
    """A new run in this process (a sweep runs its jobs one after another in one process); a signal that came
    after the previous run's results were written stops it before it begins."""
    after_a_run = _state.signum if _state.phase == FINISHED else None
    _state.phase, _state.progress = STARTING, None
    _state.signum = _state.since = _state.abandon = _state.deferred = None
    if after_a_run:
        raise Interrupted(after_a_run)
