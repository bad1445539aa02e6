"""What made a run: each invocation's provenance.yaml (code, versions, machine, command line), vae-report naming
what differs between a sweep's jobs, the code a regular install was built from (not its checkout's later state), and
passwords in URLs masked everywhere, against SQLAlchemy's own rendering."""

import json
import platform
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
import yaml

from vae_cli.cli import provenance, report
from vae_cli.cli.secrets import mask

from conftest import QUIET, run_vae_train

SHORT = ["trainer.max_epochs=1", "++trainer.limit_train_batches=2", *QUIET]
ROOT = Path(__file__).resolve().parents[1]
VERSION = __import__("vae_cli").__version__


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=True).stdout.strip()


def commit(repo: Path, message: str) -> str:
    git(repo, "add", "-A")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "--allow-empty", "-m", message)
    return git(repo, "rev-parse", "HEAD")


@pytest.fixture
def experiment_repo(tmp_path) -> Path:
    """A user's experiment repository: one committed file, outputs/ untracked."""
    repo = tmp_path / "experiment"
    repo.mkdir()
    git(repo, "init", "-q")
    (repo / "notes.md").write_text("K = 2\n")
    git(repo, "add", "notes.md")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "start")
    return repo


@pytest.mark.slow
def test_each_invocation_records_its_code_versions_machine_and_command(experiment_repo):
    import hydra
    import numpy
    import omegaconf
    import pytorch_lightning
    import torch
    import torchvision

    run = experiment_repo / "outputs" / "run"
    run_vae_train(*SHORT, f"hydra.run.dir={run}", cwd=experiment_repo)
    (first,) = provenance.read(run)
    assert first["outcome"] == "finished" and first["started"] <= first["ended"]
    assert first["command"] == f"vae-train {' '.join(SHORT)} hydra.run.dir={run}"
    assert first["versions"] == {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "pytorch_lightning": pytorch_lightning.__version__,
        "hydra": hydra.__version__,
        "omegaconf": omegaconf.__version__,
        "optuna": first["versions"]["optuna"],
        "numpy": numpy.__version__,
    }
    head = git(experiment_repo, "rev-parse", "HEAD")
    assert first["experiment_repository"] == {"path": str(experiment_repo), "commit": head, "modified": False}
    assert first["machine"]["device"] == "cpu" and first["machine"]["gpu"] is None
    threads = subprocess.run(
        [sys.executable, "-c", "import torch; print(torch.get_num_threads())"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert first["machine"]["torch_threads"] == int(threads)
    assert first["vae_cli"]["version"] == __import__("vae_cli").__version__
    source = Path(__import__("vae_cli").__file__).resolve().parents[1]
    if (source / ".git").exists():  # installed from a clone (editable, as in CI): its commit is recorded
        assert first["vae_cli"]["install"] == "editable"
        assert first["vae_cli"]["commit"] == git(source, "rev-parse", "HEAD")
        assert first["vae_cli"]["modified"] == bool(git(source, "status", "--porcelain", "--untracked-files=no"))

    # A resume after a tracked file changed: a record of its own, the first left as it was.
    before = (run / ".hydra" / provenance.FILE).read_bytes()
    (experiment_repo / "notes.md").write_text("K = 3\n")
    run_vae_train(
        f"ckpt_path={run}", "trainer.max_epochs=2", "++trainer.limit_train_batches=2", *QUIET, cwd=experiment_repo
    )
    assert (run / ".hydra" / provenance.FILE).read_bytes() == before
    first_again, second = provenance.read(run)
    assert second["experiment_repository"] == {"path": str(experiment_repo), "commit": head, "modified": True}
    assert second["command"].startswith(f"vae-train ckpt_path={run} trainer.max_epochs=2")
    assert second["started"] >= first["ended"]


def _job(sweep: Path, num: int, torch_version: str, host: str = "node1") -> None:
    d = sweep / str(num)
    (d / ".hydra").mkdir(parents=True)
    (d / ".hydra" / "overrides.yaml").write_text(f"- seed={num}\n")
    (d / "metrics.json").write_text(json.dumps({"test/elbo": -20.0 - num, "best_val_elbo": -21.0}))
    record = {
        "command": "vae-train",
        "vae_cli": {"version": "0.1.0", "commit": "a" * 40, "modified": False},
        "versions": {"python": "3.11.7", "torch": torch_version, "numpy": "2.4.6"},
        "machine": {"host": host, "cpu": "Xeon", "torch_threads": 1, "device": "cpu", "gpu": None},
    }
    (d / ".hydra" / provenance.FILE).write_text(yaml.safe_dump(record))


def test_the_report_names_what_differs_between_jobs_and_only_that(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    _job(sweep, 0, "2.14.1+cu130")
    _job(sweep, 1, "2.14.1+cu130")
    report.main([str(sweep), "--no-figures"])
    assert "differs" not in capsys.readouterr().out  # the jobs agree: no note

    _job(sweep, 2, "2.13.0+cpu", host="node2")
    # A resume of job 1 on another machine: both of its hosts are named.
    later = sweep / "1" / ".hydra" / "2026-12-03_10-00-00"
    later.mkdir()
    record = yaml.safe_load((sweep / "1" / ".hydra" / provenance.FILE).read_text())
    record["machine"]["host"] = "node3"
    (later / provenance.FILE).write_text(yaml.safe_dump(record))
    report.main([str(sweep), "--no-figures"])
    out = capsys.readouterr().out
    assert "torch differs: 2.14.1+cu130 (jobs 0, 1), 2.13.0+cpu (job 2)" in out
    assert "host differs: node1 (job 0), node1, then node3 (job 1), node2 (job 2)" in out
    assert "numpy" not in out and "python" not in out  # the same everywhere
    assert "torch differs" in (sweep / "report.md").read_text()


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+psycopg2://alice:S3cretPW@db.example.org:5432/vae",
        "mysql://bob:p%40ss:word@localhost/db",
        "postgresql://:onlypw@host/db",
        "redis://user:pw@host:6379/0",
    ],
)
def test_a_urls_password_is_masked_as_sqlalchemy_renders_it(url):
    from sqlalchemy.engine import make_url

    assert mask(url) == make_url(url).render_as_string(hide_password=True)
    text = f"hydra.sweeper.storage={url}: cannot open (could not connect to {url})"
    assert mask(text) == text.replace(url, make_url(url).render_as_string(hide_password=True))


def test_urls_without_a_password_and_other_text_are_left_alone():
    for text in (
        "sqlite:////tmp/a:b/optuna.db",
        "postgresql://alice@host/db",
        "http://host:8080/path",
        "user:pw@host",
        "a time 10:20@noon",
        "file:///x/y",
    ):
        assert mask(text) == text


@pytest.mark.slow
def test_an_unreachable_databases_password_is_neither_printed_nor_written(tmp_path):
    url = "postgresql+psycopg2://alice:S3cretPW@127.0.0.1:9/vae"
    proc = run_vae_train(
        "--multirun",
        "hparams_search=optuna",
        f"hydra.sweeper.storage={url}",
        *QUIET,
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        cwd=tmp_path,
        check=False,
    )
    assert proc.returncode != 0 and "Optuna cannot open this database" in proc.stderr
    assert "postgresql+psycopg2://alice:***@127.0.0.1:9/vae" in proc.stderr
    assert "S3cretPW" not in proc.stdout + proc.stderr
    assert not [p for p in tmp_path.rglob("*") if p.is_file() and b"S3cretPW" in p.read_bytes()]


def test_provenance_settings_name_the_versions_and_commits():
    record = {
        "versions": {"torch": "2.14.1", "optuna": None},
        "vae_cli": {"version": "0.1.0", "commit": "c" * 40, "modified": True},
        "experiment_repository": None,
        "machine": {"host": "h"},
    }
    assert provenance.settings(record) == {
        "version/torch": "2.14.1",
        "version/vae_cli": "0.1.0",
        "code/vae_cli_commit": "c" * 40 + "+modified",
        "machine/host": "h",
    }
    record["experiment_repository"] = {"commit": "d" * 40, "modified": False}
    assert provenance.settings(record)["code/experiment_commit"] == "d" * 40


def test_the_git_state_is_the_commit_and_whether_tracked_files_differ_from_it(experiment_repo, monkeypatch):
    inside = experiment_repo / "a" / "b"
    inside.mkdir(parents=True)
    head = git(experiment_repo, "rev-parse", "HEAD")
    (experiment_repo / "outputs").mkdir()
    (experiment_repo / "outputs" / "run.log").write_text("untracked: does not count")
    assert provenance.git_state(inside) == {"path": str(experiment_repo), "commit": head, "modified": False}
    (experiment_repo / "notes.md").write_text("K = 3\n")
    assert provenance.git_state(experiment_repo) == {"path": str(experiment_repo), "commit": head, "modified": True}

    fresh = experiment_repo.parent / "fresh"
    fresh.mkdir()
    git(fresh, "init", "-q")
    assert provenance.git_state(fresh) == {"path": str(fresh), "commit": None, "modified": False}
    (fresh / ".git").rename(fresh / "git")
    (fresh / ".git").write_text("gitdir: nowhere\n")  # a repository git cannot read
    assert provenance.git_state(fresh) is None
    monkeypatch.setenv("PATH", "")  # no git
    assert provenance.git_state(experiment_repo) is None


def test_a_wheel_names_what_its_build_recorded_and_a_source_folder_asks_git(tmp_path, monkeypatch):
    checkout = tmp_path / "checkout"
    package = checkout / "vae_cli"
    (package / "cli").mkdir(parents=True)
    monkeypatch.setattr(provenance, "__file__", str(package / "cli" / "provenance.py"))
    build = package / provenance.BUILD_FILE
    build.write_text(json.dumps({"version": "9.1", "commit": "f" * 40, "modified": True}))
    assert provenance.installed_code() == {"version": "9.1", "install": "wheel", "commit": "f" * 40, "modified": True}
    build.write_text(json.dumps({"version": "9.1"}))  # built from an sdist
    assert provenance.installed_code() == {"version": "9.1", "install": "wheel"}

    build.unlink()
    git(tmp_path, "init", "-q")  # a repository above the checkout is not the checkout's
    assert provenance.installed_code() == {"version": VERSION, "install": "editable"}
    git(checkout, "init", "-q")
    head = commit(checkout, "start")
    assert provenance.installed_code() == {"version": VERSION, "install": "editable", "commit": head, "modified": False}


def test_a_version_is_the_imported_modules_own_else_the_installed_distributions(monkeypatch):
    import importlib.metadata
    import types

    build = type("Build", (str,), {})("2.14.1+cu130")  # torch's version is a str subclass naming the build
    monkeypatch.setitem(sys.modules, "fake_torch", types.SimpleNamespace(__version__=build))
    assert provenance._version("pytest", "fake_torch") == "2.14.1+cu130"
    assert type(provenance._version("pytest", "fake_torch")) is str  # safe to write as YAML
    monkeypatch.setitem(sys.modules, "fake_torch", types.SimpleNamespace(__version__=(2, 14)))
    assert provenance._version("pytest", "fake_torch") == importlib.metadata.version("pytest")
    assert provenance._version("pytest", "not_imported") == importlib.metadata.version("pytest")
    assert provenance._version("pytest") == importlib.metadata.version("pytest")
    assert provenance._version("no-such-distribution-here") is None


def test_an_invocations_record_names_its_command_code_versions_machine_and_slurm_job(experiment_repo, monkeypatch):
    import datetime
    import socket

    import hydra
    import numpy
    import omegaconf
    import pytorch_lightning
    import torch
    import torchvision

    for key, value in {"SLURM_JOB_ID": "41", "SLURM_ARRAY_TASK_ID": "3", "SLURM_JOB_NODELIST": "n[1-2]"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "40")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    argv = ["/opt/venv/bin/vae-train", "logger.tracking_uri=postgresql://u:pw@db/x", "model.latent_dim=2"]
    record = provenance.collect(argv, experiment_repo)
    started = datetime.datetime.fromisoformat(record.pop("started"))
    assert abs(started - datetime.datetime.now().astimezone()) < datetime.timedelta(minutes=1)
    assert record == {
        "command": "vae-train logger.tracking_uri=postgresql://u:***@db/x model.latent_dim=2",
        "ended": None,
        "outcome": "running",
        "vae_cli": provenance.installed_code(),
        "experiment_repository": provenance.git_state(experiment_repo),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
            "pytorch_lightning": pytorch_lightning.__version__,
            "hydra": hydra.__version__,
            "omegaconf": omegaconf.__version__,
            "optuna": provenance._version("optuna", "optuna"),
            "numpy": numpy.__version__,
        },
        "machine": {
            "host": socket.gethostname(),
            "system": platform.platform(),
            "cpu": provenance._cpu(),
            "cpu_count": __import__("os").cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "gpu": None,
        },
        "slurm": {
            "job_id": "41",
            "array_job_id": "40",
            "array_task_id": "3",
            "restart_count": "1",
            "job_nodelist": "n[1-2]",
        },
        "working_directory": str(experiment_repo),
    }
    for key in (
        "SLURM_JOB_ID",
        "SLURM_ARRAY_JOB_ID",
        "SLURM_ARRAY_TASK_ID",
        "SLURM_RESTART_COUNT",
        "SLURM_JOB_NODELIST",
    ):
        monkeypatch.delenv(key)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i: f"H200 #{i}")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setattr(torch.backends.cudnn, "version", lambda: 91000)
    record = provenance.collect(["vae-eval"], experiment_repo)
    assert record["machine"]["gpu"] == {"name": "H200 #0", "count": 8, "cuda": "13.0", "cudnn": 91000}
    assert record["slurm"] is None and record["command"] == "vae-eval"


def test_the_cpu_is_named_as_proc_cpuinfo_names_it_else_as_the_platform_does(monkeypatch):
    lines = Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").is_file() else []
    named = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    if named:
        assert provenance._cpu() == named[0]

    class Unreadable(type(Path())):
        def read_text(self, *args, **kwargs):
            raise PermissionError("no /proc here")

    class Named(type(Path())):
        def read_text(self, *args, **kwargs):
            return "processor\t: 0\nmodel name\t: Ampere(R): Altra\n"

    monkeypatch.setattr(provenance, "Path", Named)
    assert provenance._cpu() == "Ampere(R): Altra"
    monkeypatch.setattr(provenance, "Path", Unreadable)
    monkeypatch.setattr(platform, "processor", lambda: "")
    monkeypatch.setattr(platform, "machine", lambda: "aarch64")
    assert provenance._cpu() == "aarch64"
    monkeypatch.setattr(platform, "processor", lambda: "arm")
    assert provenance._cpu() == "arm"


def test_what_may_differ_between_jobs_is_each_field_that_can_change_the_numbers():
    record = {
        "vae_cli": {"version": "0.4.0", "commit": "a" * 40, "modified": True},
        "experiment_repository": {"commit": "b" * 40, "modified": False},
        "versions": {"torch": "2.14.1", "numpy": None},
        "machine": {
            "host": "node1",
            "cpu": "Xeon",
            "torch_threads": 2,
            "device": "cuda:0",
            "gpu": {"name": "H200", "cuda": "13.0", "cudnn": 91000},
        },
    }
    assert provenance.comparable(record) == {
        "vae-cli": "0.4.0",
        "vae-cli commit": "a" * 12 + "+modified",
        "experiment commit": "b" * 12,
        "torch": "2.14.1",
        "host": "node1",
        "cpu": "Xeon",
        "torch threads": "2",
        "device": "cuda:0",
        "gpu": "H200",
        "cuda": "13.0",
        "cudnn": "91000",
    }
    bare = {"vae_cli": None, "experiment_repository": None, "versions": None, "machine": {"gpu": None}}
    assert provenance.comparable(bare) == provenance.comparable({}) == {}


def test_a_runs_records_are_read_first_invocation_first_and_others_passed_over(tmp_path):
    record = tmp_path / ".hydra"
    good = {"command": "vae-train", "versions": None, "machine": {"host": "h", "gpu": None}}
    folders = {
        "2026-12-01_09-00-00": "a folder",  # not a file
        "2026-12-02_09-00-00": "versions: [\n",  # not YAML
        "2026-12-03_09-00-00": yaml.safe_dump({**good, "command": "third"}),
        "2026-12-04_09-00-00": "- a list\n",
        "2026-12-05_09-00-00": yaml.safe_dump({**good, "machine": "h"}),
        "2026-12-06_09-00-00": yaml.safe_dump({**good, "machine": {"gpu": "H200"}}),
        "2026-12-07_09-00-00": yaml.safe_dump({**good, "vae_cli": "0.4.0"}),
        "2026-12-08_09-00-00": yaml.safe_dump({**good, "experiment_repository": ["x"]}),
        "2026-12-08_10-00-00": yaml.safe_dump({**good, "versions": "2.14.1"}),
        "2026-12-09_09-00-00": "",
        "2026-12-10_09-00-00": yaml.safe_dump({**good, "command": "last"}),
    }
    for name, text in reversed(folders.items()):  # made in another order than the names'
        (record / name).mkdir(parents=True)
        if text == "a folder":
            (record / name / provenance.FILE).mkdir()
        else:
            (record / name / provenance.FILE).write_text(text)
    assert provenance.read(tmp_path) == [{**good, "command": "third"}, {}, {**good, "command": "last"}]
    (record / provenance.FILE).write_text(yaml.safe_dump({**good, "command": "first"}))
    assert [r.get("command") for r in provenance.read(tmp_path)] == ["first", "third", None, "last"]


def test_a_record_is_written_as_the_run_starts_and_completed_as_it_ends(tmp_path, monkeypatch):
    asked = []

    def collect(argv, cwd):
        asked.append((argv, cwd))
        return {"command": argv[0], "ended": None, "machine": {"device": None}}

    monkeypatch.setattr(provenance, "collect", collect)
    record = provenance.Provenance(tmp_path, argv=["vae-train"], cwd=tmp_path / "experiment")
    assert asked == [(["vae-train"], tmp_path / "experiment")]
    assert yaml.safe_load((tmp_path / provenance.FILE).read_text()) == collect(["vae-train"], None)
    record.device("cuda:1")
    record.end("finished")
    saved = yaml.safe_load((tmp_path / provenance.FILE).read_text())
    assert saved["machine"] == {"device": "cuda:1"} and saved["outcome"] == "finished" and saved["ended"]


def test_the_record_is_block_yaml_in_the_order_written_with_a_long_command_on_one_line(tmp_path):
    command = "vae-train " + " ".join(f"+key{i}=value{i}" for i in range(40))
    provenance.write(tmp_path / "p.yaml", {"command": command, "machine": {"host": "h", "cpu": "c"}, "ended": None})
    assert (tmp_path / "p.yaml").read_text() == f"command: {command}\nmachine:\n  host: h\n  cpu: c\nended: null\n"


@pytest.mark.parametrize(
    "subdir, first, recorded", [(".hydra", True, True), (None, True, False), (".hydra", False, False)]
)
def test_an_invocation_is_recorded_beside_hydras_record_by_the_first_process_only(
    tmp_path, monkeypatch, subdir, first, recorded
):
    import types

    from hydra.core.hydra_config import HydraConfig

    from vae_cli.cli import run_dir

    config = types.SimpleNamespace(output_subdir=subdir, runtime=types.SimpleNamespace(cwd=str(tmp_path / "exp")))
    monkeypatch.setattr(HydraConfig, "get", staticmethod(lambda: config))
    monkeypatch.setattr(run_dir, "first_process", lambda: first)
    monkeypatch.setattr(provenance, "collect", lambda argv, cwd: {"cwd": str(cwd)})
    (tmp_path / "run" / ".hydra").mkdir(parents=True)
    record = provenance.provenance_of(tmp_path / "run")
    assert (record is not None) == recorded
    if recorded:
        assert record.path == tmp_path / "run" / ".hydra" / provenance.FILE
        assert record.record == {"cwd": str(tmp_path / "exp")} and record.path.is_file()


def test_a_record_that_cannot_be_written_is_a_warning_and_the_run_goes_on(tmp_path, monkeypatch, caplog):
    import logging
    import types

    from hydra.core.hydra_config import HydraConfig

    config = types.SimpleNamespace(output_subdir=".hydra", runtime=types.SimpleNamespace(cwd=str(tmp_path)))
    monkeypatch.setattr(HydraConfig, "get", staticmethod(lambda: config))
    monkeypatch.setattr(provenance, "collect", lambda argv, cwd: {})
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / ".hydra").write_text("a file where the folder should be")
    with caplog.at_level(logging.WARNING, logger="vae_cli"):
        assert provenance.provenance_of(tmp_path / "run") is None
    (message,) = [r for r in caplog.records if r.name == "vae_cli"]
    assert message.getMessage().startswith(f"no provenance record: could not write {tmp_path / 'run' / '.hydra'}")


def test_a_git_that_hangs_costs_its_timeout_and_no_record_of_the_commit(experiment_repo, tmp_path, monkeypatch):
    import time

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "git").write_text(f"#!/bin/sh\nexec {shutil.which('sleep')} 30\n")
    (bin_dir / "git").chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))
    monkeypatch.setattr(provenance, "GIT_TIMEOUT", 0.5)
    start = time.monotonic()
    assert provenance.git_state(experiment_repo) is None and time.monotonic() - start < 5


def test_reading_the_record_needs_neither_torch_nor_hydra(tmp_path):
    code = (
        "import sys; from vae_cli.cli.sweep import jobs; "
        "print(sorted(m for m in ('torch', 'hydra', 'pytorch_lightning') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# What pip installs: built from a clone of this repository, installed into a folder of its own, and run there.


def pip(*args: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "pip", *args, "--disable-pip-version-check", "--no-deps", "--no-build-isolation"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout + proc.stderr


def build_wheel(source: Path, out: Path) -> Path:
    pip("wheel", "-w", str(out), str(source))
    (wheel,) = out.glob("vae_cli-*.whl")
    return wheel


def append(path: Path, text: str) -> None:
    with open(path, "a") as f:
        f.write(text)


def record_of_installed(target: Path, cwd: Path, runs_from: Path | None = None) -> dict:
    """The provenance record that the copy of vae-cli installed in `target` (its code in `runs_from`, when that is
    elsewhere) collects for a command started in `cwd`. The interpreter starts in `target`, without this environment's
    .pth files (-S): they, or a checkout as the current folder, would put other code first."""
    libraries = list(dict.fromkeys(sysconfig.get_paths()[k] for k in ("purelib", "platlib")))
    code = (
        f"import json, site, sys; from pathlib import Path; site.addsitedir({str(target)!r}); "
        f"sys.path += {libraries!r}; from vae_cli.cli import provenance; "
        f"print(json.dumps([provenance.__file__, provenance.collect(['vae-train'], Path({str(cwd)!r}))]))"
    )
    proc = subprocess.run([sys.executable, "-S", "-c", code], cwd=target, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    module, record = json.loads(proc.stdout)
    assert Path(module).is_relative_to(runs_from or target)
    return record


@pytest.fixture
def clone(tmp_path) -> Path:
    """A clone of this repository whose newest commit holds the working tree's build step and provenance code (the
    code under test, committed here or not)."""
    if not (ROOT / ".git").exists():
        pytest.skip("needs vae-cli's git checkout")
    clone = tmp_path / "vae-cli"
    git(tmp_path, "clone", "-q", str(ROOT), str(clone))
    for name in ("setup.py", "pyproject.toml", "vae_cli/cli/provenance.py"):
        shutil.copy(ROOT / name, clone / name)
    commit(clone, "the code under test")
    return clone


@pytest.mark.slow
def test_a_wheel_names_the_commit_it_was_built_from_not_the_checkouts_later_one(clone, tmp_path):
    built = git(clone, "rev-parse", "HEAD")
    wheel = build_wheel(clone, tmp_path / "dist")
    assert json.loads(zipfile.ZipFile(wheel).read("vae_cli/_build.json")) == {
        "version": VERSION,
        "commit": built,
        "modified": False,
    }
    append(clone / "vae_cli" / "__init__.py", "# code that did not run\n")
    later = commit(clone, "later")
    pip("install", "--target", str(tmp_path / "site"), str(wheel))

    record = record_of_installed(tmp_path / "site", cwd=clone)
    assert record["vae_cli"] == {"version": VERSION, "install": "wheel", "commit": built, "modified": False}
    # The repository a command starts in is the experiment's, recorded as it is now.
    assert record["experiment_repository"] == {"path": str(clone), "commit": later, "modified": False}


@pytest.mark.slow
def test_a_wheel_built_from_a_modified_checkout_says_so(clone, tmp_path):
    append(clone / "vae_cli" / "__init__.py", "# not committed\n")
    pip("install", "--target", str(tmp_path / "site"), str(build_wheel(clone, tmp_path / "dist")))
    git(clone, "checkout", "--", ".")  # the checkout is clean again; the installed code is not

    record = record_of_installed(tmp_path / "site", cwd=tmp_path)
    assert record["vae_cli"] == {
        "version": VERSION,
        "install": "wheel",
        "commit": git(clone, "rev-parse", "HEAD"),
        "modified": True,
    }


@pytest.mark.slow
def test_an_sdists_build_names_the_version_only(clone, tmp_path):
    """Even unpacked inside some other repository (here the clone): that one is not the source."""
    build = "import sys; from setuptools import build_meta; print(build_meta.build_sdist(sys.argv[1]))"
    name = subprocess.run(
        [sys.executable, "-c", build, str(tmp_path / "sdist")], cwd=clone, capture_output=True, text=True, check=True
    ).stdout.splitlines()[-1]
    shutil.unpack_archive(tmp_path / "sdist" / name, clone / "unpacked")
    (unpacked,) = (clone / "unpacked").iterdir()
    wheel = build_wheel(unpacked, tmp_path / "dist")
    assert json.loads(zipfile.ZipFile(wheel).read("vae_cli/_build.json")) == {"version": VERSION}
    pip("install", "--target", str(tmp_path / "site"), str(wheel))
    assert record_of_installed(tmp_path / "site", cwd=tmp_path)["vae_cli"] == {"version": VERSION, "install": "wheel"}
    # Its code run where it lies (as an editable install of it would) names no commit either.
    assert record_of_installed(unpacked, cwd=tmp_path)["vae_cli"] == {"version": VERSION, "install": "editable"}


@pytest.mark.slow
def test_an_editable_install_names_the_checkouts_live_commit(clone, tmp_path):
    out = pip("install", "-v", "--target", str(tmp_path / "site"), "-e", str(clone))
    assert "Customization incompatible with editable install" not in out  # setuptools' word for a failed build step
    later = commit(clone, "later")
    record = record_of_installed(tmp_path / "site", cwd=tmp_path, runs_from=clone)
    assert record["vae_cli"] == {"version": VERSION, "install": "editable", "commit": later, "modified": False}

    append(clone / "vae_cli" / "__init__.py", "# live code\n")
    record = record_of_installed(tmp_path / "site", cwd=tmp_path, runs_from=clone)
    assert record["vae_cli"] == {"version": VERSION, "install": "editable", "commit": later, "modified": True}


def test_a_package_not_imported_yet_is_recorded_with_its_installed_distributions_version(monkeypatch, tmp_path):
    import importlib.metadata
    import sys

    for module in ("optuna", "omegaconf"):  # not imported: the record reads sys.modules only, imports nothing
        monkeypatch.setitem(sys.modules, module, None)
    versions = provenance.collect(["vae-train"], tmp_path)["versions"]
    assert versions["optuna"] == importlib.metadata.version("optuna")
    assert versions["omegaconf"] == importlib.metadata.version("omegaconf")
