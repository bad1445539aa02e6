"""Finding and loading checkpoints. Loading never executes code from the file: torch.load with
weights_only=True only rebuilds tensors and plain containers."""
from pathlib import Path

from .errors import UserError


def resolve_checkpoint(ckpt_path, default_name: str = "last.ckpt") -> Path:
    """A checkpoint file, or a run directory meaning its checkpoints/<default_name>."""
    if ckpt_path is None or str(ckpt_path) == "":
        raise UserError("ckpt_path is not set; pass a .ckpt file or a run directory, e.g. ckpt_path=outputs/DATE/TIME.")
    p = Path(str(ckpt_path)).expanduser()
    if p.is_dir():
        p = p / "checkpoints" / default_name
    if not p.is_file():
        raise UserError(
            f"ckpt_path={str(ckpt_path)!r}: no checkpoint at {p}. Pass a .ckpt file or a run directory "
            f"that holds checkpoints/{default_name}, e.g. ckpt_path=outputs/DATE/TIME/checkpoints/{default_name}."
        )
    return p


def read_checkpoint(path: Path, map_location="cpu") -> dict:
    import torch  # here, not at the top: `vae-train --help` should not pay for importing torch

    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated, corrupt, or holding objects other than tensors and plain data
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(
            f"ckpt_path={str(path)!r} cannot be loaded as a checkpoint ({first}). The file may be truncated "
            "or corrupt, or not a vae-cli checkpoint; use another checkpoint of the run, e.g. checkpoints/last.ckpt."
        ) from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "hyper_parameters" not in ckpt:
        raise UserError(f"ckpt_path={str(path)!r} is not a vae-cli checkpoint (it has no model weights or hyperparameters).")
    return ckpt


def load_vae(path: Path, map_location="cpu"):
    """The trained VAE and the data config it was trained on (None for checkpoints without one)."""
    from .module import VAE

    ckpt = read_checkpoint(path, map_location)
    model = VAE(**ckpt["hyper_parameters"])
    model.load_state_dict(ckpt["state_dict"])
    model.to(map_location)
    return model, ckpt.get("data_config")
