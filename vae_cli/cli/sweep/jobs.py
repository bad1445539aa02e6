"""A sweep's jobs as vae-train left them in <sweep>/<job number>/: .hydra/overrides.yaml (the job's command-line
overrides), metrics.json (written only when the job finished), timing.json, interrupted.json, pruned.json,
error.json (why a job failed; in directories written before it, its train.log: sweep/train_log.py) and vae-eval's
eval_<split>_k<k>_<checkpoint>.json, and each invocation's provenance.yaml. Nothing here imports torch or Hydra,
so reading a sweep is instant."""
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ...errors import UserError
from .train_log import error_of
from .. import provenance, run_files

NO_ERROR = "no metrics.json and no error recorded"
# vae-eval's report: eval_<split>_k<k>_<checkpoint>.json (eval_<split>_k<k>.json from earlier versions: best.ckpt)
EVAL_FILE = re.compile(r"eval_([a-z]+)_k(\d+)(?:_(.+))?\.json")


@dataclass
class JobFailed:
    """What a job of a sweep returns when it failed (its error.json and log say why, and it said so in one line):
    a result, not an exception, so the launcher runs the others and the sweep ends with its table, whatever the
    launcher. exit_status: 2 for the user's error, 1 for a bug."""

    message: str
    exit_status: int = 2


@dataclass
class Job:
    num: str                  # the job's directory name, Hydra's job number
    overrides: dict           # key -> value, both as written on the command line
    metrics: dict             # metrics.json plus nll_iw from vae-eval; empty when the job did not finish
    train_seconds: float | None
    status: str               # ok, failed, interrupted (a signal; resumable), requeued (SLURM restarts it), pruned
                              # (by a search), or incomplete
    error: str | None
    provenance: dict = field(default_factory=dict)  # what made it (provenance.comparable), over its invocations

    def value(self, key: str):
        if key == "job":
            return int(self.num) if self.num.isdigit() else self.num
        if key == "status":
            return self.status
        if key == "train_seconds":
            return self.train_seconds
        if key in self.overrides:
            return self.overrides[key]
        return self.metrics.get(key)


def read_job(job_dir: Path) -> Job:
    overrides = {}
    for item in yaml.safe_load((job_dir / ".hydra" / "overrides.yaml").read_text()) or []:
        key, _, value = str(item).partition("=")
        overrides[key] = value
    metrics, error = {}, None
    if (job_dir / run_files.METRICS).is_file():
        try:
            metrics = json.loads((job_dir / run_files.METRICS).read_text())
        except json.JSONDecodeError as e:
            error = f"metrics.json is not valid JSON ({e})"
    status = "ok" if metrics else "failed" if error else None
    stop = job_dir / run_files.STOP  # written by a run that a signal stopped after saving its state
    failure = job_dir / run_files.ERROR  # written by a run that failed (of the two, the newer counts: a resumed run)
    if status is None and failure.is_file() and not (stop.is_file() and stop.stat().st_mtime > failure.stat().st_mtime):
        status = "failed"
        try:
            failed = json.loads(failure.read_text())
            user = failed["type"].endswith(".UserError")  # its message is written for the user, and says it all
            error = failed["message"] if user else f"{failed['type']}: {failed['message']}"
        except (json.JSONDecodeError, KeyError, AttributeError) as e:
            error = f"error.json is not valid ({e})"
    if status is None and stop.is_file():
        try:
            stopped = json.loads(stop.read_text())
            where = stopped.get("stopped") or f"at step {stopped['global_step']}"  # "stopped": since it is written
            if stopped.get("requeued"):
                status, error = "requeued", (f"{stopped['signal']} {where}; waiting for SLURM to restart it, then it "
                                             f"resumes from {stopped['checkpoint'] or 'the start'}")
            else:
                status, error = "interrupted", f"{stopped['signal']} {where}; resume: {stopped['resume']}"
        except (json.JSONDecodeError, KeyError) as e:
            error = f"interrupted.json is not valid ({e})"
    pruned = job_dir / run_files.PRUNED  # a trial of hparams_search=optuna that the study's pruner stopped
    if status is None and pruned.is_file():
        try:
            p = json.loads(pruned.read_text())
            status, error = "pruned", f"after epoch {p['epoch']}: {p['monitor']} {p['value']:.4f}"
        except (json.JSONDecodeError, KeyError) as e:
            error = f"pruned.json is not valid ({e})"
    if status is None:
        error = error_of(job_dir / run_files.LOG)
        status = "failed" if error else "incomplete"
    # vae-eval's estimate of -log p(x), named with its k: bounds with different k do not compare.
    for f in sorted(job_dir.glob("eval_*_k*.json")):
        name = EVAL_FILE.fullmatch(f.name)
        try:
            result = json.loads(f.read_text())
        except json.JSONDecodeError:
            continue
        if name and "nll_iw" in result:
            # The run's best checkpoint under the plain name; any other checkpoint named after it.
            other = name.group(3) not in (None, "best")
            metrics[f"{name.group(1)}/nll_iw_k{name.group(2)}" + (f"_{name.group(3)}" if other else "")] = result["nll_iw"]
    timing = {}
    if (job_dir / run_files.TIMING).is_file():
        try:
            timing = json.loads((job_dir / run_files.TIMING).read_text())
        except json.JSONDecodeError:
            pass
    made = {}
    for record in provenance.read(job_dir):  # each invocation: a resume may run elsewhere, or on other versions
        for key, value in provenance.comparable(record).items():
            if made.get(key, value).rpartition(", then ")[2] != value:
                value = f"{made[key]}, then {value}"
            made[key] = value
    return Job(job_dir.name, overrides, metrics, timing.get("train_seconds"), status,
               (error or NO_ERROR) if status != "ok" else None, made)


def read_sweep(sweep: Path) -> list[Job]:
    if not sweep.exists():
        raise UserError(f"{sweep} does not exist")
    if not sweep.is_dir():
        raise UserError(f"{sweep} is not a directory; give a sweep directory such as outputs/multirun/DATE/TIME")
    # A job directory is any sub-directory with Hydra's record of its overrides (written before the job runs).
    dirs = [d for d in sweep.iterdir() if (d / ".hydra" / "overrides.yaml").is_file()]
    if not dirs:
        hint = " (it is a single run's directory)" if (sweep / ".hydra").is_dir() else ""
        raise UserError(f"{sweep} holds no job directories (<job>/.hydra/overrides.yaml){hint}; "
                          "give a sweep directory such as outputs/multirun/DATE/TIME")
    jobs = [read_job(d) for d in dirs]
    return sorted(jobs, key=lambda j: sortable(j.value("job")))


def is_number(value) -> bool:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return True
    try:
        float(value)
        return True
    except (TypeError, ValueError):
        return False


def sortable(value):
    # Numbers before strings, so 8 < 32 for latent_dim=8,32 and job 9 < job 10.
    return (0, float(value), "") if is_number(value) else (1, 0.0, str(value))


