"""The posterior and prior groups from the command line: vae-train with each, resumed exactly, scored by vae-eval and
sampled by vae-sample; the settings the families' math does not allow, refused at start-up by their keys; the
rules without torch held against the classes (settings.POSTERIORS, settings.PRIORS)."""

import inspect
import json

import pytest
import torch
import yaml

from vae_cli import settings
from vae_cli.core import families
from vae_cli.inputs import checkpoint
from vae_cli.settings import check_families, check_model

from conftest import QUIET, compose, read_scalars, refused, run_here, run_vae_train, train

SMALL = ["model.hidden_dims=[32]", "model.latent_dim=4", "trainer.log_every_n_steps=1"]
IAF_VAMP = ["posterior=iaf", "posterior.hidden_dims=[16]", "prior=vamp", "prior.n_components=10"]
FULL_MOG = ["posterior=full", "prior=mog", "prior.n_components=3"]


def test_the_groups_nest_into_the_models_config():
    cfg = compose("train", *IAF_VAMP, "posterior.n_steps=3")
    assert dict(cfg.model.posterior) == {"family": "iaf", "n_steps": 3, "hidden_dims": [16]}
    assert dict(cfg.model.prior) == {"family": "vamp", "n_components": 10}
    cfg = compose("train")
    assert dict(cfg.model.posterior) == {"family": "diagonal"} and dict(cfg.model.prior) == {"family": "standard"}
    assert dict(compose("train", "model=conv", "prior=mog").model.prior) == {"family": "mog", "n_components": 10}


def test_the_rules_defaults_are_the_classes():
    iaf = inspect.signature(families.IAF).parameters
    assert {k: v[3] for k, v in settings.POSTERIORS["iaf"].items()} == {
        k: list(iaf[k].default) if k == "hidden_dims" else iaf[k].default for k in ("n_steps", "hidden_dims")
    }
    for family, cls in (("mog", families.MixtureOfGaussians), ("vamp", families.VampPrior)):
        assert settings.PRIORS[family]["n_components"][3] == inspect.signature(cls).parameters["n_components"].default
    for cfg_family, group in ((settings.POSTERIORS, "posterior"), (settings.PRIORS, "prior")):
        for name in cfg_family:  # every family has its config, with the rules' defaults
            assert dict(compose("train", f"{group}={name}")[group]) == {
                "family": name,
                **{k: v[3] for k, v in cfg_family[name].items()},
            }


@pytest.mark.parametrize(
    "args,message",
    [
        (["posterior=iaf", "posterior.n_steps=0"], "posterior.n_steps=0 is not a valid number of flow steps"),
        (["prior=vamp", "prior.n_components=0"], "prior.n_components=0 is not a valid number of pseudo-inputs"),
        (["posterior.family=gaussian"], "posterior.family='gaussian' is not a valid posterior family"),
        (["+prior.n_components=3"], "prior.n_components is not a setting of the standard prior"),
        (
            ["posterior=full", "objective.free_bits=0.5"],
            "objective.free_bits=0.5 floors the KL of each latent dimension",
        ),
        (["prior=mog", "objective.free_bits=0.5"], "prior.family=mog"),
    ],
)
def test_what_the_families_do_not_allow_is_refused_at_start_up_by_its_keys(args, message, tmp_path, capsys):
    err = refused("vae-train", *args, f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path, capsys=capsys)
    assert message in err
    assert not (tmp_path / "run").exists()


def test_the_rules_refuse_from_python_too():
    with pytest.raises(ValueError, match=r"posterior\.n_steps"):
        check_model(posterior={"family": "iaf", "n_steps": 0})
    with pytest.raises(ValueError, match="free_bits"):
        check_families(posterior="iaf", free_bits=1.0)
    check_families(posterior={"family": "diagonal"}, prior="standard", free_bits=1.0)
    assert settings.kl_estimate("full", "standard") == "analytic" and settings.kl_estimate("diagonal", "vamp") == "mc"


@pytest.mark.parametrize(
    "families_args,estimate", [(IAF_VAMP, "mc"), (FULL_MOG, "mc"), (["posterior=full"], "analytic")]
)
def test_a_run_with_each_family_logs_its_terms_and_is_scored_and_sampled(families_args, estimate, tmp_path):
    run = train(tmp_path, "run", *SMALL, *families_args, "trainer.max_epochs=2")
    m = json.loads((run / "metrics.json").read_text())
    assert m["test/elbo"] == pytest.approx(-(m["test/recon_loss"] + m["test/kl"]), rel=1e-5)
    s = read_scalars(run)
    assert {"train/recon_loss", "train/kl", "train/elbo", "val/elbo", "val/kl"} <= s.keys()
    ckpt = checkpoint(run / "checkpoints" / "last.ckpt")
    assert ckpt["hyper_parameters"]["kl_estimate"] == estimate
    assert ckpt["hyper_parameters"]["model"]["posterior"]["family"] == families_args[0].split("=")[1]
    out = tmp_path / "eval.json"
    run_here("vae-eval", f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}", "iw_samples=5", f"out={out}", cwd=tmp_path)
    scored = json.loads(out.read_text())
    assert scored["kl_estimate"] == estimate and scored["nll_iw"] <= -scored["elbo"] + 1.0
    run_here(
        "vae-sample", f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}", f"out={tmp_path / 's'}", "n=4", cwd=tmp_path
    )
    assert (tmp_path / "s" / "prior_samples.png").exists()


def test_a_run_with_learned_families_and_dreg_resumes_exactly(tmp_path):
    args = [*SMALL, *IAF_VAMP, "objective.iw_samples=3", "objective.gradient=dreg"]
    whole = train(tmp_path, "whole", *args, "trainer.max_epochs=2")
    train(tmp_path, "part", *args, "trainer.max_epochs=1")
    part = train(
        tmp_path, "part", *args, "trainer.max_epochs=2", f"ckpt_path={tmp_path / 'part' / 'checkpoints' / 'last.ckpt'}"
    )
    assert json.loads((part / "metrics.json").read_text()) == json.loads((whole / "metrics.json").read_text())


def test_a_checkpoint_without_the_families_is_diagonal_and_standard(tmp_path):
    run = train(tmp_path, "run", *SMALL, "trainer.max_epochs=1")
    path = run / "checkpoints" / "last.ckpt"
    ckpt = torch.load(path, weights_only=True)
    for key in ("posterior", "prior"):  # as written before the families
        del ckpt["hyper_parameters"]["model"][key]
    del ckpt["hyper_parameters"]["kl_estimate"]
    torch.save(ckpt, tmp_path / "old.ckpt")
    from vae_cli.cli.loading import load_vae

    vae, _ = load_vae(tmp_path / "old.ckpt")
    assert (vae.posterior.family, vae.prior.family, vae.kl_estimate) == ("diagonal", "standard", "analytic")
    out = tmp_path / "eval.json"
    run_here("vae-eval", f"ckpt_path={tmp_path / 'old.ckpt'}", "iw_samples=5", f"out={out}", cwd=tmp_path)
    assert len(json.loads(out.read_text())["kl_per_dim"]) == 4


def test_a_run_with_learned_families_averages_their_weights(tmp_path):
    """callbacks.ema averages every parameter, the flow's and the pseudo-inputs' too."""
    run = train(tmp_path, "run", *SMALL, *IAF_VAMP, "callbacks=[default,ema]", "trainer.max_epochs=2")
    ckpt = checkpoint(run / "checkpoints" / "last.ckpt")
    raw, average = ckpt["current_model_state"], ckpt["state_dict"]
    for name in ("vae.prior.pseudo_inputs", "vae.posterior.steps.0.layers.0.weight"):
        assert name in average and not torch.equal(raw[name], average[name])


@pytest.mark.slow
def test_a_sweep_and_a_search_over_the_families_table_and_choose_them(tmp_path):
    sweep = tmp_path / "sweep"
    args = [*SMALL, "trainer.max_epochs=1", *QUIET]
    proc = run_vae_train(
        "--multirun", "prior=standard,vamp", "posterior=diagonal,iaf", *args, f"hydra.sweep.dir={sweep}", cwd=tmp_path
    )
    assert "4 jobs: 4 ok" in proc.stdout
    header = next(line for line in proc.stdout.splitlines() if line.startswith("job "))
    assert "prior" in header.split() and "posterior" in header.split()
    for job, (prior, posterior) in enumerate(
        [("standard", "diagonal"), ("standard", "iaf"), ("vamp", "diagonal"), ("vamp", "iaf")]
    ):
        model = checkpoint(sweep / str(job) / "checkpoints" / "last.ckpt")["hyper_parameters"]["model"]
        assert (model["prior"]["family"], model["posterior"]["family"]) == (prior, posterior)
    search = tmp_path / "search"
    run_vae_train(
        "--multirun",
        "hparams_search=optuna",
        "hydra.sweeper.n_trials=2",
        "hydra.sweeper.sampler.seed=0",
        "prior=choice(standard,mog)",
        *args,
        f"hydra.sweep.dir={search}",
        cwd=tmp_path,
    )
    best = yaml.safe_load((search / "optimization_results.yaml").read_text())
    assert best["best_params"]["prior"] in ("standard", "mog")
    chosen = checkpoint(search / str(best["best_trial"]) / "checkpoints" / "last.ckpt")
    assert chosen["hyper_parameters"]["model"]["prior"]["family"] == best["best_params"]["prior"]
