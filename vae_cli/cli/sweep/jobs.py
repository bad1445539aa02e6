"""A sweep's jobs as vae-train left them in <sweep>/<job number>/: .hydra/overrides.yaml (the job's command-line
overrides), metrics.json (written only when the job finished), timing.json, interrupted.json, pruned.json,
error.json (why a job failed; in directories written before it, its train.log: sweep/train_log.py) and vae-eval's
eval_<split>_k<k>_<checkpoint>.json, and each invocation's provenance.yaml. Nothing here imports torch or Hydra,
so reading a sweep is instant."""

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from ... import inputs
from ...errors import UserError
from .. import provenance, run_files
from .train_log import error_of

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
    num: str  # the job's directory name, Hydra's job number
    overrides: dict  # key -> value, both as written on the command line
    metrics: dict  # metrics.json plus nll_iw from vae-eval; empty when the job did not finish
    train_seconds: float | None
    status: str  # ok, failed, interrupted (a signal; resumable), requeued (SLURM restarts it), pruned
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


# What each record of a job holds, by key (inputs.record refuses a file that holds anything else there).
OPTIONAL_TEXT = (str, type(None))
STOP_FIELDS = {
    "signal": str,
    "stopped": OPTIONAL_TEXT,
    "global_step": (int, type(None)),
    "requeued": (bool, type(None)),
    "checkpoint": OPTIONAL_TEXT,
    "resume": OPTIONAL_TEXT,
}
ERROR_FIELDS = {"type": str, "message": str}
PRUNED_FIELDS = {"epoch": int, "monitor": str, "value": (int, float)}
NUMBER = (int, float)


def _scalars(content: dict, path: Path) -> dict:
    """metrics.json's values: numbers and short texts by name (a nested value is no metric)."""
    bad = next((k for k, v in content.items() if not isinstance(v, (*NUMBER, str, bool, type(None)))), None)
    if bad is not None:
        raise inputs.Unreadable(path, "a run's metrics", f"its {bad} is not a number or a text")
    return content


def _overrides(job_dir: Path) -> dict:
    items = inputs.read_yaml(job_dir / ".hydra" / "overrides.yaml", "a job's overrides") or []
    if not isinstance(items, list):
        raise UserError(f"{job_dir / '.hydra' / 'overrides.yaml'} is not a list of overrides.")
    overrides = {}
    for item in items:
        key, _, value = str(item).partition("=")
        overrides[key] = value
    return overrides


def read_job(job_dir: Path) -> Job:
    """A job as its records describe it; a record that is not what vae-train writes makes the job "failed", with
    the reason, and never stops the reading of the others."""
    try:
        overrides = _overrides(job_dir)
    except UserError as e:
        return Job(job_dir.name, {}, {}, None, "failed", str(e))
    metrics, error = {}, None
    if (job_dir / run_files.METRICS).is_file():
        try:
            path = job_dir / run_files.METRICS
            metrics = _scalars(inputs.record(path, "a run's metrics", {}), path)
        except inputs.Unreadable as e:
            error = f"{e.path.name}: {e.reason}"
    status = "ok" if metrics else "failed" if error else None
    stop = job_dir / run_files.STOP  # written by a run that a signal stopped after saving its state
    failure = job_dir / run_files.ERROR  # written by a run that failed (of the two, the newer counts: a resumed run)
    if status is None and failure.is_file() and not (stop.is_file() and stop.stat().st_mtime > failure.stat().st_mtime):
        status = "failed"
        try:
            failed = inputs.record(failure, "a run's error record", ERROR_FIELDS)
            user = failed["type"].endswith(".UserError")  # its message is written for the user, and says it all
            error = failed["message"] if user else f"{failed['type']}: {failed['message']}"
        except inputs.Unreadable as e:
            error = f"{e.path.name}: {e.reason}"
    if status is None and stop.is_file():
        try:
            stopped = inputs.record(stop, "a run's stop record", STOP_FIELDS)
            where = stopped["stopped"] or f"at step {stopped['global_step']}"  # "stopped": since it is written
            if stopped["requeued"]:
                status, error = (
                    "requeued",
                    (
                        f"{stopped['signal']} {where}; waiting for SLURM to restart it, then it "
                        f"resumes from {stopped['checkpoint'] or 'the start'}"
                    ),
                )
            else:
                status, error = "interrupted", f"{stopped['signal']} {where}; resume: {stopped['resume']}"
        except inputs.Unreadable as e:
            error = f"{e.path.name}: {e.reason}"
    pruned = job_dir / run_files.PRUNED  # a trial of hparams_search=optuna that the study's pruner stopped
    if status is None and pruned.is_file():
        try:
            p = inputs.record(pruned, "a pruned trial's record", PRUNED_FIELDS)
            status, error = "pruned", f"after epoch {p['epoch']}: {p['monitor']} {p['value']:.4f}"
        except inputs.Unreadable as e:
            error = f"{e.path.name}: {e.reason}"
    if status is None:
        error = error_of(job_dir / run_files.LOG)
        status = "failed" if error else "incomplete"
    # vae-eval's estimate of -log p(x), named with its k: bounds with different k do not compare.
    for f in sorted(job_dir.glob("eval_*_k*.json")):
        name = EVAL_FILE.fullmatch(f.name)
        try:
            result = inputs.record(f, "vae-eval's result", {"nll_iw": (*NUMBER, type(None))})
        except UserError:
            continue
        if name and result.get("nll_iw") is not None:
            # The run's best checkpoint under the plain name; any other checkpoint named after it.
            other = name.group(3) not in (None, "best")
            metrics[f"{name.group(1)}/nll_iw_k{name.group(2)}" + (f"_{name.group(3)}" if other else "")] = result[
                "nll_iw"
            ]
    timing = {}
    if (job_dir / run_files.TIMING).is_file():
        try:
            timing = inputs.record(
                job_dir / run_files.TIMING, "a run's timing", {"train_seconds": (*NUMBER, type(None))}
            )
        except UserError:
            pass
    made = {}
    for record in provenance.read(job_dir):  # each invocation: a resume may run elsewhere, or on other versions
        for key, value in provenance.comparable(record).items():
            if made.get(key, value).rpartition(", then ")[2] != value:
                value = f"{made[key]}, then {value}"
            made[key] = value
    return Job(
        job_dir.name,
        overrides,
        metrics,
        timing.get("train_seconds"),
        status,
        (error or NO_ERROR) if status != "ok" else None,
        made,
    )


def read_sweep(sweep: Path) -> list[Job]:
    if not sweep.exists():
        raise UserError(f"{sweep} does not exist")
    if not sweep.is_dir():
        raise UserError(f"{sweep} is not a directory; give a sweep directory such as outputs/multirun/DATE/TIME")
    # A job directory is any sub-directory with Hydra's record of its overrides (written before the job runs).
    # (Whatever that record is: one that is not a file makes the job's row say so, rather than hiding the job.)
    dirs = [d for d in sweep.iterdir() if os.path.lexists(d / ".hydra" / "overrides.yaml")]
    if not dirs:
        hint = " (it is a single run's directory)" if (sweep / ".hydra").is_dir() else ""
        raise UserError(
            f"{sweep} holds no job directories (<job>/.hydra/overrides.yaml){hint}; "
            "give a sweep directory such as outputs/multirun/DATE/TIME"
        )
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
