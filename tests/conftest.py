import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

# Short runs with quiet output; every test writes only under its own tmp_path.
QUIET = ["trainer.enable_progress_bar=false", "trainer.enable_model_summary=false"]


def vae_train_exe() -> str:
    exe = Path(sys.executable).parent / "vae-train"
    found = str(exe) if exe.exists() else shutil.which("vae-train")
    if not found:
        pytest.fail("vae-train is not installed: run `pip install -e '.[test]'` first")
    return found


def run_vae_train(*args: str, cwd: Path, check: bool = True, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([vae_train_exe(), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        pytest.fail(f"vae-train {' '.join(args)} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


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


def run_tool(tool: str, *args: str, cwd: Path, check: bool = True, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run one of the installed console scripts (vae-eval, vae-sample) as a user would."""
    exe = Path(sys.executable).parent / tool
    proc = subprocess.run([str(exe) if exe.exists() else tool, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if check and proc.returncode != 0:
        pytest.fail(f"{tool} {' '.join(args)} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


@pytest.fixture(scope="session")
def trained_digits_run(tmp_path_factory) -> Path:
    """The default model trained for the default 100 epochs on digits (about 15 s on 2 CPU cores)."""
    tmp = tmp_path_factory.mktemp("trained")
    run_vae_train("trainer.max_epochs=100", "seed=0", f"hydra.run.dir={tmp / 'run'}", *QUIET, cwd=tmp)
    return tmp / "run"
