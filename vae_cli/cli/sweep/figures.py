"""vae-report's figures of a sweep, beside its tables: a metric against each swept setting (mean ± sample
standard deviation over seeds), and the rate-distortion plane (KL against reconstruction, one point per job,
with lines of equal ELBO). Drawn with matplotlib when it is installed (writers/figures.py)."""

import math
from pathlib import Path
from statistics import fmean, stdev

from ...errors import UserError
from ...writers import figures
from ...writers.figures import LOG_SPAN
from .jobs import Job, is_number, sortable

MAX_LEGEND = 8  # colours for more distinct values than this go in a colour bar, not a legend
PANEL = (4.6, 3.6)  # inches per panel


def swept(jobs: list[Job]) -> list[str]:
    """The override keys whose value differs between jobs, in command-line order."""
    keys = dict.fromkeys(k for j in jobs for k in j.overrides)
    return [k for k in keys if len({j.overrides.get(k) for j in jobs}) > 1]


def plot_keys(jobs: list[Job], requested: str | None) -> list[str]:
    """The settings to plot against: the swept keys other than seed, or the comma-separated `requested`."""
    if requested is None:
        return [k for k in swept(jobs) if k != "seed"]
    keys = [k.strip() for k in requested.split(",") if k.strip()]
    known = list(dict.fromkeys(k for j in jobs for k in j.overrides))
    unknown = [k for k in keys if k not in known]
    if unknown:
        raise UserError(
            f"--plot-keys {requested}: no job sets {', '.join(unknown)}; "
            f"the jobs' overrides are {', '.join(known) or 'none'}"
        )
    return keys


def check_metric(jobs: list[Job], metric: str) -> None:
    available = list(dict.fromkeys(k for j in jobs for k, v in j.metrics.items() if is_number(v)))
    if available and metric not in available:  # with no finished job there is nothing to check against
        raise UserError(f"--plot-metric {metric}: no job has it; available: {', '.join(available)}")


def unit(metric: str) -> str:
    if metric in ("epochs", "global_step", "seed"):
        return ""
    return "  [bits/dim]" if metric.endswith("bpd") else "  [nats]"


def finished(jobs: list[Job], *metrics: str) -> list[Job]:
    """The jobs that finished with a finite value of each metric (a point to draw)."""
    return [
        j
        for j in jobs
        if j.status == "ok" and all(is_number(j.metrics.get(m)) and math.isfinite(float(j.metrics[m])) for m in metrics)
    ]


class Axis:
    """A setting's values on an axis: numbers at their value (logarithmic when they span two decades or
    more), anything else as equally spaced categories in sorted order; ticks at the values, as typed."""

    def __init__(self, values):
        self.values = sorted(set(values), key=sortable)
        self.numeric = bool(self.values) and all(is_number(v) for v in self.values)
        numbers = [float(v) for v in self.values] if self.numeric else []
        self.log = self.numeric and min(numbers) > 0 and max(numbers) / min(numbers) >= LOG_SPAN

    def position(self, value) -> float:
        return float(value) if self.numeric else float(self.values.index(value))

    def apply(self, ax, key: str) -> None:
        if self.log:
            ax.set_xscale("log")
        if not self.numeric or len(self.values) <= 10:
            labels = [str(v) for v in self.values]
            crowded = sum(map(len, labels)) > 24  # about what fits side by side under one panel
            ax.set_xticks(
                [self.position(v) for v in self.values],
                labels,
                rotation=30 if crowded else 0,
                ha="right" if crowded else "center",
            )
            ax.minorticks_off()
        if not self.values:  # no finished job sets it (a job's record of its settings was unreadable)
            ax.text(0.5, 0.5, "no finished job sets it", transform=ax.transAxes, ha="center", color="0.4")
        elif not self.numeric:
            ax.set_xlim(-0.5, len(self.values) - 0.5)
        ax.set_xlabel(key)


def _panels(n: int, Figure, extra_width: float = 0.0):
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(cols * (PANEL[0] + extra_width), rows * PANEL[1] + 0.4), layout="constrained")
    axes = list(fig.subplots(rows, cols, squeeze=False).flat)
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes[:n]


def metric_figure(jobs: list[Job], metric: str, keys: list[str]):
    """One panel per key: the metric against the key's values, each point the mean over the finished jobs
    that differ only in seed, with the sample standard deviation as its error bar; one line per combination
    of the other swept settings."""
    done = finished(jobs, metric)
    fig, axes = _panels(len(keys), figures.figure_class())
    repeats = False
    for ax, key in zip(axes, keys):
        others = [k for k in swept(jobs) if k not in (key, "seed")]
        lines: dict[tuple, dict] = {}
        for j in done:
            if key in j.overrides:
                line = lines.setdefault(tuple(j.overrides.get(k) for k in others), {})
                line.setdefault(j.overrides[key], []).append(float(j.metrics[metric]))
        axis = Axis(v for line in lines.values() for v in line)
        for label, points in sorted(lines.items(), key=lambda item: [sortable(v) for v in item[0]]):
            xs = sorted(points, key=sortable)
            repeats |= any(len(points[x]) > 1 for x in xs)
            ax.errorbar(
                [axis.position(x) for x in xs],
                [fmean(points[x]) for x in xs],
                yerr=[stdev(points[x]) if len(points[x]) > 1 else 0.0 for x in xs],
                marker="o",
                markersize=4,
                capsize=3,
                linewidth=1.2,
                label=", ".join(f"{k}={v}" for k, v in zip(others, label)) or None,
            )
        axis.apply(ax, key)
        ax.set_ylabel(metric + unit(metric))
        ax.grid(alpha=0.3)
        if others:
            _legend(ax, len(lines))
    how = "mean ± sample std over seeds" if repeats else "one job per point"
    fig.suptitle(f"{metric} against each swept setting\n({how}; {len(done)} finished jobs)", fontsize="medium")
    return fig


def _colours(fig, ax, key: str | None, values: list) -> list:
    """A colour per point by the setting's value (its legend, or a colour bar for many numbers), or one
    colour for all when there is no key."""
    import matplotlib
    from matplotlib.colors import LogNorm, Normalize

    if key is None:
        return ["tab:blue"] * len(values)
    axis = Axis(values)
    cmap = matplotlib.colormaps["viridis"]
    if axis.numeric and len(axis.values) > MAX_LEGEND:  # by value, on a colour bar
        numbers = [float(v) for v in axis.values]
        norm = (LogNorm if axis.log else Normalize)(min(numbers), max(numbers))
        fig.colorbar(matplotlib.cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax, label=key)
        return [cmap(norm(float(v))) for v in values]
    if axis.numeric:  # by rank, so that close values still look different; the top of viridis is too pale
        colour = {v: cmap(0.85 * i / max(1, len(axis.values) - 1)) for i, v in enumerate(axis.values)}
    else:
        palette = matplotlib.colormaps["tab10"]
        colour = {v: palette(i % 10) for i, v in enumerate(axis.values)}
    for v in axis.values:  # legend entries, in sorted order
        ax.scatter([], [], color=colour[v], label=str(v))
    _legend(ax, len(axis.values), title=key)
    return [colour[v] for v in values]


def rate_distortion_figure(jobs: list[Job], keys: list[str], split: str = "test"):
    """KL (rate) against the reconstruction term (distortion), one point per finished job, in a panel per key
    coloured by its value; dashed lines of equal ELBO, recon + KL = const."""
    from matplotlib.ticker import MaxNLocator

    recon, kl = f"{split}/recon_loss", f"{split}/kl"
    done = finished(jobs, recon, kl)
    xs, ys = [float(j.metrics[recon]) for j in done], [float(j.metrics[kl]) for j in done]
    fig, axes = _panels(max(1, len(keys)), figures.figure_class(), extra_width=0.3)
    (x0, x1), (y0, y1) = _limits(xs), _limits(ys)
    for ax, key in zip(axes, keys or [None]):
        grid = 60
        gx = [x0 + (x1 - x0) * i / grid for i in range(grid + 1)]
        gy = [y0 + (y1 - y0) * i / grid for i in range(grid + 1)]
        levels = [v for v in MaxNLocator(nbins=5).tick_values(x0 + y0, x1 + y1) if x0 + y0 < v < x1 + y1]
        if levels:
            iso = ax.contour(
                gx,
                gy,
                [[a + b for a in gx] for b in gy],
                levels=levels,
                colors="0.55",
                linestyles="dashed",
                linewidths=0.8,
            )
            ax.clabel(iso, fmt=lambda v: f"ELBO {-v:g}", fontsize="x-small")
        colours = _colours(fig, ax, key, [j.overrides.get(key, "-") for j in done])
        ax.scatter(xs, ys, c=colours, s=28, edgecolors="black", linewidths=0.4, zorder=3)
        ax.set_xlim(x0, x1)
        ax.set_ylim(y0, y1)
        ax.set_xlabel(f"distortion: {recon}  [nats]")
        ax.set_ylabel(f"rate: {kl}  [nats]")
        ax.set_title(f"coloured by {key}" if key else "", fontsize="small")
    fig.suptitle(
        f"Rate-distortion plane: {len(done)} finished jobs\ndashed: lines of equal ELBO = -(recon + KL), nats",
        fontsize="medium",
    )
    return fig


def _legend(ax, entries: int, **kwargs) -> None:
    # A few entries find room inside the axes; more go beside them rather than over the data.
    where = {} if entries <= 4 else {"loc": "upper left", "bbox_to_anchor": (1.02, 1.0)}
    if not ax.get_legend_handles_labels()[0]:
        return  # nothing labelled: no legend box
    ax.legend(fontsize="x-small", title_fontsize="small", frameon=False, **where, **kwargs)


def _limits(values: list[float]) -> tuple[float, float]:
    lo, hi = min(values), max(values)
    pad = 0.12 * (hi - lo) if hi > lo else max(1.0, 0.05 * abs(lo))
    return lo - pad, hi + pad


def write_figures(jobs: list[Job], metric: str, keys: list[str], folder: Path) -> str:
    """The sweep's figures as PNG and SVG in `folder`; what to tell the user."""
    if figures.figure_class() is None:
        return "vae-report: " + figures.not_installed("figures")
    written, skipped = [], []
    if keys and finished(jobs, metric):
        written += figures.write(metric_figure(jobs, metric, keys), folder / f"{metric.replace('/', '_')}_by_setting")
    elif not keys:
        skipped.append(f"no {metric} figure: no swept setting besides seed (choose one with --plot-keys)")
    if finished(jobs, "test/recon_loss", "test/kl"):
        written += figures.write(rate_distortion_figure(jobs, keys), folder / "rate_distortion")
    if not written and not skipped:
        skipped.append("no figures: no job has finished")
    return "\n".join(
        [
            *(["vae-report: wrote " + ", ".join(str(p) for p in written)] if written else []),
            *(f"vae-report: {s}" for s in skipped),
        ]
    )
