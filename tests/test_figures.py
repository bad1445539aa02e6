"""The figures: vae-report's (a metric against each swept setting, the rate-distortion plane), vae-eval's
(the KL per latent dimension, the inference gap per image), TensorBoard's (val/active_units every validation,
the sorted KL bars), read back as files and from the matplotlib objects before they are saved; and every
command without matplotlib."""

import json
import statistics
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from vae_cli.cli import report
from vae_cli.cli.sweep import figures as sweep_figures
from vae_cli.cli.sweep.jobs import read_sweep
from vae_cli.writers import figures

from conftest import read_scalars, run_here, train

pytest.importorskip("matplotlib", reason="matplotlib is a dependency: pip install -e '.[test]'")

PNG = b"\x89PNG\r\n\x1a\n"


def is_png(path: Path) -> bool:
    return path.read_bytes()[:8] == PNG


def is_svg(path: Path) -> bool:
    return ET.parse(path).getroot().tag == "{http://www.w3.org/2000/svg}svg"


def make_job(sweep: Path, num: int, overrides: dict, metrics: dict | None) -> None:
    d = sweep / str(num)
    (d / ".hydra").mkdir(parents=True)
    (d / ".hydra" / "overrides.yaml").write_text("".join(f"- {k}={v}\n" for k, v in overrides.items()))
    (d / "train.log").write_text("")
    if metrics is not None:
        (d / "metrics.json").write_text(json.dumps(metrics))


def fake_metrics(latent_dim: int, seed: int, act: str = "relu") -> dict:
    # Distinct per seed and setting, so a wrong group or a population std shows.
    kl = 2.0 + latent_dim**0.5 + 0.3 * seed * seed + (0.7 if act == "tanh" else 0.0)
    recon = 40.0 - 0.8 * kl + 0.11 * seed
    return {
        "test/elbo": -(recon + kl),
        "test/recon_loss": recon,
        "test/kl": kl,
        "test/bpd": (recon + kl) / 44.4,
        "best_val_elbo": -(recon + kl) - 0.5,
        "epochs": 5,
        "seed": seed,
    }


@pytest.fixture
def sweep(tmp_path) -> Path:
    """latent_dim 2, 16, 256 (more than two decades) x seeds 0, 1, 2, and one failed job."""
    s = tmp_path / "sweep"
    num = 0
    for k in (2, 16, 256):
        for seed in (0, 1, 2):
            make_job(s, num, {"model.latent_dim": k, "seed": seed, "trainer.max_epochs": 5}, fake_metrics(k, seed))
            num += 1
    make_job(s, num, {"model.latent_dim": 512, "seed": 0, "trainer.max_epochs": 5}, None)
    return s


@pytest.fixture
def two_keys(tmp_path) -> Path:
    """latent_dim 2, 8 (less than two decades) x activation relu, tanh (categories) x seeds 0, 1."""
    s = tmp_path / "two_keys"
    num = 0
    for k in (2, 8):
        for act in ("tanh", "relu"):
            for seed in (0, 1):
                make_job(
                    s, num, {"model.latent_dim": k, "model.activation": act, "seed": seed}, fake_metrics(k, seed, act)
                )
                num += 1
    return s


def errorbars(ax) -> list[tuple[list[float], list[float], list[float]]]:
    """Each line's (x, y, half-length of its error bars), read from what matplotlib draws."""
    out = []
    for c in ax.containers:
        line, _, (bars,) = c.lines
        half = [(seg[1][1] - seg[0][1]) / 2 for seg in bars.get_segments()]
        out.append((list(line.get_xdata()), list(line.get_ydata()), half))
    return out


def test_report_writes_both_figures_as_png_and_svg_beside_its_tables(sweep, capsys):
    report.main([str(sweep)])
    err = capsys.readouterr().err
    for stem in ("test_elbo_by_setting", "rate_distortion"):
        assert is_png(sweep / f"{stem}.png") and is_svg(sweep / f"{stem}.svg"), stem
        assert str(sweep / f"{stem}.png") in err
    assert (sweep / "report.md").is_file()


def test_metric_against_a_setting_is_the_mean_over_seeds_with_their_sample_std(sweep):
    fig = sweep_figures.metric_figure(read_sweep(sweep), "test/elbo", ["model.latent_dim"])
    (ax,) = fig.axes
    ((x, y, half),) = errorbars(ax)  # one line: no other setting is swept
    assert x == [2.0, 16.0, 256.0]
    for k, mean, std in zip((2, 16, 256), y, half):
        values = [fake_metrics(k, seed)["test/elbo"] for seed in (0, 1, 2)]
        assert mean == pytest.approx(statistics.fmean(values)) and std == pytest.approx(statistics.stdev(values))
    assert ax.get_xscale() == "log"  # 2 to 256 spans more than two decades
    assert [t.get_text() for t in ax.get_xticklabels()] == ["2", "16", "256"]
    assert ax.get_ylabel() == "test/elbo  [nats]"


def test_one_line_per_other_setting_and_categories_on_their_own_axis(two_keys):
    jobs = read_sweep(two_keys)
    fig = sweep_figures.metric_figure(jobs, "test/kl", ["model.latent_dim", "model.activation"])
    by_dim, by_act = fig.axes
    assert by_dim.get_xscale() == "linear"  # 2 to 8: less than two decades
    assert [t.get_text() for t in by_dim.get_legend().get_texts()] == ["model.activation=relu", "model.activation=tanh"]
    (relu_x, relu_y, relu_std), _ = errorbars(by_dim)
    assert relu_x == [2.0, 8.0]
    assert relu_y[1] == pytest.approx(statistics.fmean(fake_metrics(8, s, "relu")["test/kl"] for s in (0, 1)))
    assert relu_std[1] == pytest.approx(0.3 / 2**0.5)  # the seeds' KLs differ by 0.3
    assert [t.get_text() for t in by_act.get_xticklabels()] == ["relu", "tanh"]  # categories, sorted
    (x, y, _), _ = errorbars(by_act)  # latent_dim 2: relu at 0, tanh at 1
    assert x == [0.0, 1.0] and y[1] - y[0] == pytest.approx(0.7)


def test_rate_distortion_has_one_point_per_finished_job_and_lines_of_equal_elbo(sweep):
    jobs = read_sweep(sweep)
    fig = sweep_figures.rate_distortion_figure(jobs, ["model.latent_dim"])
    ax = fig.axes[0]
    # The scatter of the points; the legend's entries are empty scatters, the dashed lines a contour set.
    (points,) = [c for c in ax.collections if type(c).__name__ == "PathCollection" and len(c.get_offsets())]
    done = [j for j in jobs if j.status == "ok"]
    assert sorted(map(tuple, points.get_offsets().tolist())) == sorted(
        (j.metrics["test/recon_loss"], j.metrics["test/kl"]) for j in done
    )
    iso = next(c for c in ax.collections if hasattr(c, "allsegs"))
    assert len(iso.levels) >= 2
    for level, segments in zip(iso.levels, iso.allsegs):
        for seg in segments:  # recon + KL = -ELBO along each dashed line
            assert seg.sum(1) == pytest.approx(level, abs=1e-6 * abs(level))
    labels = [t.get_text() for t in ax.texts]
    assert labels and all(t.startswith("ELBO -") for t in labels)
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["2", "16", "256"]
    assert ax.get_xlabel() == "distortion: test/recon_loss  [nats]" and ax.get_ylabel() == "rate: test/kl  [nats]"


def test_report_options_choose_the_metric_and_keys_or_switch_figures_off(two_keys, capsys):
    report.main([str(two_keys), "--no-figures"])
    assert not list(two_keys.glob("*.png")) and not list(two_keys.glob("*.svg"))
    report.main([str(two_keys), "--plot-metric", "test/kl", "--plot-keys", "model.activation"])
    capsys.readouterr()
    assert sorted(p.name for p in two_keys.glob("*.png")) == ["rate_distortion.png", "test_kl_by_setting.png"]
    fig = sweep_figures.rate_distortion_figure(read_sweep(two_keys), ["model.activation"])
    assert len(fig.axes) == 1 and fig.axes[0].get_legend().get_title().get_text() == "model.activation"


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--plot-keys", "model.nope"], "vae-report: error: --plot-keys model.nope: no job sets model.nope;"),
        (["--plot-metric", "test/nope"], "vae-report: error: --plot-metric test/nope: no job has it;"),
    ],
)
def test_a_bad_figure_option_exits_2_with_one_line(two_keys, args, expected):
    exe = Path(sys.executable).parent / "vae-report"
    proc = subprocess.run([str(exe), str(two_keys), *args], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.startswith(expected) and proc.stderr.count("\n") == 1, proc.stderr


def test_without_matplotlib_the_report_prints_its_tables_and_says_once_how_to_get_figures(sweep, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # what `import matplotlib` does when it is not installed
    report.main([str(sweep)])
    out, err = capsys.readouterr()
    assert "10 jobs: 9 ok" in out and (sweep / "report.md").is_file()
    assert err.count("pip install matplotlib") == 1
    assert not list(sweep.glob("*.png")) and not list(sweep.glob("*.svg"))


def test_kl_bars_are_sorted_and_coloured_by_activity():
    kl = [0.5, 3.0, 0.01, 1.2]
    mu_var = [0.2, 0.9, 0.001, 0.005]  # dimension 3 carries KL but its mean barely varies: inactive
    fig = figures.kl_per_dim_figure(kl, mu_var, 0.01, "t")
    (ax,) = fig.axes
    bars = ax.patches
    assert [b.get_height() for b in bars] == [3.0, 1.2, 0.5, 0.01]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["z1", "z3", "z0", "z2"]
    active, inactive = (bars[0].get_facecolor(), bars[1].get_facecolor())
    assert [b.get_facecolor() for b in bars] == [active, inactive, active, inactive] and active != inactive
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["active (2): Var_x(E_q[z_j]) > 0.01", "inactive (2)"]
    assert "nats" in ax.get_ylabel()
    assert ax.get_yscale() == "log"  # 0.01 to 3 nats: the smallest bar would vanish on a linear axis
    assert [t.get_color() for t in ax.get_xticklabels()][:2] == ["tab:blue", "0.4"]  # labels coloured as the bars


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A short run whose last validation has some active units and some not, with the KL bars every epoch."""
    return train(
        tmp_path_factory.mktemp("figures"),
        "run",
        "trainer.max_epochs=3",
        "model.latent_dim=16",
        "model.hidden_dims=[64]",
        "optim.lr=1e-2",
        "callbacks.image_grids.every_n_epochs=1",
    )


@pytest.mark.slow
def test_vae_eval_writes_its_figure_beside_its_report(run, tmp_path, capsys):
    run_here("vae-eval", f"ckpt_path={run}", "iw_samples=10", cwd=tmp_path)
    out = capsys.readouterr().out
    for path in (run / "eval_test_k10_best.png", run / "eval_test_k10_best.svg"):
        assert str(path) in out
    assert is_png(run / "eval_test_k10_best.png") and is_svg(run / "eval_test_k10_best.svg")

    res = json.loads((run / "eval_test_k10_best.json").read_text())
    gap = [0.1 * i for i in range(res["n_examples"])]
    fig = figures.evaluation_figure(res, gap, 0.01)
    bars, hist = fig.axes
    assert [b.get_height() for b in bars.patches] == sorted(res["kl_per_dim"], reverse=True)
    assert sum(p.get_height() for p in hist.patches) == res["n_examples"]  # every image in the histogram
    assert hist.get_xlabel() == "log p(x) estimate - ELBO  [nats]"


def test_without_a_kl_per_dimension_the_eval_figure_is_the_histogram_alone():
    res = {
        "kl_per_dim": [],
        "posterior_mean_var_per_dim": [],
        "latent_dim": 4,
        "kl": 3.0,
        "inference_gap": 0.5,
        "inference_gap_se": 0.1,
        "iw_samples": 10,
        "checkpoint": "best.ckpt",
        "split": "test",
        "n_examples": 3,
    }
    (hist,) = figures.evaluation_figure(res, [0.4, 0.5, 0.6], 0.01).axes  # no empty KL panel beside it
    assert sum(p.get_height() for p in hist.patches) == 3


@pytest.mark.slow
def test_tensorboard_has_active_units_every_validation_and_the_sorted_kl_bars(run, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import IMAGES, EventAccumulator

    scalars = read_scalars(run)
    assert [s for s, _ in scalars["val/active_units"]] == [s for s, _ in scalars["val/elbo"]]
    assert len(scalars["val/active_units"]) == 3  # one per validation
    images, histograms = {}, set()
    for f in run.glob("events.out.tfevents.*"):
        acc = EventAccumulator(str(f), size_guidance={IMAGES: 0})
        acc.Reload()
        histograms |= set(acc.Tags()["histograms"])
        if "val/kl_per_dim_sorted" in acc.Tags()["images"]:
            images = {e.step: e for e in acc.Images("val/kl_per_dim_sorted")}
    assert len(images) == 3 and all(e.encoded_image_string[:8] == PNG for e in images.values())
    assert "val/kl_per_dim" in histograms  # the histogram stays beside the bars

    # The last validation ran on the final weights: vae-eval of last.ckpt on the validation set agrees.
    out = tmp_path / "val.json"
    run_here(
        "vae-eval",
        f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}",
        "split=val",
        "iw_samples=1",
        f"out={out}",
        "figures=false",
        cwd=tmp_path,
    )
    active = json.loads(out.read_text())["active_units"]
    assert 0 < active < 16  # the count is not trivially all or none
    assert scalars["val/active_units"][-1][1] == active
    assert not out.with_suffix(".png").exists()  # figures=false


def test_without_matplotlib_training_logs_once_and_eval_prints_its_table(tmp_path, capsys, monkeypatch):
    # torchmetrics imports matplotlib whenever it is installed, so load it first, as a machine without matplotlib
    # would have it: the test then holds alone as in the whole suite.
    import torchmetrics  # noqa: F401

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    run_dir = train(
        tmp_path,
        "run",
        "trainer.max_epochs=2",
        "model.latent_dim=2",
        "model.hidden_dims=[16]",
        "callbacks.image_grids.every_n_epochs=1",
    )
    log = (run_dir / "train.log").read_text()
    assert log.count("pip install matplotlib") == 1
    assert len(read_scalars(run_dir)["val/active_units"]) == 2
    capsys.readouterr()
    run_here("vae-eval", f"ckpt_path={run_dir}", "iw_samples=2", cwd=tmp_path)
    out = capsys.readouterr().out
    assert "active_units" in out and out.count("pip install matplotlib") == 1
    assert not list(run_dir.glob("*.png"))


def test_matplotlib_is_imported_only_to_draw():
    # Every import of it in the package is inside a function (Lightning's torchmetrics may load it anyway) ...
    import ast

    package = Path(report.__file__).parent.parent
    for path in package.rglob("*.py"):
        for node in ast.parse(path.read_text()).body:  # the module's top level
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            assert not any(n.split(".")[0] == "matplotlib" for n in names), path
    # ... so vae-report, which loads no Lightning, starts without it.
    code = "import sys, vae_cli.cli.report, vae_cli.cli.sweep.figures; print('matplotlib' in sys.modules)"
    assert (
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
        == "False"
    )
