"""Every value a user types, checked at start-up, before torch is imported, with a message that names the key, its
value and what it accepts: the rules of the model, objective and data (vae_cli/settings.py, which the classes also
apply when built), and below those of the keys no class of vae-cli owns (the seed, the trainer's, the optimiser's).
What only the data can tell (a split larger than the dataset, a file that cannot be read) is checked where the data
is read."""

import inspect
import os
import platform
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, ListConfig, OmegaConf

from .. import settings
from ..errors import BadArgument, UserError, integer, one_of
from ..inputs import TRUSTED_DATA, TRUSTED_MODELS
from .refusals import named, refused_by
from .refusals import short as _short


def _int(lo: int):
    return lambda v: integer(v, lo)


def _number(ok):
    return lambda v: settings.finite(v) and ok(v)


def _one_of(choices):
    return lambda v: one_of(v, choices)


def _bool(v) -> bool:
    return isinstance(v, bool)


def _names(v) -> bool:
    return isinstance(v, list) and all(
        isinstance(n, str) and n.replace(".", "").replace("_", "").isalnum() and "." in n for n in v
    )


# key, test, what the value is, what to use instead. A key the config does not have is not checked.
TRAIN_RULES = [
    ("seed", settings.seed, "seed", "an integer from 0 to 2**32 - 1, e.g. seed=3"),
    ("requeue", _bool, "switch", "true or false"),
    (
        "trainer.max_epochs",
        lambda v: v is None or _int(-1)(v),
        "epoch limit",
        "an integer (-1 for no limit), e.g. trainer.max_epochs=20",
    ),
    ("trainer.max_steps", _int(-1), "step limit", "an integer (-1 for no limit), e.g. trainer.max_steps=1000"),
    ("optim.lr", _number(lambda v: v > 0), "learning rate", "a positive number, e.g. optim.lr=1e-3"),
    (
        "optim.lr_decay",
        _number(lambda v: 0 < v <= 1),
        "learning-rate decay",
        "a factor per epoch in (0, 1] (1: constant)",
    ),
    ("optim.normalize_grads", _bool, "switch", "true or false"),
    ("compile", _bool, "switch", "true or false"),
    (
        "trainer.devices",
        lambda v: (
            v == "auto"
            or _int(1)(v)
            and v <= 1 << 16
            or isinstance(v, list)
            and 0 < len(v)
            and all(_int(0)(d) and d < 1 << 16 for d in v)
        ),
        "device count",
        "an integer >= 1, a list of device indices, or auto, e.g. trainer.devices=1",
    ),
    (
        "trainer.precision",
        _one_of(
            (
                "32-true",
                "32",
                32,
                "16-mixed",
                "bf16-mixed",
                "bf16-true",
                "16-true",
                "64-true",
                "64",
                64,
                "transformer-engine",
            )
        ),
        "precision",
        "32-true (the default), bf16-mixed or 16-mixed on a GPU, or 64-true",
    ),
    *(
        (
            f"trainer.limit_{split}_batches",
            lambda v: v is None or _int(0)(v) or settings.finite(v) and 0 <= v <= 1,
            "batch limit",
            f"null (all), a number of batches >= 0, or a fraction in [0, 1], e.g. trainer.limit_{split}_batches=10",
        )
        for split in ("train", "val", "test")
    ),
    (
        "trainer.check_val_every_n_epoch",
        lambda v: v is None or _int(1)(v),
        "validation interval",
        "an integer >= 1 of epochs, e.g. trainer.check_val_every_n_epoch=1",
    ),
    (
        "trainer.log_every_n_steps",
        _int(1),
        "logging interval",
        "an integer >= 1 of steps, e.g. trainer.log_every_n_steps=10",
    ),
    (
        "trainer.gradient_clip_val",
        lambda v: v is None or _number(lambda x: x > 0)(v),
        "clipping threshold",
        "null (no clipping) or a positive number, e.g. trainer.gradient_clip_val=1.0",
    ),
    (
        "trainer.accumulate_grad_batches",
        _int(1),
        "number of batches",
        "an integer >= 1, e.g. trainer.accumulate_grad_batches=2",
    ),
    (
        "trainer.max_time",
        lambda v: v is None or isinstance(v, str) and _max_time(v) or _duration(v),
        "time limit",
        "null, DD:HH:MM:SS, or {days: D, hours: H, minutes: M, seconds: S}, e.g. trainer.max_time=00:12:00:00",
    ),
    ("trainer.deterministic", lambda v: isinstance(v, bool) or v == "warn", "switch", "true, false or warn"),
    *(
        (f"trainer.{key}", _bool, "switch", "true or false")
        for key in ("enable_progress_bar", "enable_model_summary", "enable_checkpointing", "benchmark")
    ),
]


def _max_time(v: str) -> bool:
    parts = v.split(":")
    return len(parts) == 4 and all(p.isdigit() and len(p) <= 6 for p in parts)


def _duration(v) -> bool:
    units = ("weeks", "days", "hours", "minutes", "seconds")
    return (
        isinstance(v, dict)
        and 0 < len(v)
        and all(k in units and settings.finite(x) and 0 <= x < 1e7 for k, x in v.items())
    )


EVAL_RULES = [
    ("iw_samples", _int(1), "number of importance samples", "an integer >= 1 (5000 is the literature's choice)"),
    ("iw_batch", _int(1), "number of (example, sample) pairs per pass", "an integer >= 1, e.g. iw_batch=50000"),
    ("split", _one_of(("val", "test")), "split vae-eval scores", "split=test or split=val"),
    (
        "limit",
        lambda v: v is None or _int(1)(v),
        "number of images",
        "null (the whole split) or an integer >= 1, e.g. limit=1000",
    ),
    ("figures", _bool, "switch", "true or false"),
    ("trust", lambda v: _names(v), "list of classes", "a list of dotted class names, e.g. trust=[mypkg.MyVAE]"),
    ("gaps", _bool, "switch", "true or false"),
    ("gaps_images", _int(1), "number of images", "an integer >= 1, e.g. gaps_images=1000"),
    ("gaps_steps", _int(0), "number of steps", "an integer >= 0, e.g. gaps_steps=500"),
    ("gaps_lr", _number(lambda v: v > 0), "learning rate", "a number > 0, e.g. gaps_lr=0.05"),
    ("gaps_samples", _int(1), "number of samples", "an integer >= 1, e.g. gaps_samples=10"),
    ("gaps_eval_samples", _int(1), "number of samples", "an integer >= 1, e.g. gaps_eval_samples=1000"),
]
SAMPLE_RULES = [
    ("n", _int(1), "number of images", "an integer >= 1, e.g. n=64"),
    ("steps", _int(2), "number of steps", "an integer >= 2, e.g. steps=11"),
    ("manifold_steps", _int(2), "grid side", "an integer >= 2, e.g. manifold_steps=20"),
    ("split", _one_of(("train", "val", "test")), "split", "split=test, val or train"),
    ("trust", lambda v: _names(v), "list of classes", "a list of dotted class names, e.g. trust=[mypkg.MyVAE]"),
]
_ABSENT = object()


def check_known(cfg: DictConfig, tool: str) -> None:
    """vae-eval's and vae-sample's settings are their own config's: a key added to it (+model.likelihood=...) would
    be ignored, so it is refused; the checkpoint's own settings are the ones it is scored or sampled with."""
    from hydra.core.hydra_config import HydraConfig

    added = [o.lstrip("+").partition("=")[0] for o in HydraConfig.get().overrides.task if o.startswith("+")]
    if added:
        raise UserError(
            f"{added[0]} is not a setting of {tool}: a checkpoint is scored and sampled with the settings "
            f"it was trained with, which {tool} reads from the file. Leave it out ({tool} --cfg job lists "
            f"the settings {tool} takes)."
        )


def check_values(cfg: DictConfig, rules) -> None:
    """Each rule's key, when the config has it; the first value that fails stops with its message."""
    # An interpolation that does not resolve names its key (Hydra's own are resolved later).
    for group, node in cfg.items_ex(resolve=False):
        if group != "hydra":
            _container(node) if isinstance(node, DictConfig) else _resolved(cfg, group)
    missing = sorted(
        k
        for group in cfg
        if group != "hydra" and isinstance(cfg[group], DictConfig)
        for k in OmegaConf.missing_keys(cfg[group])
    )
    if missing:
        raise UserError(
            f"{', '.join(missing)} must be set (the config marks it ???), e.g. "
            f"{missing[0]}=VALUE" + (" (the folder of your images)." if "data.path" in missing else ".")
        )
    for key, ok, what, use in rules:
        value = OmegaConf.select(cfg, key, default=_ABSENT)
        if value is _ABSENT:
            continue
        if isinstance(value, (DictConfig, ListConfig)):
            value = OmegaConf.to_container(value)
        if not ok(value):
            raise UserError(f"{key}={_short(value)} is not a valid {what}; use {use}.")


def check_train_config(cfg: DictConfig) -> None:
    """Every setting of a run that can be judged from the config and this machine, before torch is imported."""
    check_values(cfg, TRAIN_RULES)
    data = _container(cfg.data)
    target = data.get("_target_")
    if not (isinstance(target, str) and target.replace(".", "").replace("_", "").isalnum() and "." in target):
        raise UserError(
            f"data._target_={target!r} is not a class; name a datamodule class, e.g. data=digits "
            "(vae_cli.data.Digits), or your own: data._target_=mypkg.MyData."
        )
    if target in TRUSTED_DATA:
        named("data", settings.check_data, **{k: v for k, v in data.items() if k != "_target_"})
        for key, must_exist in (("data_dir", False), ("path", True)):
            why = settings.folder_key(f"data.{key}", data.get(key), must_exist)
            if why:
                raise UserError(f"{why}.")
    for key in ("posterior", "prior"):  # the families' groups (configs/posterior, configs/prior), named by their keys
        if isinstance(cfg.get(key), DictConfig):
            _by_key(settings.check_model, **{key: _container(cfg[key])})
    model = _container(cfg.model)
    families = {k: model.get(k) for k in ("posterior", "prior")} if model.get("_target_") in TRUSTED_MODELS else {}
    if model.get("_target_") in TRUSTED_MODELS:  # a user's own class checks itself when built
        model.pop("_target_")
        model.pop("data_shape", None)
        _known_keys("model", model, settings.check_model)
        named("model", settings.check_model, **model)
        shape = settings.data_shape(data)
        if shape is not None:
            check_memory(model, shape)
    objective = _container(cfg.objective)
    _known_keys("objective", objective, settings.check_objective)
    named("objective", settings.check_objective, **objective)
    if families:  # what the families' math allows of the objective (free bits: a KL per dimension in closed form)
        _by_key(
            settings.check_families,
            **families,
            **{k: objective[k] for k in ("free_bits", "kl_estimator") if k in objective},
        )
    for group in ("callbacks", "logger"):
        for name, part in (_container(cfg[group]) if cfg.get(group) else {}).items():
            target = part.get("_target_") if isinstance(part, dict) else None
            if isinstance(target, str) and target.startswith(settings.PARTS):
                named(f"{group}.{name}", settings.check_part, **{k: v for k, v in part.items() if k != "_target_"})
                for key in ("dirpath", "save_dir"):
                    why = settings.folder_key(f"{group}.{name}.{key}", part.get(key), must_exist=False)
                    if why:
                        raise UserError(f"{why}.")
    check_accelerator(cfg.trainer.get("accelerator", "auto"), cfg.trainer.get("devices", 1))


def _by_key(check, **kwargs) -> None:
    """check(**kwargs), a refusal naming posterior and prior by their own top-level keys, the rest as the group's."""
    try:
        check(**kwargs)
    except BadArgument as e:
        raise UserError(e.named(lambda n: n if n in ("posterior", "prior") else f"objective.{n}")) from None


def _resolved(cfg, key: str):
    from omegaconf.errors import OmegaConfBaseException

    try:
        return cfg[key]
    except OmegaConfBaseException as e:
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(
            f"{key}: {why}. Fix that value (the command with --cfg job shows the composed config)."
        ) from None


def _container(node) -> dict:
    from omegaconf.errors import OmegaConfBaseException

    try:
        return OmegaConf.to_container(node, resolve=True)
    except OmegaConfBaseException as e:  # an interpolation that does not resolve: the user's config
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(
            f"{e.full_key}: {why}. Fix that value (the command with --cfg job shows the composed config)."
        ) from None


def _known_keys(group: str, config: dict, check) -> None:
    """A key the class would not take (added with +group.key=...): named before it costs a traceback."""
    known = set(inspect.signature(check).parameters)
    unknown = sorted(k for k in config if k not in known)
    if unknown:
        raise UserError(
            f"{group}.{unknown[0]} is not a setting of {group}; its settings are "
            f"{', '.join(sorted(known))} (vae-train --cfg job shows them)."
        )


def check_memory(model: dict, shape) -> None:
    """Refuse a network whose parameters, gradients and optimiser state alone exceed this machine's free memory."""
    defaults = {k: p.default for k, p in inspect.signature(settings.check_model).parameters.items()}
    m = {**defaults, **model}
    n = settings.n_parameters(
        shape,
        m["latent_dim"],
        m["hidden_dims"],
        m["arch"],
        m["activation"],
        m["likelihood"],
        m["posterior"],
        m["prior"],
    )
    need, have = n * settings.BYTES_PER_PARAMETER, settings.available_memory()
    if have is not None and need > have:
        raise UserError(
            f"model.latent_dim={m['latent_dim']} and model.hidden_dims={m['hidden_dims']} make a network of "
            f"{n:,} parameters on {'x'.join(map(str, shape))} images: {need / 2**30:,.1f} GiB with their "
            f"gradients and the optimiser's state, more than the {have / 2**30:,.1f} GiB of memory free "
            "here (the posterior's and prior's parameters counted). Use a smaller model.latent_dim or "
            "model.hidden_dims, or a smaller posterior or prior (prior.n_components)."
        )


def _gpu_devices() -> int | None:
    """How many GPUs this machine has for torch (NVIDIA device files on Linux, Apple silicon's one on macOS); None
    where that cannot be told without torch (AMD's, other systems)."""
    if platform.system() == "Linux":
        dev = Path("/dev")
        return None if (dev / "kfd").exists() else len(list(dev.glob("nvidia[0-9]*")))
    if platform.system() == "Darwin":
        return int(platform.machine() == "arm64")
    return None


ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps", "tpu", "hpu", "xla")


def check_accelerator(accelerator, devices) -> None:
    """The accelerator and the number of devices (processes) against what this machine has."""
    if not one_of(accelerator, ACCELERATORS):
        raise UserError(f"trainer.accelerator={accelerator!r} is not an accelerator; use auto, cpu, gpu (cuda) or mps.")
    gpus = _gpu_devices()
    if accelerator in ("gpu", "cuda", "mps") and gpus == 0:
        raise UserError(
            f"trainer.accelerator={accelerator}: this machine has no GPU. Train on the CPU "
            "(trainer.accelerator=cpu, or auto: a GPU when there is one)."
        )
    n = len(devices) if isinstance(devices, list) else devices if isinstance(devices, int) else None
    if n is None:
        return
    if accelerator == "cpu" or accelerator == "auto" and gpus == 0:
        # Processes may share cores (to try data parallelism on a laptop), not memory: each holds torch and the data.
        free = settings.available_memory()
        if free is not None and n * settings.PROCESS_BYTES > free:
            raise UserError(
                f"trainer.devices={devices}: one training process per device, each needing about "
                f"{settings.PROCESS_BYTES / 2**30:.1f} GiB, more than the {free / 2**30:.1f} GiB of memory "
                f"free here (and this machine has {os.cpu_count()} CPU cores). Use fewer devices."
            )
    elif gpus is not None and n > gpus:
        raise UserError(
            f"trainer.devices={devices}: one training process per GPU, but this machine has {gpus}. Use "
            f"at most trainer.devices={gpus}."
        )


def misconfigured(cfg: DictConfig, error: BaseException) -> str:
    """The user's message for a setting Lightning refused while it ran (a monitored metric the run does not log,
    say): its reason, and the trainer or callback keys whose values it quotes."""
    why = " ".join(str(error).split())[:500]
    keys = []
    for group in ("trainer", "callbacks"):
        flat = OmegaConf.to_container(cfg[group], resolve=True) if cfg.get(group) else {}
        stack = [(group, flat)]
        while stack:
            prefix, node = stack.pop()
            for k, v in node.items():
                if isinstance(v, dict):
                    stack.append((f"{prefix}.{k}", v))
                elif f"{k}={v!r}" in why or f"{k}={v}" in why or f"{k}`={v}" in why:
                    keys.append(f"{prefix}.{k}={_short(v)}")
    named = ", ".join(keys) or "a trainer.* or callbacks.* setting"
    return f"{named}: Lightning refused it as the run went ({why}). Change that value (vae-train --cfg job shows them)."


def optimizer_and_schedule(cfg: DictConfig):
    """The run's optimizer and learning-rate schedule from their configs (optimizer=, scheduler=): callables that
    the module gives its parameters, and the optimizer (None: a constant rate). Each is tried once on a stand-in
    parameter, so arguments its class refuses stop the run here, named with the group's keys, before Lightning is
    imported. optim.lr_decay other than 1 with scheduler=none is an exponential decay (the scheduler=exponential)."""
    import torch

    optimizer = OmegaConf.to_container(cfg.optimizer, resolve=True)
    schedule = OmegaConf.to_container(cfg.get("scheduler") or OmegaConf.create(), resolve=True)
    if not schedule and cfg.optim.lr_decay != 1:
        schedule = {
            "_target_": "torch.optim.lr_scheduler.ExponentialLR",
            "_partial_": True,
            "gamma": cfg.optim.lr_decay,
        }
    make_optimizer, tried = _built("optimizer", optimizer, [torch.nn.Parameter(torch.zeros(1))])
    return make_optimizer, _built("scheduler", schedule, tried)[0] if schedule else None


def _built(group: str, config: dict, *args):
    """instantiate(config) (a partial), and what it makes of args; a refusal as the UserError naming the keys."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    try:
        made = instantiate(config, _convert_="all")  # lists as lists: an optimiser's state goes into checkpoints
        return made, made(*args)
    except Exception as e:  # noqa: BLE001 (the user's class, called with the user's settings)
        raise UserError(
            refused_by(group, e.__cause__ if isinstance(e, InstantiationException) and e.__cause__ else e, config)
        ) from None


def binarizes(cfg: DictConfig) -> bool:
    """data.binarize, where null means: exactly when the likelihood is of binary data."""
    if cfg.data.get("binarize") is not None:
        return bool(cfg.data.binarize)
    return settings.FAMILIES[cfg.model.likelihood].support == "binary"


def check_fits_data(name: str, x, binarize: bool) -> None:
    """Refuse a likelihood whose support the data (a sample of training images) does not lie in."""
    support = settings.FAMILIES[name].support
    if support == "binary" and not binarize and not ((x == 0) | (x == 1)).all():
        raise UserError(
            f"model.likelihood={name} needs binary data, but these pixels take grey values and data.binarize=false; "
            "binarise them (data.binarize=true, or leave it null) or use a likelihood for grey values "
            "(model.likelihood=gaussian or continuous_bernoulli)."
        )
    if support != "real" and (x.min() < 0 or x.max() > 1):
        raise UserError(
            f"model.likelihood={name} needs pixel values in [0, 1]; this data spans "
            f"[{x.min().item():.3g}, {x.max().item():.3g}]."
        )
    if support == "8bit" and not binarize:
        k = x * 255
        if (k - k.round()).abs().max() > 1e-3:
            raise UserError(
                f"model.likelihood={name} models 8-bit images (values k/255), but this data is not on that grid "
                "(e.g. data=digits has 17 grey levels); use model.likelihood=gaussian or continuous_bernoulli."
            )


class CheckedSettings(Callback):
    """A run's settings checked before Hydra makes its directory: a refused command leaves nothing behind. (The
    jobs of a sweep check theirs as they start.)"""

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        from hydra.core.hydra_config import HydraConfig

        from .errors import fail, run_or_exit

        why = settings.folder_key("hydra.run.dir", config.hydra.run.dir, must_exist=False)
        if why:
            fail("vae-train", f"{why}.")
        HydraConfig.instance().set_config(config)  # as Hydra does when it starts the run: ${hydra:...} resolves
        chosen = OmegaConf.masked_copy(config, [k for k in config if k != "hydra"])
        chosen.run_dir = config.hydra.run.dir  # hydra.runtime.output_dir is set once Hydra makes the directory
        run_or_exit("vae-train", check_train_config, chosen)
