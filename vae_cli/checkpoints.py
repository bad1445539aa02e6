"""Finding, loading and writing a run's files. Loading never executes code from the file: torch.load
with weights_only=True only rebuilds tensors and plain containers; writing goes through a temporary
file and a rename, so a reader (or a run killed mid-write) never sees half a file."""
import json
from pathlib import Path

from .errors import UserError


def write_json(path: Path, obj: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    tmp.replace(path)


def write_tensors(path: Path, obj: dict) -> None:
    import torch

    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    tmp.replace(path)


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


def resolve_device(name: str):
    """`device=auto` means CUDA when available; otherwise the named torch device (cpu, cuda, cuda:1)."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(name)
    except RuntimeError:
        raise UserError(f"device={name!r} is not a torch device; use auto, cpu, cuda or cuda:N.") from None


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


def check_compatible(model, ckpt: dict, path) -> None:
    """A checkpoint whose tensors do not fit the configured model, named parameter by parameter."""
    own = model.state_dict()
    theirs = ckpt["state_dict"]
    for name, tensor in theirs.items():
        if name in own and own[name].shape != tensor.shape:
            raise UserError(
                f"ckpt_path={str(path)!r} does not fit the configured model: parameter {name} has shape "
                f"{tuple(tensor.shape)} in the checkpoint and {tuple(own[name].shape)} here. Resume with the model "
                f"settings it was trained with (its hyperparameters: {ckpt['hyper_parameters']})."
            )
    missing, unexpected = sorted(set(own) - set(theirs)), sorted(set(theirs) - set(own))
    if missing or unexpected:
        raise UserError(
            f"ckpt_path={str(path)!r} does not fit the configured model: "
            f"{'missing ' + ', '.join(missing[:5]) if missing else ''}{'; ' if missing and unexpected else ''}"
            f"{'unexpected ' + ', '.join(unexpected[:5]) if unexpected else ''}. Resume with the model settings it "
            f"was trained with (its hyperparameters: {ckpt['hyper_parameters']})."
        )


def atomic_checkpoint_io():
    """Lightning's checkpoint writer, made atomic on the local disk: each file is written beside its
    destination, flushed to disk, then renamed over it, so a kill mid-write leaves the previous
    last.ckpt in place (Lightning's own temporary file may live on another file system, where the
    final move is a copy)."""
    import os

    import torch
    from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

    class AtomicCheckpointIO(TorchCheckpointIO):
        def save_checkpoint(self, checkpoint, path, storage_options=None):
            if "://" in str(path):  # remote storage: keep Lightning's transactional writer
                return super().save_checkpoint(checkpoint, path, storage_options)
            path = Path(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            try:
                with open(tmp, "wb") as f:
                    torch.save(checkpoint, f)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, path)
            finally:
                tmp.unlink(missing_ok=True)

    return AtomicCheckpointIO()
