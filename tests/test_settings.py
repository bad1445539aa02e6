"""vae_cli/settings.py: every setting's rule in one place, judged before torch is imported. The rules and tables
it keeps without torch are held here against the classes that build the objects (their signatures, traits and
sizes), so neither can change alone."""

import dataclasses
import inspect
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from vae_cli import settings
from vae_cli.core import nets
from vae_cli.core.likelihoods import LIKELIHOODS
from vae_cli.core.vae import VAE
from vae_cli.inputs import TRUSTED_DATA
from vae_cli.training.objective import Objective

CONFIGS = Path(__file__).parents[1] / "configs"


def test_the_tables_without_torch_are_the_classes_own():
    assert {n: (c.support, c.std_floor, c.params_per_dim) for n, c in LIKELIHOODS.items()} == {
        n: (f.support, f.std_floor, f.params_per_dim) for n, f in settings.FAMILIES.items()
    }
    assert tuple(nets.ACTIVATIONS) == settings.ACTIVATIONS
    vae_defaults = {k: p.default for k, p in inspect.signature(VAE).parameters.items() if k != "data_shape"}
    check_defaults = {k: p.default for k, p in inspect.signature(settings.check_model).parameters.items()}
    assert vae_defaults == check_defaults
    objective_defaults = {f.name: f.default for f in dataclasses.fields(Objective)}
    assert objective_defaults == {
        k: p.default for k, p in inspect.signature(settings.check_objective).parameters.items()
    }
    import vae_cli.data as data

    for target, shape in settings.DATA_SHAPES.items():
        assert getattr(data, target.rpartition(".")[2]).shape == shape


def test_every_shipped_data_config_names_a_class_a_checkpoint_may_name():
    import yaml

    targets = {yaml.safe_load(f.read_text())["_target_"] for f in (CONFIGS / "data").glob("*.yaml")}
    assert targets == set(TRUSTED_DATA)


def test_every_datamodule_argument_with_a_rule_is_an_argument_of_some_datamodule():
    import vae_cli.data as data

    arguments = {
        p
        for name in ("Digits", "MNIST", "FashionMNIST", "CIFAR10", "ImageFolder")
        for cls in getattr(data, name).__mro__
        if "__init__" in vars(cls)
        for p in inspect.signature(cls.__init__).parameters
    }
    assert set(settings.DATA_RULES) <= arguments


@hsettings(max_examples=60, deadline=None, derandomize=True)
@given(
    arch=st.sampled_from(settings.ARCHS),
    latent_dim=st.integers(1, 40),
    hidden_dims=st.lists(st.integers(1, 24), min_size=1, max_size=3),
    activation=st.sampled_from([*settings.ACTIVATIONS, settings.GATED]),
    likelihood=st.sampled_from(list(settings.FAMILIES)),
    shape=st.sampled_from([(1, 8, 8), (1, 28, 28), (3, 32, 32), (3, 7, 5), (1, 1, 1)]),
    posterior=st.sampled_from(
        [
            None,
            "diagonal",
            "full",
            "iaf",
            {"family": "iaf", "n_steps": 3, "hidden_dims": []},
            {"family": "iaf", "hidden_dims": [5, 7]},
        ]
    ),
    prior=st.sampled_from(
        [None, "standard", "mog", {"family": "mog", "n_components": 3}, "vamp", {"family": "vamp", "n_components": 7}]
    ),
)
def test_the_parameter_count_is_that_of_the_network_built(
    arch, latent_dim, hidden_dims, activation, likelihood, shape, posterior, prior
):
    """The networks' and the posterior and prior families' parameters (the likelihood's own are not counted)."""
    if activation == settings.GATED and arch != "mlp":
        activation = "relu"
    vae = VAE(
        shape,
        latent_dim=latent_dim,
        hidden_dims=hidden_dims,
        arch=arch,
        activation=activation,
        likelihood=likelihood,
        posterior=posterior,
        prior=prior,
    )
    built = sum(p.numel() for m in (vae.encoder, vae.decoder, vae.posterior, vae.prior) for p in m.parameters())
    assert (
        settings.n_parameters(shape, latent_dim, hidden_dims, arch, activation, likelihood, posterior, prior) == built
    )


# A refusal answers before torch is imported: the command, run as users run it, with torch made unimportable.
EARLY_REFUSALS = [
    ("vae-train", ["model.latent_dim=0"], "model.latent_dim=0"),
    ("vae-train", ["optim.lr=inf"], "optim.lr=inf"),
    ("vae-train", ["optim.lr=nan"], "optim.lr=nan"),
    ("vae-train", ["model.latent_dim=10000000000"], "model.latent_dim=10000000000"),
    ("vae-train", ["+model.foo=1"], "model.foo"),
    ("vae-train", ["objective.beta=-1"], "objective.beta=-1"),
    ("vae-train", ["objective.gradient=stl", "objective.iw_samples=5"], "objective.gradient=stl"),
    ("vae-train", ["data.batch_size=0"], "data.batch_size=0"),
    ("vae-train", ["data.binarize=maybe"], "data.binarize='maybe'"),
    ("vae-train", ["data.val_size=-3"], "data.val_size=-3"),
    ("vae-train", ["data=image_folder"], "data.path"),
    ("vae-train", ["data=image_folder", "data.path=/nonexistent/folder"], "data.path"),
    ("vae-train", ["trainer.limit_train_batches=-1"], "trainer.limit_train_batches=-1"),
    ("vae-train", ["trainer.gradient_clip_val=nan"], "trainer.gradient_clip_val=nan"),
    ("vae-train", ["trainer.accelerator=quantum"], "trainer.accelerator='quantum'"),
    ("vae-eval", ["ckpt_path=x", "iw_samples=0"], "iw_samples=0"),
    ("vae-eval", ["ckpt_path=x", "+model.likelihood=gaussian"], "model.likelihood"),
    ("vae-sample", ["ckpt_path=x", "n=0"], "n=0"),
]
_NO_TORCH = """
import sys
class NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "pytorch_lightning", "lightning_fabric", "torchvision"):
            raise ImportError(f"{name} imported before the settings were judged")
sys.meta_path.insert(0, NoTorch())
from vae_cli.cli import train, evaluate, sample
sys.argv = sys.argv[1:]
{"vae-train": train, "vae-eval": evaluate, "vae-sample": sample}[sys.argv[0]].main()
"""


@pytest.mark.parametrize("tool,args,named", EARLY_REFUSALS, ids=lambda x: x if isinstance(x, str) else " ".join(x))
def test_a_refusal_is_one_line_before_torch_is_imported_and_writes_nothing(tool, args, named, tmp_path):
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, "-c", _NO_TORCH, tool, *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{tool}: error: ") and named in lines[0], proc.stderr
    assert list(tmp_path.iterdir()) == []  # no run directory, no data cache, no log


def test_a_gpu_accelerator_without_a_gpu_is_refused_at_start(tmp_path, capsys):
    from conftest import refused

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    err = refused("vae-train", "trainer.accelerator=gpu", cwd=tmp_path, capsys=capsys)
    assert "trainer.accelerator=gpu: this machine has no GPU" in err


def test_a_resume_with_settings_that_change_the_numbers_meaning_is_refused(tmp_path, capsys):
    from conftest import QUIET, refused, train

    run = train(tmp_path, "run", "trainer.max_epochs=1", "trainer.limit_train_batches=2")
    before = {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()}
    err = refused(
        "vae-train",
        f"ckpt_path={run}",
        "trainer.max_epochs=2",
        "model.likelihood=continuous_bernoulli",
        *QUIET,
        cwd=tmp_path,
        capsys=capsys,
    )
    assert "model.likelihood=continuous_bernoulli (trained with bernoulli)" in err
    err = refused(
        "vae-train",
        f"ckpt_path={run}",
        "trainer.max_epochs=2",
        "objective.iw_samples=5",
        "data.val_size=100",
        *QUIET,
        cwd=tmp_path,
        capsys=capsys,
    )
    assert "objective.iw_samples=5 (trained with 1)" in err and "data.val_size=100 (trained with 150)" in err
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()} == before  # nothing rewritten
    assert json.loads((run / "metrics.json").read_text())["epochs"] == 1
