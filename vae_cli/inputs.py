"""The trust boundary: every file vae-cli reads (a checkpoint, a per-image evaluation, a YAML of the user's or of
a run's record) is read here, as data and never as a program, and checked against what it claims to be before
anything else sees it. A refusal is a UserError naming the file and the key.

A checkpoint is shared like a dataset, so what it holds is not trusted: torch.load(weights_only=True) rebuilds only
tensors and plain containers; the configs saved in it may name only the classes of `TRUSTED` (vae-cli's own networks
and datamodules) or classes the user names (vae-eval trust=[...]); those classes are built here with plain keyword
arguments, never through Hydra's instantiate (which would resolve interpolations and call any `_target_`).
Standard library at import: torch and PyYAML are imported where a file of theirs is read."""

import importlib
import json
import math
import os
import stat
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


# A record vae-cli writes (metrics.json, a run's provenance, a sweep's YAML) is a few KiB; a file far larger is not one.
RECORD_BYTES = 1 << 24


class Unreadable(UserError):
    """A file that is not what it is read as; `reason` says why in a phrase, for a caller that goes on without it."""

    def __init__(self, path, what: str, reason: str, fix: str = ""):
        super().__init__(f"{path} cannot be read as {what} ({reason}).{' ' + fix if fix else ''}")
        self.path, self.reason = Path(path), reason


def _regular(path, what: str) -> int:
    """An open descriptor of `path` when it is a regular file: a FIFO, a device or a folder is refused, and is
    never waited on."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as e:
        raise Unreadable(path, what, e.strerror or type(e).__name__) from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise Unreadable(path, what, "it is not a file")
    return fd


def read_text(path, what: str, limit: int = RECORD_BYTES, errors: str = "strict") -> str:
    """A regular file's text (UTF-8; bytes that are not, replaced with errors="replace"), of at most `limit` bytes."""
    with os.fdopen(_regular(path, what), "rb") as f:
        try:
            data = f.read(limit + 1)
        except OSError as e:
            raise Unreadable(path, what, e.strerror or type(e).__name__) from None
    if len(data) > limit:
        raise Unreadable(path, what, f"it is larger than any vae-cli writes, {limit} bytes")
    try:
        return data.decode("utf-8", errors=errors)
    except UnicodeDecodeError:
        raise Unreadable(path, what, "it is not UTF-8 text") from None


def _unicode(value, path, what: str):
    """`value` when every text in it is Unicode: JSON and YAML escapes can spell halves of a character (surrogates),
    which no file, terminal or table can then write."""
    texts = [value] if isinstance(value, str) else []
    stack = [value]
    while stack:
        v = stack.pop()
        items = list(v.items()) if isinstance(v, dict) else [(None, x) for x in v] if isinstance(v, list) else []
        for k, x in items:
            texts += [t for t in (k, x) if isinstance(t, str)]
            stack += [x] if isinstance(x, (dict, list)) else []
    for t in texts:
        try:
            t.encode("utf-8")
        except UnicodeEncodeError:
            raise Unreadable(path, what, "it spells text that is not Unicode (half a character)") from None
    return value


def read_json(path, what: str):
    """A JSON file's content: plain data (objects, lists, strings, numbers, booleans, null)."""
    try:
        content = json.loads(read_text(path, what))
    except (ValueError, RecursionError) as e:  # JSONDecodeError is a ValueError
        raise Unreadable(path, what, f"not valid JSON: {' '.join(str(e).split())[:200]}") from None
    return _unicode(content, path, what)


def record(path, what: str, fields: dict) -> dict:
    """A JSON object whose keys in `fields` hold values of the given types (a type or a tuple of types; a key that
    may be absent has type(None) among them); anything else about it is refused, naming the key."""
    content = read_json(path, what)
    if not isinstance(content, dict):
        raise Unreadable(path, what, f"it holds a {type(content).__name__}")
    for key, kind in fields.items():
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if type(None) in kinds:
            content.setdefault(key, None)
        value = content.get(key)
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            raise Unreadable(path, what, f"its {key} is {value!r:.60}")
    return content


def read_yaml(path, what: str, unique_keys: bool = False):
    """A YAML file's content, read with PyYAML's safe loader (plain data, no tags that build objects). With
    unique_keys, a key given twice in one mapping is refused as OmegaConf refuses it (PyYAML keeps the last)."""
    import yaml

    class Strict(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            keys = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                if key in keys:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"the key {key!r} appears twice", key_node.start_mark
                    )
                keys.add(key)
            return super().construct_mapping(node, deep)

    text = read_text(path, what)
    try:
        content = yaml.load(text, Loader=Strict if unique_keys else yaml.SafeLoader)  # noqa: S506 (both are safe)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        at = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
        raise UserError(
            f"{path}{at}: not valid YAML ({e.problem or e.context}). Fix that line of the file, then run "
            "the command again."
        ) from None
    except (yaml.YAMLError, RecursionError, TypeError) as e:  # errors without a position; an unhashable key
        raise UserError(f"{path}: not valid YAML ({' '.join(str(e).split())[:200]}).") from None
    return _unicode(content, path, what)


def load_tensors(path: Path, what: str, mmap: bool = False):
    """torch.load of a file that may hold only tensors and plain containers (weights_only: nothing in it runs);
    a file it cannot read (truncated, corrupt, holding other objects, not a file) is a UserError naming it."""
    import pickle

    import torch

    os.close(_regular(path, what))
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError:  # torch's own message advises loading it as a program, which is not for vae-cli
        reason = "it holds objects other than tensors and plain data"
    except Exception as e:  # noqa: BLE001 (anything torch's unpickler raises means: not such a file)
        reason = " ".join(str(e).split())[:200] or type(e).__name__
    raise Unreadable(path, what, reason, f"The file may be truncated or corrupt, or not {what}; use another one.")


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
                raise UserError(
                    f"{_where(path, f'{key}.{k}')}: a setting below the top of a saved config may not "
                    "name a class or a call; the file is not vae-cli's (or was altered), and is refused."
                )
            plain(v, path, f"{key}.{k}", depth + 1)
        return
    raise UserError(f"{_where(path, key)} holds a {type(value).__name__}, not a setting; the file is not vae-cli's.")


def saved_config(config, path, key: str, trust=()) -> dict:
    """A config saved in a file, checked to be plain data whose `_target_` is one of `TRUSTED` or `trust`."""
    if not isinstance(config, dict):
        raise UserError(f"{_where(path, key)} is a {type(config).__name__}, not a config; the file is not vae-cli's.")
    target = config.get("_target_")
    if not isinstance(target, str) or target not in (*TRUSTED, *trust):
        raise UserError(
            f"{_where(path, key + '._target_')}={target!r} is not a class vae-cli builds from a file. "
            "A checkpoint may name vae-cli's own networks and datamodules; if this is your own class "
            f"and you trust the file, say so: trust=[{target}]."
        )
    extra = [k for k in config if isinstance(k, str) and k.startswith("_") and k != "_target_"]
    if extra:
        raise UserError(
            f"{_where(path, f'{key}.{extra[0]}')}: a saved config may name a class and its settings, "
            "nothing else; the file is refused."
        )
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
        raise UserError(
            f"{_where(path, key + '._target_')}={config['_target_']!r} cannot be imported here ({e}); "
            "install the package that defines it."
        ) from None
    settings = {**{k: v for k, v in config.items() if k != "_target_"}, **overrides}
    try:
        return cls(**settings)
    except BadArgument as e:
        raise UserError(f"{path}: " + e.named(lambda n: f"{key}.{n}")) from None
    except (TypeError, ValueError, UserError) as e:
        raise UserError(
            f"{_where(path, key)} does not describe a {name} ({' '.join(str(e).split())[:300]}); "
            "the file is not a vae-cli checkpoint of this version, or was altered."
        ) from None


def _epoch_sums(sums) -> bool:
    import torch

    if not (isinstance(sums, dict) and {"names", "sums", "count"} <= sums.keys()):
        return False
    names, values, count = sums["names"], sums["sums"], sums["count"]
    return (
        isinstance(names, list)
        and all(isinstance(n, str) for n in names)
        and torch.is_tensor(values)
        and values.dtype.is_floating_point
        and values.shape == (len(names),)
        and isinstance(count, int)
        and not isinstance(count, bool)
        and count >= 0
    )


CORE_VAE = TRUSTED_MODELS[0]

# Checkpoints written before the VAE moved into its own module had flat hyperparameters and the
# networks' parameters on the LightningModule itself (encoder.*, not vae.encoder.*).
_GROUPS = {
    "model": ("data_shape", "arch", "latent_dim", "hidden_dims", "activation", "likelihood", "gaussian_std"),
    "objective": ("beta", "warmup_steps", "warmup_epochs", "free_bits", "kl_estimator"),
    "optim": ("lr", "lr_decay"),
}


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
_CHECKPOINT = {
    "state_dict": dict,
    "hyper_parameters": dict,
    "data_config": (dict, type(None)),
    "global_step": int,
    "epoch": int,
}


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
            raise UserError(
                f"{_where(path, key)} is a {type(ckpt[key]).__name__}; a vae-cli checkpoint's is not. "
                "The file is not a vae-cli checkpoint, or was altered."
            )
    bad = next((k for k, v in ckpt["state_dict"].items() if not isinstance(k, str) or not torch.is_tensor(v)), None)
    if bad is not None or not ckpt["state_dict"]:
        raise UserError(
            f"{_where(path, 'state_dict')} holds {'no weights' if bad is None else repr(bad)}, not "
            "tensors by name; the file is not a vae-cli checkpoint, or was altered."
        )
    raw = ckpt.get("current_model_state")  # a weight average's raw weights
    if raw is not None and not (
        isinstance(raw, dict) and all(isinstance(k, str) and torch.is_tensor(v) for k, v in raw.items())
    ):
        raise UserError(f"{_where(path, 'current_model_state')} is not tensors by name; the file was altered.")
    sums = ckpt.get("train_epoch_sums")  # a training epoch's running sums, saved mid-epoch
    if sums is not None and not _epoch_sums(sums):
        raise UserError(
            f"{_where(path, 'train_epoch_sums')} is not an epoch's metric sums (names, a sum of each, a "
            "count); the file was altered, or is not a vae-cli checkpoint."
        )
    hp = ckpt["hyper_parameters"]
    saved_config(hp.get("model"), path, "hyper_parameters.model", trust)
    if not isinstance(hp.get("objective", {}), dict):
        raise UserError(
            f"{_where(path, 'hyper_parameters.objective')} is a {type(hp['objective']).__name__}, not "
            "the objective's settings; the file was altered, or is not a vae-cli checkpoint."
        )
    plain({k: v for k, v in hp.items() if k != "model"}, path, "hyper_parameters")
    if ckpt.get("data_config") is not None:
        saved_config(ckpt["data_config"], path, "data_config", trust)
    return ckpt
