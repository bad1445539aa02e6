"""Files vae-cli writes are never written through links (writers/files.py: a temporary file made with O_EXCL and
O_NOFOLLOW, renamed over its destination), and the lock a vae-train holds on its run directory (cli/run_dir.py) names
its owner by process id, host and start time: a stale lock whose id now belongs to another process does not hold, a
live owner's refuses with the lock's path, and a lock that is a link or junk is replaced, never written through."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vae_cli.cli.run_dir import LOCK, claim, release
from vae_cli.errors import UserError
from vae_cli.writers.files import atomic_write, write_json

from conftest import QUIET, refused, train

TINY = ("model.hidden_dims=[8]", "model.latent_dim=2", "trainer.max_epochs=1", *QUIET)


def _start_time(pid: int) -> int:
    """Field 22 of /proc/PID/stat, read here independently of vae-cli's own reading."""
    after_name = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1]
    return int(after_name.split()[19])


@pytest.fixture
def sleeper():
    """A live process that is not a vae-train, stopped by its id at the end."""
    proc = subprocess.Popen(["sleep", "600"])
    yield proc
    proc.kill()
    proc.wait()


def _lock(run_dir: Path, **owner) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / LOCK).write_text(json.dumps(owner))
    return run_dir / LOCK


# --- atomic_write -----------------------------------------------------------------------------------------------


def test_a_link_planted_at_the_temporary_name_is_never_followed(tmp_path):
    victim, dangling = tmp_path / "victim.txt", tmp_path / "made-through-the-link"
    victim.write_text("precious")
    for target in (victim, dangling):
        dest = tmp_path / "run" / "metrics.json"
        dest.parent.mkdir(exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")  # the name atomic_write's temporary file takes
        tmp.symlink_to(target)
        write_json(dest, {"elbo": -1.0})
        assert json.loads(dest.read_text()) == {"elbo": -1.0} and not dest.is_symlink()
        assert not tmp.exists() and not tmp.is_symlink()
    assert victim.read_text() == "precious" and not dangling.exists()


def test_the_rename_replaces_a_link_at_the_destination_and_leaves_what_it_pointed_to(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    dest = tmp_path / "report.md"
    dest.symlink_to(victim)
    atomic_write(dest, lambda f: f.write(b"new"))
    assert not dest.is_symlink() and dest.read_bytes() == b"new" and victim.read_text() == "precious"


# --- the run directory's lock ----------------------------------------------------------------------------------


def test_a_lock_naming_a_live_process_holds_only_with_that_process_start_time(tmp_path, sleeper):
    start = _start_time(sleeper.pid)
    host = socket.gethostname()
    lock = _lock(tmp_path / "run", pid=sleeper.pid, host=host, start=start + 1)  # the id, now another process's
    release(claim(tmp_path / "run"))
    assert not lock.exists()

    lock = _lock(tmp_path / "run", pid=sleeper.pid, host=host, start=start, since="2026-12-04T21:00:00+00:00")
    written = lock.read_bytes()
    with pytest.raises(UserError) as e:
        claim(tmp_path / "run")
    message = str(e.value)
    assert f"process {sleeper.pid}" in message and str(lock) in message and "since 2026-12-04T21:00:00" in message
    assert "delete" in message and lock.read_bytes() == written  # refused: the owner's lock as it was


def test_the_refusal_reaches_the_user_as_one_line_naming_the_lock(tmp_path, sleeper, capsys):
    run = tmp_path / "run"
    lock = _lock(run, pid=sleeper.pid, host=socket.gethostname(), start=_start_time(sleeper.pid))
    err = refused("vae-train", *TINY, f"hydra.run.dir={run}", cwd=tmp_path, capsys=capsys)
    assert err.startswith("vae-train: error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert f"is being written by another vae-train (process {sleeper.pid})" in err and str(lock) in err
    assert json.loads(lock.read_text())["pid"] == sleeper.pid


def test_an_older_lock_holding_a_bare_process_id_still_reads(tmp_path, sleeper):
    run = tmp_path / "run"
    run.mkdir()
    (run / LOCK).write_text(str(sleeper.pid))
    with pytest.raises(UserError, match=f"process {sleeper.pid}"):
        claim(run)
    ended = subprocess.Popen(["true"])
    ended.wait()
    (run / LOCK).write_text(str(ended.pid))
    assert json.loads(claim(run).read_text())["pid"] == os.getpid()


def test_a_lock_from_another_host_holds_and_says_so(tmp_path):
    lock = _lock(tmp_path / "run", pid=os.getpid(), host="node-7", start=1)
    with pytest.raises(UserError) as e:
        claim(tmp_path / "run")
    assert "on host node-7" in str(e.value) and "cannot be checked" in str(e.value) and str(lock) in str(e.value)


def test_a_lock_from_an_earlier_start_of_this_slurm_job_does_not_hold_on_another_node(tmp_path, monkeypatch):
    _lock(tmp_path / "run", pid=os.getpid(), host="node-7", start=1, slurm_job="4242")
    for var, value in {"SLURM_NTASKS": "1", "SLURM_JOB_NAME": "train", "SLURM_JOB_ID": "4243"}.items():
        monkeypatch.setenv(var, value)  # a batch job, as SLURM starts it; another job than the lock's
    with pytest.raises(UserError, match="on host node-7"):
        claim(tmp_path / "run")
    monkeypatch.setenv("SLURM_JOB_ID", "4242")  # the same job, requeued onto this node
    assert json.loads(claim(tmp_path / "run").read_text())["slurm_job"] == "4242"


def test_the_lock_records_this_process_and_release_leaves_another_owner_lock(tmp_path):
    lock = claim(tmp_path)
    owner = json.loads(lock.read_text())
    assert owner["pid"] == os.getpid() and owner["host"] == socket.gethostname()
    assert owner["start"] == _start_time(os.getpid())
    lock.write_text(json.dumps({"pid": 1, "host": socket.gethostname(), "start": _start_time(1)}))  # taken over
    release(lock)
    assert json.loads(lock.read_text())["pid"] == 1


def test_a_lock_or_probe_that_is_a_link_is_replaced_and_never_written_through(tmp_path):
    victim, dangling = tmp_path / "victim.txt", tmp_path / "made-through-the-link"
    victim.write_text("precious")
    for target in (victim, dangling):
        run = tmp_path / f"run-{target.name}"
        run.mkdir()
        for name in (LOCK, ".vae-train.probe", f".vae-train.{os.getpid()}.probe"):  # a probe: is the folder writable
            (run / name).symlink_to(target)
        train(tmp_path, run.name, *TINY)
        assert (run / "metrics.json").is_file() and not (run / LOCK).is_symlink()
    assert victim.read_text() == "precious" and not dangling.exists()


def test_a_fifo_at_the_lock_is_not_waited_on(tmp_path):
    os.mkfifo(tmp_path / LOCK)
    script = "import sys; from pathlib import Path; from vae_cli.cli.run_dir import claim; claim(Path(sys.argv[1]))"
    subprocess.run([sys.executable, "-c", script, str(tmp_path)], check=True, timeout=60)
    assert (tmp_path / LOCK).is_file()


JUNK = st.one_of(
    st.binary(max_size=64),
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
        lambda inner: (
            st.lists(inner, max_size=3)
            | st.dictionaries(st.sampled_from(["pid", "host", "start", "since", "x"]), inner, max_size=4)
        ),
        max_leaves=8,
    ).map(lambda v: json.dumps(v).encode()),
)


@settings(derandomize=True, max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(content=JUNK)
def test_junk_in_a_lock_is_taken_over_or_refused_never_a_crash(tmp_path, content):
    (tmp_path / LOCK).write_bytes(content)
    try:
        lock = claim(tmp_path)
    except UserError as e:  # a junk lock that happens to name a live process of this host, or another host
        assert str(tmp_path / LOCK) in str(e) and "\n" not in str(e)
        assert (tmp_path / LOCK).read_bytes() == content
    else:
        assert json.loads(lock.read_text())["pid"] == os.getpid()
        release(lock)
