"""Sweeps (vae-train --multirun): the joblib launcher's parallel jobs, and hparams_search=optuna, a study in a real
database (SQLite, and PostgreSQL where installed) driven by real vae-train processes: its search space, its best
parameters, stopped by a signal and resumed, shared by two workers, pruned. The SLURM launcher is in test_slurm.py,
a sweep that outlives a failing job in test_faults.py."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from conftest import QUIET, run_tool, run_vae_train

optuna = pytest.importorskip("optuna", reason="install the test extra: pip install -e '.[test]'")
from optuna.trial import TrialState  # noqa: E402

SEARCH = ["--multirun", "hparams_search=optuna", "hydra.sweeper.sampler.seed=0", *QUIET]


def study(sweep: Path, name: str = "vae", url: str | None = None):
    return optuna.load_study(study_name=name, storage=url or f"sqlite:///{sweep / 'optuna.db'}")


def states(s) -> dict[int, str]:
    return {t.number: t.state.name for t in s.get_trials(deepcopy=False)}


def start(*args: str, cwd: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    exe = Path(sys.executable).parent / "vae-train"
    return subprocess.Popen(
        [str(exe), *args], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def wait_for(predicate, timeout: float = 600, what: str = ""):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_the_search_space_is_read_from_hydras_sweep_syntax():
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    from hydra_plugins.vae_cli_search._impl import search_space

    space, fixed = search_space(
        {"optim.lr": "tag(log, interval(1e-4, 3e-3))", "objective.beta": "interval(0.5, 2.0)"},
        [
            "model.latent_dim=choice(8,16)",
            "data.batch_size=range(32,129,32)",
            "objective.free_bits=interval(0, 1)",
            "trainer.max_epochs=3",
        ],
    )
    assert space == {
        "optim.lr": FloatDistribution(1e-4, 3e-3, log=True),
        "objective.beta": FloatDistribution(0.5, 2.0),
        "model.latent_dim": CategoricalDistribution([8, 16]),
        "data.batch_size": IntDistribution(32, 128, step=32),
        "objective.free_bits": FloatDistribution(0.0, 1.0),
    }
    assert fixed == ["trainer.max_epochs=3"]


@pytest.mark.slow
def test_optuna_sweep_writes_its_best_parameters(tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_vae_train(
        "--multirun",
        "hparams_search=optuna",
        "hydra.sweeper.n_trials=3",
        "trainer.max_epochs=1",
        f"hydra.sweep.dir={sweep}",
        *QUIET,
        cwd=tmp_path,
    )
    assert "alembic" not in proc.stdout  # no plugin set-up chatter
    assert f"vae-train: sweep done: {sweep}" in proc.stdout
    assert "3 jobs: 3 ok" in proc.stdout and "Optimizer's best (optimization_results.yaml): trial" in proc.stdout
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert set(best["best_params"]) == {"optim.lr", "model.latent_dim", "objective.beta", "model.hidden_dims"}
    jobs = [json.loads((sweep / str(i) / "metrics.json").read_text()) for i in range(3)]
    assert best["best_value"] == pytest.approx(max(j["best_val_elbo"] for j in jobs))
    best_job = json.loads((Path(best["best_run_dir"]) / "metrics.json").read_text())
    assert best_job["best_val_elbo"] == pytest.approx(best["best_value"])
    assert Path(best["best_run_dir"]).parent == sweep.resolve()


@pytest.mark.slow
def test_joblib_launcher_runs_jobs_in_parallel_processes(tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_vae_train(
        "--multirun",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        "model.latent_dim=2,4",
        "trainer.max_epochs=1",
        f"hydra.sweep.dir={sweep}",
        *QUIET,
        cwd=tmp_path,
    )
    assert all((sweep / str(i) / "metrics.json").is_file() for i in (0, 1))
    # The sweep's table when it ends, as vae-report prints it and with its files, whichever launcher ran the jobs.
    assert "2 jobs: 2 ok" in proc.stdout and "model.latent_dim" in proc.stdout
    assert (sweep / "report.md").is_file() and (sweep / "report.csv").is_file()
    # Each job in a process of its own recorded what made it, and the jobs agree: no note of a difference.
    assert all((sweep / str(i) / ".hydra" / "provenance.yaml").is_file() for i in (0, 1))
    assert "differs" not in proc.stdout


@pytest.mark.slow
def test_a_search_stopped_by_a_signal_resumes_to_n_trials_with_each_trial_once(tmp_path):
    sweep = tmp_path / "search"
    command = [
        *SEARCH,
        "hydra.sweeper.n_trials=4",
        "hydra.sweeper.pruner=none",
        "trainer.max_epochs=10",
        f"hydra.sweep.dir={sweep}",
    ]
    first = start(*command, cwd=tmp_path)
    try:
        # Stop it while its third trial trains (two trials finished, the third's first epoch done).
        wait_for(lambda: (sweep / "2" / "checkpoints" / "last.ckpt").is_file(), what="the third trial's first epoch")
        first.send_signal(signal.SIGTERM)
        out, _ = first.communicate(timeout=300)
    finally:
        first.kill()
    assert first.returncode == 128 + signal.SIGTERM, out
    assert "Heartbeat" not in out and "Warning" not in out
    s = study(sweep)
    assert states(s) == {0: "COMPLETE", 1: "COMPLETE", 2: "FAIL", 3: "WAITING"}  # 3: trial 2's settings, queued
    interrupted = s.trials[2].params

    proc = run_vae_train(*command, cwd=tmp_path)
    assert "Traceback" not in proc.stderr
    s = study(sweep)
    assert sorted(states(s).values()) == ["COMPLETE"] * 4 + ["FAIL"]
    assert s.trials[3].params == interrupted  # the interrupted trial's settings ran again
    complete = [t.number for t in s.trials if t.state == TrialState.COMPLETE]
    assert all((sweep / str(n) / "metrics.json").is_file() for n in complete)
    # Each trial once: its run directory's recorded overrides name it, and only it.
    for n in complete:
        overrides = yaml.safe_load((sweep / str(n) / ".hydra" / "overrides.yaml").read_text())
        assert f"search.trial={n}" in overrides
    assert s.best_value == pytest.approx(
        max(json.loads((sweep / str(n) / "metrics.json").read_text())["best_val_elbo"] for n in complete)
    )
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert best["best_trial"] == s.best_trial.number and best["trials"] == {"complete": 4, "fail": 1}


@pytest.mark.slow
def test_two_workers_share_one_study_without_duplicates(tmp_path):
    sweep = tmp_path / "search"
    command = [
        *SEARCH,
        "hydra.sweeper.n_trials=5",
        "hydra.sweeper.pruner=none",
        "trainer.max_epochs=1",
        "hydra.sweeper.sampler.seed=null",
        f"hydra.sweep.dir={sweep}",
    ]
    workers = [start(*command, cwd=tmp_path) for _ in range(2)]
    outs = [w.communicate(timeout=600)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], outs
    s = study(sweep)
    complete = sorted(t.number for t in s.trials if t.state == TrialState.COMPLETE)
    assert len(complete) == 5
    # Who ran what, from each worker's own log: every complete trial by exactly one worker, and both worked.
    ran = [{n for n in complete if f"trial {n}: " in out} for out in outs]
    assert ran[0] | ran[1] == set(complete) and not ran[0] & ran[1] and ran[0] and ran[1], outs
    assert all(t.user_attrs.get("surplus") for t in s.trials if t.state == TrialState.FAIL)
    # Optuna's own figures of the study, beside its results.
    assert all(
        (sweep / f"{name}.{ext}").stat().st_size > 1000
        for name in ("optimization_history", "param_importances")
        for ext in ("png", "svg")
    )


@pytest.mark.slow
def test_a_pruned_trial_stops_early_and_says_so(tmp_path):
    sweep = tmp_path / "search"
    # A pruner that prunes at the first report: every ELBO is below 0.
    run_vae_train(
        *SEARCH,
        "hydra.sweeper.n_trials=2",
        "trainer.max_epochs=5",
        "hydra.sweeper.pruner={_target_:optuna.pruners.ThresholdPruner,lower:0.0}",
        f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
    )
    s = study(sweep)
    assert states(s) == {0: "PRUNED", 1: "PRUNED"}
    for n in (0, 1):
        record = json.loads((sweep / str(n) / "pruned.json").read_text())
        assert record["epoch"] == 0 and record["trial"] == n
        assert s.trials[n].intermediate_values == {0: pytest.approx(record["value"])}
        assert not (sweep / str(n) / "metrics.json").exists()
        assert "pruned by the search after epoch 0" in (sweep / str(n) / "train.log").read_text()
    report = run_tool("vae-report", str(sweep), cwd=tmp_path)
    assert "2 pruned" in report.stdout


REFUSED = "data.val_size=5000"  # digits has 1,797 images: vae-train refuses every trial at start-up
REFUSAL = "vae-train: error: data.val_size=5000 gives 5000 validation examples"


def trial_folders(sweep: Path) -> list[str]:
    return sorted((p.name for p in sweep.iterdir() if p.is_dir() and p.name.isdigit()), key=int)


@pytest.mark.slow
@pytest.mark.parametrize("n_trials, ran", [(2, 2), (10, 3)])  # n_trials reached; 3 failures in a row (the default)
def test_a_search_whose_every_trial_fails_ends_with_the_first_failure(tmp_path, n_trials, ran):
    sweep = tmp_path / "search"
    proc = run_vae_train(
        *SEARCH,
        f"hydra.sweeper.n_trials={n_trials}",
        REFUSED,
        "trainer.max_epochs=1",
        f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
        check=False,
        timeout=180,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.splitlines()[-1].startswith(REFUSAL) and "Traceback" not in proc.stderr
    assert trial_folders(sweep) == [str(n) for n in range(ran)]
    s = study(sweep)
    assert states(s) == {n: "FAIL" for n in range(ran)}
    assert s.trials[0].user_attrs["error"].startswith(REFUSAL.removeprefix("vae-train: error: "))


@pytest.mark.slow
def test_failures_not_in_a_row_count_as_trials_and_the_search_reaches_n_trials(tmp_path):
    sweep = tmp_path / "search"
    sweep.mkdir()
    # The trials' settings in this order (the sweeper takes queued settings first): two failures in a row, never three.
    ahead = optuna.create_study(study_name="vae", storage=f"sqlite:///{sweep / 'optuna.db'}", direction="maximize")
    for val_size in (5000, 5000, 200, 5000, 5000):
        ahead.enqueue_trial({"data.val_size": val_size})
    proc = run_vae_train(
        *SEARCH,
        "hydra.sweeper.n_trials=5",
        "data.val_size=choice(5000,200)",
        "hydra.sweeper.pruner=none",
        "trainer.max_epochs=1",
        f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
        check=False,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.splitlines()[-1].startswith(REFUSAL) and "Traceback" not in proc.stderr
    assert states(study(sweep)) == {0: "FAIL", 1: "FAIL", 2: "COMPLETE", 3: "FAIL", 4: "FAIL"}
    assert trial_folders(sweep) == ["0", "1", "2", "3", "4"]
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert results["best_trial"] == 2 and results["trials"] == {"complete": 1, "fail": 4}


def test_a_negative_number_of_failures_in_a_row_is_refused(tmp_path):
    proc = run_vae_train(
        *SEARCH,
        "hydra.sweeper.max_failures_in_a_row=-1",
        f"hydra.sweep.dir={tmp_path / 's'}",
        cwd=tmp_path,
        check=False,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("vae-train: error: hydra.sweeper.max_failures_in_a_row=-1: a count of trials")


@pytest.mark.slow
def test_an_unreachable_database_is_named_with_the_fix(tmp_path):
    proc = run_vae_train(
        *SEARCH,
        "hydra.sweeper.storage=postgresql+psycopg2://nobody@127.0.0.1:9/none",
        f"hydra.sweep.dir={tmp_path / 's'}",
        cwd=tmp_path,
        check=False,
    )
    assert proc.returncode != 0
    assert "Optuna cannot open this database" in proc.stderr and "Traceback" not in proc.stderr


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


PASSWORD = "S3cretPW"


@pytest.fixture
def postgres():
    """A PostgreSQL server of its own in a temporary directory, as the postgres user (it refuses root)."""
    bindir = Path("/usr/lib/postgresql")
    versions = sorted(bindir.glob("*/bin/initdb"))
    if not versions or shutil.which("runuser") is None:
        pytest.skip("PostgreSQL is not installed (Debian: apt-get install postgresql)")
    pytest.importorskip("psycopg2", reason="install the test extra: pip install -e '.[test]'")
    bin_ = versions[-1].parent
    data = Path(tempfile.mkdtemp(prefix="vae-pg-"))  # not below pytest's own folder, which only root may enter
    shutil.chown(data, "postgres")
    port = free_port()

    def as_postgres(*cmd):
        done = subprocess.run(["runuser", "-u", "postgres", "--", *map(str, cmd)], capture_output=True, text=True)
        assert done.returncode == 0, f"{cmd[0]}: {done.stdout}{done.stderr}"

    # Over TCP, as the study is opened, the server asks for the password; over its socket, as set up here, not.
    as_postgres(bin_ / "initdb", "-D", data / "db", "--auth-local=trust", "--auth-host=scram-sha-256", "-U", "postgres")
    as_postgres(
        bin_ / "pg_ctl",
        "-D",
        data / "db",
        "-l",
        data / "log",
        "-w",
        "-o",
        f"-p {port} -k {data} -c listen_addresses=127.0.0.1",
        "start",
    )
    try:
        as_postgres(bin_ / "psql", "-h", data, "-p", port, "-c", f"ALTER USER postgres PASSWORD '{PASSWORD}'")
        as_postgres(bin_ / "createdb", "-h", data, "-p", port, "search")
        yield f"postgresql+psycopg2://postgres:{PASSWORD}@127.0.0.1:{port}/search"
    finally:
        as_postgres(bin_ / "pg_ctl", "-D", data / "db", "-m", "immediate", "stop")
        shutil.rmtree(data, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.parametrize("form", ["userinfo", "query"])  # user:PASSWORD@host, or host/db?...&password=PASSWORD
def test_a_study_in_postgresql_with_its_password_never_written_or_shown(tmp_path, postgres, form):
    sweep = tmp_path / "search"
    url = (
        postgres
        if form == "userinfo"
        else (postgres.replace(f":{PASSWORD}@", "@") + f"?connect_timeout=10&password={PASSWORD}")
    )
    proc = run_vae_train(
        *SEARCH,
        "hydra.sweeper.n_trials=2",
        "trainer.max_epochs=1",
        f"hydra.sweeper.storage='{url}'",
        f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
    )
    s = study(sweep, url=url)
    assert states(s) == {0: "COMPLETE", 1: "COMPLETE"}  # the jobs opened the study with the password
    assert not (sweep / "optuna.db").exists()
    assert PASSWORD not in proc.stdout + proc.stderr
    assert f"study vae in {url.replace(PASSWORD, '***')}: 0 of 2 trials run" in proc.stdout
    assert url.replace(PASSWORD, "***") in (sweep / "0" / ".hydra" / "hydra.yaml").read_text()
    written = [p for p in tmp_path.rglob("*") if p.is_file() and PASSWORD.encode() in p.read_bytes()]
    assert written == []


@pytest.mark.slow
def test_a_sweep_with_a_failed_job_ends_with_its_table_and_one_line(tmp_path):
    """The failed job says why at once; the others run; the sweep ends with the table (and report.md) listing how
    each job ended, then one line, and no account of Hydra's naming a job."""
    sweep = tmp_path / "sweep"
    proc = run_vae_train(
        "--multirun",
        "model.latent_dim=0,2",
        "trainer.max_epochs=1",
        f"hydra.sweep.dir={sweep}",
        *QUIET,
        cwd=tmp_path,
        check=False,
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "Error executing job" not in proc.stderr + proc.stdout
    assert "NOT FINISHED (1):" in proc.stdout and "job 0  model.latent_dim=0  (failed)" in proc.stdout
    assert (sweep / "report.md").is_file() and (sweep / "1" / "metrics.json").is_file()
    assert proc.stderr.splitlines()[-1] == (
        "vae-train: error: 1 of the sweep's jobs did not finish (the table above says how each ended); job 0: "
        "model.latent_dim=0 is not a valid latent dimension K; use an integer >= 1, e.g. 16."
    )


@pytest.mark.slow
def test_a_sweep_stopped_by_a_signal_ends_with_its_table(tmp_path, helpers):
    sweep = tmp_path / "sweep"
    proc = run_vae_train(
        "--multirun",
        "seed=0,1",
        "trainer.max_epochs=2",
        f"hydra.sweep.dir={sweep}",
        "+callbacks.sig._target_=fault_helpers.SignalAt",
        "+callbacks.sig.at=step:5",
        "+callbacks.sig.signum=SIGINT",
        *QUIET,
        cwd=tmp_path,
        check=False,
    )
    assert proc.returncode == 130, proc.stderr
    assert "vae-train: sweep stopped:" in proc.stdout and "NOT FINISHED (1):" in proc.stdout
    assert (
        "SIGINT in epoch 1 at step 5; resume: vae-train ckpt_path=" in proc.stdout and (sweep / "report.md").is_file()
    )
    assert "SIGINT: stopped in epoch 1 at step 5; the exact state is in" in proc.stdout
    assert not (sweep / "1").exists()  # the sweep stopped before its next job
