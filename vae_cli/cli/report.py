"""vae-report: one table of every job in a sweep (a Hydra multirun directory), written beside it as Markdown and
CSV, with figures (sweep/: reading the jobs, the tables, the figures)."""

import argparse
import sys
from pathlib import Path

from ..errors import UserError
from ..writers.files import atomic_write
from .errors import command, run_or_exit
from .loading import LATEST, latest
from .sweep.jobs import read_sweep
from .sweep.tables import DEFAULT_METRICS, build_report, choose_metrics, render_csv, render_markdown, render_text


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
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "sweep",
        metavar="SWEEP_DIR",
        type=Path,
        help="a multirun directory, e.g. outputs/multirun/DATE/TIME (holding 0/, 1/, ...), or latest: "
        "the newest under outputs/multirun/",
    )
    p.add_argument(
        "--metrics",
        metavar="A,B,...",
        help=f"comma-separated metric columns (default: {','.join(DEFAULT_METRICS)}, "
        "plus test/iwae for jobs trained on k > 1 samples and <split>/nll_iw_k<k> where vae-eval "
        "has scored best.ckpt)",
    )
    p.add_argument(
        "--sort",
        metavar="KEY",
        default="job",
        help="sort the jobs by a column: job (default), an override key, a metric, status, "
        "train_seconds; prefix with - for descending, written --sort=-test/elbo",
    )
    p.add_argument(
        "--markdown",
        metavar="FILE",
        type=Path,
        help="where to write the Markdown report (default: SWEEP_DIR/report.md)",
    )
    p.add_argument(
        "--csv",
        metavar="FILE",
        type=Path,
        help="where to write the CSV, one row per job (default: SWEEP_DIR/report.csv)",
    )
    p.add_argument(
        "--figures",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="draw the figures beside report.md, as PNG and SVG (default; needs matplotlib: "
        "matplotlib): the plotted metric against each swept setting, and the "
        "rate-distortion plane",
    )
    p.add_argument(
        "--plot-metric",
        metavar="METRIC",
        default="test/elbo",
        help="the metric plotted against the settings (default: test/elbo)",
    )
    p.add_argument(
        "--plot-keys",
        metavar="A,B,...",
        help="the override keys to plot against and colour by (default: every swept key but seed)",
    )
    return p.parse_args(argv)


def report(args) -> None:
    if str(args.sweep) == LATEST:
        args.sweep = latest(sweep=True)
        if args.sweep is None:
            raise UserError(
                "latest: there is no sweep under outputs/multirun/ here (vae-train --multirun writes "
                "outputs/multirun/DATE/TIME/ below the directory it is started in); give the sweep's path."
            )
    jobs = read_sweep(args.sweep)
    metrics = choose_metrics(jobs, args.metrics)
    known = {"job", "status", "train_seconds", *(k for j in jobs for k in [*j.overrides, *j.metrics])}
    if args.sort.removeprefix("-") not in known:
        raise UserError(
            f"--sort {args.sort}: no such column; use job, status, train_seconds, an override key or a metric"
        )
    if args.figures:
        from .sweep import figures as sweep_figures

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
    with command("vae-report"):
        run_or_exit("vae-report", report, parse_args(argv))


if __name__ == "__main__":
    main()
