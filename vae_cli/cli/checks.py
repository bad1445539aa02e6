"""Every value a user types, checked at start-up with a message that names the key, its value and what it
accepts. The objects the config builds refuse their own arguments (BadArgument, naming them); named() turns
that into the user's error with the config key. The rules below are for keys no constructor of vae-cli
checks before Lightning is imported (the seed, the trainer's limits, the optimiser's settings). What only the data can tell
(a split larger than the dataset, a file that cannot be read) is checked where the data is read."""
import inspect

from omegaconf import DictConfig, ListConfig, OmegaConf

from ..core.likelihoods import LIKELIHOODS, Likelihood
from ..core.vae import VAE
from ..errors import BadArgument, UserError, integer, number, one_of
from ..training.objective import Objective
from .loading import make_datamodule


def _int(lo: int):
    return lambda v: integer(v, lo)


def _number(ok):
    return lambda v: number(v) and ok(v)


def _one_of(choices):
    return lambda v: one_of(v, choices)


def _bool(v) -> bool:
    return isinstance(v, bool)


def _names(v) -> bool:
    return isinstance(v, list) and all(isinstance(n, str) and n.replace(".", "").replace("_", "").isalnum()
                                       and "." in n for n in v)


# key, test, what the value is, what to use instead. A key the config does not have is not checked.
TRAIN_RULES = [
    ("seed", _int(0), "seed", "an integer >= 0, e.g. seed=3"),
    ("requeue", _bool, "switch", "true or false"),
    ("trainer.max_epochs", lambda v: v is None or _int(-1)(v), "epoch limit", "an integer (-1 for no limit), e.g. trainer.max_epochs=20"),
    ("trainer.max_steps", lambda v: v is None or _int(-1)(v), "step limit", "an integer (-1 for no limit), e.g. trainer.max_steps=1000"),
    ("optim.lr", _number(lambda v: v > 0), "learning rate", "a positive number, e.g. optim.lr=1e-3"),
    ("optim.lr_decay", _number(lambda v: 0 < v <= 1), "learning-rate decay", "a factor per epoch in (0, 1] (1: constant)"),
    ("optim.normalize_grads", _bool, "switch", "true or false"),
]
EVAL_RULES = [
    ("iw_samples", _int(1), "number of importance samples", "an integer >= 1 (5000 is the literature's choice)"),
    ("iw_batch", _int(1), "number of (example, sample) pairs per pass", "an integer >= 1, e.g. iw_batch=50000"),
    ("split", _one_of(("val", "test")), "split vae-eval scores", "split=test or split=val"),
    ("limit", lambda v: v is None or _int(1)(v), "number of images", "null (the whole split) or an integer >= 1, e.g. limit=1000"),
    ("figures", _bool, "switch", "true or false"),
    ("trust", lambda v: _names(v), "list of classes", "a list of dotted class names, e.g. trust=[mypkg.MyVAE]"),
]
SAMPLE_RULES = [
    ("n", _int(1), "number of images", "an integer >= 1, e.g. n=64"),
    ("steps", _int(2), "number of steps", "an integer >= 2, e.g. steps=11"),
    ("manifold_steps", _int(2), "grid side", "an integer >= 2, e.g. manifold_steps=20"),
    ("split", _one_of(("train", "val", "test")), "split", "split=test, val or train"),
    ("trust", lambda v: _names(v), "list of classes", "a list of dotted class names, e.g. trust=[mypkg.MyVAE]"),
]
_ABSENT = object()


def check_values(cfg: DictConfig, rules) -> None:
    """Each rule's key, when the config has it; the first value that fails stops with its message."""
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise UserError(f"{', '.join(missing)} must be set (the config marks it ???), e.g. "
                        f"{missing[0]}=VALUE" + (" (the folder of your images)." if "data.path" in missing else "."))
    for key, ok, what, use in rules:
        value = OmegaConf.select(cfg, key, default=_ABSENT)
        if value is _ABSENT:
            continue
        if isinstance(value, (DictConfig, ListConfig)):
            value = OmegaConf.to_container(value)
        if not ok(value):
            raise UserError(f"{key}={value!r} is not a valid {what}; use {use}.")


def check_train_config(cfg: DictConfig) -> None:
    check_values(cfg, TRAIN_RULES)
    model = OmegaConf.to_container(cfg.model, resolve=True)
    if model.pop("_target_", None) == f"{VAE.__module__}.{VAE.__name__}":  # a user's own class checks itself when built
        defaults = {k: p.default for k, p in inspect.signature(VAE).parameters.items() if p.default is not p.empty}
        named("model", VAE.check, **{**defaults, **model})
    named("objective", Objective, **OmegaConf.to_container(cfg.objective, resolve=True))
    named("data", make_datamodule, OmegaConf.to_container(cfg.data, resolve=True))  # builds nothing yet: reads no file


def named(group: str, build, *args, **kwargs):
    """build(*args, **kwargs), the constructor of an object the config group `group` describes; an argument it
    refuses (BadArgument) becomes the user's error naming the config key, group.<argument>."""
    from hydra.errors import InstantiationException

    try:
        return build(*args, **kwargs)
    except (BadArgument, InstantiationException) as e:
        refusal = e.__cause__ if isinstance(e, InstantiationException) else e  # instantiate wraps what it calls
        if not isinstance(refusal, BadArgument):
            raise
        raise UserError(refusal.named(lambda name: f"{group}.{name}")) from None


def optimizer_and_schedule(cfg: DictConfig):
    """The run's optimizer and learning-rate schedule from their configs (optimizer=, scheduler=): callables that
    the module gives its parameters, and the optimizer (None: a constant rate). Each is tried once on a stand-in
    parameter, so arguments its class refuses stop the run here, named with the group's keys, before Lightning is
    imported. optim.lr_decay other than 1 with scheduler=none is an exponential decay (the scheduler=exponential)."""
    import torch

    optimizer = OmegaConf.to_container(cfg.optimizer, resolve=True)
    schedule = OmegaConf.to_container(cfg.get("scheduler") or OmegaConf.create(), resolve=True)
    if not schedule and cfg.optim.lr_decay != 1:
        schedule = {"_target_": "torch.optim.lr_scheduler.ExponentialLR", "_partial_": True, "gamma": cfg.optim.lr_decay}
    make_optimizer, tried = _built("optimizer", optimizer, [torch.nn.Parameter(torch.zeros(1))])
    return make_optimizer, _built("scheduler", schedule, tried)[0] if schedule else None


def _built(group: str, config: dict, *args):
    """instantiate(config) (a partial), and what it makes of args; a refusal as the UserError naming the keys."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    try:
        made = instantiate(config)
        return made, made(*args)
    except (InstantiationException, TypeError, ValueError) as e:
        why = " ".join(str(e.__cause__ or e).split())
        keys = " ".join(f"{group}.{k}={v}" for k, v in config.items() if not k.startswith("_"))
        raise UserError(f"{group}={config.get('_target_')} refused its settings ({keys}): {why}. Change or remove "
                        f"the key it names (~{group}.<key> removes one; vae-train --cfg job shows them all).") from None


def binarizes(cfg: DictConfig) -> bool:
    """data.binarize, where null means: exactly when the likelihood is of binary data."""
    if cfg.data.get("binarize") is not None:
        return bool(cfg.data.binarize)
    return LIKELIHOODS[cfg.model.likelihood].support == "binary"


def check_fits_data(likelihood: type[Likelihood], x, binarize: bool) -> None:
    """Refuse a likelihood whose support the data (a sample of training images) does not lie in."""
    name, support = likelihood.name, likelihood.support
    if support == "binary" and not binarize and not ((x == 0) | (x == 1)).all():
        raise UserError(
            f"model.likelihood={name} needs binary data, but these pixels take grey values and data.binarize=false; "
            "binarise them (data.binarize=true, or leave it null) or use a likelihood for grey values "
            "(model.likelihood=gaussian or continuous_bernoulli)."
        )
    if support != "real" and (x.min() < 0 or x.max() > 1):
        raise UserError(f"model.likelihood={name} needs pixel values in [0, 1]; this data spans "
                        f"[{x.min().item():.3g}, {x.max().item():.3g}].")
    if support == "8bit" and not binarize:
        k = x * 255
        if (k - k.round()).abs().max() > 1e-3:
            raise UserError(
                f"model.likelihood={name} models 8-bit images (values k/255), but this data is not on that grid "
                "(e.g. data=digits has 17 grey levels); use model.likelihood=gaussian or continuous_bernoulli."
            )
