"""The trust boundary: every file vae-cli reads (a checkpoint, a per-image evaluation, a YAML of the user's or of
a run's record) is read here, as data and never as a program, and checked against what it claims to be before
anything else sees it. A refusal is a UserError naming the file and the key.

A checkpoint is shared like a dataset, so what it holds is not trusted: torch.load(weights_only=True) rebuilds only
tensors and plain containers; the configs saved in it may name only the classes of `TRUSTED` (vae-cli's own networks
and datamodules) or classes the user names (vae-eval trust=[...]); those classes are built here with plain keyword
arguments, never through Hydra's instantiate (which would resolve interpolations and call any `_target_`).
Standard library at import: torch and PyYAML are imported where a file of theirs is read."""
import importlib
import math
from pathlib import Path

from .errors import BadArgument, UserError

# The classes a checkpoint may name without the user's say: vae-cli's networks (model._target_) and datamodules
# (data._target_). A user's own class is built only when the user names it (vae-eval trust=[mypkg.MyVAE]).
TRUSTED_MODELS = ("vae_cli.core.vae.VAE",)
TRUSTED_DATA = tuple(f"vae_cli.data.{name}" for name in ("Digits", "MNIST", "FashionMNIST", "CIFAR10", "ImageFolder"))
TRUSTED = TRUSTED_MODELS + TRUSTED_DATA
PLAIN = (str, int, float, bool, type(None))


def _where(path, key: str) -> str:
    return f"{path}: {key}" if key else str(path)


def load_tensors(path: Path, what: str, mmap: bool = False):
    """torch.load of a file that may hold only tensors and plain containers (weights_only: nothing in it runs);
    a file it cannot read (truncated, corrupt, holding other objects, not a file) is a UserError naming it."""
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as e:  # noqa: BLE001 (anything torch's unpickler raises means: not such a file)
        reason = " ".join(str(e).split())[:200] or type(e).__name__
        raise UserError(f"{path} cannot be read as {what} ({reason}). The file may be truncated or corrupt, or not "
                        f"{what}; use another one.") from None


def plain(value, path, key: str, depth: int = 0) -> None:
    """Refuse anything in a config read from a file but plain data: strings, finite numbers, booleans, null, and
    lists and string-keyed mappings of those; no `_target_` or other Hydra key below the top (nothing to call)."""
    if depth > 8:
        raise UserError(f"{_where(path, key)} is nested deeper than any vae-cli setting; the file is not vae-cli's.")
    if isinstance(value, float) and not math.isfinite(value):
        return  # inf/nan are plain values; the class they are given to refuses them by name
    if isinstance(value, PLAIN):
        return
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            plain(v, path, f"{key}[{i}]", depth + 1)
        return
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise UserError(f"{_where(path, key)} has a key {k!r} that is not a name; the file is not vae-cli's.")
            if k.startswith("_"):
                raise UserError(f"{_where(path, f'{key}.{k}')}: a setting below the top of a saved config may not "
                                "name a class or a call; the file is not vae-cli's (or was altered), and is refused.")
            plain(v, path, f"{key}.{k}", depth + 1)
        return
    raise UserError(f"{_where(path, key)} holds a {type(value).__name__}, not a setting; the file is not vae-cli's.")


def saved_config(config, path, key: str, trust=()) -> dict:
    """A config saved in a file, checked to be plain data whose `_target_` is one of `TRUSTED` or `trust`."""
    if not isinstance(config, dict):
        raise UserError(f"{_where(path, key)} is a {type(config).__name__}, not a config; the file is not vae-cli's.")
    target = config.get("_target_")
    if not isinstance(target, str) or target not in (*TRUSTED, *trust):
        raise UserError(f"{_where(path, key + '._target_')}={target!r} is not a class vae-cli builds from a file. "
                        "A checkpoint may name vae-cli's own networks and datamodules; if this is your own class "
                        f"and you trust the file, say so: trust=[{target}].")
    extra = [k for k in config if isinstance(k, str) and k.startswith("_") and k != "_target_"]
    if extra:
        raise UserError(f"{_where(path, f'{key}.{extra[0]}')}: a saved config may name a class and its settings, "
                        "nothing else; the file is refused.")
    plain({k: v for k, v in config.items() if k != "_target_"}, path, key)
    return config


def build(config: dict, path, key: str, trust=(), **overrides):
    """The object a checked saved config describes: its class called with its settings as keyword arguments. An
    argument the class refuses is a UserError naming the file and the key."""
    saved_config(config, path, key, trust)
    module, _, name = config["_target_"].rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise UserError(f"{_where(path, key + '._target_')}={config['_target_']!r} cannot be imported here ({e}); "
                        "install the package that defines it.") from None
    settings = {**{k: v for k, v in config.items() if k != "_target_"}, **overrides}
    try:
        return cls(**settings)
    except BadArgument as e:
        raise UserError(f"{path}: " + e.named(lambda n: f"{key}.{n}")) from None
    except (TypeError, ValueError, UserError) as e:
        raise UserError(f"{_where(path, key)} does not describe a {name} ({' '.join(str(e).split())[:300]}); "
                        "the file is not a vae-cli checkpoint of this version, or was altered.") from None


def _epoch_sums(sums) -> bool:
    import torch

    if not (isinstance(sums, dict) and {"names", "sums", "count"} <= sums.keys()):
        return False
    names, values, count = sums["names"], sums["sums"], sums["count"]
    return (isinstance(names, list) and all(isinstance(n, str) for n in names) and torch.is_tensor(values)
            and values.dtype.is_floating_point and values.shape == (len(names),)
            and isinstance(count, int) and not isinstance(count, bool) and count >= 0)


CORE_VAE = TRUSTED_MODELS[0]

# Checkpoints written before the VAE moved into its own module had flat hyperparameters and the
# networks' parameters on the LightningModule itself (encoder.*, not vae.encoder.*).
_GROUPS = {"model": ("data_shape", "arch", "latent_dim", "hidden_dims", "activation", "likelihood", "gaussian_std"),
           "objective": ("beta", "warmup_steps", "warmup_epochs", "free_bits", "kl_estimator"),
           "optim": ("lr", "lr_decay")}


def upgrade_checkpoint(ckpt: dict) -> dict:
    """An earlier version's checkpoint in today's layout, in place: the same weights, today's names (vae-train
    resumes it, vae-eval and vae-sample load it)."""
    hp = ckpt.get("hyper_parameters")
    if not isinstance(hp, dict):
        return ckpt
    if "model" in hp:
        if isinstance(hp["model"], dict):
            hp["model"].setdefault("_target_", CORE_VAE)  # before model._target_, the core VAE was the only network
        return ckpt
    ckpt["hyper_parameters"] = {group: {k: hp[k] for k in keys if k in hp} for group, keys in _GROUPS.items()}
    ckpt["hyper_parameters"]["model"]["_target_"] = CORE_VAE  # the only network there was
    for key in ("state_dict", "current_model_state"):  # the raw weights beside a weight average
        if isinstance(ckpt.get(key), dict):
            ckpt[key] = {f"vae.{name}": value for name, value in ckpt[key].items()}
    return ckpt


# A checkpoint's top-level entries that vae-cli reads, and what each must be.
_CHECKPOINT = {"state_dict": dict, "hyper_parameters": dict, "data_config": (dict, type(None)),
               "global_step": int, "epoch": int}


def checkpoint(path: Path, trust=()) -> dict:
    """A checkpoint, read as data and checked: tensors by name, the model's saved config (hyper_parameters.model,
    naming a trusted class), the data's (data_config) and the progress counters; in today's layout whichever
    version of vae-cli wrote it."""
    import torch

    ckpt = load_tensors(path, "a vae-cli checkpoint")
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "hyper_parameters" not in ckpt:
        raise UserError(f"{path} is not a vae-cli checkpoint (it has no model weights or hyperparameters).")
    ckpt = upgrade_checkpoint(ckpt)
    for key, kind in _CHECKPOINT.items():
        if key in ckpt and (not isinstance(ckpt[key], kind) or isinstance(ckpt[key], bool)):
            raise UserError(f"{_where(path, key)} is a {type(ckpt[key]).__name__}; a vae-cli checkpoint's is not. "
                            "The file is not a vae-cli checkpoint, or was altered.")
    bad = next((k for k, v in ckpt["state_dict"].items() if not isinstance(k, str) or not torch.is_tensor(v)), None)
    if bad is not None or not ckpt["state_dict"]:
        raise UserError(f"{_where(path, 'state_dict')} holds {'no weights' if bad is None else repr(bad)}, not "
                        "tensors by name; the file is not a vae-cli checkpoint, or was altered.")
    raw = ckpt.get("current_model_state")  # a weight average's raw weights
    if raw is not None and not (isinstance(raw, dict) and all(isinstance(k, str) and torch.is_tensor(v)
                                                               for k, v in raw.items())):
        raise UserError(f"{_where(path, 'current_model_state')} is not tensors by name; the file was altered.")
    sums = ckpt.get("train_epoch_sums")  # a training epoch's running sums, saved mid-epoch
    if sums is not None and not _epoch_sums(sums):
        raise UserError(f"{_where(path, 'train_epoch_sums')} is not an epoch's metric sums (names, a sum of each, a "
                        "count); the file was altered, or is not a vae-cli checkpoint.")
    hp = ckpt["hyper_parameters"]
    saved_config(hp.get("model"), path, "hyper_parameters.model", trust)
    if not isinstance(hp.get("objective", {}), dict):
        raise UserError(f"{_where(path, 'hyper_parameters.objective')} is a {type(hp['objective']).__name__}, not "
                        "the objective's settings; the file was altered, or is not a vae-cli checkpoint.")
    plain({k: v for k, v in hp.items() if k != "model"}, path, "hyper_parameters")
    if ckpt.get("data_config") is not None:
        saved_config(ckpt["data_config"], path, "data_config", trust)
    return ckpt
