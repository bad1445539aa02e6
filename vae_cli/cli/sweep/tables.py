"""A sweep's report: the job table, mean and standard deviation over seeds, the jobs that did not finish, as
text, Markdown and CSV."""

import csv
import io
import statistics
from dataclasses import dataclass
from pathlib import Path

from ... import inputs
from ...core.metrics import RUN_SUMMARY
from ...errors import UserError
from .jobs import Job, is_number, sortable

DEFAULT_METRICS = RUN_SUMMARY


def sort_jobs(jobs: list[Job], key: str) -> list[Job]:
    """Ascending by `key`, descending for "-key"; jobs without a value go last either way."""
    name, descending = key.removeprefix("-"), key.startswith("-")
    present = sorted(
        (j for j in jobs if j.value(name) is not None), key=lambda j: sortable(j.value(name)), reverse=descending
    )
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
    right = [all(v is None or v == "" or is_number(v) for v in col) for col in zip(*raw_rows)] or [False] * len(headers)
    return Table(headers, [[fmt(v, h) for v, h in zip(row, headers)] for row in raw_rows], right)


def text_table(t: Table) -> str:
    widths = [max([len(h)] + [len(r[i]) for r in t.rows]) for i, h in enumerate(t.headers)]

    def line(cells):
        return "  ".join(c.rjust(w) if r else c.ljust(w) for c, w, r in zip(cells, widths, t.right)).rstrip()

    return "\n".join([line(t.headers), line(["-" * w for w in widths]), *map(line, t.rows)])


def markdown_table(t: Table) -> str:
    def line(cells):
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    return "\n".join(
        [line(t.headers), "|" + "|".join("---:" if r else "---" for r in t.right) + "|", *map(line, t.rows)]
    )


@dataclass
class Report:
    title: str
    notes: list[str]  # summary lines above the tables
    jobs: Table
    seeds: Table | None  # mean ± std over seeds, when the sweep repeats seeds
    failed: list[tuple[str, str, str, str]]  # the jobs that did not finish: (job, overrides, status, why)


def made_differently(jobs: list[Job]) -> list[str]:
    """A note for each part of the code, libraries or machine that differs between the jobs (from their
    provenance records; nothing when the jobs agree): torch 2.14.1 (jobs 0, 1), 2.13.0 (job 2)."""
    recorded = [j for j in jobs if j.provenance]
    if len(recorded) < 2:
        return []
    notes = []
    for key in dict.fromkeys(k for j in recorded for k in j.provenance):
        groups: dict[str, list[str]] = {}
        for j in recorded:
            groups.setdefault(j.provenance.get(key, "not recorded"), []).append(j.num)
        if len(groups) > 1:
            notes.append(
                f"{key} differs: "
                + ", ".join(
                    f"{value} ({'jobs' if len(nums) > 1 else 'job'} {', '.join(nums)})"
                    for value, nums in groups.items()
                )
            )
    if notes:
        notes.insert(0, "Made differently (each job's .hydra/provenance.yaml):")
    return notes


def build_report(sweep: Path, jobs: list[Job], metrics: list[str], sort: str) -> Report:
    keys = list(dict.fromkeys(k for j in jobs for k in j.overrides))  # in command-line order
    varying = [k for k in keys if len({j.overrides.get(k) for j in jobs}) > 1]
    constant = [f"{k}={jobs[0].overrides[k]}" for k in keys if k not in varying]
    counts = {
        s: sum(j.status == s for j in jobs) for s in ("ok", "failed", "interrupted", "requeued", "pruned", "incomplete")
    }
    notes = [f"{len(jobs)} jobs: " + ", ".join(f"{n} {s}" for s, n in counts.items() if n or s == "ok")]
    if constant:
        notes.append("Same in every job: " + " ".join(constant))
    notes += optuna_note(sweep)
    notes += made_differently(jobs)
    notes.append(
        "Metrics in nats per example (bpd: bits per dimension) from each job's metrics.json; "
        "interrupted = stopped by a signal after saving its state (its resume command is listed below); "
        "requeued = the same, and SLURM starts it again; "
        "pruned = stopped early by the search's pruner; "
        "incomplete = no metrics.json and no error (still running, or killed)."
    )

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

    failed = [
        (j.num, " ".join(f"{k}={j.overrides[k]}" for k in varying if k in j.overrides), j.status, j.error)
        for j in sorted(jobs, key=lambda j: sortable(j.value("job")))
        if j.status != "ok"
    ]
    return Report(f"Sweep {sweep}", notes, job_table, seed_table, failed)


def optuna_note(sweep: Path) -> list[str]:
    # The Optuna sweeper writes its best trial beside the jobs; vae-train returns best val/elbo.
    f = sweep / "optimization_results.yaml"
    if not f.is_file():
        return []
    try:
        res = inputs.read_yaml(f, "the search's result") or {}
    except UserError as e:
        return [f"Optimizer results: {e}"]
    if not isinstance(res, dict) or not isinstance(res.get("best_params"), dict):
        return [f"Optimizer results: see {f.name}"]
    params = " ".join(f"{k}={v}" for k, v in res["best_params"].items())
    trial = f"trial {res['best_trial']} ({res.get('best_run_dir')}), " if "best_trial" in res else ""
    return [f"Optimizer's best ({f.name}): {trial}{res.get('best_value')} at {params}"]


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
        extra = (
            k
            for k in available
            if k not in DEFAULT_METRICS and ("/nll_iw_k" in k or k == "test/iwae" or k.startswith("best_val_"))
        )
        return [*DEFAULT_METRICS, *extra]
    names = [m.strip() for m in requested.split(",") if m.strip()]
    unknown = [m for m in names if m not in available]
    if available and unknown:  # with no finished job every name is unknown; show empty columns then
        raise UserError(f"no job has metric {', '.join(unknown)}; available: {', '.join(available)}")
    return names
