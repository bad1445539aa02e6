"""The one build step pyproject.toml cannot declare: a regular build (a wheel; pip install .) writes
vae_cli/_build.json into the built package, naming the version and, when built from a git checkout, its commit and
whether tracked files differed from it. The installed copy reads that file, as the checkout may move on after the
install; an editable install runs the checkout's live code, so it has no such file and asks git at run time."""

import json
import subprocess
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

FILE = "_build.json"


def git_state(folder: Path) -> dict | None:
    """The commit checked out in `folder` and whether tracked files differ from it, when `folder` itself is a git
    checkout (an sdist unpacked inside some other repository is not); None otherwise or without git. The same
    query as vae_cli.cli.provenance.git_state, which the build cannot import (its dependencies are not there)."""
    if not (folder / ".git").exists():
        return None
    try:
        out = subprocess.run(
            ["git", "-C", str(folder), "status", "--porcelain=v2", "--branch", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    commit = next((line.split()[2] for line in out.splitlines() if line.startswith("# branch.oid ")), "(initial)")
    if commit == "(initial)":
        return None
    return {"commit": commit, "modified": any(not line.startswith("#") for line in out.splitlines())}


class BuildPy(build_py):
    def run(self):
        super().run()
        if self.editable_mode:  # setuptools' build_py builds nothing then: the install serves the checkout's folders
            return
        record = {"version": self.distribution.get_version(), **(git_state(Path(__file__).resolve().parent) or {})}
        (Path(self.build_lib) / "vae_cli" / FILE).write_text(json.dumps(record) + "\n")


setup(cmdclass={"build_py": BuildPy})
