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
# The small run of the tests that stop, signal, kill or resume vae-train (and of test_slurm's jobs): a network of 16
# hidden units and 3 latents, 3 epochs of 11 steps each (digits' 1,350 training images in batches of 128).
SMALL_NET = ("model.hidden_dims=[16]", "model.latent_dim=3")
SMALL = (*SMALL_NET, "trainer.max_epochs=3", *QUIET)
os.environ.setdefault("HYDRA_FULL_ERROR", "1")  # an in-process run that fails shows its whole traceback
CHECKOUT = Path(__file__).resolve().parent.parent


# -- Nothing is written into the checkout --------------------------------------------------------------------------
# The tests run in a folder of the session's (a command's relative paths, e.g. digits' data_dir=data and its prepared
# splits in data/vae-cli-cache, land there), Hypothesis keeps its caches in the user's cache folder (pytest_configure),
# and a check at the end of the session fails it when the checkout gained a file or folder. What tools write by
# themselves is not counted: Python's bytecode (__pycache__), pytest's cache (.pytest_cache), git's files, and
# virtual environments.
TOOLS_OWN = {".git", "__pycache__", ".pytest_cache"}
_CHECKOUT_BEFORE = pytest.StashKey[set]()
_CHECKOUT_GAINED = pytest.StashKey[list]()


def checkout_paths(root: Path = CHECKOUT, skip: Path | None = None) -> set[str]:
    """Every file and folder under `root`, relative to it, but the tools' own (TOOLS_OWN, virtual environments) and
    `skip` (pytest's --basetemp, when given inside the checkout)."""
    found = set()
    for folder, dirs, files in os.walk(root):
        dirs[:] = [
            d
            for d in dirs
            if d not in TOOLS_OWN
            and not (Path(folder, d) / "pyvenv.cfg").exists()
            and (skip is None or Path(folder, d).resolve() != skip)
        ]
        found.update(os.path.relpath(os.path.join(folder, name), root) for name in (*dirs, *files))
    return found


def _basetemp(config) -> Path | None:
    return Path(config.option.basetemp).resolve() if config.option.basetemp else None


def pytest_sessionstart(session):
    session.config.stash[_CHECKOUT_BEFORE] = checkout_paths(skip=_basetemp(session.config))


def pytest_sessionfinish(session, exitstatus):
    before = session.config.stash.get(_CHECKOUT_BEFORE, None)
    if before is None:
        return
    gained = sorted(checkout_paths(skip=_basetemp(session.config)) - before)
    session.config.stash[_CHECKOUT_GAINED] = gained
    if gained:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    gained = config.stash.get(_CHECKOUT_GAINED, [])
    if gained:
        terminalreporter.write_sep("=", "FAILED: files written into the checkout", red=True)
        terminalreporter.write_line(f"The tests wrote into the checkout {CHECKOUT}; a test writes under its tmp_path:")
        for p in gained[:20]:
            terminalreporter.write_line(f"  {p}")
        if len(gained) > 20:
            terminalreporter.write_line(f"  ... and {len(gained) - 20} more")


def pytest_configure(config):
    """Hypothesis keeps its caches (the Unicode tables text strategies draw from, a few seconds to build; the
    constants it reads from the code) outside the checkout: in HYPOTHESIS_STORAGE_DIRECTORY when set, else in the
    user's cache folder, so that later sessions find them. Set before collection, where Hypothesis first writes."""
    from hypothesis.configuration import set_hypothesis_home_dir

    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "vae-cli-tests" / "hypothesis"
    set_hypothesis_home_dir(os.environ.get("HYPOTHESIS_STORAGE_DIRECTORY") or cache)


@pytest.fixture(scope="session", autouse=True)
def outside_the_checkout(tmp_path_factory):
    """Every test starts in a folder of the session's, not where pytest was started (the checkout)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp_path_factory.mktemp("cwd"))
        yield


def _exe(tool: str) -> str:
    exe = Path(sys.executable).parent / tool
    found = str(exe) if exe.exists() else shutil.which(tool)
    if not found:
        pytest.fail(f"{tool} is not installed: run `pip install -e '.[test]'` first")
    return found


def run_tool(
    tool: str, *args: str, cwd: Path, check: bool = True, timeout: int = 300, warnings: bool = True
) -> subprocess.CompletedProcess:
    """Run one of the installed console scripts in a new process, as a user would (warnings=True: with
    Python's warnings shown, as a user sees them)."""
    env = {**os.environ}
    env.pop("HYDRA_FULL_ERROR", None)
    env.pop("PYTHONWARNINGS", None) if warnings else env.update(PYTHONWARNINGS="ignore")
    proc = subprocess.run([_exe(tool), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        pytest.fail(f"{tool} {' '.join(args)} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def run_vae_train(
    *args: str, cwd: Path, check: bool = True, timeout: int = 300, warnings: bool = True
) -> subprocess.CompletedProcess:
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


# The modules a vae-train process started by a test may be told to import: tests/helpers/fault_helpers.py's callbacks,
# added with +callbacks.<name>._target_=fault_helpers.<Class> (see its docstring).
HELPERS = Path(__file__).resolve().parent / "helpers"


@pytest.fixture
def helpers(monkeypatch) -> Path:
    """tests/helpers importable in this process (runs here) and, by its absolute path on PYTHONPATH, in every process
    the test starts: vae-train subprocesses, and SLURM jobs (sbatch exports the environment to the job, srun to its
    tasks). Nothing is written: the folder is the module's own, in the checkout."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(HELPERS), os.environ.get("PYTHONPATH")])))
    monkeypatch.syspath_prepend(str(HELPERS))  # for runs in this process
    return HELPERS


@pytest.fixture
def small_filesystem(tmp_path):
    """A real 3 MB file system (tmpfs), where this machine lets the tests mount one."""
    mount = tmp_path / "fs"
    mount.mkdir()
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)], capture_output=True, text=True
    )
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip() or proc.returncode})")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def remount(mount: Path, mode: str) -> None:
    """The file system at `mount` made read-only (mode "ro") or writable again ("rw")."""
    subprocess.run(["mount", "-o", f"remount,{mode}", str(mount)], check=True, capture_output=True)
