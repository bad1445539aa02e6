"""TensorBoard's HPARAMS tab (and the other loggers' settings): every setting of a run as a column, and its final
metrics declared beside them."""
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from ..core.metrics import run_summary
from .run_dir import RECORD


# Settings that say where a run writes and how it survives a fault, not how it was made: left out of HPARAMS (so
# are the loggers').
WHERE = ("run_dir", "ckpt_path", "requeue", "data.data_dir", "trainer.default_root_dir")


def hparams_of(cfg: DictConfig) -> dict:
    """Every setting of the composed config as a flat scalar (a.b.c: value) for TensorBoard's HPARAMS tab, one
    row per run, so whatever differs between the runs of a sweep is a column; and the config groups chosen."""
    flat = {group: choice for group, choice in HydraConfig.get().runtime.choices.items()
            if not group.startswith("hydra") and choice is not None}
    flat["logger"] = ",".join(cfg.get("logger") or {})  # Hydra lists no choice for several (logger=[tensorboard,csv])

    def walk(prefix: str, node) -> None:
        for key, value in node.items():
            name = f"{prefix}{key}"
            if isinstance(value, dict):
                walk(f"{name}.", value)
            elif (not key.startswith("_") and name not in WHERE and not name.startswith("logger.")
                  and not name.endswith(("dirpath", "save_dir"))):
                flat[name] = value if isinstance(value, (int, float, str, bool)) else str(value)

    walk("", OmegaConf.to_container(cfg, resolve=True))
    return flat


def loggers_of(trainer, cfg: DictConfig, monitor: str | None) -> list:
    """Log the run's settings; returns the loggers that take its final metrics as HPARAMS columns.

    TensorBoard shows the first HPARAMS session a run directory holds, so a later invocation (a resume)
    writes its own in its record folder, .hydra/<date>_<time>/: a row of its own with its settings and
    its final metrics, beside the first part's row. The HPARAMS tab lists a metric only when it is
    declared with the settings, before it is logged; hp/ tags keep that placeholder out of the curves."""
    from pytorch_lightning.loggers import TensorBoardLogger

    settings = hparams_of(cfg)
    declared = {f"hp/{m.replace('/', '_')}": float("nan") for m in run_summary(monitor)}
    hydra = HydraConfig.get()
    later = hydra.output_subdir not in (None, RECORD)
    out = []
    for lg in trainer.loggers:
        if not isinstance(lg, TensorBoardLogger):
            lg.log_hyperparams(settings)
            out.append(lg)
        elif later:
            own = TensorBoardLogger(save_dir=Path(hydra.runtime.output_dir) / hydra.output_subdir, name="", version="",
                                    default_hp_metric=False)
            own.log_hyperparams(settings, declared)
            out.append(own)
        else:
            lg.log_hyperparams(settings, declared)
            out.append(lg)
    return out
