"""What made a run: each invocation's provenance.yaml (code, versions, machine, command line), vae-report naming
what differs between a sweep's jobs, and passwords in URLs masked everywhere, against SQLAlchemy's own rendering."""
import json
import platform
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import QUIET, run_vae_train

from vae_cli.cli import provenance, report
from vae_cli.cli.secrets import mask

SHORT = ["trainer.max_epochs=1", "++trainer.limit_train_batches=2", *QUIET]


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=True).stdout.strip()


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
        "python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__,
        "pytorch_lightning": pytorch_lightning.__version__, "hydra": hydra.__version__,
        "omegaconf": omegaconf.__version__, "optuna": first["versions"]["optuna"], "numpy": numpy.__version__}
    head = git(experiment_repo, "rev-parse", "HEAD")
    assert first["experiment_repository"] == {"path": str(experiment_repo), "commit": head, "modified": False}
    assert first["machine"]["device"] == "cpu" and first["machine"]["gpu"] is None
    threads = subprocess.run([sys.executable, "-c", "import torch; print(torch.get_num_threads())"],
                             capture_output=True, text=True, check=True).stdout
    assert first["machine"]["torch_threads"] == int(threads)
    assert first["vae_cli"]["version"] == __import__("vae_cli").__version__
    source = Path(__import__("vae_cli").__file__).resolve().parents[1]
    if (source / ".git").exists():  # installed from a clone (editable, as in CI): its commit is recorded
        assert first["vae_cli"]["commit"] == git(source, "rev-parse", "HEAD")
        assert first["vae_cli"]["modified"] == bool(git(source, "status", "--porcelain", "--untracked-files=no"))

    # A resume after a tracked file changed: a record of its own, the first left as it was.
    before = (run / ".hydra" / provenance.FILE).read_bytes()
    (experiment_repo / "notes.md").write_text("K = 3\n")
    run_vae_train(f"ckpt_path={run}", "trainer.max_epochs=2", "++trainer.limit_train_batches=2", *QUIET,
                  cwd=experiment_repo)
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
    record = {"command": "vae-train", "vae_cli": {"version": "0.1.0", "commit": "a" * 40, "modified": False},
              "versions": {"python": "3.11.7", "torch": torch_version, "numpy": "2.4.6"},
              "machine": {"host": host, "cpu": "Xeon", "torch_threads": 1, "device": "cpu", "gpu": None}}
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


@pytest.mark.parametrize("url", [
    "postgresql+psycopg2://alice:S3cretPW@db.example.org:5432/vae",
    "mysql://bob:p%40ss:word@localhost/db",
    "postgresql://:onlypw@host/db",
    "redis://user:pw@host:6379/0",
])
def test_a_urls_password_is_masked_as_sqlalchemy_renders_it(url):
    from sqlalchemy.engine import make_url

    assert mask(url) == make_url(url).render_as_string(hide_password=True)
    text = f"hydra.sweeper.storage={url}: cannot open (could not connect to {url})"
    assert mask(text) == text.replace(url, make_url(url).render_as_string(hide_password=True))


def test_urls_without_a_password_and_other_text_are_left_alone():
    for text in ("sqlite:////tmp/a:b/optuna.db", "postgresql://alice@host/db", "http://host:8080/path",
                 "user:pw@host", "a time 10:20@noon", "file:///x/y"):
        assert mask(text) == text


@pytest.mark.slow
def test_an_unreachable_databases_password_is_neither_printed_nor_written(tmp_path):
    url = "postgresql+psycopg2://alice:S3cretPW@127.0.0.1:9/vae"
    proc = run_vae_train("--multirun", "hparams_search=optuna", f"hydra.sweeper.storage={url}", *QUIET,
                         f"hydra.sweep.dir={tmp_path / 'sweep'}", cwd=tmp_path, check=False)
    assert proc.returncode != 0 and "Optuna cannot open this database" in proc.stderr
    assert "postgresql+psycopg2://alice:***@127.0.0.1:9/vae" in proc.stderr
    assert "S3cretPW" not in proc.stdout + proc.stderr
    assert not [p for p in tmp_path.rglob("*") if p.is_file() and b"S3cretPW" in p.read_bytes()]


def test_provenance_settings_name_the_versions_and_commits():
    record = {"versions": {"torch": "2.14.1", "optuna": None}, "vae_cli": {"version": "0.1.0", "commit": "c" * 40,
                                                                          "modified": True},
              "experiment_repository": None, "machine": {"host": "h"}}
    assert provenance.settings(record) == {"version/torch": "2.14.1", "version/vae_cli": "0.1.0",
                                           "code/vae_cli_commit": "c" * 40 + "+modified", "machine/host": "h"}


def test_reading_the_record_needs_neither_torch_nor_hydra(tmp_path):
    code = ("import sys; from vae_cli.cli.sweep import jobs; "
            "print(sorted(m for m in ('torch', 'hydra', 'pytorch_lightning') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
