"""The names users type: every override the README documents composes and passes the checks, and every
bad value is refused at start-up with a message naming the key, checked in this process against the
composed config (the process contract, exit status 2 and no traceback, is in test_train_cli.py)."""

import json
import re
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from vae_cli.cli.checks import EVAL_RULES, SAMPLE_RULES, TRAIN_RULES, check_train_config, check_values, named
from vae_cli.core.vae import VAE
from vae_cli.data import Digits, ImageFolder
from vae_cli.errors import BadArgument, UserError
from vae_cli.training.callbacks import EMA
from vae_cli.training.objective import Objective

from conftest import compose

README = Path(__file__).resolve().parent.parent / "README.md"
FOLDER = ["data=image_folder", "data.path=/pictures"]

# (overrides, text the message must contain); every key of TRAIN_RULES appears at least once.
BAD = [
    (["seed=abc"], "seed='abc' is not a valid seed"),
    (["seed=-1"], "seed=-1"),
    (["requeue=sometimes"], "requeue='sometimes' is not a valid switch; use true or false"),
    (["trainer.max_epochs=x"], "trainer.max_epochs='x'"),
    (["trainer.max_steps=-2"], "trainer.max_steps=-2"),
    (["model.arch=rnn"], "model.arch='rnn'"),
    (["model.latent_dim=0"], "model.latent_dim=0 is not a valid latent dimension K; use an integer >= 1"),
    (["model.latent_dim=true"], "model.latent_dim=True"),
    (["model.hidden_dims=[]"], "model.hidden_dims=[]"),
    (["model.hidden_dims=[64,-1]"], "model.hidden_dims=[64, -1]"),
    (["model.hidden_dims=64"], "model.hidden_dims=64"),
    (["model.activation=swishy"], "model.activation='swishy'"),
    (["model=conv", "model.activation=gated"], "model.activation=gated is a layer of the MLP"),
    (["model.logvar_range=[2,-6]"], "model.logvar_range=[2, -6] is not a valid range"),
    (["model.logvar_range=[-6]"], "model.logvar_range=[-6]"),
    (["model.likelihood=poisson"], "model.likelihood='poisson' is not a valid likelihood; use one of bernoulli"),
    (["model.likelihood=gaussian", "model.gaussian_std=0"], "model.gaussian_std=0 is not a valid standard deviation"),
    (["model.likelihood=gaussian_global_var", "model.gaussian_std=0.0005"], "above 0.001"),
    (["optim.lr=abc"], "optim.lr='abc'"),
    (["optim.lr=0.0"], "optim.lr=0.0 is not a valid learning rate"),
    (["optim.lr=-1"], "optim.lr=-1"),
    (["optim.lr_decay=1.5"], "optim.lr_decay=1.5"),
    (["optim.normalize_grads=1"], "optim.normalize_grads=1 is not a valid switch"),
    (["objective.beta=-1.0"], "objective.beta=-1.0 is not a valid KL weight"),
    (["objective.warmup_steps=-5"], "objective.warmup_steps=-5"),
    (["objective.warmup_epochs=1.5"], "objective.warmup_epochs=1.5"),
    (
        ["objective.warmup_steps=10", "objective.warmup_epochs=2"],
        "objective.warmup_steps=10 and objective.warmup_epochs=2",
    ),
    (["objective.free_bits=-1"], "objective.free_bits=-1"),
    (["objective.kl_estimator=exact"], "objective.kl_estimator='exact'"),
    (["objective.iw_samples=0"], "objective.iw_samples=0 is not a valid number of importance samples"),
    (["objective.gradient=score"], "objective.gradient='score' is not a valid gradient estimator; use one of reparam"),
    (["objective.gradient=stl", "objective.iw_samples=5"], "use objective.gradient=dreg"),
    (["objective.iw_samples=5", "objective.free_bits=0.5"], "objective.free_bits=0.5 applies to the ELBO"),
    (["data.batch_size=0"], "data.batch_size=0 is not a valid batch size"),
    (["data.eval_batch_size=1.5"], "data.eval_batch_size=1.5"),
    (["data.val_split=first"], "data.val_split='first' is not a valid validation split"),
    (["data.eval_binarize_numpy_seed=-1"], "data.eval_binarize_numpy_seed=-1"),
    (["data=image_folder"], "data.path must be set"),
    ([*FOLDER, "data.channels=2"], "data.channels=2"),
    ([*FOLDER, "data.image_size=[0,4]"], "data.image_size=[0, 4]"),
    ([*FOLDER, "data.num_workers=-1"], "data.num_workers=-1"),
    ([*FOLDER, "data.skip_unreadable=maybe"], "data.skip_unreadable='maybe' is not a valid switch"),
    (["data.binarize=maybe"], "data.binarize='maybe' is not a valid switch"),
    (["data.val_size=-3"], "data.val_size=-3 is not a valid number of examples"),
    (["data.test_size=2.5"], "data.test_size=2.5"),
    (["optim.lr=inf"], "optim.lr=inf is not a valid learning rate"),
    (["objective.beta=nan"], "objective.beta=nan"),
    (["compile=maybe"], "compile='maybe' is not a valid switch"),
    (["trainer.devices=0"], "trainer.devices=0 is not a valid device count"),
    (
        ["trainer.accelerator=cpu", "trainer.devices=507"],
        "trainer.devices=507: one training process per device, each needing",
    ),
    (["trainer.precision=8"], "trainer.precision=8 is not a valid precision"),
    (["trainer.limit_train_batches=-1"], "trainer.limit_train_batches=-1"),
    (["trainer.limit_val_batches=1.5"], "trainer.limit_val_batches=1.5"),
    (["trainer.limit_test_batches=nan"], "trainer.limit_test_batches=nan"),
    (["trainer.check_val_every_n_epoch=0"], "trainer.check_val_every_n_epoch=0"),
    (["trainer.log_every_n_steps=0"], "trainer.log_every_n_steps=0"),
    (["trainer.gradient_clip_val=-1"], "trainer.gradient_clip_val=-1"),
    (["+trainer.accumulate_grad_batches=0"], "trainer.accumulate_grad_batches=0"),
    (["trainer.max_time=soon"], "trainer.max_time='soon' is not a valid time limit"),
    (["trainer.deterministic=maybe"], "trainer.deterministic='maybe'"),
    (["trainer.enable_progress_bar=2"], "trainer.enable_progress_bar=2 is not a valid switch"),
    (["trainer.enable_model_summary=x"], "trainer.enable_model_summary='x'"),
    (["+trainer.enable_checkpointing=x"], "trainer.enable_checkpointing='x'"),
    (["+trainer.benchmark=x"], "trainer.benchmark='x'"),
    (["trainer.accelerator=quantum"], "trainer.accelerator='quantum' is not an accelerator"),
    (["+model.foo=1"], "model.foo is not a setting of model"),
    (["+objective.k=5"], "objective.k is not a setting of objective"),
    (["model.latent_dim=10000000000"], "more than the"),
    (["prior=vamp", "prior.n_components=10000000000"], "prior.n_components"),  # the pseudo-inputs' memory
    (["data.data_dir=/etc/hostname"], "data.data_dir='/etc/hostname' is a file, not a folder"),
]


@pytest.mark.parametrize("overrides, message", BAD, ids=[" ".join(o) for o, _ in BAD])
def test_bad_values_are_named_with_their_key(overrides, message):
    with pytest.raises(UserError) as e:
        check_train_config(compose("train", *overrides))
    assert message in str(e.value)


def test_every_checked_key_has_a_bad_value_above():
    tried = {o.split("=")[0].lstrip("+") for overrides, _ in BAD for o in overrides}
    assert {key for key, *_ in TRAIN_RULES} <= tried


def test_each_rule_is_written_once():
    # The model's, the objective's and the data's arguments have their rules in vae_cli/settings.py, which their
    # classes and check_train_config both apply; the table holds only keys no class of vae-cli owns.
    assert not [key for key, *_ in TRAIN_RULES if key.split(".")[0] in ("model", "objective", "callbacks", "data")]


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: VAE([1, 8, 8], latent_dim=0), "latent_dim=0 is not a valid latent dimension K"),
        (
            lambda: VAE([1, 8, 8], arch="conv", activation="gated"),
            "activation=gated is a layer of the MLP; with arch=conv",
        ),
        (
            lambda: VAE([1, 8, 8], likelihood="gaussian", gaussian_std=-1),
            "gaussian_std=-1 is not a valid standard deviation for likelihood=gaussian",
        ),
        (lambda: Objective(warmup_steps=3, warmup_epochs=1), "warmup_steps=3 and warmup_epochs=1 are both set"),
        (lambda: EMA(decay=1.0), "decay=1.0 is not a valid decay"),
        (lambda: Digits(batch_size=0), "batch_size=0 is not a valid batch size"),
        (
            lambda: Digits(val_split="first"),
            "val_split='first' is not a valid validation split; use random (val_size examples drawn with split_seed)",
        ),
        (lambda: ImageFolder(path="/pictures", image_size=[0, 4]), "image_size=[0, 4] is not a valid image size"),
    ],
)
def test_constructors_refuse_their_own_arguments_by_name(build, message):
    # In Python the bare argument names; at the command line named() puts the config key in their place.
    with pytest.raises(BadArgument, match=re.escape(message)):
        build()


@pytest.mark.parametrize("decay", [1.0, -0.1])
def test_a_callbacks_refusal_is_named_with_its_config_key(decay):
    from hydra.utils import instantiate

    with pytest.raises(UserError, match=re.escape(f"callbacks.ema.decay={decay} is not a valid decay; use a number")):
        named(
            "callbacks.ema",
            instantiate,
            compose("train", "callbacks=[default,ema]", f"callbacks.ema.decay={decay}").callbacks.ema,
        )


@pytest.mark.parametrize(
    "config, rules, override, message",
    [
        ("eval", EVAL_RULES, "iw_samples=0", "iw_samples=0 is not a valid number of importance samples"),
        ("eval", EVAL_RULES, "split=train", "split='train' is not a valid split vae-eval scores"),
        ("eval", EVAL_RULES, "iw_batch=-3", "iw_batch=-3"),
        ("eval", EVAL_RULES, "figures=maybe", "figures='maybe' is not a valid switch"),
        ("eval", EVAL_RULES, "limit=0", "limit=0 is not a valid number of images"),
        ("sample", SAMPLE_RULES, "n=0", "n=0"),
        ("sample", SAMPLE_RULES, "steps=1", "steps=1"),
    ],
)
def test_eval_and_sample_values_are_named(config, rules, override, message):
    with pytest.raises(UserError, match=re.escape(message)):
        check_values(compose(config, "ckpt_path=x", override), rules)


def _readme_commands() -> list[list[str]]:
    """Every `vae-train ...` command in README.md, code blocks and inline, as its list of arguments."""
    text = README.read_text()
    lines = re.findall(r"^(vae-train [^\n#]*)", text, flags=re.M) + re.findall(r"`(vae-train [^`]*)`", text)
    # A user's own config folder (--config-dir) exists only in tests/test_readme.py, which runs that example.
    return [line.split()[1:] for line in lines if "--config-dir" not in line]


def _first_of_sweeps(args: list[str]) -> list[str]:
    """A sweep's overrides (k=1,2,3) as one job's (k=1); flags and their values dropped."""
    return [a if "," not in a or a.endswith("]") else a.split(",")[0] for a in args if "=" in a and a[0] != "-"]


def test_readme_documents_vae_train_commands():
    assert len(_readme_commands()) >= 10


@pytest.mark.parametrize("args", _readme_commands(), ids=lambda a: " ".join(a) or "(no overrides)")
def test_every_readme_command_composes_and_passes_the_checks(args):
    overrides = [a.strip("'\"") for a in _first_of_sweeps(args)]
    if any(o.startswith("data=image_folder") for o in overrides) and not any("data.path" in o for o in overrides):
        overrides.append("data.path=/pictures")
    check_train_config(compose("train", *overrides))


def test_every_key_named_in_the_readme_exists_in_the_config():
    groups = "data|model|objective|optim|optimizer|scheduler|trainer|callbacks"
    keys = set(re.findall(rf"`((?:{groups})\.[a-z_.]+)", README.read_text()))
    assert {
        "model.latent_dim",
        "model.hidden_dims",
        "objective.beta",
        "optim.lr",
        "data.batch_size",
        "callbacks.ema.decay",
        "optimizer.weight_decay",
        "scheduler.eta_min",
    } <= keys
    configs = [
        compose("train"),
        compose("train", *FOLDER),
        compose("train", "experiment=fashion_mnist_vae"),
        compose("train", "callbacks=[default,early_stopping,ema]"),
        *(compose("train", f"optimizer={o}", f"scheduler={s}") for o, s in (("adamw", "cosine"), ("sgd", "plateau"))),
    ]
    missing = [
        k for k in sorted(keys) if all(OmegaConf.select(c, k, default="<absent>") == "<absent>" for c in configs)
    ]
    assert not missing, f"README names keys the config does not have: {missing}"


@pytest.mark.parametrize("name", __import__("vae_cli.core.likelihoods", fromlist=["LIKELIHOODS"]).LIKELIHOODS)
def test_every_registered_likelihood_is_a_valid_choice(name):
    check_train_config(compose("train", f"model.likelihood={name}"))


def test_a_sweeper_or_launcher_this_machine_cannot_run_is_named_before_hydra_starts(monkeypatch):
    from vae_cli.cli import startup

    for _, module, _ in startup.OPTIONAL:  # the real plugins' modules: installed with the test extras
        assert __import__("importlib.util").util.find_spec(module) is not None, module
    monkeypatch.setattr(startup, "OPTIONAL", [("hparams_search=optuna", "hydra_plugins.not_installed", "the plugin")])
    with pytest.raises(UserError, match=r"hparams_search=optuna needs the plugin, which is not installed.*\[sweeps\]"):
        startup.check_optional_parts(["--multirun", "hparams_search=optuna"])
    startup.check_optional_parts(["--multirun", "model.latent_dim=2,8"])  # nothing optional asked for
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(UserError, match="sbatch, which is not on this machine's PATH"):
        startup.check_optional_parts(["--multirun", "hydra/launcher=slurm"])


def test_callbacks_come_one_file_each_none_drops_them_and_early_stopping_and_the_average_are_choices():
    from hydra.utils import instantiate

    from vae_cli.training.callbacks import EMA, EarlyStopping

    default = compose("train").callbacks
    assert list(default) == ["model_checkpoint", "last_checkpoint", "image_grids", "val_nll_iw", "latent_projector"]
    assert not compose("train", "callbacks=none").callbacks
    chosen = compose("train", "callbacks=[default,early_stopping,ema]", "callbacks.model_checkpoint.monitor=val/iwae")
    stopping = instantiate(chosen.callbacks.early_stopping)
    assert isinstance(stopping, EarlyStopping) and stopping.monitor == "val/iwae" and stopping.patience == 50
    average = instantiate(chosen.callbacks.ema)
    assert isinstance(average, EMA) and average.decay == 0.999
    assert list(chosen.callbacks)[:-2] == list(default)


@pytest.mark.parametrize(
    "argv, refused",
    [
        (["callbacks.ema.decay=0.99"], "'callbacks=[default,ema]' callbacks.ema.decay=0.99"),
        (
            ["callbacks=[default,early_stopping]", "callbacks.ema.decay=0.99"],
            "'callbacks=[default,early_stopping,ema]'",
        ),
        (
            ["callbacks.early_stopping.patience=5"],
            "'callbacks=[default,early_stopping]' callbacks.early_stopping.patience=5",
        ),
        (["callbacks=[default,ema]", "callbacks.ema.decay=0.99"], None),
        (["experiment=fashion_mnist_vae", "callbacks.early_stopping.patience=5"], None),  # the experiment chooses it
    ],
)
def test_a_callbacks_setting_without_its_choice_names_the_choice(argv, refused):
    from vae_cli.cli import startup

    if refused is None:
        startup.check_callback_choices(argv)
        compose("train", *argv)  # and Hydra composes it
        return
    with pytest.raises(UserError, match=re.escape(refused)):
        startup.check_callback_choices(argv)


@pytest.mark.slow
def test_a_run_without_callbacks_writes_its_metrics_and_no_checkpoint(tmp_path):
    from conftest import train

    run = train(tmp_path, "run", "callbacks=none", "trainer.max_epochs=2")
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["epochs"] == 2 and metrics["best_checkpoint"] is None and not (run / "checkpoints").exists()
