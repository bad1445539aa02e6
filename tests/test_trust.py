"""The trust boundary (vae_cli/inputs.py): a checkpoint is data. Whatever its saved configs name, vae-eval and
vae-sample build only vae-cli's own classes (or those the user names with trust=[...]), never call anything else,
and refuse the file in one line naming it and the key."""

import pytest
import torch

from conftest import refused, run_here


def _digits_checkpoint(path, **changes):
    """A checkpoint of the default model on digits, as vae-train saves it (untrained weights), with `changes`
    applied to its top-level entries."""
    from vae_cli.core.vae import VAE

    model = {
        "_target_": "vae_cli.core.vae.VAE",
        "arch": "mlp",
        "latent_dim": 2,
        "hidden_dims": [8],
        "activation": "relu",
        "likelihood": "bernoulli",
        "gaussian_std": 0.1,
        "init_output_bias": False,
        "logvar_range": None,
        "data_shape": [1, 8, 8],
    }
    vae = VAE(**{k: v for k, v in model.items() if k != "_target_"})
    ckpt = {
        "state_dict": {f"vae.{k}": v for k, v in vae.state_dict().items()},
        "hyper_parameters": {"model": model, "objective": {"beta": 1.0}},
        "data_config": {
            "_target_": "vae_cli.data.Digits",
            "data_dir": str(path.parent / "data"),
            "val_size": 150,
            "test_size": 297,
            "binarize": True,
        },
        "global_step": 0,
        "epoch": 0,
    }
    ckpt.update(changes)
    torch.save(ckpt, path)
    return path


# Configs that name a callable which writes a file: what a shared checkpoint could carry.
WRITERS = [
    {"_target_": "pathlib.Path.write_text", "self": "{victim}", "data": "overwritten"},
    {"_target_": "builtins.open", "file": "{victim}", "mode": "w"},
    {"_target_": "shutil.copyfile", "src": "/etc/hostname", "dst": "{victim}"},
    {"_target_": "torch.save", "obj": 1, "f": "{victim}"},
    {"_target_": "numpy.save", "file": "{victim}", "arr": [1]},
]


def _aimed(config: dict, victim) -> dict:
    return {k: v.format(victim=victim) if isinstance(v, str) else v for k, v in config.items()}


@pytest.mark.parametrize("tool", ["vae-eval", "vae-sample"])
@pytest.mark.parametrize("where", ["model", "data_config"])
@pytest.mark.parametrize("writer", WRITERS, ids=lambda w: w["_target_"])
def test_a_checkpoint_naming_a_callable_is_refused_before_anything_runs(tool, where, writer, tmp_path, capsys):
    victim = tmp_path / "victim.txt"
    victim.write_text("mine")
    ckpt = _digits_checkpoint(tmp_path / "c.ckpt")
    saved = torch.load(ckpt, weights_only=True)
    if where == "model":
        saved["hyper_parameters"]["model"] = _aimed(writer, victim)
    else:
        saved["data_config"] = _aimed(writer, victim)
    torch.save(saved, ckpt)
    err = (
        refused(tool, f"ckpt_path={ckpt}", "iw_samples=2", cwd=tmp_path, capsys=capsys)
        if tool == "vae-eval"
        else refused(tool, f"ckpt_path={ckpt}", f"out={tmp_path / 'grids'}", cwd=tmp_path, capsys=capsys)
    )
    key = "hyper_parameters.model._target_" if where == "model" else "data_config._target_"
    assert str(ckpt) in err and key in err and writer["_target_"] in err
    assert victim.read_text() == "mine"


def test_a_callable_below_the_top_or_an_interpolation_runs_nothing(tmp_path, capsys):
    victim = tmp_path / "victim.txt"
    ckpt = _digits_checkpoint(tmp_path / "c.ckpt")
    saved = torch.load(ckpt, weights_only=True)
    saved["hyper_parameters"]["model"]["hidden_dims"] = {"_target_": "pathlib.Path.touch", "self": str(victim)}
    torch.save(saved, ckpt)
    err = refused("vae-eval", f"ckpt_path={ckpt}", "iw_samples=2", cwd=tmp_path, capsys=capsys)
    assert "hyper_parameters.model.hidden_dims._target_" in err and not victim.exists()
    # An OmegaConf interpolation is a string like any other: never resolved (an env lookup, a resolver that writes).
    saved["hyper_parameters"]["model"]["hidden_dims"] = [8]
    saved["data_config"]["data_dir"] = "${oc.env:HOME}"
    torch.save(saved, ckpt)
    run_here("vae-eval", f"ckpt_path={ckpt}", "iw_samples=2", "limit=5", "figures=false", cwd=tmp_path)
    assert (tmp_path / "${oc.env:HOME}" / "vae-cli-cache").is_dir()  # the digits' cache, in a folder of that name


def test_a_users_own_class_is_built_only_when_the_user_trusts_it(tmp_path, capsys):
    ckpt = _digits_checkpoint(tmp_path / "c.ckpt")
    saved = torch.load(ckpt, weights_only=True)
    saved["hyper_parameters"]["model"]["_target_"] = "vae_cli_test_models.SmallVAE"
    torch.save(saved, ckpt)
    (tmp_path / "vae_cli_test_models.py").write_text("from vae_cli.core.vae import VAE as SmallVAE\n")
    import sys

    sys.path.insert(0, str(tmp_path))
    try:
        err = refused("vae-eval", f"ckpt_path={ckpt}", "iw_samples=2", "limit=5", cwd=tmp_path, capsys=capsys)
        assert "trust=[vae_cli_test_models.SmallVAE]" in err
        run_here(
            "vae-eval",
            f"ckpt_path={ckpt}",
            "iw_samples=2",
            "limit=5",
            "figures=false",
            "trust=[vae_cli_test_models.SmallVAE]",
            cwd=tmp_path,
        )
        assert "nll_iw (k=2)" in capsys.readouterr().out
    finally:
        sys.path.remove(str(tmp_path))
