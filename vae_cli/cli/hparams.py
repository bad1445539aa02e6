"""TensorBoard's HPARAMS tab (and the other loggers' settings): every setting of a run as a column, and its final
metrics declared beside them."""

from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from ..compat import event_file_writer
from ..core.metrics import MONITOR, run_summary
from .run_dir import RECORD
from .secrets import mask

# Settings that say where a run writes and how it survives a fault, not how it was made: left out of HPARAMS (so
# are the loggers').
WHERE = ("run_dir", "ckpt_path", "requeue", "data.data_dir", "trainer.default_root_dir")


def hparams_of(cfg: DictConfig) -> dict:
    """Every setting of the composed config as a flat scalar (a.b.c: value) for TensorBoard's HPARAMS tab, one
    row per run, so whatever differs between the runs of a sweep is a column; and the config groups chosen."""
    flat = {
        group: choice
        for group, choice in HydraConfig.get().runtime.choices.items()
        if not group.startswith("hydra") and choice is not None
    }
    flat["logger"] = ",".join(cfg.get("logger") or {})  # Hydra lists no choice for several (logger=[tensorboard,csv])

    def walk(prefix: str, node) -> None:
        for key, value in node.items():
            name = f"{prefix}{key}"
            if isinstance(value, dict):
                walk(f"{name}.", value)
            elif (
                not key.startswith("_")
                and name not in WHERE
                and not name.startswith("logger.")
                and not name.endswith(("dirpath", "save_dir"))
            ):
                flat[name] = value if isinstance(value, (int, float, bool)) else mask(str(value))

    walk("", OmegaConf.to_container(cfg, resolve=True))
    return flat


def best_tag(monitor: str | None) -> str:
    """TensorBoard's tag for the best validation value, the one number a run of a sweep is selected on:
    val/elbo_best beside the val/elbo curve."""
    return f"{monitor or MONITOR}_best"


def tensorboard_metrics(monitor: str | None) -> list[str]:
    """The HPARAMS tab's metric columns: the test stage's own scalars (no curves of their own), and the best
    validation value."""
    return [*(m for m in run_summary(monitor) if m.startswith("test/")), best_tag(monitor)]


def declare(logger, settings: dict, metrics: list[str]) -> None:
    """One HPARAMS session in a TensorBoard run: its settings, and the tags of the scalars that hold its metrics.
    Lightning's own log_hyperparams would log each declared metric as a NaN at step 0, a card of its own."""
    from torch.utils.tensorboard.summary import hparams

    experiment, start, end = hparams(settings, dict.fromkeys(metrics, 0.0))  # only the metrics' names are written
    writer = event_file_writer(logger.experiment)  # as Lightning's TensorBoardLogger writes the same summaries
    if writer is None:  # a data-parallel process after the first: its logger writes nothing
        return
    for summary in (experiment, start, end):
        writer.add_summary(summary)
    logger.hparams.update(settings)  # Lightning's logger writes them to hparams.yaml beside the event files


def loggers_of(trainer, cfg: DictConfig, monitor: str | None, provenance: dict | None = None) -> list:
    """Log the run's settings (with the versions and commits of its provenance record, so that a sweep across
    versions is a column); returns the loggers that take its final metrics (log_final).

    TensorBoard shows the first HPARAMS session a run directory holds, so a later invocation (a resume)
    writes its own in its record folder, .hydra/<date>_<time>/: a row of its own with its settings and
    its final metrics, beside the first part's row."""
    from pytorch_lightning.loggers import TensorBoardLogger

    from .provenance import settings as provenance_settings

    settings = {**hparams_of(cfg), **(provenance_settings(provenance) if provenance else {})}
    hydra = HydraConfig.get()
    later = hydra.output_subdir not in (None, RECORD)
    out = []
    for lg in trainer.loggers:
        if not isinstance(lg, TensorBoardLogger):
            lg.log_hyperparams(settings)
            out.append(lg)
            continue
        if later:
            lg = TensorBoardLogger(
                save_dir=Path(hydra.runtime.output_dir) / hydra.output_subdir,
                name="",
                version="",
                default_hp_metric=False,
            )
        declare(lg, settings, tensorboard_metrics(monitor))
        out.append(lg)
    return out


def log_final(loggers: list, trainer, metrics: dict, monitor: str | None) -> None:
    """A run's final metrics in the loggers of loggers_of: in TensorBoard under the tags HPARAMS declared (the
    run's own test/ scalars are already there, except in a resume's own record folder), elsewhere as hp/ settings'
    results."""
    from pytorch_lightning.loggers import TensorBoardLogger

    summary = [m for m in run_summary(monitor) if metrics.get(m) is not None]
    for lg in loggers:
        if isinstance(lg, TensorBoardLogger):
            own = lg not in trainer.loggers  # a resume's record folder holds no test scalars of its own
            best = metrics.get(run_summary(monitor)[-1])
            values = {m: metrics[m] for m in summary if own and m.startswith("test/")}
            if best is not None:
                values[best_tag(monitor)] = best
            lg.log_metrics(values, step=trainer.global_step)
        else:
            lg.log_metrics({f"hp/{m.replace('/', '_')}": metrics[m] for m in summary}, step=trainer.global_step)
