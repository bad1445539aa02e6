"""What vae-train checks on its command line before Hydra starts, so that each of these mistakes is one line
naming the fix, not a lookup error or a traceback: a sweeper, launcher or logger whose package is not installed,
SLURM's sbatch missing, a callback's setting without the callback chosen, and a YAML file of the user's own that
does not parse. Standard library and PyYAML only:
it runs in a blink."""

import importlib.util
import shutil
from pathlib import Path

from ..errors import UserError

# What a choice on the command line needs beyond the main install: (argument prefix, module, how to get it).
OPTIONAL = [
    ("hparams_search=optuna", "optuna", "Optuna"),
    ("hydra/launcher=joblib", "hydra_plugins.hydra_joblib_launcher", "Hydra's joblib launcher plugin"),
    ("hydra/launcher=slurm", "hydra_plugins.hydra_submitit_launcher", "Hydra's submitit launcher plugin"),
]


# Loggers that need a package beyond the main install: logger=<name> -> (module, what, the extra that installs it).
LOGGER_PACKAGES = {"mlflow": ("mlflow", "MLflow", "mlflow"), "wandb": ("wandb", "Weights & Biases (wandb)", "wandb")}


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # its parent package is missing too
        return False


def check_logger_packages(cfg) -> None:
    """A logger whose package is not installed: named, with the extra that installs it, before Lightning fails."""
    for name in cfg.get("logger") or {}:
        module, what, extra = LOGGER_PACKAGES.get(name, (None, None, None))
        if module is not None and not _installed(module):
            raise UserError(
                f"logger={name} needs {what}, which is not installed. Install the extra: pip install "
                f"'vae-cli[{extra}]' (from a clone of the repository: pip install '.[{extra}]')."
            )


def check_optional_parts(argv: list[str]) -> None:
    """A sweeper or launcher chosen on the command line that this machine cannot run: named, with the fix,
    before Hydra fails on it with a lookup error or a traceback."""
    for prefix, module, what in OPTIONAL:
        if any(a.startswith(prefix) for a in argv) and not _installed(module):
            raise UserError(
                f"{prefix} needs {what}, which is not installed. Install the sweep extras: "
                "pip install 'vae-cli[sweeps]' (from a clone of the repository: pip install '.[sweeps]')."
            )
    if any(a.startswith("hydra/launcher=slurm") for a in argv) and shutil.which("sbatch") is None:
        raise UserError(
            "hydra/launcher=slurm submits each job of the sweep to SLURM with sbatch, which is not on this "
            "machine's PATH. Start the sweep on a SLURM login node, or run it here: without a launcher "
            "(one job after another) or with hydra/launcher=joblib hydra.launcher.n_jobs=2."
        )


# Callbacks that are choices of the callbacks group, not members of callbacks=default.
CALLBACK_CHOICES = ("ema", "early_stopping")


def check_callback_choices(argv: list[str]) -> None:
    """A setting of a callback that is a choice (callbacks.ema.decay=0.999) typed without choosing it: named with the
    choice to add, where Hydra would say only that the key is not in the config. An experiment or a config of the
    user's own may choose it, so the check is left to Hydra where the command line names one."""
    if any(a.startswith(("experiment=", "--config-dir", "-cd", "--config-name", "-cn")) for a in argv):
        return
    chosen = next((a.partition("=")[2] for a in argv if a.startswith("callbacks=")), "default")
    for name in CALLBACK_CHOICES:
        typed = next((a for a in argv if a.startswith(f"callbacks.{name}.")), None)
        if typed is not None and name not in chosen:
            raise UserError(
                f"{typed}: {name} is a choice of the callbacks group, not part of callbacks={chosen}; choose "
                f"it too: 'callbacks=[{chosen.strip('[]')},{name}]' {typed}"
            )


def _config_dirs(argv: list[str]) -> list[Path]:
    """The user's own config folders on the command line: --config-dir DIR (-cd DIR, --config-dir=DIR)."""
    dirs = []
    for i, arg in enumerate(argv):
        if arg in ("--config-dir", "-cd") and i + 1 < len(argv):
            dirs.append(argv[i + 1])
        elif arg.startswith("--config-dir="):
            dirs.append(arg.partition("=")[2])
    return [Path(d).expanduser() for d in dirs]


def check_config_files(argv: list[str]) -> None:
    """A YAML file in the user's config folder that does not parse, or gives a key twice: named with its line and
    column and the parser's reason, before Hydra reports it with a traceback."""
    from .. import inputs

    for folder in _config_dirs(argv):
        for f in sorted(folder.rglob("*.yaml")) if folder.is_dir() else []:
            loaded = inputs.read_yaml(f, "a config file", unique_keys=True)
            if not isinstance(loaded, (dict, type(None))):
                raise UserError(
                    f"{f}: holds a {type(loaded).__name__}, not settings (key: value lines). A config "
                    "file is a mapping of settings, e.g. model:\\n  latent_dim: 8."
                )


# Options that bring configs other than the shipped ones, whose classes may read a key by rules of their own.
OWN_CONFIGS = ("--config-dir", "-cd", "--config-path", "-cp", "--config-name", "-cn")


def check_command_line_values(argv: list[str], rules: list) -> None:
    """A value typed on the command line that breaks its key's rule, refused before Hydra composes the config (most
    of a refusal's time): with the message the composed config's check would give. Only where the shipped configs
    are in use (no config of the user's, no _target_ overridden), so each key means what its rule says; only a plain
    `key=value` (no sweep, no interpolation); and only the rules that judge a value alone: `rules` (key, test, what,
    use) and the model's, objective's and data's single-argument rules (settings.py), called with one argument and
    their defaults for the rest. Anything else is judged once the config is composed."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from .. import settings
    from ..errors import BadArgument
    from .refusals import short as _short

    if any(a.split("=")[0] in OWN_CONFIGS for a in argv):
        return
    try:
        overrides = OverridesParser.create().parse_overrides([a for a in argv if not a.startswith("-")])
    except Exception:  # noqa: BLE001 (a command line Hydra refuses: it says why, in one line)
        return
    if any(o.key_or_group.endswith("_target_") or o.key_or_group.startswith("hydra.searchpath") for o in overrides):
        return
    table = {key: (ok, what, use) for key, ok, what, use in rules}
    classes = {"model": settings.check_model, "objective": settings.check_objective, "data": settings.check_data}
    for o in overrides:
        if o.is_sweep_override() or o.is_add() or o.is_force_add() or o.is_delete():
            continue
        key, value = o.key_or_group, o.value()
        if isinstance(value, str) and ("${" in value or value == "???"):  # resolved, or marked missing, once composed
            continue
        if key in table:
            ok, what, use = table[key]
            if not ok(value):
                raise UserError(f"{key}={_short(value)} is not a valid {what}; use {use}.")
        group, _, name = key.partition(".")
        if group in classes and name and "." not in name and (group == "data" or name in _arguments(classes[group])):
            try:
                classes[group](**{name: value})
            except BadArgument as e:
                raise UserError(e.named(lambda n, group=group: f"{group}.{n}")) from None


def _arguments(check) -> set[str]:
    import inspect

    return set(inspect.signature(check).parameters)
