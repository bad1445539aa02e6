"""vae-report: one table of every job in a sweep (a Hydra multirun directory).

Reads what each job of `vae-train --multirun` left in its directory <sweep>/<job number>/:
.hydra/overrides.yaml (the job's command-line overrides), metrics.json (written only when the job
finished), timing.json, eval_<split>_k<k>_<checkpoint>.json from vae-eval, error.json (why a job failed) and,
in directories written before it, train.log.
Nothing here imports torch or Hydra, so the report is instant.
"""
import argparse
import csv
import io
import json
import re
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from ..core.metrics import RUN_SUMMARY
from ..errors import UserError
from ..training.files import atomic_write
from . import run_files
from .errors import run_or_exit
from .loading import LATEST, latest

DEFAULT_METRICS = RUN_SUMMARY
NO_ERROR = "no metrics.json and no error recorded"
# A record of Hydra's job log: "[2026-11-25 16:03:10,437][vae_cli][ERROR] - message".
LOG_RECORD = re.compile(r"^\[[^\]]*\]\[[^\]]*\]\[([A-Z]+)\] - (.*)$")
# vae-eval's report: eval_<split>_k<k>_<checkpoint>.json (eval_<split>_k<k>.json from earlier versions: best.ckpt)
EVAL_FILE = re.compile(r"eval_([a-z]+)_k(\d+)(?:_(.+))?\.json")


@dataclass
class Job:
    num: str                  # the job's directory name, Hydra's job number
    overrides: dict           # key -> value, both as written on the command line
    metrics: dict             # metrics.json plus nll_iw from vae-eval; empty when the job did not finish
    train_seconds: float | None
    status: str               # ok, failed, interrupted (a signal; resumable), requeued (SLURM restarts it), pruned
                              # (by a search), or incomplete
    error: str | None

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


def exception_line(lines: list[str]) -> str | None:
    """The "Type: message" line that ends the last traceback in `lines` (with chained exceptions
    the last traceback is the one that was finally raised)."""
    starts = [i for i, line in enumerate(lines) if line.startswith("Traceback (most recent call last):")]
    if not starts:
        return None
    # Frames and source lines are indented; the exception line is the first one that is not.
    return next((line.strip() for line in lines[starts[-1] + 1:] if line.strip() and not line[0].isspace()), None)


def error_of(log_file: Path) -> str | None:
    """Why the job failed, from its train.log: the first ERROR record's message (with the exception
    when a traceback follows it, as after log.exception("the run failed")), else the end of a
    traceback anywhere in the file; None when the log records no error."""
    if not log_file.is_file():
        return None
    lines = log_file.read_text(errors="replace").splitlines()
    for i, line in enumerate(lines):
        record = LOG_RECORD.match(line)
        if record and record.group(1) in ("ERROR", "CRITICAL"):
            # The record goes on until the next record starts; a traceback, if any, is in there.
            end = next((k for k in range(i + 1, len(lines)) if LOG_RECORD.match(lines[k])), len(lines))
            exc = exception_line(lines[i + 1:end])
            return f"{record.group(2)}: {exc}" if exc else record.group(2)
    return exception_line(lines)


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
    return Job(job_dir.name, overrides, metrics, timing.get("train_seconds"), status,
               (error or NO_ERROR) if status != "ok" else None)


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


def sort_jobs(jobs: list[Job], key: str) -> list[Job]:
    """Ascending by `key`, descending for "-key"; jobs without a value go last either way."""
    name, descending = key.removeprefix("-"), key.startswith("-")
    present = sorted((j for j in jobs if j.value(name) is not None), key=lambda j: sortable(j.value(name)),
                     reverse=descending)
    return present + [j for j in jobs if j.value(name) is None]


def fmt(value, key: str = "") -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, float):
        return f"{value:.1f}" if key == "train_seconds" else f"{value:.4f}"  # nats to 4 decimals
    return str(value)


def mean_std(values: list[float]) -> str:
    """mean ± sample standard deviation (n - 1), "-" where it does not exist."""
    if not values:
        return "-"
    std = f"{statistics.stdev(values):.4f}" if len(values) > 1 else "-"
    return f"{statistics.fmean(values):.4f} ± {std}"


@dataclass
class Table:
    headers: list[str]
    rows: list[list[str]]
    right: list[bool]  # right-align the column (numbers)


def make_table(headers: list[str], raw_rows: list[list]) -> Table:
    """Cells formatted with fmt; a column is right-aligned when all its values are numbers."""
    right = [all(v is None or v == "" or is_number(v) for v in col) for col in zip(*raw_rows)] or \
        [False] * len(headers)
    return Table(headers, [[fmt(v, h) for v, h in zip(row, headers)] for row in raw_rows], right)


def text_table(t: Table) -> str:
    widths = [max([len(h)] + [len(r[i]) for r in t.rows]) for i, h in enumerate(t.headers)]

    def line(cells):
        return "  ".join(c.rjust(w) if r else c.ljust(w) for c, w, r in zip(cells, widths, t.right)).rstrip()

    return "\n".join([line(t.headers), line(["-" * w for w in widths]), *map(line, t.rows)])


def markdown_table(t: Table) -> str:
    def line(cells):
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    return "\n".join([line(t.headers), "|" + "|".join("---:" if r else "---" for r in t.right) + "|",
                      *map(line, t.rows)])


@dataclass
class Report:
    title: str
    notes: list[str]              # summary lines above the tables
    jobs: Table
    seeds: Table | None           # mean ± std over seeds, when the sweep repeats seeds
    failed: list[tuple[str, str, str, str]]  # the jobs that did not finish: (job, overrides, status, why)


def build_report(sweep: Path, jobs: list[Job], metrics: list[str], sort: str) -> Report:
    keys = list(dict.fromkeys(k for j in jobs for k in j.overrides))  # in command-line order
    varying = [k for k in keys if len({j.overrides.get(k) for j in jobs}) > 1]
    constant = [f"{k}={jobs[0].overrides[k]}" for k in keys if k not in varying]
    counts = {s: sum(j.status == s for j in jobs)
              for s in ("ok", "failed", "interrupted", "requeued", "pruned", "incomplete")}
    notes = [f"{len(jobs)} jobs: " + ", ".join(f"{n} {s}" for s, n in counts.items() if n or s == "ok")]
    if constant:
        notes.append("Same in every job: " + " ".join(constant))
    notes += optuna_note(sweep)
    notes.append("Metrics in nats per example (bpd: bits per dimension) from each job's metrics.json; "
                 "interrupted = stopped by a signal after saving its state (its resume command is listed below); "
                 "requeued = the same, and SLURM starts it again; "
                 "pruned = stopped early by the search's pruner; "
                 "incomplete = no metrics.json and no error (still running, or killed).")

    jobs = sort_jobs(jobs, sort)
    columns = ["job", *varying, "status", *metrics, "epochs", "train_seconds"]
    job_table = make_table(columns, [[j.value(c) for c in columns] for j in jobs])

    seed_table = None
    groups: dict[tuple, list[Job]] = {}
    for j in jobs:  # groups in the order of the sorted job table
        groups.setdefault(tuple(j.overrides.get(k) for k in keys if k != "seed"), []).append(j)
    if "seed" in keys and any(len(g) > 1 for g in groups.values()):
        others = [k for k in varying if k != "seed"]
        rows = []
        for g in groups.values():
            done = [j for j in g if j.status == "ok"]
            stats = [mean_std([float(j.metrics[m]) for j in done if is_number(j.metrics.get(m))]) for m in metrics]
            ids = ",".join(j.num for j in g)
            rows.append([*(fmt(g[0].overrides.get(k)) for k in others), str(len(done)), ids, *stats])
        # Overrides aligned as in the job table, n and the statistics right, the job list left.
        right = [r for k, r in zip(varying, job_table.right[1:]) if k != "seed"]
        seed_table = Table([*others, "n", "jobs", *metrics], rows, right + [True, False] + [True] * len(metrics))

    failed = [(j.num, " ".join(f"{k}={j.overrides[k]}" for k in varying if k in j.overrides), j.status, j.error)
              for j in sorted(jobs, key=lambda j: sortable(j.value("job"))) if j.status != "ok"]
    return Report(f"Sweep {sweep}", notes, job_table, seed_table, failed)


def optuna_note(sweep: Path) -> list[str]:
    # The Optuna sweeper writes its best trial beside the jobs; vae-train returns best val/elbo.
    f = sweep / "optimization_results.yaml"
    if not f.is_file():
        return []
    res = yaml.safe_load(f.read_text()) or {}
    if "best_params" not in res:
        return [f"Optimizer results: see {f.name}"]
    params = " ".join(f"{k}={v}" for k, v in res["best_params"].items())
    return [f"Optimizer's best ({f.name}): {res.get('best_value')} at {params}"]


SEED_HEADING = "Mean ± sample std over seeds (n = finished runs)"


def render_text(r: Report) -> str:
    out = [r.title, *r.notes, "", text_table(r.jobs)]
    if r.seeds:
        out += ["", SEED_HEADING + ":", text_table(r.seeds)]
    if r.failed:
        out += ["", f"NOT FINISHED ({len(r.failed)}):"]
        out += [f"  job {num}  {ovr}  ({status})\n      {err}" for num, ovr, status, err in r.failed]
    return "\n".join(out) + "\n"


def render_markdown(r: Report) -> str:
    out = [f"# {r.title}", "", *(f"- {n}" for n in r.notes), "", "## Jobs", "", markdown_table(r.jobs)]
    if r.seeds:
        out += ["", f"## {SEED_HEADING}", "", markdown_table(r.seeds)]
    if r.failed:
        out += ["", f"## Not finished ({len(r.failed)})", ""]
        failed = Table(["job", "overrides", "status", "why"], [list(f) for f in r.failed], [True, False, False, False])
        out.append(markdown_table(failed))
    return "\n".join(out) + "\n"


def render_csv(jobs: list[Job], metrics: list[str]) -> str:
    """One row per job, every override (constant ones too) and every metric at full precision."""
    keys = list(dict.fromkeys(k for j in jobs for k in j.overrides))
    all_metrics = list(dict.fromkeys([*metrics, *(k for j in jobs for k in j.metrics)]))
    columns = ["job", *keys, "status", *(m for m in all_metrics if m not in keys), "train_seconds", "error"]
    out = io.StringIO(newline="")
    w = csv.writer(out)
    w.writerow(columns)
    for j in jobs:
        w.writerow(["" if v is None else v for v in [j.num, *(j.value(c) for c in columns[1:-1]), j.error]])
    return out.getvalue()


def choose_metrics(jobs: list[Job], requested: str | None) -> list[str]:
    available = list(dict.fromkeys(k for j in jobs for k, v in j.metrics.items() if is_number(v)))
    if requested is None:
        # best_val_<m>: a job whose best.ckpt was chosen on another metric than val/elbo
        extra = (k for k in available if k not in DEFAULT_METRICS
                 and ("/nll_iw_k" in k or k == "test/iwae" or k.startswith("best_val_")))
        return [*DEFAULT_METRICS, *extra]
    names = [m.strip() for m in requested.split(",") if m.strip()]
    unknown = [m for m in names if m not in available]
    if available and unknown:  # with no finished job every name is unknown; show empty columns then
        raise UserError(f"no job has metric {', '.join(unknown)}; available: {', '.join(available)}")
    return names


def parse_args(argv):
    p = argparse.ArgumentParser(
        prog="vae-report",
        description="One table of every job in a sweep (vae-train --multirun): the overrides that vary,\n"
                    "status, final metrics from metrics.json, mean ± std over seeds when the sweep repeats\n"
                    "seeds, and each failed job with its error.\n\n"
                    "Prints the table and also writes report.md and report.csv into SWEEP_DIR\n"
                    "(elsewhere with --markdown/--csv), and figures beside report.md (PNG and SVG).\n"
                    "Exits 0 even when jobs failed, 2 on bad input.",
        epilog="Examples:\n  vae-report outputs/multirun/2026-11-25/15-04-28\n"
               "  vae-report SWEEP --metrics test/elbo,test/nll_iw_k5000 --sort=-test/elbo",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sweep", metavar="SWEEP_DIR", type=Path,
                   help="a multirun directory, e.g. outputs/multirun/DATE/TIME (holding 0/, 1/, ...), or latest: "
                        "the newest under outputs/multirun/")
    p.add_argument("--metrics", metavar="A,B,...",
                   help=f"comma-separated metric columns (default: {','.join(DEFAULT_METRICS)}, "
                        "plus test/iwae for jobs trained on k > 1 samples and <split>/nll_iw_k<k> where vae-eval "
                        "has scored best.ckpt)")
    p.add_argument("--sort", metavar="KEY", default="job",
                   help="sort the jobs by a column: job (default), an override key, a metric, status, "
                        "train_seconds; prefix with - for descending, written --sort=-test/elbo")
    p.add_argument("--markdown", metavar="FILE", type=Path, help="where to write the Markdown report "
                   "(default: SWEEP_DIR/report.md)")
    p.add_argument("--csv", metavar="FILE", type=Path, help="where to write the CSV, one row per job "
                   "(default: SWEEP_DIR/report.csv)")
    p.add_argument("--figures", action=argparse.BooleanOptionalAction, default=True,
                   help="draw the figures beside report.md, as PNG and SVG (default; needs matplotlib: "
                        "pip install 'vae-cli[plots]'): the plotted metric against each swept setting, and the "
                        "rate-distortion plane")
    p.add_argument("--plot-metric", metavar="METRIC", default="test/elbo",
                   help="the metric plotted against the settings (default: test/elbo)")
    p.add_argument("--plot-keys", metavar="A,B,...",
                   help="the override keys to plot against and colour by (default: every swept key but seed)")
    return p.parse_args(argv)


def report(args) -> None:
    if str(args.sweep) == LATEST:
        args.sweep = latest(sweep=True)
        if args.sweep is None:
            raise UserError("latest: there is no sweep under outputs/multirun/ here (vae-train --multirun writes "
                            "outputs/multirun/DATE/TIME/ below the directory it is started in); give the sweep's path.")
    jobs = read_sweep(args.sweep)
    metrics = choose_metrics(jobs, args.metrics)
    known = {"job", "status", "train_seconds", *(k for j in jobs for k in [*j.overrides, *j.metrics])}
    if args.sort.removeprefix("-") not in known:
        raise UserError(f"--sort {args.sort}: no such column; use job, status, train_seconds, "
                        "an override key or a metric")
    if args.figures:
        from . import sweep_figures

        sweep_figures.check_metric(jobs, args.plot_metric)
        keys = sweep_figures.plot_keys(jobs, args.plot_keys)
    rep = build_report(args.sweep, jobs, metrics, args.sort)
    sys.stdout.write(render_text(rep))
    md, csv_path = args.markdown or args.sweep / "report.md", args.csv or args.sweep / "report.csv"
    for path, text in ((md, render_markdown(rep)), (csv_path, render_csv(jobs, metrics))):
        atomic_write(path, lambda f, text=text: f.write(text.encode("utf-8")))  # an earlier report stays whole
    print(f"wrote {md} and {csv_path}", file=sys.stderr)
    if args.figures:
        print(sweep_figures.write_figures(jobs, args.plot_metric, keys, md.parent), file=sys.stderr)


def main(argv: list[str] | None = None) -> None:
    run_or_exit("vae-report", report, parse_args(argv))


if __name__ == "__main__":
    main()
