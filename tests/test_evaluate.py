"""The identity log p(x) = ELBO + KL(q || p(z|x)) and the importance-weighted estimator, on a model
whose log p(x) and true posterior are known in closed form; then vae-eval on a trained checkpoint."""

import json
import math
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch.distributions import MultivariateNormal, kl_divergence

from vae_cli.core.elbo import kl_analytic
from vae_cli.core.scoring import summarize
from vae_cli.core.vae import ImportanceWeighted

from conftest import run_here, run_tool
from linear_gaussian import D, K, LinearGaussian, _data, _random_q, fixed_posterior_vae


def test_elbo_plus_kl_to_the_true_posterior_is_log_px_for_any_q():
    model = LinearGaussian()
    x = _data(model, 16)
    mu, logvar = _random_q()(x)
    m, cov = model.posterior(x)
    q = MultivariateNormal(mu, torch.diag_embed(logvar.exp()))
    kl_true_post = kl_divergence(q, MultivariateNormal(m, cov.expand(16, K, K)))
    torch.testing.assert_close(model.elbo(x, mu, logvar) + kl_true_post, model.log_px(x), rtol=1e-12, atol=1e-10)
    assert (kl_true_post > 0.01).all()  # a wrong q really is worse


def test_elbo_equals_log_px_when_q_is_the_true_posterior():
    model = LinearGaussian(orthogonal=True)
    x = _data(model, 16)
    m, cov = model.posterior(x)
    assert torch.allclose(cov, torch.diag(torch.diagonal(cov)))
    logvar = torch.diagonal(cov).log().expand(16, K)
    torch.testing.assert_close(model.elbo(x, m, logvar), model.log_px(x), rtol=1e-12, atol=1e-10)
    # Every importance weight is then p(x) itself: the estimate is exact for any k and any chunking.
    vae = fixed_posterior_vae(model, lambda x: (model.posterior(x)[0], torch.diagonal(cov).log().expand(len(x), K)))
    for k, max_pairs in ((1, 10), (7, 3), (64, 1000)):
        torch.testing.assert_close(
            vae.importance_weighted(x.view(-1, 1, 1, D), k, max_pairs).log_px, model.log_px(x), rtol=1e-10, atol=1e-8
        )


@pytest.mark.slow
def test_iwae_estimate_rises_towards_log_px_and_stays_below_it():
    model = LinearGaussian()
    x0 = _data(model, 1)
    q = _random_q(seed=5)
    n = 400  # independent repetitions of the estimate for one x
    x = x0.expand(n, D)
    vae = fixed_posterior_vae(model, q)
    log_px = model.log_px(x0).item()
    elbo = model.elbo(x0, *q(x0)).item()
    assert log_px - elbo > 0.5  # q is far from the posterior, so the bound has room to tighten
    torch.manual_seed(0)
    means = []
    for k in (1, 10, 100, 1000):
        with torch.no_grad():
            est = vae.importance_weighted(x.reshape(n, 1, 1, D), k, max_pairs=20_000).log_px
        mean, se = est.mean().item(), est.std().item() / math.sqrt(n)
        assert mean < log_px + 3 * se, (k, mean, log_px)  # a lower bound in expectation
        means.append((k, mean, se))
    k1_mean, k1_se = means[0][1], means[0][2]
    assert abs(k1_mean - elbo) < 4 * k1_se  # k = 1 is the ELBO
    assert all(a[1] < b[1] for a, b in zip(means, means[1:])), means  # tightens as k grows
    assert log_px - means[-1][1] < 0.1 * (log_px - elbo)  # and closes most of the gap


def test_summary_counts_active_units_by_the_variance_of_posterior_means():
    n = 1000
    g = torch.Generator().manual_seed(0)
    mu = torch.stack([torch.randn(n, generator=g), 0.05 * torch.randn(n, generator=g), torch.zeros(n)], -1)
    kl_dims = kl_analytic(mu, torch.zeros_like(mu))
    per = ImportanceWeighted(log_px=-torch.ones(n), recon=1.5 - kl_dims.sum(-1), kl_dims=kl_dims, mu=mu)
    res = summarize(per, n_dims=4)
    assert res["active_units"] == 1  # variances ~1, ~0.0025 and 0 against the 0.01 threshold
    assert res["elbo"] == pytest.approx(-1.5) and res["bpd"] == pytest.approx(1.5 / (4 * math.log(2)))
    assert res["inference_gap"] == pytest.approx(0.5) and res["nll_iw"] == pytest.approx(1.0)
    assert res["kl"] == pytest.approx(sum(res["kl_per_dim"]))


def _eval(run_dir, k, tmp_path, *extra):
    out = tmp_path / f"eval_k{k}.json"
    run_here("vae-eval", f"ckpt_path={run_dir}", f"iw_samples={k}", f"out={out}", *extra, cwd=tmp_path)
    return json.loads(out.read_text())


def _refused(tool, *args, cwd, capsys) -> str:
    """An entry point run in this process that stops on a user error: exit status 2; its stderr."""
    with pytest.raises(SystemExit) as e:
        run_here(tool, *args, cwd=cwd)
    assert e.value.code == 2
    return capsys.readouterr().err


@pytest.mark.slow
def test_vae_eval_on_a_trained_checkpoint(trained_digits_run, tmp_path):
    results = {k: _eval(trained_digits_run, k, tmp_path) for k in (1, 10, 100, 1000)}
    r1 = results[1]
    # k = 1: the importance-weighted estimate is the single-sample ELBO, equal in expectation.
    assert abs(r1["nll_iw"] + r1["elbo"]) < 3 * r1["nll_iw_se"], r1
    nll = [results[k]["nll_iw"] for k in (1, 10, 100, 1000)]
    assert all(a > b for a, b in zip(nll, nll[1:])), nll
    r = results[1000]
    assert r["inference_gap"] + 3 * r["inference_gap_se"] >= 0
    assert r["n_examples"] == 297 and r["split"] == "test" and len(r["kl_per_dim"]) == r["latent_dim"] == 16
    assert 1 <= r["active_units"] <= 16
    # The ELBO agrees with the one vae-train reported for the same checkpoint (one-sample estimate there).
    train_elbo = json.loads((trained_digits_run / "metrics.json").read_text())["test/elbo"]
    assert abs(r["elbo"] - train_elbo) < 3 * r1["elbo_se"] + 0.05
    val = _eval(trained_digits_run, 10, tmp_path, "split=val")
    assert val["n_examples"] == 150


@pytest.mark.slow
def test_vae_eval_writes_its_report_in_the_run_directory(trained_digits_run, tmp_path, capsys):
    run_here("vae-eval", f"ckpt_path={trained_digits_run}", "iw_samples=5", cwd=tmp_path)
    out = capsys.readouterr().out
    assert "nll_iw (k=5)" in out and "active_units" in out
    assert (trained_digits_run / "eval_test_k5_best.json").is_file()
    # Scoring the other checkpoint of the run keeps both reports, each naming what it scored.
    run_here("vae-eval", f"ckpt_path={trained_digits_run / 'checkpoints' / 'last.ckpt'}", "iw_samples=5", cwd=tmp_path)
    best, last = (json.loads((trained_digits_run / f"eval_test_k5_{n}.json").read_text()) for n in ("best", "last"))
    assert best["checkpoint"].endswith("best.ckpt") and last["checkpoint"].endswith("last.ckpt")


@pytest.mark.slow
def test_vae_eval_rejects_missing_and_corrupt_checkpoints(tmp_path, capsys):
    assert "no checkpoint at" in _refused(
        "vae-eval", f"ckpt_path={tmp_path / 'nope.ckpt'}", cwd=tmp_path, capsys=capsys
    )
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"PK\x03\x04 not really a checkpoint")
    # The process contract, once: exit status 2 and one paragraph on stderr, no traceback.
    proc = run_tool("vae-eval", f"ckpt_path={bad}", cwd=tmp_path, check=False)
    assert (
        proc.returncode == 2
        and "cannot be read as a vae-cli checkpoint" in proc.stderr
        and "Traceback" not in proc.stderr
    )


@pytest.mark.slow
def test_vae_eval_pairs_two_evaluations_of_the_same_images(trained_digits_run, tmp_path, capsys):
    (tmp_path / "a").mkdir()
    a = _eval(trained_digits_run, 10, tmp_path / "a")
    b = _eval(trained_digits_run, 10, tmp_path, "seed=1", f"compare_to={tmp_path / 'a' / 'eval_k10.json'}")
    c = b["compared_to"]
    # The mean of the per-image differences is the difference of the two means.
    assert c["nll_iw_diff"] == pytest.approx(b["nll_iw"] - a["nll_iw"], abs=1e-9)
    assert c["elbo_diff"] == pytest.approx(b["elbo"] - a["elbo"], abs=1e-9)
    # Its standard error is that of the per-image differences, which pairing makes far smaller than the two
    # standard errors together (every model finds the same images hard).
    pa, pb = (torch.load(p, weights_only=True) for p in (tmp_path / "a" / "eval_k10.pt", tmp_path / "eval_k10.pt"))
    d = pa["log_px"] - pb["log_px"]
    assert c["nll_iw_diff_se"] == pytest.approx(d.std().item() / math.sqrt(len(d)))
    assert 0 < c["nll_iw_diff_se"] < 0.2 * math.hypot(a["nll_iw_se"], b["nll_iw_se"])
    # Another split has other images: named before any scoring.
    err = _refused(
        "vae-eval",
        f"ckpt_path={trained_digits_run}",
        "iw_samples=10",
        "split=val",
        f"out={tmp_path / 'v.json'}",
        f"compare_to={tmp_path / 'a' / 'eval_k10.json'}",
        cwd=tmp_path,
        capsys=capsys,
    )
    assert "scored other images" in err and not (tmp_path / "v.json").exists()
    err = _refused(
        "vae-eval",
        f"ckpt_path={trained_digits_run}",
        "iw_samples=10",
        f"out={tmp_path / 'n.json'}",
        f"compare_to={tmp_path / 'nope.json'}",
        cwd=tmp_path,
        capsys=capsys,
    )
    assert "no per-image results" in err and "nope.json" in err


@pytest.mark.parametrize("k, max_pairs", [(1, 50_000), (7, 30), (50, 20), (5, 3)])
def test_progress_is_told_of_every_example_and_changes_no_number(k, max_pairs):
    from vae_cli.core.scoring import score
    from vae_cli.core.vae import VAE

    torch.manual_seed(0)
    vae = VAE((1, 8, 8), latent_dim=3, hidden_dims=[16], likelihood="bernoulli")
    x = torch.rand(45, 1, 8, 8).bernoulli()
    batches = [[x[:20], None], [x[20:], None]]
    torch.manual_seed(1)
    plain = score(vae, batches, k, max_pairs, "cpu")
    told = []
    torch.manual_seed(1)
    watched = score(vae, batches, k, max_pairs, "cpu", progress=told.append)
    for a, b in zip(plain, watched):
        assert torch.equal(a, b)  # the same random draws in the same order
    assert sum(told) == 45  # in pieces of at most max_pairs pairs (one example when k is larger), not per batch
    assert all(n * k <= max(max_pairs, k) for n in told) and len(told) >= -(-45 * k // max(max_pairs, k))
    for limit in (1, 7, 20, 33, 45, 100):  # within a piece, at a batch's end, past the data
        torch.manual_seed(1)
        first = score(vae, batches, k, max_pairs, "cpu", limit=limit)
        for a, b in zip(plain, first):
            assert torch.equal(a[:limit], b)  # the whole score's first examples, draw for draw


def test_progress_on_a_terminal_is_a_bar_with_the_time_left(capsys):
    from vae_cli.cli.progress import Progress

    with Progress(100, "test images", bar=True) as progress:
        for _ in range(4):
            time.sleep(0.15)  # the bar redraws at most ten times a second
            progress(25)
    err = capsys.readouterr().err
    assert re.search(r"test images: +50%.* 50/100 \[\d\d:\d\d<\d\d:\d\d", err), err  # elapsed<left


def test_progress_elsewhere_is_a_log_line_now_and_then_with_the_time_left(caplog, monkeypatch):
    from vae_cli.cli import progress as progress_module

    clock = iter([0, 10, 30, 70, 100, 125, 131, 140, 150, 160, 300])  # the start, then one reading per call
    monkeypatch.setattr(progress_module.time, "monotonic", lambda: float(next(clock)))
    with caplog.at_level("INFO", logger="vae_cli"), progress_module.Progress(1000, "test images", bar=False) as p:
        for _ in range(10):
            p(100)
    # At most one a minute (300 done in 70 s, 700 to go: 163 s; 600 in 131 s: 87 s to go), and none at the end.
    assert [r.getMessage() for r in caplog.records] == [
        "300/1000 test images (30%), 0:01:10 so far, about 0:02:43 left",
        "600/1000 test images (60%), 0:02:11 so far, about 0:01:27 left",
    ]


@pytest.mark.slow
def test_a_limit_scores_the_first_images_as_the_whole_split_does(trained_digits_run, tmp_path, capsys):
    from vae_cli.cli.evaluate import report_path

    whole = _eval(trained_digits_run, 10, tmp_path)
    (tmp_path / "first").mkdir()
    first = _eval(trained_digits_run, 10, tmp_path / "first", "limit=50", f"compare_to={tmp_path / 'eval_k10.pt'}")
    assert first["n_examples"] == 50 < whole["n_examples"]
    # The same seed draws the same samples for the same images in the same order: the first 50 per-image
    # values are the whole evaluation's, so the paired difference is exactly zero.
    pw, pf = (torch.load(p, weights_only=True) for p in (tmp_path / "eval_k10.pt", tmp_path / "first" / "eval_k10.pt"))
    assert torch.equal(pf["log_px"], pw["log_px"][:50]) and torch.equal(pf["elbo"], pw["elbo"][:50])
    c = first["compared_to"]
    assert c["n_paired"] == 50 and c["nll_iw_diff"] == 0 and c["elbo_diff"] == 0
    # Either side may be the limited one: the whole split against the first look pairs the same 50 images.
    again = _eval(trained_digits_run, 10, tmp_path, "seed=1", f"compare_to={tmp_path / 'first' / 'eval_k10.pt'}")
    assert again["compared_to"]["n_paired"] == 50 and again["n_examples"] == whole["n_examples"]
    # A first look never takes the whole evaluation's default file name.
    names = {report_path(Path("r/checkpoints/best.ckpt"), "test", 5000, limit).name for limit in (None, 1000)}
    assert names == {"eval_test_k5000_best.json", "eval_test_k5000_best_first1000.json"}
    err = _refused(
        "vae-eval",
        f"ckpt_path={trained_digits_run}",
        "iw_samples=10",
        "limit=0",
        f"out={tmp_path / 'z.json'}",
        cwd=tmp_path,
        capsys=capsys,
    )
    assert "limit" in err and "integer >= 1" in err and not (tmp_path / "z.json").exists()


@pytest.mark.slow
def test_vae_eval_and_vae_sample_never_import_lightning(trained_digits_run, tmp_path):
    # Scoring and sampling need torch, the core and the data; importing Lightning was most of their start-up.
    script = f"""
import sys
from vae_cli.cli import evaluate, sample
for main, argv in ((evaluate.main, ["vae-eval", "ckpt_path={trained_digits_run}", "iw_samples=2", "out=e.json"]),
                   (sample.main, ["vae-sample", "ckpt_path={trained_digits_run}", "out=png", "n=4"])):
    sys.argv = argv
    main()
print(sorted(m for m in sys.modules if m.startswith(("pytorch_lightning", "lightning_fabric"))))
"""
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"
    assert (tmp_path / "e.json").is_file() and (tmp_path / "png" / "prior_samples.png").is_file()
