"""What earlier versions of vae-cli wrote, read as today's: a checkpoint's layout (vae-train resumes it, vae-eval and
vae-sample load it) and, in a sweep's job folder from before error.json, why the job failed (its train.log). Standard
library only, so vae-report stays instant."""
import re
from pathlib import Path

CORE_VAE = "vae_cli.core.vae.VAE"

# Checkpoints written before the VAE moved into its own module had flat hyperparameters and the
# networks' parameters on the LightningModule itself (encoder.*, not vae.encoder.*).
_GROUPS = {"model": ("data_shape", "arch", "latent_dim", "hidden_dims", "activation", "likelihood", "gaussian_std"),
           "objective": ("beta", "warmup_steps", "warmup_epochs", "free_bits", "kl_estimator"),
           "optim": ("lr", "lr_decay")}


def upgrade_checkpoint(ckpt: dict) -> dict:
    """An earlier version's checkpoint in today's layout, in place: the same weights, today's names."""
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
        if key in ckpt:
            ckpt[key] = {f"vae.{name}": value for name, value in ckpt[key].items()}
    return ckpt


# A record of Hydra's job log: "[2026-11-25 16:03:10,437][vae_cli][ERROR] - message".
LOG_RECORD = re.compile(r"^\[[^\]]*\]\[[^\]]*\]\[([A-Z]+)\] - (.*)$")


def exception_line(lines: list[str]) -> str | None:
    """The "Type: message" line that ends the last traceback in `lines` (with chained exceptions
    the last traceback is the one that was finally raised)."""
    starts = [i for i, line in enumerate(lines) if line.startswith("Traceback (most recent call last):")]
    if not starts:
        return None
    # Frames and source lines are indented; the exception line is the first one that is not.
    return next((line.strip() for line in lines[starts[-1] + 1:] if line.strip() and not line[0].isspace()), None)


def error_of(log_file: Path) -> str | None:
    """Why the job failed, from its train.log: the first ERROR record's message (with the exception
    when a traceback follows it, as after log.exception("the run failed")), else the end of a
    traceback anywhere in the file; None when the log records no error."""
    if not log_file.is_file():
        return None
    lines = log_file.read_text(errors="replace").splitlines()
    for i, line in enumerate(lines):
        record = LOG_RECORD.match(line)
        if record and record.group(1) in ("ERROR", "CRITICAL"):
            # The record goes on until the next record starts; a traceback, if any, is in there.
            end = next((k for k in range(i + 1, len(lines)) if LOG_RECORD.match(lines[k])), len(lines))
            exc = exception_line(lines[i + 1:end])
            return f"{record.group(2)}: {exc}" if exc else record.group(2)
    return exception_line(lines)
