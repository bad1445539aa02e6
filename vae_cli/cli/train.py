"""vae-train: compose the config, build data, model and trainer, fit, test, write metrics.json."""
import logging
import os
import shutil
import signal
import sys
import warnings
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from ..core.metrics import SUMMARY, best_val_key, run_summary
from ..errors import UserError
from ..training import signals
from ..training.signals import Interrupted
from . import slurm
from .errors import run_or_exit
from .loading import resolve_checkpoint
from . import run_files
from .run_dir import (RECORD, claim, first_process, forget_refused_record, outside_fault, record_failure,
                      release, resume_command)

log = logging.getLogger("vae_cli")


def _not_an_advertisement(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith("💡 Tip")  # Lightning's suggestion of a commercial service


def _not_a_new_experiment(record: logging.LogRecord) -> bool:
    # Lightning's MLflow logger warns when it creates its experiment, which the first run in a new store always does.
    return not str(record.msg).endswith("not found. Creating it.")


def _route_lightning_logs() -> None:
    # Lightning's loggers carry their own handler and do not propagate, so their lines would
    # miss the run's log file that Hydra sets up on the root logger.
    for name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric"):
        lg = logging.getLogger(name)
        lg.handlers.clear()
        lg.propagate = True
    rank_zero = logging.getLogger("pytorch_lightning.utilities.rank_zero")
    if _not_an_advertisement not in rank_zero.filters:
        rank_zero.addFilter(_not_an_advertisement)
    mlflow_logger = logging.getLogger("pytorch_lightning.loggers.mlflow")
    if _not_a_new_experiment not in mlflow_logger.filters:
        mlflow_logger.addFilter(_not_a_new_experiment)
    # In-memory data is batched by index in the main process, where workers would only add cost.
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    # Lightning's hint to start it with srun, on any machine where srun exists: vae-train's own README says when.
    warnings.filterwarnings("ignore", message=".*The `srun` command is available on your system but is not used.*")
    # Lightning warns about its own use of a deprecated torch internal; nothing for users to do.
    warnings.filterwarnings("ignore", message=".*isinstance\\(treespec, LeafSpec\\)` is deprecated.*")


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


def _hparams_loggers(trainer, cfg: DictConfig) -> list:
    """Log the run's settings; returns the loggers that take its final metrics as HPARAMS columns.

    TensorBoard shows the first HPARAMS session a run directory holds, so a later invocation (a resume)
    writes its own in its record folder, .hydra/<date>_<time>/: a row of its own with its settings and
    its final metrics, beside the first part's row. The HPARAMS tab lists a metric only when it is
    declared with the settings, before it is logged; hp/ tags keep that placeholder out of the curves."""
    from pytorch_lightning.loggers import TensorBoardLogger

    settings = hparams_of(cfg)
    declared = {f"hp/{m.replace('/', '_')}": float("nan") for m in run_summary(_monitor(cfg))}
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


def setup(cfg: DictConfig):
    """The run's datamodule, module and trainer, and the checkpoint it resumes from (or None): everything
    that can refuse the run, checked before anything is written."""
    from .checks import binarizes, check_fits_data, check_train_config, optimizer_and_schedule

    check_train_config(cfg)  # before Lightning is imported: a mistyped value is named in a few seconds
    optimizer, scheduler = optimizer_and_schedule(cfg)
    check_logger_packages(cfg)
    import pytorch_lightning as pl  # imported here, not at the top, so `vae-train --help` starts fast
    from pytorch_lightning.callbacks import LearningRateMonitor
    from pytorch_lightning.loggers import TensorBoardLogger
    from pytorch_lightning.plugins.environments import SLURMEnvironment

    from pytorch_lightning.callbacks import Timer

    from ..core.likelihoods import LIKELIHOODS
    from ..training.callbacks import EMA, TENSORBOARD_ONLY, NonFiniteGuard, ProgressBar, RNGState
    from ..training.checkpointing import AtomicCheckpointIO
    from ..training.interruption import Interruption
    from ..training.module import VAEModule
    from .loading import check_compatible, make_datamodule, newest_state, read_checkpoint

    _route_lightning_logs()
    slurm.follow_cpus_per_task()
    ckpt_path = str(resolve_checkpoint(cfg.ckpt_path, default_name=None)) if cfg.ckpt_path is not None else None
    if ckpt_path is None and slurm.restarted():  # SLURM started this job again: it continues where it stopped
        saved = newest_state(Path(cfg.run_dir))
        ckpt_path = str(saved) if saved else None
    pl.seed_everything(cfg.seed, workers=True, verbose=False)

    def settings(group: str) -> dict:
        return OmegaConf.to_container(cfg[group], resolve=True)

    binarize = binarizes(cfg)
    datamodule = make_datamodule(settings("data"), binarize=binarize, seed=cfg.seed)
    datamodule.prepare_data()
    datamodule.setup("fit")  # loads and splits now, so data problems stop the run before training
    check_fits_data(LIKELIHOODS[cfg.model.likelihood], datamodule.head("train", 1000)[0], binarize)
    model = settings("model")
    init_output_bias = model.pop("init_output_bias", False)  # an action at start-up, not a setting of the network
    module = VAEModule(model={**model, "data_shape": list(datamodule.shape)}, objective=settings("objective"),
                       optimizer=optimizer, scheduler=scheduler, normalize_grads=cfg.optim.normalize_grads,
                       monitor=_monitor(cfg) or "val/elbo")
    if ckpt_path is not None:
        # Read it here (weights only: no code from the file runs), so a corrupt or mismatching
        # checkpoint stops the run with the parameter named, before anything is written.
        check_compatible(module, read_checkpoint(Path(ckpt_path)), ckpt_path)
    elif init_output_bias:
        module.vae.init_output_bias(datamodule.train_pixel_mean())
    # Saved in every checkpoint, so vae-eval and vae-sample can rebuild the data from the file alone.
    data_config = {**settings("data"), "binarize": binarize}
    for key in ("data_dir", "path"):  # absolute, so the checkpoint finds its data from any directory
        if isinstance(data_config.get(key), str):
            data_config[key] = str(Path(data_config[key]).expanduser().resolve())
    module.data_config = data_config
    if cfg.compile:
        # In place (nn.Module.compile), so parameter names and checkpoints are unchanged.
        module.vae.encoder.compile()
        module.vae.decoder.compile()
    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values()]
    callbacks = [cb for cb in (instantiate(c) for c in cfg.callbacks.values()) if getattr(cb, "active", True)]
    if not any(isinstance(lg, TensorBoardLogger) for lg in loggers):
        skipped = [cb for cb in callbacks if isinstance(cb, TENSORBOARD_ONLY)]
        if skipped:
            log.info("no TensorBoard logger (logger=[%s]): the image grids, KL histograms and latent projector are "
                     "skipped", ",".join(cfg.get("logger") or {}))
            callbacks = [cb for cb in callbacks if cb not in skipped]
    if scheduler is not None and loggers:  # the learning rate follows a schedule: log it (lr-Adam)
        callbacks.append(LearningRateMonitor(logging_interval="epoch"))
    # The weight average last: the diagnostics' validation-end hooks run while its weights are swapped in.
    callbacks = [NonFiniteGuard(), RNGState(), *sorted(callbacks, key=lambda cb: isinstance(cb, EMA))]
    if cfg.trainer.get("enable_progress_bar", True):
        callbacks.append(ProgressBar())
    if cfg.trainer.get("max_time") is None:
        # Training time over every start of the run (its elapsed time travels in checkpoints); with max_time,
        # Lightning's own Timer counts it the same way.
        callbacks.append(Timer(duration=None))
    callbacks.append(Interruption(Path(cfg.run_dir) / "checkpoints"))  # a Checkpoint: after the run's own
    if cfg.get("search", {}).get("trial") is not None:  # a trial of hparams_search=optuna
        from ..training.callbacks import Pruning
        from .study import trial_reporter

        callbacks.append(Pruning(trial_reporter(cfg.search.trial), _monitor(cfg) or "val/elbo"))
    plugins = [AtomicCheckpointIO()]
    if SLURMEnvironment.detect():  # Interruption handles SLURM's signals, not Lightning's handler (cli/slurm.py)
        plugins.append(SLURMEnvironment(auto_requeue=False))
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers, plugins=plugins)
    return datamodule, module, trainer, ckpt_path


def fit(cfg: DictConfig) -> dict:
    """Train and test one run; returns the metrics written to metrics.json."""
    run_dir = Path(cfg.run_dir)
    signals.reset()
    signals.catch()
    try:
        lock = claim(run_dir)
    except UserError:
        forget_refused_record()
        raise
    try:
        metrics = _fit(cfg, run_dir)
        signals.finished()
        return metrics
    except Interrupted as stop:
        _stopped(cfg, run_dir, stop)
        raise SystemExit(128 + stop.signum) from None  # the shell's convention for a process ended by a signal
    except Exception as error:  # a UserError or a bug; a signal's stop is not a failure
        fault = outside_fault(error, run_dir)  # a refused write or a vanished directory: one message
        record_failure(run_dir, fault)
        if fault is error:
            raise
        raise fault from error
    finally:
        release(lock)


def _stopped(cfg: DictConfig, run_dir: Path, stop: Interrupted) -> None:
    """A run a signal stopped: requeue its SLURM job when asked to (SIGUSR1, requeue=true, a batch job), and say
    in interrupted.json and in one line of the log where it stopped, what holds its state, whether SLURM runs it
    again, and otherwise the command that resumes it. Once, from the first process of a data-parallel run."""
    from ..training.files import write_json
    from .loading import newest_state

    if not first_process():
        return
    requeued, why = False, None
    if stop.signum == signal.SIGUSR1 and cfg.requeue:
        requeued, why = slurm.requeue()  # after Lightning has shut down: SLURM then ends the job with a SIGTERM
    elif slurm.batch_job() is not None:
        requeued = slurm.requeued_from_outside()  # scontrol requeue, or a preemption that requeues
    ckpt = stop.checkpoint or newest_state(run_dir)
    command = resume_command(ckpt)
    where = (f"after epoch {stop.epoch} (step {stop.global_step})" if stop.epoch_finished else
             f"in epoch {stop.epoch} at step {stop.global_step}" if stop.checkpoint else stop.where)
    write_json(run_dir / run_files.STOP, {
        "signal": stop.name, "stopped": where, "epoch": stop.epoch, "global_step": stop.global_step,
        "checkpoint": str(ckpt) if ckpt else None, "resume": command, "requeued": requeued})
    state = (f"the exact state is in {stop.checkpoint}" if stop.checkpoint else
             f"nothing new to save; the run's state is {ckpt}" if ckpt else "nothing was saved")
    if requeued:
        then = ("SLURM has requeued the job: waiting for SLURM to restart it (it holds a requeued job for about two "
                "minutes), then it resumes from there. To resume it yourself instead, cancel the job, then: ")
    else:
        then = f"Could not requeue the SLURM job ({why}). Resume with: " if why else "Resume with: "
    log.info("%s: stopped %s; %s. %s%s", stop.name, where, state, then, command)


def _fit(cfg: DictConfig, run_dir: Path) -> dict:
    from pytorch_lightning.callbacks import ModelCheckpoint, Timer
    from pytorch_lightning.loggers import WandbLogger

    from ..training.files import write_json

    try:
        datamodule, module, trainer, ckpt_path = setup(cfg)
    except UserError:
        forget_refused_record()
        raise
    if trainer.strategy.root_device.type == "cpu":
        # Lightning asks torch to test for CUDA through NVML (fork safety); without a GPU that test
        # is not cached and costs a library load on every optimiser step. Nothing forks CUDA here.
        os.environ.pop("PYTORCH_NVML_BASED_CUDA_CHECK", None)
    hydra_cfg = HydraConfig.get()
    where = Path(hydra_cfg.sweep.dir if hydra_cfg.mode == RunMode.MULTIRUN else run_dir)
    curves = "outputs" if where.resolve().is_relative_to(Path("outputs").resolve()) else str(where)
    shown = os.path.relpath(run_dir) if run_dir.resolve().is_relative_to(Path.cwd()) else run_dir
    log.info("run directory: %s   (curves: tensorboard --logdir %s)", shown, curves)
    if ckpt_path is not None:
        log.info("resuming %s", ckpt_path)
    hparams_loggers = _hparams_loggers(trainer, cfg)
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    except Interrupted as stop:
        stop.where = stop.where or "before training"  # a stop in training says where it saved
        raise
    timer = next(cb for cb in trainer.callbacks if isinstance(cb, Timer))
    train_seconds = timer.time_elapsed("train")  # over every start of the run
    pruned = next((cb.pruned_at for cb in trainer.callbacks if getattr(cb, "pruned_at", None)), None)
    if pruned is not None:
        return _pruned(cfg, trainer, run_dir, *pruned)

    chosen = next((cb for cb in trainer.checkpoint_callbacks if isinstance(cb, ModelCheckpoint) and cb.monitor), None)
    best = chosen.best_model_path if chosen else ""
    try:
        (test_metrics,) = trainer.test(module, datamodule=datamodule, ckpt_path=best or None, verbose=False,
                                       weights_only=True)
    except Interrupted as stop:
        stop.where = "after training, in the final test"
        raise
    best_score = chosen.best_model_score if chosen else None
    summary = run_summary(_monitor(cfg))  # its last name is the best validation value's
    metrics = {
        **{k: float(v) for k, v in sorted(test_metrics.items())},
        summary[-1]: float(best_score) if best_score is not None else None,
        "best_checkpoint": os.path.relpath(best, run_dir) if best else None,
        "epochs": trainer.current_epoch,
        "global_step": trainer.global_step,
        "seed": cfg.seed,
    }
    for lg in hparams_loggers:
        lg.log_metrics({f"hp/{m.replace('/', '_')}": metrics[m] for m in summary if metrics[m] is not None},
                       step=trainer.global_step)
    for lg in [*trainer.loggers, *(lg for lg in hparams_loggers if lg not in trainer.loggers)]:
        lg.finalize("success")
        if isinstance(lg, WandbLogger):
            lg.experiment.finish()  # Lightning leaves the W&B run open until the process exits
    if trainer.is_global_zero:  # one writer when several processes train (DDP)
        # metrics.json holds only what the seed determines (same seed, same file); wall time goes beside it.
        write_json(run_dir / run_files.METRICS, metrics)
        write_json(run_dir / run_files.TIMING, {"train_seconds": round(train_seconds, 3)})
    shown = [m for m in (*SUMMARY, "iwae") if f"test/{m}" in metrics]  # iwae: trained on k > 1 samples
    log.info("test: %s  (%s)", "  ".join(f"{m} {metrics[f'test/{m}']:.4f}" for m in shown), run_dir / run_files.METRICS)
    return metrics


def _monitor(cfg: DictConfig) -> str | None:
    """The metric best.ckpt is chosen on (None when the run keeps no best checkpoint)."""
    return (cfg.callbacks.get("model_checkpoint") or {}).get("monitor")


def _pruned(cfg: DictConfig, trainer, run_dir: Path, epoch: int, value: float) -> dict:
    """A trial that the search's pruner stopped: no test, no metrics.json; pruned.json says when and why."""
    from ..training.checkpointing import write_json

    monitor = _monitor(cfg) or "val/elbo"
    record = {"trial": cfg.search.trial, "epoch": epoch, "monitor": monitor, "value": value,
              "global_step": trainer.global_step}
    for lg in trainer.loggers:
        lg.finalize("success")
    if trainer.is_global_zero:
        write_json(run_dir / run_files.PRUNED, record)
    log.info("pruned by the search after epoch %d (%s %.4f): trial %s stops here (%s)", epoch, monitor, value,
             cfg.search.trial, run_dir / run_files.PRUNED)
    return {"pruned": record}


class SweepSummary(Callback):
    """Says where a sweep goes when it starts, and how to read it when it ends."""

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        print(f"vae-train: sweep directory {config.hydra.sweep.dir} (one run directory per job)", flush=True)

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        sweep = config.hydra.sweep.dir
        print(f"vae-train: sweep done: vae-report {sweep}   (curves: tensorboard --logdir {sweep})", flush=True)


@hydra.main(version_base="1.3", config_path="pkg://vae_cli.configs", config_name="train")
def train(cfg: DictConfig) -> float:
    """Hydra's task function; returns the best value of the checkpoint's monitor (the validation ELBO by default)
    so any sweeper can optimise what the run itself selects on."""
    metrics = run_or_exit("vae-train", fit, cfg)
    if "pruned" in metrics:
        from .study import Pruned

        return Pruned(metrics["pruned"]["epoch"], metrics["pruned"]["value"])
    best = metrics.get(best_val_key(_monitor(cfg)))
    return best if best is not None else metrics["test/elbo"]


# What a choice on the command line needs beyond the main install: (argument prefix, module, how to get it).
OPTIONAL = [
    ("hparams_search=optuna", "optuna", "Optuna"),
    ("hydra/launcher=joblib", "hydra_plugins.hydra_joblib_launcher", "Hydra's joblib launcher plugin"),
    ("hydra/launcher=slurm", "hydra_plugins.hydra_submitit_launcher", "Hydra's submitit launcher plugin"),
]


# Loggers that need a package beyond the main install: logger=<name> -> (module, what, the extra that installs it).
LOGGER_PACKAGES = {"mlflow": ("mlflow", "MLflow", "mlflow"), "wandb": ("wandb", "Weights & Biases (wandb)", "wandb")}


def _installed(module: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # its parent package is missing too
        return False


def check_logger_packages(cfg: DictConfig) -> None:
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
    """A YAML file in the user's config folder that does not parse: named with its line and column and the
    parser's reason, before Hydra reports it with a traceback."""
    import yaml

    for folder in _config_dirs(argv):
        for f in sorted(folder.rglob("*.yaml")) if folder.is_dir() else []:
            try:
                yaml.safe_load(f.read_text())
            except yaml.MarkedYAMLError as e:
                mark = e.problem_mark or e.context_mark
                at = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
                raise UserError(f"{f}{at}: not valid YAML ({e.problem or e.context}). Fix that line of the file, "
                                "then run the command again.") from None
            except yaml.YAMLError as e:  # an error without a position
                raise UserError(f"{f}: not valid YAML ({' '.join(str(e).split())}).") from None


def main() -> None:
    signals.catch()  # before Hydra and the imports: a signal from the start ends the command cleanly
    try:
        run_or_exit("vae-train", check_optional_parts, sys.argv[1:])
        run_or_exit("vae-train", check_config_files, sys.argv[1:])
        train()
    except Interrupted as stop:  # before a run began (composing the config), or between the jobs of a sweep
        print(f"vae-train: stopped by {stop.name}", file=sys.stderr)
        raise SystemExit(128 + stop.signum) from None
    signals.ignore()


if __name__ == "__main__":
    main()
