"""vae-report on fake sweep directories written here, and once on a real two-by-two sweep."""

import csv
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from vae_cli.cli import report
from vae_cli.cli.sweep import jobs, tables

from conftest import QUIET, run_vae_train

CONSTANT = "trainer.max_epochs=5"
ERROR_MSG = "KL(q(z|x) || p(z)) is not finite at step 40; last.ckpt holds the last good state."
LOG_PREFIX = "[2026-11-25 16:03:10,437]"
INFO = f"{LOG_PREFIX}[vae_cli.data][INFO] - digits: 1350 train, 150 val, 297 test examples"
TRACEBACK = """Traceback (most recent call last):
  File "/work/vae_cli/train.py", line 150, in fit
    trainer.fit(model)
    ~~~~~~~~~~~^^^^^^^
{exc}"""


def metrics_of(latent_dim: int, seed: int) -> dict:
    # Distinct, non-round values, so a wrong row or a lost digit shows.
    elbo = -100.0 - latent_dim / 3 - seed * 2.0 - 0.000123456789
    kl = 1.0 + latent_dim * 0.37 + seed * 0.011
    return {
        "test/bpd": -elbo / 64 / 0.6931471805599453,
        "test/elbo": elbo,
        "test/kl": kl,
        "test/loss": -elbo,
        "test/recon_loss": -elbo - kl,
        "best_val_elbo": elbo - 0.5 - seed * 0.25,
        "best_checkpoint": "checkpoints/best.ckpt",
        "epochs": 5,
        "global_step": 55,
        "seed": seed,
    }


def make_job(
    sweep: Path,
    num: int,
    latent_dim: int,
    seed: int,
    *,
    ok: bool = True,
    log: str = INFO,
    train_seconds: float | None = None,
) -> dict | None:
    d = sweep / str(num)
    (d / ".hydra").mkdir(parents=True)
    (d / ".hydra" / "overrides.yaml").write_text(f"- model.latent_dim={latent_dim}\n- seed={seed}\n- {CONSTANT}\n")
    (d / "train.log").write_text(log + "\n")
    if not ok:
        return None
    m = metrics_of(latent_dim, seed)
    (d / "metrics.json").write_text(json.dumps(m, indent=2))
    (d / "timing.json").write_text(json.dumps({"train_seconds": train_seconds or 10.0 + num}))
    return m


@pytest.fixture
def sweep(tmp_path) -> tuple[Path, dict[int, dict]]:
    """Nine jobs: latent_dim 2, 8, 64 with seeds 0, 1 (job 7 unfinished), 32 failing both ways, 128 crashed."""
    s = tmp_path / "multirun" / "2026-11-25" / "16-03-10"
    ok = {
        0: make_job(s, 0, 2, 0),
        1: make_job(s, 1, 2, 1),
        2: make_job(s, 2, 8, 0),
        3: make_job(s, 3, 8, 1),
        6: make_job(s, 6, 64, 0),
    }
    make_job(s, 4, 32, 0, ok=False, log=f"{INFO}\n{LOG_PREFIX}[vae_cli][ERROR] - {ERROR_MSG}")
    make_job(
        s,
        5,
        32,
        1,
        ok=False,
        log=f"{INFO}\n{LOG_PREFIX}[vae_cli][ERROR] - the run failed\n" + TRACEBACK.format(exc="ValueError: boom"),
    )
    make_job(s, 7, 64, 1, ok=False)  # started, nothing recorded yet
    # A chained exception: the last traceback is the one finally raised.
    make_job(
        s,
        8,
        128,
        0,
        ok=False,
        log=f"{INFO}\n"
        + TRACEBACK.format(exc="KeyError: 'x'")
        + "\n\nDuring handling of the above exception, another exception occurred:\n\n"
        + TRACEBACK.format(exc="torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"),
    )
    (s / "multirun.yaml").write_text("hydra: {}\n")
    (s / "optimization_results.yaml").write_text(
        "name: optuna\nbest_params:\n  model.latent_dim: 8\nbest_value: -99.5\n"
    )
    # vae-eval's estimate for one job: its column appears by default.
    (s / "3" / "eval_test_k100.json").write_text(json.dumps({"nll_iw": 98.123456, "iw_samples": 100}))
    return s, ok


def run_report(capsys, *args) -> str:
    report.main([str(a) for a in args])
    return capsys.readouterr().out


def table_rows(text: str, heading_start: str) -> tuple[list[str], dict[str, list[str]]]:
    """The header and the rows (keyed by first cell) of the terminal table whose header line starts
    with `heading_start`; cells are split on runs of two or more spaces."""
    lines = text.splitlines()
    i = next(k for k, line in enumerate(lines) if line.startswith(heading_start))
    header = re.split(r" {2,}", lines[i].strip())
    assert set(lines[i + 1].replace(" ", "")) == {"-"}  # the rule under the header
    rows = {}
    for line in lines[i + 2 :]:
        if not line.strip():
            break
        cells = re.split(r" {2,}", line.strip())
        assert len(cells) == len(header), line
        rows[cells[0]] = cells
    return header, rows


def test_terminal_table_has_varying_overrides_status_and_metrics(sweep, capsys):
    s, ok = sweep
    out = run_report(capsys, s)
    assert f"Same in every job: {CONSTANT}" in out
    assert "9 jobs: 5 ok, 3 failed, 1 incomplete" in out
    assert "Optimizer's best (optimization_results.yaml): -99.5 at model.latent_dim=8" in out
    header, rows = table_rows(out, "job ")
    assert header == [
        "job",
        "model.latent_dim",
        "seed",
        "status",
        "test/elbo",
        "test/recon_loss",
        "test/kl",
        "test/bpd",
        "best_val_elbo",
        "test/nll_iw_k100",
        "epochs",
        "train_seconds",
    ]
    assert list(rows) == [str(n) for n in range(9)]  # every job, in job order
    for num, m in ok.items():
        row = dict(zip(header, rows[str(num)]))
        assert row["status"] == "ok"
        for key in ("test/elbo", "test/recon_loss", "test/kl", "test/bpd", "best_val_elbo"):
            assert row[key] == f"{m[key]:.4f}"
        assert row["epochs"] == "5" and row["train_seconds"] == f"{10.0 + num:.1f}"
    assert dict(zip(header, rows["3"]))["test/nll_iw_k100"] == "98.1235"
    assert dict(zip(header, rows["2"]))["test/nll_iw_k100"] == "-"
    statuses = {n: dict(zip(header, r))["status"] for n, r in rows.items()}
    assert statuses == {
        "0": "ok",
        "1": "ok",
        "2": "ok",
        "3": "ok",
        "4": "failed",
        "5": "failed",
        "6": "ok",
        "7": "incomplete",
        "8": "failed",
    }
    # Numbers are right-aligned: every kl cell (1.7400 and 24.6800 differ in width) ends where the rule does.
    lines = out.splitlines()
    start = next(k for k, line in enumerate(lines) if line.startswith("job "))
    rule = list(re.finditer("-+", lines[start + 1]))[header.index("test/kl")]
    for num in ok:
        line = next(line for line in lines[start + 2 :] if line.split()[0] == str(num))
        assert line[rule.start() : rule.end()].strip() == f"{ok[num]['test/kl']:.4f}" and line[rule.end() - 1] != " "


def test_seed_groups_give_mean_and_sample_std(sweep, capsys):
    s, ok = sweep
    out = run_report(capsys, s)
    header, rows = table_rows(out, "model.latent_dim ")
    assert header == [
        "model.latent_dim",
        "n",
        "jobs",
        "test/elbo",
        "test/recon_loss",
        "test/kl",
        "test/bpd",
        "best_val_elbo",
        "test/nll_iw_k100",
    ]
    assert list(rows) == ["2", "8", "32", "64", "128"]
    for dim, nums in (("2", (0, 1)), ("8", (2, 3))):
        row = dict(zip(header, rows[dim]))
        assert row["n"] == "2" and row["jobs"] == ",".join(map(str, nums))
        for key in ("test/elbo", "test/recon_loss", "test/kl", "test/bpd", "best_val_elbo"):
            values = [ok[j][key] for j in nums]
            assert row[key] == f"{statistics.fmean(values):.4f} ± {statistics.stdev(values):.4f}"
    # By hand: the two seeds' ELBOs differ by exactly 2, so the sample std is sqrt(2) (the population one is 1).
    assert dict(zip(header, rows["2"]))["test/elbo"] == f"{-100.0 - 2 / 3 - 1.0 - 0.000123456789:.4f} ± 1.4142"
    one = dict(zip(header, rows["64"]))  # seed 1 never finished: n = 1, no std
    assert one["n"] == "1" and one["jobs"] == "6,7" and one["test/elbo"] == f"{ok[6]['test/elbo']:.4f} ± -"
    none = dict(zip(header, rows["32"]))
    assert none["n"] == "0" and none["test/elbo"] == "-"


def test_failed_jobs_are_listed_with_their_error(sweep, capsys):
    s, _ = sweep
    out = run_report(capsys, s)
    section = out[out.index("NOT FINISHED (4):") :].splitlines()[1:]
    assert [line.split()[:2] for line in section[::2]] == [["job", "4"], ["job", "5"], ["job", "7"], ["job", "8"]]
    assert "model.latent_dim=32 seed=0" in section[0]
    assert [line.strip() for line in section[1::2]] == [
        ERROR_MSG,  # the log prefix stripped
        "the run failed: ValueError: boom",  # log.exception(): the message and the exception it carried
        jobs.NO_ERROR,
        "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB",  # a bare traceback's last line
    ]
    assert "[ERROR]" not in out


def test_markdown_is_a_pipe_table(sweep, capsys):
    s, ok = sweep
    run_report(capsys, s)
    md = (s / "report.md").read_text()
    lines = md.splitlines()
    i = lines.index("## Jobs") + 2
    table = lines[i : lines.index("", i)]
    cells = [line.strip("|").split(" | ") for line in table]
    assert all(line.startswith("| ") and line.endswith(" |") for line in table[:1] + table[2:])
    assert [c.strip() for c in cells[0]][:4] == ["job", "model.latent_dim", "seed", "status"]
    assert table[1].split("|")[1:-1] == ["---:", "---:", "---:", "---"] + ["---:"] * 8
    assert len(table) == 2 + 9 and all(len(c) == len(cells[0]) for c in cells[2:])
    row = [c.strip() for c in cells[2 + 1]]
    assert row[:4] == ["1", "2", "1", "ok"] and row[4] == f"{ok[1]['test/elbo']:.4f}"
    assert "## Mean ± sample std over seeds" in md
    # The pipes in the error message are escaped, so they do not split the Markdown.
    failed = lines[lines.index("## Not finished (4)") + 2 :]
    assert failed[:2] == ["| job | overrides | status | why |", "|---:|---|---|---|"]
    assert failed[2] == f"| 4 | model.latent_dim=32 seed=0 | failed | {ERROR_MSG.replace('|', chr(92) + '|')} |"
    assert [line.split(" | ")[0] for line in failed[2:]] == ["| 4", "| 5", "| 7", "| 8"]


def test_csv_has_one_row_per_job_at_full_precision(sweep, capsys, tmp_path):
    s, ok = sweep
    run_report(capsys, s, "--csv", tmp_path / "out.csv", "--markdown", tmp_path / "out.md")
    assert (tmp_path / "out.md").read_text().startswith(f"# Sweep {s}")
    assert not (s / "report.csv").exists() and not (s / "report.md").exists()
    with open(tmp_path / "out.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["job"] for r in rows] == [str(n) for n in range(9)]
    for num, m in ok.items():
        r = rows[num]
        assert r["status"] == "ok" and r["error"] == "" and r["trainer.max_epochs"] == "5"
        assert r["model.latent_dim"] and r["seed"] == str(m["seed"])
        for key in ("test/elbo", "test/recon_loss", "test/kl", "test/bpd", "best_val_elbo", "test/loss"):
            assert float(r[key]) == m[key]  # exact: nothing rounded
        assert r["global_step"] == "55" and float(r["train_seconds"]) == 10.0 + num
    assert rows[4]["status"] == "failed" and rows[4]["error"] == ERROR_MSG and rows[4]["test/elbo"] == ""
    assert rows[7]["status"] == "incomplete" and rows[7]["error"] == jobs.NO_ERROR
    assert float(rows[3]["test/nll_iw_k100"]) == 98.123456


def test_metrics_and_sort_options(sweep, capsys):
    s, ok = sweep
    out = run_report(capsys, s, "--metrics", "test/kl,global_step", "--sort=-test/elbo")
    header, rows = table_rows(out, "job ")
    assert header == ["job", "model.latent_dim", "seed", "status", "test/kl", "global_step", "epochs", "train_seconds"]
    finished = sorted(ok, key=lambda n: -ok[n]["test/elbo"])
    assert list(rows) == [str(n) for n in finished] + ["4", "5", "7", "8"]  # unfinished jobs last
    out = run_report(capsys, s, "--sort", "model.latent_dim")
    assert [r[1] for r in table_rows(out, "job ")[1].values()] == ["2", "2", "8", "8", "32", "32", "64", "64", "128"]


def vae_report(*args, cwd: Path) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).parent / "vae-report"
    assert exe.exists(), "vae-report is not installed: run `pip install -e .`"
    return subprocess.run([str(exe), *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("case", ["missing", "empty", "unknown-metric"])
def test_bad_input_exits_2_with_one_line(sweep, tmp_path, case):
    s, _ = sweep
    (tmp_path / "empty").mkdir()
    args, expected = {
        "missing": ([tmp_path / "nope"], f"vae-report: error: {tmp_path / 'nope'} does not exist"),
        "empty": ([tmp_path / "empty"], f"vae-report: error: {tmp_path / 'empty'} holds no job directories"),
        "unknown-metric": ([s, "--metrics", "test/elbo,test/nll"], "vae-report: error: no job has metric test/nll;"),
    }[case]
    proc = vae_report(*args, cwd=tmp_path)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.startswith(expected) and proc.stderr.count("\n") == 1, proc.stderr


@pytest.mark.slow
def test_real_sweep_with_failing_jobs(tmp_path):
    """A real 2 x 2 sweep in which latent_dim=0 fails at start-up: the report shows both sides."""
    proc = run_vae_train(
        "--multirun",
        "model.latent_dim=0,2",
        "seed=0,1",
        "trainer.max_epochs=1",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        *QUIET,
        cwd=tmp_path,
        check=False,
    )
    assert proc.returncode != 0  # Hydra fails the sweep at the end, after running every job
    out = vae_report(tmp_path / "sweep", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "4 jobs: 2 ok, 2 failed" in text
    header, rows = table_rows(text, "job ")
    by_job = {r[0]: dict(zip(header, r)) for r in rows.values()}
    assert [(r["model.latent_dim"], r["status"]) for r in by_job.values()] == [
        ("0", "failed"),
        ("0", "failed"),
        ("2", "ok"),
        ("2", "ok"),
    ]
    assert all(float(by_job[n]["test/elbo"]) < 0 for n in ("2", "3"))
    failed = text[text.index("NOT FINISHED (2):") :]
    assert failed.count("model.latent_dim=0 is not a valid latent dimension") == 2
    header, groups = table_rows(text, "model.latent_dim ")
    two = dict(zip(header, groups["2"]))
    assert two["n"] == "2" and two["jobs"] == "2,3" and " ± " in two["test/elbo"]
    elbos = [json.loads((tmp_path / "sweep" / n / "metrics.json").read_text())["test/elbo"] for n in ("2", "3")]
    assert two["test/elbo"] == f"{statistics.fmean(elbos):.4f} ± {statistics.stdev(elbos):.4f}"
    with open(tmp_path / "sweep" / "report.csv", newline="") as f:
        assert [r["status"] for r in csv.DictReader(f)] == ["failed", "failed", "ok", "ok"]


def test_latest_is_the_newest_sweep_below_the_working_directory(sweep, tmp_path, capsys, monkeypatch):
    s, _ = sweep
    shutil.copytree(s, tmp_path / "outputs" / "multirun" / "2026-11-25" / "16-03-10")
    (tmp_path / "outputs" / "multirun" / "2026-11-24" / "23-59-59").mkdir(parents=True)  # older, empty
    monkeypatch.chdir(tmp_path)
    out = run_report(capsys, "latest")
    assert "9 jobs: 5 ok, 3 failed, 1 incomplete" in out and "2026-11-25/16-03-10" in out
    monkeypatch.chdir(tmp_path / "outputs")  # no outputs/multirun below here
    with pytest.raises(SystemExit) as e:
        report.main(["latest"])
    assert e.value.code == 2 and "there is no sweep under outputs/multirun/" in capsys.readouterr().err


def test_an_interrupted_job_is_shown_as_interrupted_with_its_resume_command(sweep, capsys):
    s, _ = sweep
    (s / "7" / "interrupted.json").write_text(
        json.dumps(
            {
                "signal": "SIGTERM",
                "epoch": 2,
                "global_step": 27,
                "checkpoint": "7/checkpoints/interrupted.ckpt",
                "resume": "vae-train ckpt_path=7/checkpoints/interrupted.ckpt model.latent_dim=64",
            }
        )
    )
    out = run_report(capsys, s)
    assert "9 jobs: 5 ok, 3 failed, 1 interrupted" in out
    header, rows = table_rows(out, "job ")
    assert dict(zip(header, rows["7"]))["status"] == "interrupted"
    assert "SIGTERM at step 27; resume: vae-train ckpt_path=7/checkpoints/interrupted.ckpt" in out


def test_a_requeued_job_waiting_for_slurm_is_not_listed_as_failed(sweep, capsys):
    s, _ = sweep
    (s / "7" / "interrupted.json").write_text(
        json.dumps(
            {
                "signal": "SIGUSR1",
                "stopped": "in epoch 2 at step 27",
                "epoch": 2,
                "global_step": 27,
                "checkpoint": "7/checkpoints/interrupted.ckpt",
                "resume": "vae-train ckpt_path=7/checkpoints/interrupted.ckpt",
                "requeued": True,
            }
        )
    )
    out = run_report(capsys, s)
    assert "9 jobs: 5 ok, 3 failed, 1 requeued" in out
    header, rows = table_rows(out, "job ")
    assert dict(zip(header, rows["7"]))["status"] == "requeued"
    assert (
        "SIGUSR1 in epoch 2 at step 27; waiting for SLURM to restart it, then it resumes from "
        "7/checkpoints/interrupted.ckpt"
    ) in out


def test_a_failed_jobs_error_json_is_read_whatever_the_log_looks_like(sweep, capsys):
    s, _ = sweep
    (s / "4" / "train.log").write_text("ERROR the run's log in a format of the user's choosing\n")
    (s / "4" / "error.json").write_text(
        json.dumps(
            {
                "type": "vae_cli.errors.UserError",
                "message": ERROR_MSG,
                "traceback": None,
                "overrides": ["model.latent_dim=32", "seed=0"],
                "time": "2026-11-25T16:03:11+00:00",
            }
        )
    )
    (s / "5" / "train.log").write_text("")
    (s / "5" / "error.json").write_text(
        json.dumps(
            {
                "type": "torch.OutOfMemoryError",
                "message": "CUDA out of memory",
                "traceback": "Traceback ...",
                "overrides": ["model.latent_dim=32", "seed=1"],
                "time": "2026-11-25T16:03:12+00:00",
            }
        )
    )
    (s / "7" / "error.json").write_text("{not json")
    out = run_report(capsys, s)
    section = out[out.index("NOT FINISHED (4):") :].splitlines()[1:]
    assert [line.strip() for line in section[1:6:2]] == [
        ERROR_MSG,  # a UserError: its message, written for the user
        "torch.OutOfMemoryError: CUDA out of memory",  # a bug: its type too
        "error.json: not valid JSON: Expecting property name enclosed in double quotes: line 1 column 2 (char 1)",
    ]


def test_a_newer_interruption_outranks_an_older_error(sweep, capsys):
    s, _ = sweep
    (s / "7" / "error.json").write_text(
        json.dumps(
            {
                "type": "ValueError",
                "message": "boom",
                "traceback": "...",
                "overrides": [],
                "time": "2026-11-25T16:03:12+00:00",
            }
        )
    )
    (s / "7" / "interrupted.json").write_text(
        json.dumps(
            {"signal": "SIGTERM", "epoch": 2, "global_step": 27, "checkpoint": "c", "resume": "vae-train ckpt_path=c"}
        )
    )
    os.utime(s / "7" / "error.json", (1_000_000_000, 1_000_000_000))  # failed, was resumed, then stopped by a signal
    header, rows = table_rows(run_report(capsys, s), "job ")
    assert dict(zip(header, rows["7"]))["status"] == "interrupted"
    os.utime(s / "7" / "interrupted.json", (999_999_999, 999_999_999))  # stopped, was resumed, then failed
    header, rows = table_rows(run_report(capsys, s), "job ")
    assert dict(zip(header, rows["7"]))["status"] == "failed"


@pytest.mark.slow
def test_a_real_failed_job_writes_error_json_that_the_report_reads(tmp_path):
    """With a job log format of the user's own, which the report cannot parse: error.json says why. (A pair of
    settings, which only the composed config can judge: a value bad on its own is refused before the sweep starts.)"""
    proc = run_vae_train(
        "--multirun",
        "model.likelihood=gaussian",
        "model.gaussian_std=-1",
        f"hydra.sweep.dir={tmp_path / 's'}",
        "hydra.job_logging.formatters.simple.format='%(levelname)s %(message)s'",
        *QUIET,
        cwd=tmp_path,
        check=False,
    )
    assert proc.returncode != 0
    error = json.loads((tmp_path / "s" / "0" / "error.json").read_text())
    assert error["type"] == "vae_cli.errors.UserError" and error["traceback"] is None
    assert error["message"].startswith("model.gaussian_std=-1 is not a valid standard deviation")
    assert error["overrides"][:2] == ["model.likelihood=gaussian", "model.gaussian_std=-1"]
    assert error["time"][:2] == "20"
    assert "[ERROR]" not in (tmp_path / "s" / "0" / "train.log").read_text()  # not Hydra's default format
    out = vae_report(tmp_path / "s", cwd=tmp_path).stdout
    assert "1 jobs: 0 ok, 1 failed" in out
    failed = out[out.index("NOT FINISHED (1):") :].splitlines()
    assert failed[2].strip() == error["message"]


def test_default_columns_add_the_bound_a_job_was_trained_and_checkpointed_on():
    iwae_job = SimpleNamespace(metrics={**metrics_of(4, 0), "test/iwae": -99.5, "best_val_iwae": -99.0})
    elbo_job = SimpleNamespace(metrics=metrics_of(4, 1))
    columns = tables.choose_metrics([elbo_job, iwae_job], None)
    assert columns == [*tables.DEFAULT_METRICS, "test/iwae", "best_val_iwae"]
    assert tables.choose_metrics([elbo_job], None) == list(tables.DEFAULT_METRICS)
