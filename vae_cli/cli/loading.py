"""What the commands are pointed at: checkpoints (found from a file or a run directory, read without
running code from them, checked against the configured model), the device, and the datamodule a
data config describes. A checkpoint is read through the trust boundary (vae_cli/inputs.py): as data, its
saved configs naming only classes vae-cli trusts."""

from pathlib import Path

from .. import inputs
from ..errors import UserError

# Where vae-train writes run directories (hydra.run.dir and hydra.sweep.dir in configs/train.yaml), from the
# directory it is started in: outputs/<date>/<time>/ and outputs/multirun/<date>/<time>/.
OUTPUTS = Path("outputs")
LATEST = "latest"


def latest(sweep: bool = False) -> Path | None:
    """The newest run directory with checkpoints under outputs/ (or, sweep=True, the newest sweep under
    outputs/multirun/), by its <date>/<time> name; None when there is none."""
    root = OUTPUTS / "multirun" if sweep else OUTPUTS
    found = [d for d in root.glob("*/*") if (d / "checkpoints").is_dir() or sweep and d.is_dir()]
    found = [d for d in found if sweep or d.parent.name != "multirun"]
    return max(found, key=lambda d: (d.parent.name, d.name)) if found else None


def resolve_checkpoint(ckpt_path, default_name: str | None = "best.ckpt") -> Path:
    """A checkpoint file, a run directory meaning its checkpoints/<default_name>, or `latest`: the newest run
    directory under outputs/. default_name=None: the state training resumes from (newest_state)."""
    if ckpt_path is None or str(ckpt_path) == "":
        raise UserError(
            "ckpt_path is not set; pass a .ckpt file or a run directory, e.g. ckpt_path=outputs/DATE/TIME, "
            "or ckpt_path=latest for the newest run under outputs/."
        )
    if str(ckpt_path) == LATEST:
        run = latest()
        if run is None:
            raise UserError(
                f"ckpt_path=latest: there is no run directory with checkpoints under {OUTPUTS.resolve()}/ "
                "(vae-train writes outputs/DATE/TIME/ below the directory it is started in). Run vae-train "
                "here first, or give the run's path: ckpt_path=path/to/run."
            )
        ckpt_path = run
    p = Path(str(ckpt_path)).expanduser()
    names = RESUMABLE if default_name is None else (default_name,)
    try:
        if p.is_dir():
            p = (newest_state(p) if default_name is None else None) or p / "checkpoints" / names[-1]
        found = p.is_file()
    except OSError as e:  # a name too long, a folder that cannot be read
        raise UserError(
            f"ckpt_path={str(ckpt_path)[:100]!r}: {e.strerror}. Pass a .ckpt file or a run directory."
        ) from None
    if not found:
        raise UserError(
            f"ckpt_path={str(ckpt_path)!r}: no checkpoint at {p}. Pass a .ckpt file or a run directory "
            f"that holds checkpoints/{' or '.join(names)}, e.g. ckpt_path=outputs/DATE/TIME/checkpoints/{names[-1]}."
        )
    return p


# The states a run directory's training resumes from: the one a signal saved, and the one of the last epoch's end.
RESUMABLE = ("interrupted.ckpt", "last.ckpt")


def newest_state(run_dir: Path) -> Path | None:
    """Of checkpoints/interrupted.ckpt and last.ckpt, the one further into training (by its step; at the same
    step, the newer file); None when there is neither. A file that cannot be read counts as the least advanced,
    so the other is taken (a broken one alone is named when it is loaded)."""

    def progress(f: Path) -> tuple[int, int]:
        step = saved_step(f)
        return -1 if step is None else step, f.stat().st_mtime_ns

    found = [f for f in (Path(run_dir) / "checkpoints" / n for n in RESUMABLE) if f.is_file()]
    return max(found, key=progress, default=None)


def saved_step(path: Path) -> int | None:
    """The training step a checkpoint holds the state after; None when it cannot be read."""
    try:  # memory-mapped: only the step is read, not the weights
        ckpt = inputs.load_tensors(path, "a vae-cli checkpoint", mmap=True)
    except UserError:
        return None
    step = ckpt.get("global_step") if isinstance(ckpt, dict) else None
    return step if isinstance(step, int) and not isinstance(step, bool) else None


def resolve_device(name: str):
    """`device=auto` means CUDA when available; otherwise the named torch device (cpu, cuda, cuda:1)."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(name)
    except RuntimeError:
        raise UserError(f"device={name!r} is not a torch device; use auto, cpu, cuda or cuda:N.") from None


def read_checkpoint(path: Path, trust=()) -> dict:
    """The checkpoint's contents, read as data and checked (inputs.checkpoint), in today's layout whichever version
    wrote it."""
    from ..inputs import checkpoint

    return checkpoint(Path(path), trust)


def load_vae(path: Path, map_location="cpu", trust=()):
    """The trained network (in eval mode) and the data config it was trained on (None for checkpoints without
    one). The network's class is one a checkpoint may name (inputs.TRUSTED, or `trust`), built from its settings."""
    from ..inputs import build

    ckpt = read_checkpoint(path, trust)
    vae = build(ckpt["hyper_parameters"]["model"], path, "hyper_parameters.model", trust)
    weights = {name[len("vae.") :]: t for name, t in ckpt["state_dict"].items() if name.startswith("vae.")}
    try:
        vae.load_state_dict(weights)
    except RuntimeError as e:  # missing, unexpected or misshapen tensors
        why = " ".join(str(e).split())[:300]
        raise UserError(
            f"{path}: state_dict does not fit the network its hyper_parameters.model describes ({why}). "
            "The file was altered or is not a vae-cli checkpoint; use another checkpoint of the run."
        ) from None
    return vae.to(map_location).eval(), ckpt.get("data_config")


def saved_datamodule(data_config: dict | None, path, trust=(), **overrides):
    """The datamodule a checkpoint's data config describes (a class inputs.TRUSTED or `trust` names)."""
    from .. import settings
    from ..errors import BadArgument
    from ..inputs import build

    if not data_config:
        raise UserError(f"{path} holds no data config (it was not written by vae-train), so its data is unknown.")
    try:  # the rules of vae-cli's datamodules, and what only the data can tell, named with the file
        settings.check_data(**{k: v for k, v in data_config.items() if k != "_target_"})
        datamodule = build(data_config, path, "data_config", trust, **overrides)
        datamodule.prepare_data()
        datamodule.setup()
    except BadArgument as e:
        raise UserError(f"{path}: " + e.named(lambda name: f"data_config.{name}")) from None
    except UserError as e:
        raise UserError(f"{path}: its data_config: {e}" if str(path) not in str(e) else str(e)) from None
    return datamodule


def check_compatible(module, ckpt: dict, path) -> None:
    """A checkpoint whose tensors do not fit the configured model, named parameter by parameter."""
    own = module.state_dict()
    theirs = ckpt["state_dict"]
    trained, here = ckpt["hyper_parameters"].get("model", {}), module.hparams["model"]
    changed = [k for k in sorted(set(trained) | set(here)) if trained.get(k) != here.get(k)]
    hint = "Resume with the model settings it was trained with" + (
        ": " + ", ".join(f"model.{k}={_show(trained.get(k))} (here {_show(here.get(k))})" for k in changed) + "."
        if changed
        else f" (its hyperparameters: {ckpt['hyper_parameters']})."
    )
    for name, tensor in theirs.items():
        if name in own and own[name].shape != tensor.shape:
            raise UserError(
                f"ckpt_path={str(path)!r} does not fit the configured model: parameter {name} has shape "
                f"{tuple(tensor.shape)} in the checkpoint and {tuple(own[name].shape)} here. {hint}"
            )
    missing, unexpected = sorted(set(own) - set(theirs)), sorted(set(theirs) - set(own))
    if missing or unexpected:
        raise UserError(
            f"ckpt_path={str(path)!r} does not fit the configured model: "
            f"{'missing ' + ', '.join(missing[:5]) if missing else ''}{'; ' if missing and unexpected else ''}"
            f"{'unexpected ' + ', '.join(unexpected[:5]) if unexpected else ''}. {hint}"
        )


# The settings that give a checkpoint's numbers their meaning: a run resumed with another value of one of these
# would mix two models' curves in one run directory (or score with another likelihood). Per saved config.
MEANING = {
    "model": ("likelihood", "gaussian_std"),
    "objective": ("iw_samples",),
    "data": (
        "_target_",
        "binarize",
        "val_size",
        "val_split",
        "split_seed",
        "test_size",
        "eval_binarize_numpy_seed",
        "image_size",
        "channels",
    ),
}


def check_same_meaning(ckpt: dict, here: dict, path) -> None:
    """Refuse to resume a checkpoint with settings that change what its numbers mean, naming each key, the value
    it was trained with and the value given here. here: {"model": ..., "objective": ..., "data": ...}, as saved."""
    from .. import settings

    saved = {
        "model": ckpt["hyper_parameters"].get("model") or {},
        "objective": ckpt["hyper_parameters"].get("objective") or {},
        "data": ckpt.get("data_config") or {},
    }
    changed = []
    for group, keys in MEANING.items():
        for key in keys:
            if (
                key == "gaussian_std"
                and settings.FAMILIES.get(here["model"].get("likelihood"), settings.Family()).std_floor is None
            ):
                continue  # a family without a std ignores it
            if key in saved[group] and key in here[group] and saved[group][key] != here[group][key]:
                changed.append(f"{group}.{key}={_show(here[group][key])} (trained with {_show(saved[group][key])})")
    if changed:
        raise UserError(
            f"ckpt_path={str(path)!r} was trained with other settings that change what its numbers mean: "
            f"{', '.join(changed)}. Resume it with the settings it was trained with (leave these keys "
            "out), or train a new run from the start."
        )


def _show(value) -> str:
    return str(value).replace(" ", "") if isinstance(value, (list, tuple)) else str(value)


def make_datamodule(data_config: dict, **overrides):
    """The datamodule the user's data config describes (its `_target_` and arguments)."""
    from hydra.utils import instantiate

    return instantiate({**data_config, **overrides}, _convert_="all")  # lists as lists, as from Python


def build_vae(model: dict):
    """The network the user's model config describes (data_shape included): its `_target_` class called with the
    other keys; an argument the class refuses is named with its key, model.<name>."""
    from hydra.utils import instantiate

    from .refusals import named

    return named("model", instantiate, model, _convert_="all")


def unresumable(ckpt_path: str, error: BaseException) -> UserError:
    """The user's error for a checkpoint whose training state does not load into the run (compat.raised_restoring)."""
    return UserError(
        f"ckpt_path={ckpt_path!r} cannot be resumed: its training state does not load into this "
        f"run ({' '.join(str(error).split())[:300] or type(error).__name__}). The file was altered, "
        "or is not a state of this run; resume from another checkpoint of the run (last.ckpt or "
        "interrupted.ckpt), or start a new run. Nothing in the run directory was changed."
    )
