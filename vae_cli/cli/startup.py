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
            raise UserError(f"logger={name} needs {what}, which is not installed. Install the extra: pip install "
                            f"'vae-cli[{extra}]' (from a clone of the repository: pip install '.[{extra}]').")


def check_optional_parts(argv: list[str]) -> None:
    """A sweeper or launcher chosen on the command line that this machine cannot run: named, with the fix,
    before Hydra fails on it with a lookup error or a traceback."""
    for prefix, module, what in OPTIONAL:
        if any(a.startswith(prefix) for a in argv) and not _installed(module):
            raise UserError(f"{prefix} needs {what}, which is not installed. Install the sweep extras: "
                            "pip install 'vae-cli[sweeps]' (from a clone of the repository: pip install '.[sweeps]').")
    if any(a.startswith("hydra/launcher=slurm") for a in argv) and shutil.which("sbatch") is None:
        raise UserError("hydra/launcher=slurm submits each job of the sweep to SLURM with sbatch, which is not on this "
                        "machine's PATH. Start the sweep on a SLURM login node, or run it here: without a launcher "
                        "(one job after another) or with hydra/launcher=joblib hydra.launcher.n_jobs=2.")


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
            raise UserError(f"{typed}: {name} is a choice of the callbacks group, not part of callbacks={chosen}; choose "
                            f"it too: 'callbacks=[{chosen.strip('[]')},{name}]' {typed}")


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
                raise UserError(f"{f}: holds a {type(loaded).__name__}, not settings (key: value lines). A config "
                                "file is a mapping of settings, e.g. model:\\n  latent_dim: 8.")
