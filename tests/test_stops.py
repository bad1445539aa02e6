"""A stop knows where it is (training/signals.py): signals that come while a stop is under way are the same stop,
a later one abandons it only once what is being written is whole, and the record always says where the run
stopped and what was lost. Real signals, sent to this process by the run's own callbacks."""

import importlib
import json
import signal
import sys
import time
import traceback
from pathlib import Path

import pytest
import torch

from vae_cli.training import signals

from conftest import SMALL, run_here, train

RUN = (*SMALL, "seed=4")  # 11 steps an epoch


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    return train(tmp_path_factory.mktemp("u"), "run", *RUN)


def _stopped(tmp_path, *args) -> int:
    with pytest.raises(SystemExit) as e:
        run_here("vae-train", *RUN, f"hydra.run.dir={tmp_path / 'run'}", *args, cwd=tmp_path)
    return e.value.code


@pytest.mark.parametrize(
    "signum, at, step, stopped",
    [
        ("SIGUSR1", "step:16", 16, "in epoch 2 at step 16"),
        ("SIGINT", "step:22", 22, "after epoch 2 (step 22)"),
        ("SIGTERM", "validation:1", 11, "after epoch 1 (step 11)"),
    ],
)
def test_two_signals_50_ms_apart_are_one_stop_that_saves_and_resumes_exactly(
    helpers, tmp_path, uninterrupted, signum, at, step, stopped
):
    code = _stopped(
        tmp_path,
        "+callbacks.sig._target_=fault_helpers.SignalTwiceAt",
        f"+callbacks.sig.at={at}",
        f"+callbacks.sig.signum={signum}",
        "+callbacks.sig.gap=0.05",
    )
    run = tmp_path / "run"
    record = json.loads((run / "interrupted.json").read_text())
    assert code == 128 + getattr(__import__("signal"), signum)
    assert (record["stopped"], record["global_step"], record["lost"]) == (stopped, step, None)
    assert torch.load(run / "checkpoints" / "interrupted.ckpt", weights_only=True)["global_step"] == step
    assert not (run / ".vae-train.lock").exists()
    run_here("vae-train", *RUN, f"ckpt_path={run}", cwd=tmp_path)
    assert json.loads((run / "metrics.json").read_text()) == json.loads((uninterrupted / "metrics.json").read_text())


def test_a_signal_while_the_run_is_built_records_before_training_and_releases_the_lock(helpers, tmp_path):
    code = _stopped(tmp_path, "+callbacks.sig._target_=fault_helpers.SignalWhenBuilt", "+callbacks.sig.signum=SIGUSR1")
    run = tmp_path / "run"
    record = json.loads((run / "interrupted.json").read_text())
    assert code == 138 and record["stopped"] == "before training" and record["checkpoint"] is None
    assert "before training" in (run / "train.log").read_text()
    assert not (run / ".vae-train.lock").exists() and not (run / "checkpoints" / "interrupted.ckpt").exists()


def test_a_signal_after_the_grace_abandons_the_stop_and_the_record_says_what_was_lost(helpers, tmp_path, monkeypatch):
    monkeypatch.setattr(signals, "GRACE", 0.2)
    code = _stopped(
        tmp_path,
        "+callbacks.sig._target_=fault_helpers.SignalInsistingAt",
        "+callbacks.sig.at=step:16",
        "+callbacks.sig.signum=SIGINT",
        "+callbacks.sig.after=0.5",
    )
    run = tmp_path / "run"
    record = json.loads((run / "interrupted.json").read_text())
    assert code == 130 and record["stopped"] == "in epoch 2 at step 16"
    assert record["checkpoint"].endswith("last.ckpt")  # the end of epoch 1: the state it resumes from
    assert record["lost"] == "steps 12 to 16 of training (epoch 2), which no checkpoint holds"
    assert not (run / "checkpoints" / "interrupted.ckpt").exists()


def test_an_abandon_waits_until_the_checkpoint_being_written_is_whole(helpers, tmp_path, monkeypatch):
    import os
    import signal

    from vae_cli.training import checkpointing

    monkeypatch.setattr(signals, "GRACE", 0.0)
    real = checkpointing.atomic_write

    def insisting(path, write, fsync=False):  # the user's second Ctrl-C arrives while interrupted.ckpt is written
        if path.name == "interrupted.ckpt":
            os.kill(os.getpid(), signal.SIGINT)
        return real(path, write, fsync)

    monkeypatch.setattr(checkpointing, "atomic_write", insisting)
    code = _stopped(
        tmp_path,
        "+callbacks.sig._target_=fault_helpers.SignalAt",
        "+callbacks.sig.at=step:16",
        "+callbacks.sig.signum=SIGINT",
    )
    run = tmp_path / "run"
    saved = torch.load(run / "checkpoints" / "interrupted.ckpt", weights_only=True)  # whole: it loads
    record = json.loads((run / "interrupted.json").read_text())
    assert code == 130 and saved["global_step"] == 16 and record["global_step"] == 16


# The stop's state machine itself, one signal at a time, in this process: each rule of the module's docstring.


@pytest.fixture
def state(monkeypatch):
    import signal

    before = {s: signal.getsignal(s) for s in signals.SIGNALS}
    clock = [100.0]
    monkeypatch.setattr(signals.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(signals, "_state", signals._State())
    yield clock
    for s, handler in before.items():
        signal.signal(s, handler)


def test_a_signal_before_training_stops_at_once_and_says_so(state):
    with pytest.raises(signals.Interrupted) as e:
        signals._handle(15, None)
    assert (e.value.signum, e.value.phase, e.value.where, e.value.abandoned) == (
        15,
        "starting",
        "before training",
        False,
    )
    assert e.value.name == "SIGTERM" and e.value.checkpoint is None and e.value.epoch is None


@pytest.mark.parametrize("phase, until", [(signals.TRAINING, "step"), (signals.VALIDATING, "epoch")])
def test_a_signal_in_training_is_noted_and_a_second_within_the_grace_is_the_same_stop(state, caplog, phase, until):
    import logging

    signals.enter(phase, progress=lambda: (3, 120))
    with caplog.at_level(logging.INFO, logger="vae_cli"):
        assert signals._handle(10, None) is None
    assert caplog.messages == [f"received SIGUSR1: stopping at the end of this {until}"]
    state[0] += signals.GRACE - 0.001
    assert signals._handle(2, None) is None
    assert signals.pending() == 10  # the stop's first signal, not the second


def test_a_signal_after_the_grace_abandons_the_stop_where_training_stood(state):
    signals.enter(signals.TRAINING, progress=lambda: (3, 120))
    signals._handle(10, None)
    state[0] += signals.GRACE
    with pytest.raises(signals.Interrupted) as e:
        signals._handle(2, None)
    assert (e.value.signum, e.value.epoch, e.value.global_step, e.value.abandoned) == (2, 3, 120, True)
    assert e.value.where == "in epoch 3 at step 120" and e.value.phase == signals.TRAINING


def test_an_abandon_while_saving_waits_for_the_save_and_a_first_signal_there_waits_for_training(state):
    signals.enter(signals.TRAINING, progress=lambda: (1, 7))
    with pytest.raises(signals.Interrupted) as e:
        with signals.saving():
            assert signals.phase() == signals.SAVING
            assert signals._handle(15, None) is None  # the first: left to the training phase
            state[0] += signals.GRACE + 1
            assert signals._handle(2, None) is None  # the insisting one: once the checkpoint is whole
            assert signals.phase() == signals.SAVING
    assert (e.value.signum, e.value.abandoned, e.value.global_step) == (2, True, 7)
    assert signals.phase() == signals.TRAINING


def test_a_stop_noted_where_nothing_is_saved_acts_when_testing_begins(state):
    signals.enter(signals.VALIDATING, progress=lambda: (2, 5))
    signals._handle(15, None)
    with pytest.raises(signals.Interrupted) as e:
        signals.enter(signals.TESTING)
    assert (e.value.signum, e.value.phase, e.value.where) == (15, "testing", "after training, in the final test")
    assert signals._state.progress is None


def test_signals_after_a_run_finished_stop_only_the_next_run_with_the_first_of_them(state):
    signals.finished()
    assert signals._handle(10, None) is None
    assert signals._handle(15, None) is None
    assert signals.pending() == 10
    with pytest.raises(signals.Interrupted) as e:
        signals.reset()
    assert e.value.signum == 10 and signals.phase() == signals.STARTING and signals.pending() is None
    signals.reset()  # nothing noted since: nothing raised


def test_entering_a_phase_puts_the_handlers_in_place_and_ignore_takes_them_away(state):
    import signal

    for s in signals.SIGNALS:
        signal.signal(s, signal.SIG_DFL)
    signals.enter(signals.STARTING, progress=lambda: (1, 1))
    assert signals._state.progress is None  # progress means something only while training
    assert all(signal.getsignal(s) is signals._handle for s in signals.SIGNALS)
    signals.ignore()
    assert all(signal.getsignal(s) is signal.SIG_IGN for s in signals.SIGNALS)


def test_a_second_signal_after_the_grace_of_a_stop_before_training_abandons_nothing(state):
    with pytest.raises(signals.Interrupted):
        signals._handle(2, None)
    state[0] += signals.GRACE
    with pytest.raises(signals.Interrupted) as e:  # while the first stop's record is written, say
        signals._handle(2, None)
    assert (e.value.epoch, e.value.global_step, e.value.abandoned, e.value.where) == (
        None,
        None,
        False,
        "before training",
    )


def test_a_stop_with_a_checkpoint_is_after_its_epoch_only_when_the_epoch_finished(state):
    assert signals.Interrupted(15, checkpoint="c", epoch=2, global_step=9).where == "in epoch 2 at step 9"
    stopped = signals.Interrupted(15, checkpoint="c", epoch=2, global_step=9, epoch_finished=True)
    assert stopped.where == "after epoch 2 (step 9)"


def test_a_stop_acted_on_in_training_does_not_stop_the_next_run(state):
    signals.enter(signals.TRAINING, progress=lambda: (1, 1))
    signals._handle(15, None)
    signals.reset()  # the stopped run's signal was its own
    assert signals.pending() is None and signals.phase() == signals.STARTING


def test_a_stop_inside_an_import_waits_for_the_import_to_end(state, modules):
    """A real SIGUSR1 sent by a module's own body while it is imported: the module is imported whole (bound to its
    package) and the stop comes right after, before training, instead of leaving the package half set up."""
    modules(
        {
            "stoppkg/__init__.py": "",
            "stoppkg/child.py": f"{SIGNAL_SELF}for _ in range(10_000):\n    pass\ndone = True\n",
        }
    )
    with pytest.raises(signals.Interrupted) as e:
        importlib.import_module("stoppkg.child")
        time.sleep(5)  # the stop comes here, once the import has ended
    child = sys.modules["stoppkg.child"]
    assert child.done is True and sys.modules["stoppkg"].child is child
    assert (e.value.signum, e.value.where) == (10, "before training")
    assert _outside_imports(e.value)


def test_a_stop_waiting_for_an_import_acts_when_the_next_phase_begins(state):
    signals._state.deferred = signals.Interrupted(15)
    with pytest.raises(signals.Interrupted) as e:
        signals.enter(signals.TRAINING, progress=lambda: (1, 0))
    assert e.value.where == "before training" and signals.phase() == signals.STARTING
    signals.enter(signals.TRAINING, progress=lambda: (1, 0))  # acted on once only
    assert signals.phase() == signals.TRAINING


@pytest.mark.slow  # real vae-train processes, one for each moment tried
def test_a_signal_at_any_moment_of_a_run_stops_it_cleanly(tmp_path_factory):
    """SIGUSR1 at a generated moment of a short run, from the moment the command handles it (its first line, about
    0.2 s after the interpreter starts) through the imports, Hydra, the data, the model and training to its end:
    the run stops where it is and says so (exit 138) or has finished (exit 0); never a bug."""
    import subprocess

    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from conftest import QUIET, SMALL_NET, _exe

    @settings(max_examples=8, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
    @given(st.floats(0.0, 10.0))
    def stop_at(seconds):
        work = tmp_path_factory.mktemp("at")
        proc = subprocess.Popen(
            [_exe("vae-train"), *SMALL_NET, *QUIET, "trainer.max_epochs=2", f"hydra.run.dir={work / 'run'}"],
            cwd=work,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        while not _catches_usr1(proc.pid) and proc.poll() is None:  # the interpreter's own start-up comes first
            time.sleep(0.001)
        time.sleep(seconds)
        proc.send_signal(signal.SIGUSR1)
        out, err = proc.communicate(timeout=300)
        assert proc.returncode in (0, 138), (seconds, proc.returncode, err[-3000:])
        assert "bug" not in err and "Traceback" not in err, (seconds, err[-3000:])
        if proc.returncode == 138:
            assert "SIGUSR1" in err + out, (seconds, err[-3000:])

    stop_at()


def _catches_usr1(pid: int) -> bool:
    """Whether process `pid` has a handler of its own for SIGUSR1 (the SigCgt mask of /proc/PID/status)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    caught = next((int(line.split()[1], 16) for line in status.splitlines() if line.startswith("SigCgt")), 0)
    return bool(caught & (1 << (signal.SIGUSR1 - 1)))


def test_a_stop_waits_for_a_second_import_that_begins_before_it_acts(state, modules):
    """The first import's body signals; the next one begins right after it (before the next delivery, 10 ms on,
    almost always): the stop acts after the second, and in any case outside both."""
    modules(
        {
            "first.py": f"{SIGNAL_SELF}done = True\n",
            "second.py": "import time\nfor _ in range(200):\n    time.sleep(0.001)\ndone = True\n",
        }
    )
    with pytest.raises(signals.Interrupted) as e:
        importlib.import_module("first")
        importlib.import_module("second")
        time.sleep(5)
    assert sys.modules["first"].done and sys.modules.get("second", sys.modules["first"]).done
    assert _outside_imports(e.value)


SIGNAL_SELF = "import os, signal\nos.kill(os.getpid(), signal.SIGUSR1)\n"  # a module body's first lines


@pytest.fixture
def modules(tmp_path, monkeypatch):
    """Write modules ({relative path: source}) to an importable folder, with the stop signals handled here; each
    is forgotten afterwards."""
    written = []

    def write(sources: dict[str, str]) -> None:
        for name, source in sources.items():
            (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / name).write_text(source)
            written.append(name.removesuffix(".py").removesuffix("/__init__").replace("/", "."))
        monkeypatch.syspath_prepend(str(tmp_path))
        signals.catch()

    yield write
    for name in written:
        sys.modules.pop(name, None)


def _outside_imports(stop: BaseException) -> bool:
    """Whether `stop` was raised outside Python's import machinery (none of its frames on the traceback)."""
    return all(not f.filename.startswith("<frozen importlib") for f in traceback.extract_tb(stop.__traceback__))
