"""README.md as a contract: its walk-through runs as written in this environment (the venv the tests run
in, as `source .venv/bin/activate` makes it the shell's), and its run-directory listing is what a run writes."""

import os
import re
import shlex
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from conftest import QUIET, run_here

README = Path(__file__).resolve().parent.parent / "README.md"


def block(marker: str) -> list[str]:
    """The lines of the fenced block under <!-- marker --> in README.md."""
    text = README.read_text()
    after = text[text.index(f"<!-- {marker} -->") :]
    body = after[after.index("```") + 3 :]
    body = body[body.index("\n") + 1 :]
    return [line for line in body[: body.index("```")].splitlines() if line.strip()]


@pytest.fixture(scope="module")
def walked(tmp_path_factory) -> Path:
    """A fresh directory in which every walk-through command ran, in order, as written."""
    here = tmp_path_factory.mktemp("walkthrough")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env.pop("HYDRA_FULL_ERROR", None)
    for command in block("walkthrough"):
        if command.startswith("tensorboard "):
            _serves_the_runs(command, here, env)
            continue
        proc = subprocess.run(["bash", "-c", command], cwd=here, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, f"{command}\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
        assert "Traceback" not in proc.stderr, proc.stderr
    return here


def _serves_the_runs(command: str, cwd: Path, env: dict) -> None:
    """A server command runs until stopped: start it, see it list the run, stop it."""
    server = subprocess.Popen(
        ["bash", "-c", f"exec {command}"],
        cwd=cwd,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    # No proxy: urllib's default opener keeps whatever proxy the environment had when it was first used.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            assert server.poll() is None, server.stderr.read()
            try:
                with opener.open("http://localhost:6006/data/runs", timeout=2) as r:
                    runs = r.read().decode()
                if "20" in runs:  # a run named outputs' <date>/<time>
                    return
            except OSError:
                pass
            time.sleep(1)
        pytest.fail(f"{command} did not serve the run within 90 s")
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.mark.slow
def test_the_walkthrough_runs_as_written(walked):
    runs = [d for d in (walked / "outputs").glob("20*/*")]
    assert len(runs) == 1
    run = runs[0]
    assert "epochs" in (run / "metrics.json").read_text() and (run / "eval_test_k500_best.json").is_file()
    assert (run / "samples" / "prior_samples.png").is_file()
    sweeps = list((walked / "outputs" / "multirun").glob("*/*"))
    assert len(sweeps) == 1 and (sweeps[0] / "report.md").is_file()


def _pattern(entry: str) -> re.Pattern:
    entry = entry.replace("DATE_TIME", "\0D").replace("STEP", "\0S")
    regex = re.escape(entry).replace("\\*", "[^/]*").replace("\0D", r"\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d")
    return re.compile(regex.replace("\0S", r"\d+"))


@pytest.mark.slow
def test_the_run_directory_listing_is_what_a_run_writes(walked):
    (run,) = list((walked / "outputs").glob("20*/*"))
    listed = [p.strip() for line in block("run-directory") for p in line.split("  ")[0].split(",")]
    # Entries written "only when" something happens (a failure) need not be in the walk-through's run.
    sometimes = {
        line.split()[0] for line in block("run-directory") if line.split("  ", 1)[1].strip().startswith("only when")
    }
    patterns = [_pattern(p.rstrip("/")) for p in listed]
    written = [p.relative_to(run).as_posix() for p in run.iterdir()]
    written += [f".hydra/{p.name}" for p in (run / ".hydra").iterdir() if p.is_dir()]
    written += [f"checkpoints/{p.name}" for p in (run / "checkpoints").iterdir()]
    unlisted = [w for w in written if w != "checkpoints" and not any(p.fullmatch(w) for p in patterns)]
    assert not unlisted, f"the run wrote these, and README.md's listing does not name them: {unlisted}"
    unseen = [e for e, p in zip(listed, patterns) if e not in sometimes and not any(p.fullmatch(w) for w in written)]
    assert not unseen, f"README.md lists these, and the walk-through's run has none: {unseen}"


def test_your_own_configs_example_runs_as_written(tmp_path):
    """The README's own experiment file, written where its comment says, found through --config-dir."""
    text = block("own-config")
    path = next(line.split()[1].rstrip(":") for line in text if line.startswith("# my_configs/"))
    (tmp_path / path).parent.mkdir(parents=True)
    (tmp_path / path).write_text("\n".join(text) + "\n")
    (command,) = block("own-config-command")
    tool, *args = shlex.split(command)
    run_here(tool, *args, "trainer.max_epochs=1", *QUIET, f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    config = yaml.safe_load((tmp_path / "run" / ".hydra" / "config.yaml").read_text())
    assert config["model"]["latent_dim"] == 4 and config["model"]["hidden_dims"] == [64]
    assert (tmp_path / "run" / "metrics.json").is_file()
