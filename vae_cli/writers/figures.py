"""Figures of one model: the KL of each latent dimension as sorted bars (for vae-eval and TensorBoard) and
the per-image inference gap as a histogram (vae-eval); and the plumbing every figure shares: matplotlib
found or not, and a figure written as PNG and SVG.

matplotlib is a dependency, imported only when a figure is drawn (an installation without it still runs, and
says once what it did not draw). Figures are made and
rendered without pyplot (PNG and TensorBoard images by the Agg canvas): no window, no backend to choose, no
global registry of open figures in a long training run. Nothing here imports torch, so vae-report draws
without loading it."""

import io
import warnings
from pathlib import Path

from .files import atomic_write

INSTALL = "pip install matplotlib"
ACTIVE, INACTIVE = "tab:blue", "0.65"  # bar colours of active and inactive units
LOG_SPAN = 100  # an axis is logarithmic when its values span two decades or more


def figure_class():
    """matplotlib's Figure class, or None when matplotlib is not installed."""
    try:
        # The package itself first: importing an already loaded submodule would not look at it.
        import matplotlib  # noqa: F401
        from matplotlib.figure import Figure
    except ImportError:
        return None
    return Figure


def not_installed(what: str) -> str:
    """The one line a command prints instead of its figures."""
    return f"{what}: not drawn, matplotlib is not installed ({INSTALL} adds it)"


def write(fig, stem: Path) -> list[Path]:
    """The figure as stem.png and stem.svg, each written atomically."""
    paths = []
    for fmt in ("png", "svg"):
        buf = io.BytesIO()
        with warnings.catch_warnings():  # a crowded figure keeps matplotlib's plain layout; nothing to act on
            warnings.filterwarnings("ignore", "constrained_layout not applied")
            fig.savefig(buf, format=fmt, dpi=110)
        path, data = stem.with_name(f"{stem.name}.{fmt}"), buf.getvalue()
        atomic_write(path, lambda f: f.write(data))  # noqa: B023 (called here, before the loop goes on)
        paths.append(path)
    return paths


def rgba(fig) -> tuple[bytes, int, int]:
    """The figure rendered on the Agg canvas: (RGBA bytes, height, width), for TensorBoard's add_image."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    width, height = canvas.get_width_height()
    return bytes(canvas.buffer_rgba()), height, width


def kl_bars(ax, kl_per_dim: list[float], mu_var: list[float], threshold: float) -> None:
    """The KL of each latent dimension, largest first, coloured by whether it is an active unit. Activity is
    Var_x(E_q[z_j]) > threshold, a property of the posterior means and not of the KL, so it is marked by
    colour rather than by a line on the KL axis."""
    from matplotlib.patches import Patch

    order = sorted(range(len(kl_per_dim)), key=lambda j: -kl_per_dim[j])
    active = [mu_var[j] > threshold for j in order]
    kl = [kl_per_dim[j] for j in order]
    ax.bar(range(len(order)), kl, color=[ACTIVE if a else INACTIVE for a in active], width=0.8)
    positive = [v for v in kl if v > 0]
    if positive and positive[0] >= LOG_SPAN * positive[-1]:
        ax.set_yscale("log")  # else a collapsed dimension's bar would be too thin to see
    n_active = sum(active)
    ax.legend(
        handles=[
            Patch(color=ACTIVE, label=f"active ({n_active}): Var_x(E_q[z_j]) > {threshold:g}"),
            Patch(color=INACTIVE, label=f"inactive ({len(order) - n_active})"),
        ],
        loc="upper right",
        fontsize="small",
        frameon=False,
    )
    step = max(1, -(-len(order) // 32))  # at most about 32 tick labels
    ticks = range(0, len(order), step)
    ax.set_xticks(ticks, [f"z{order[i]}" for i in ticks], rotation=90 if len(order) > 12 else 0, fontsize="small")
    for label, i in zip(ax.get_xticklabels(), ticks):
        label.set_color(ACTIVE if active[i] else "0.4")
    ax.set_xlim(-0.6, len(order) - 0.4)
    ax.set_xlabel("latent dimension j, sorted by KL")
    ax.set_ylabel("KL(q(z_j|x) || p(z_j))  [nats]")
    ax.margins(y=0.25)  # room for the legend above the tallest bar


def kl_per_dim_figure(kl_per_dim: list[float], mu_var: list[float], threshold: float, title: str):
    """One panel of KL bars (TensorBoard's image), or None without matplotlib."""
    Figure = figure_class()
    if Figure is None:
        return None
    fig = Figure(figsize=(max(5.0, 2.0 + 0.16 * len(kl_per_dim)), 3.6), layout="constrained")
    ax = fig.subplots()
    kl_bars(ax, kl_per_dim, mu_var, threshold)
    ax.set_title(title, fontsize="medium")
    return fig


def evaluation_figure(res: dict, gap: list[float], threshold: float):
    """vae-eval's figure: the KL bars beside a histogram of the per-image inference gap, log p(x) estimate
    - ELBO; None without matplotlib. `res` is vae-eval's result (core.scoring.summarize and the run's keys)."""
    Figure = figure_class()
    if Figure is None:
        return None
    if res["kl_per_dim"]:
        bars_width = max(4.5, 1.5 + 0.16 * res["latent_dim"])
        fig = Figure(figsize=(bars_width + 4.5, 3.8), layout="constrained")
        bars, hist = fig.subplots(1, 2, width_ratios=[bars_width, 4.5])
        kl_bars(bars, res["kl_per_dim"], res["posterior_mean_var_per_dim"], threshold)
        bars.set_title(f"KL per latent dimension (total {res['kl']:.2f} nats)", fontsize="medium")
    else:  # families whose KL is not a sum over dimensions: no bars to draw
        fig = Figure(figsize=(6.0, 3.8), layout="constrained")
        hist = fig.subplots()
    hist.hist(gap, bins=min(50, max(10, len(gap) // 20)), color="tab:orange", alpha=0.85)
    se = res["inference_gap_se"]
    digits = 2 if not se < 0.01 else 3 if se >= 0.001 else 4  # the standard error to about two figures
    hist.axvline(
        res["inference_gap"],
        color="black",
        linestyle="--",
        linewidth=1,
        label=f"mean {res['inference_gap']:.{digits}f} ± {se:.{digits}f} nats",
    )
    hist.legend(loc="upper right", fontsize="small", frameon=False)
    hist.set_xlabel("log p(x) estimate - ELBO  [nats]")
    hist.set_ylabel("images")
    hist.set_title(f"Inference gap per image (k = {res['iw_samples']})", fontsize="medium")
    hist.margins(y=0.15)
    fig.suptitle(f"{Path(res['checkpoint']).name}, {res['split']} split, {res['n_examples']} images", fontsize="medium")
    return fig


def gaps_figure(res: dict, approximation: list[float], amortisation: list[float]):
    """vae-eval gaps=true's figure: the mean inference gap as a stacked bar (approximation + amortisation, with
    their standard errors) beside histograms of the two gaps per image; None without matplotlib."""
    Figure = figure_class()
    if Figure is None:
        return None
    g = res["gaps"]
    fig = Figure(figsize=(9.5, 3.8), layout="constrained")
    bar, hist = fig.subplots(1, 2, width_ratios=[2.5, 7])
    parts = (("approximation", "tab:blue"), ("amortisation", "tab:orange"))
    bottom = 0.0
    for name, color in parts:
        mean, se = g[f"{name}_gap"], g[f"{name}_gap_se"]
        bar.bar(
            [0],
            [mean],
            bottom=bottom,
            color=color,
            alpha=0.85,
            yerr=[se],
            capsize=4,
            label=f"{name} {mean:.3f} ± {se:.3f}",
        )
        bottom += mean
    bar.set_xticks([])
    bar.set_xlim(-0.8, 0.8)
    bar.set_ylabel("nats per image")
    bar.set_title("Mean inference gap", fontsize="medium")
    bar.legend(loc="upper center", bbox_to_anchor=(0.5, -0.02), fontsize="small", frameon=False)
    values = approximation + amortisation
    lo, hi = (min(values), max(values)) if values else (0.0, 1.0)
    bins = [lo + (hi - lo) * i / 40 for i in range(41)] if hi > lo else 10
    for (name, color), v in zip(parts, (approximation, amortisation)):
        hist.hist(v, bins=bins, color=color, alpha=0.6, label=f"{name} gap")
    hist.legend(loc="upper right", fontsize="small", frameon=False)
    hist.set_xlabel("nats")
    hist.set_ylabel("images")
    hist.set_title(
        f"Per image: log p(x) - ELBO(q*) and ELBO(q*) - ELBO(q(z|x)), {g['n_images']} images", fontsize="medium"
    )
    fig.suptitle(
        f"{Path(res['checkpoint']).name}, {res['split']} split: q's {g['optimised']} optimised, {g['steps']} steps",
        fontsize="medium",
    )
    return fig
