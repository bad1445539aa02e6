"""What made a run: one small YAML file per invocation of vae-train (the first in .hydra/, each resume in its own
.hydra/<date>_<time>/, beside Hydra's config of that invocation), naming the code (vae-cli's version, how it was
installed, and its commit when built from a git checkout; the commit of the working directory's repository, a user's
experiment), the versions of the libraries that compute the numbers, the machine, the SLURM job, the command line and
when it ran. Versions come from the imported modules (torch's names its build) or the installed packages' metadata;
commits from one git call, only where a .git is there. Reading a record back (vae-report) needs only YAML."""

import datetime
import importlib.metadata
import json
import logging
import os
import platform
import shlex
import socket
import subprocess
import sys
from pathlib import Path

import yaml

from .. import inputs
from ..errors import UserError
from ..writers.files import atomic_write
from .secrets import mask

FILE = "provenance.yaml"
BUILD_FILE = "_build.json"  # written into the package by setup.py
GIT_TIMEOUT = 10.0  # seconds: a git that hangs (a network file system, a lock) costs a run no more
# The libraries behind a run's numbers: module -> distribution.
PACKAGES = {
    "torch": "torch",
    "torchvision": "torchvision",
    "pytorch_lightning": "pytorch-lightning",
    "hydra": "hydra-core",
    "omegaconf": "omegaconf",
    "optuna": "optuna",
    "numpy": "numpy",
}


def _version(dist: str, module: str | None = None) -> str | None:
    """The module's own version where it is imported (torch's names its build: 2.14.1+cu130, which the
    installed distribution's metadata leaves out), else the distribution's."""
    version = getattr(sys.modules.get(module), "__version__", None) if module else None
    if isinstance(version, str):
        return str(version)  # torch's is a str subclass
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def git_state(folder: Path) -> dict | None:
    """The commit checked out in the git repository holding `folder`, and whether tracked files differ from it
    (untracked files, such as outputs/, do not count); None outside a repository or without git."""
    top = next((p for p in (folder, *folder.parents) if (p / ".git").exists()), None)
    if top is None:
        return None
    try:
        out = subprocess.run(
            ["git", "-C", str(top), "status", "--porcelain=v2", "--branch", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=GIT_TIMEOUT,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    commit = next((line.split()[2] for line in out.splitlines() if line.startswith("# branch.oid ")), None)
    modified = any(not line.startswith("#") for line in out.splitlines())
    return {"path": str(top), "commit": None if commit == "(initial)" else commit, "modified": modified}


def installed_code() -> dict:
    """vae-cli's version, how it was installed, and the commit it was built from with whether tracked files differed
    from it. A regular install (a wheel; pip install .) carries these in _build.json, written by setup.py when it was
    built, as its checkout may have moved on since. Without that file the code runs from its source folder (pip install
    -e), so git tells what runs now. A build from an sdist or a folder without .git names its version only."""
    package = Path(__file__).resolve().parents[1]
    if (package / BUILD_FILE).exists():
        built = json.loads((package / BUILD_FILE).read_text())
        return {
            "version": built["version"],
            "install": "wheel",
            **{k: built[k] for k in ("commit", "modified") if k in built},
        }
    code = {"version": _version("vae-cli"), "install": "editable"}
    # Only the checkout itself: a copy inside a user's repository (a virtualenv in it, say) is not that repository's.
    if (package.parent / ".git").exists() and (state := git_state(package.parent)) is not None:
        code.update(commit=state["commit"], modified=state["modified"])
    return code


def short_commit(state: dict | None, length: int | None = None) -> str | None:
    """A git_state's commit (its first `length` digits; all by default), marked +modified when tracked files differed
    from it."""
    if not state or not state.get("commit"):
        return None
    return state["commit"][:length] + ("+modified" if state.get("modified") else "")


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _now() -> str:
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


def collect(argv: list[str], cwd: Path) -> dict:
    """This invocation's record, as it starts."""
    import torch
    import torchvision  # noqa: F401 (its version names its build, as torch's does; training imports it anyway)

    gpu = None
    if torch.cuda.is_available():
        gpu = {
            "name": torch.cuda.get_device_name(0),
            "count": torch.cuda.device_count(),
            "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(),
        }
    slurm = {
        k.removeprefix("SLURM_").lower(): os.environ[k]
        for k in (
            "SLURM_JOB_ID",
            "SLURM_ARRAY_JOB_ID",
            "SLURM_ARRAY_TASK_ID",
            "SLURM_RESTART_COUNT",
            "SLURM_JOB_NODELIST",
        )
        if k in os.environ
    }
    return {
        "command": mask(shlex.join([Path(argv[0]).name, *argv[1:]])),
        "started": _now(),
        "ended": None,
        "outcome": "running",
        "vae_cli": installed_code(),
        "experiment_repository": git_state(cwd),
        "versions": {"python": platform.python_version(), **{m: _version(d, m) for m, d in PACKAGES.items()}},
        "machine": {
            "host": socket.gethostname(),
            "system": platform.platform(),
            "cpu": _cpu(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "gpu": gpu,
        },
        "slurm": slurm or None,
        "working_directory": str(cwd),
    }


def write(path: Path, record: dict) -> None:
    text = yaml.safe_dump(record, sort_keys=False, default_flow_style=False, width=1 << 16)
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


class Provenance:
    """The record of one invocation: written as it starts, completed (device, end, outcome) as it ends."""

    def __init__(self, folder: Path, argv: list[str] | None = None, cwd: Path | None = None):
        self.path = folder / FILE
        self.record = collect(argv or sys.argv, cwd or Path.cwd())
        write(self.path, self.record)

    def device(self, device: str) -> None:
        self.record["machine"]["device"] = device

    def end(self, outcome: str) -> None:
        self.record.update(ended=_now(), outcome=outcome)
        write(self.path, self.record)


def read(run_dir: Path) -> list[dict]:
    """Every record of a run directory, first invocation first."""
    record = run_dir / ".hydra"
    paths = [record / FILE, *sorted(record.glob(f"*/{FILE}"))]
    out = []
    for p in paths:
        if not p.is_file():
            continue
        try:
            content = inputs.read_yaml(p, "a run's provenance") or {}
        except UserError:
            continue
        parts = ("machine", "vae_cli", "versions", "experiment_repository")
        if (
            isinstance(content, dict)
            and all(isinstance(content.get(k) or {}, dict) for k in parts)
            and isinstance((content.get("machine") or {}).get("gpu") or {}, dict)
        ):
            out.append(content)  # a record of another shape is none of vae-train's, and is passed over
    return out


def settings(record: dict) -> dict:
    """The versions and commits as flat settings for HPARAMS and the trackers (a sweep across versions is a
    column): version/torch, code/vae_cli_commit, ..."""
    flat = {f"version/{k}": v for k, v in record["versions"].items() if v is not None}
    flat["version/vae_cli"] = record["vae_cli"]["version"]
    for key, state in (("vae_cli", record["vae_cli"]), ("experiment", record.get("experiment_repository"))):
        if commit := short_commit(state):
            flat[f"code/{key}_commit"] = commit
    flat["machine/host"] = record["machine"]["host"]
    return flat


def comparable(record: dict) -> dict:
    """What may differ between the jobs of a sweep and change its numbers: code, library versions, machine."""
    machine = record.get("machine") or {}
    gpu = machine.get("gpu") or {}
    code = record.get("vae_cli") or {}
    out = {
        "vae-cli": code.get("version"),
        "vae-cli commit": short_commit(code, 12),
        "experiment commit": short_commit(record.get("experiment_repository"), 12),
        **(record.get("versions") or {}),
        "host": machine.get("host"),
        "cpu": machine.get("cpu"),
        "torch threads": machine.get("torch_threads"),
        "device": machine.get("device"),
        "gpu": gpu.get("name"),
        "cuda": gpu.get("cuda"),
        "cudnn": gpu.get("cudnn"),
    }
    return {k: str(v) for k, v in out.items() if v is not None}


def provenance_of(run_dir: Path):
    """This invocation's provenance record, beside Hydra's record of its config (none in the processes after the
    first of a data-parallel run, which keep no record)."""
    from hydra.core.hydra_config import HydraConfig

    from ..errors import UserError
    from .run_dir import first_process

    hydra = HydraConfig.get()
    if hydra.output_subdir is None or not first_process():
        return None
    folder = run_dir / hydra.output_subdir
    try:
        return Provenance(folder, cwd=Path(hydra.runtime.cwd))
    except (OSError, UserError) as e:  # a full disk, say: the run goes on, and stops where it must write what it cannot
        logging.getLogger("vae_cli").warning("no provenance record: %s", e)
        return None
