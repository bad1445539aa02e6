"""vae-train: compose the config, build data, model and trainer, fit, test, write metrics.json."""

import contextlib
import logging
import os
import sys
import warnings
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from ..compat import raised_restoring
from ..core.metrics import SUMMARY, best_val_key, run_summary
from ..errors import UserError
from ..training import signals
from ..training.signals import Interrupted
from . import hparams, run_files, slurm
from .checks import TRAIN_RULES
from .errors import command, exit_without_collecting, own_message, run_or_exit
from .loading import resolve_checkpoint
from .run_dir import claim, first_process, forget_refused_record, outside_fault, record_failure, record_stop, release
from .secrets import mask_log_lines
from .startup import (
    check_callback_choices,
    check_command_line_values,
    check_config_files,
    check_logger_packages,
    check_optional_parts,
)
from .sweep.jobs import JobFailed

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
    # On every resume: the run's own checkpoints are there, as they should be.
    warnings.filterwarnings("ignore", message=".*Checkpoint directory .* exists and is not empty.*")
    # Lightning warns about its own use of a deprecated torch internal; nothing for users to do.
    warnings.filterwarnings("ignore", message=".*isinstance\\(treespec, LeafSpec\\)` is deprecated.*")


def setup(cfg: DictConfig):
    """The run's datamodule, module and trainer, and the checkpoint it resumes from (or None): everything
    that can refuse the run, checked before anything is written."""
    from .checks import binarizes, check_fits_data, named, optimizer_and_schedule

    optimizer, scheduler = optimizer_and_schedule(cfg)
    check_logger_packages(cfg)
    import pytorch_lightning as pl  # imported here, not at the top, so `vae-train --help` starts fast
    from pytorch_lightning.callbacks import LearningRateMonitor, Timer
    from pytorch_lightning.loggers import TensorBoardLogger
    from pytorch_lightning.plugins.environments import SLURMEnvironment

    from ..data import BaseDataModule
    from ..data.lightning import LightningData
    from ..training.callbacks import EMA, TENSORBOARD_ONLY, EpochLines, NonFiniteGuard, ProgressBar, RNGState
    from ..training.checkpointing import AtomicCheckpointIO
    from ..training.interruption import Interruption
    from ..training.module import VAEModule
    from ..training.objective import Objective
    from .loading import build_vae, check_compatible, check_same_meaning, make_datamodule, newest_state, read_checkpoint

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
    datamodule = named("data", make_datamodule, settings("data"), binarize=binarize, seed=cfg.seed)
    if not isinstance(datamodule, BaseDataModule):
        raise UserError(
            f"data._target_={cfg.data._target_!r} does not build a datamodule (a {type(datamodule).__name__}); "
            "name a subclass of vae_cli.data.BaseDataModule."
        )
    datamodule.prepare_data()
    datamodule.setup("fit")  # loads and splits now, so data problems stop the run before training
    check_fits_data(cfg.model.likelihood, datamodule.head("train", 1000)[0], binarize)
    # Saved in every checkpoint, so vae-eval and vae-sample can rebuild the data from the file alone.
    data_config = {**settings("data"), "binarize": binarize}
    for key in ("data_dir", "path"):  # absolute, so the checkpoint finds its data from any directory
        if isinstance(data_config.get(key), str):
            data_config[key] = str(Path(data_config[key]).expanduser().resolve())
    model = {**settings("model"), "data_shape": list(datamodule.shape)}
    module = VAEModule(
        build_vae(model),
        model,
        Objective(**settings("objective")),
        optimizer=optimizer,
        scheduler=scheduler,
        normalize_grads=cfg.optim.normalize_grads,
        monitor=_monitor(cfg) or "val/elbo",
        data_config=data_config,
    )
    if ckpt_path is not None:
        # Read it here (weights only: no code from the file runs), so a corrupt or mismatching
        # checkpoint stops the run with the parameter named, before anything is written.
        ckpt = read_checkpoint(Path(ckpt_path), trust=(cfg.model.get("_target_"), cfg.data.get("_target_")))
        check_same_meaning(
            ckpt, {"model": model, "objective": module.hparams["objective"], "data": data_config}, ckpt_path
        )
        check_compatible(module, ckpt, ckpt_path)
    elif getattr(module.vae, "starts_at_data_mean", False):  # model.init_output_bias (a user's network may lack it)
        module.vae.init_output_bias(datamodule.train_pixel_mean())
    if cfg.compile:
        # In place (nn.Module.compile), so parameter names and checkpoints are unchanged.
        module.vae.encoder.compile()
        module.vae.decoder.compile()
    loggers = [named(f"logger.{name}", instantiate, c) for name, c in (cfg.get("logger") or {}).items()]
    callbacks = [named(f"callbacks.{name}", instantiate, c) for name, c in cfg.callbacks.items()]
    if not any(isinstance(lg, TensorBoardLogger) for lg in loggers):
        skipped = [cb for cb in callbacks if isinstance(cb, TENSORBOARD_ONLY)]
        if skipped:
            log.info(
                "no TensorBoard logger (logger=[%s]): the image grids, KL histograms and latent projector are skipped",
                ",".join(cfg.get("logger") or {}),
            )
            callbacks = [cb for cb in callbacks if cb not in skipped]
    if scheduler is not None and loggers:  # the learning rate follows a schedule: log it (lr-Adam)
        callbacks.append(LearningRateMonitor(logging_interval="epoch"))
    # The weight average last: the diagnostics' validation-end hooks run while its weights are swapped in.
    callbacks = [NonFiniteGuard(), RNGState(), *sorted(callbacks, key=lambda cb: isinstance(cb, EMA))]
    # No bar (trainer.enable_progress_bar=false): still a line per epoch in the log, as where there is no terminal.
    callbacks.append(ProgressBar() if cfg.trainer.get("enable_progress_bar", True) else EpochLines())
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
    if slurm.in_slurm():  # Interruption handles SLURM's signals, not Lightning's handler (cli/slurm.py)
        plugins.append(SLURMEnvironment(auto_requeue=False))
    trainer = named("trainer", instantiate, cfg.trainer, callbacks=callbacks, logger=loggers, plugins=plugins)
    return LightningData(datamodule), module, trainer, ckpt_path


def fit(cfg: DictConfig) -> dict:
    """Train and test one run; returns the metrics written to metrics.json."""
    from .checks import check_train_config

    run_dir = Path(cfg.run_dir)
    mask_log_lines()  # again: a job of a sweep may run in a process of its own (joblib, SLURM)
    if not first_process():  # a data-parallel run's other processes: their lines would repeat the first's
        logging.getLogger("vae_cli").setLevel(logging.WARNING)
    signals.reset()
    signals.catch()
    try:
        check_train_config(cfg)  # before torch is imported: a mistyped value is named at once
    except UserError as refusal:  # a job of a sweep (a single run is refused before its directory is made)
        record_failure(run_dir, refusal)  # the sweep's table reads why
        raise
    try:
        lock = claim(run_dir)
    except UserError:
        forget_refused_record()
        raise
    try:
        record = _provenance(run_dir)
    except BaseException:
        release(lock)
        raise
    outcome = "failed"
    try:
        metrics = _fit(cfg, run_dir, record)
        signals.finished()
        outcome = "pruned" if "pruned" in metrics else "finished"
        return metrics
    except Interrupted as stop:
        outcome = f"stopped by {stop.name}"
        record_stop(cfg, run_dir, stop)
        raise SystemExit(128 + stop.signum) from None  # the shell's convention for a process ended by a signal
    except Exception as error:  # a UserError or a bug; a signal's stop is not a failure
        fault = outside_fault(error, run_dir)  # a refused write or a vanished directory: one message
        record_failure(run_dir, fault)
        if fault is error:
            raise
        raise fault from error
    finally:
        if record is not None and record.path.parent.is_dir():  # not for an invocation refused (its record withdrawn)
            # A full disk: the error that ended the run still reaches the user.
            with contextlib.suppress(OSError, UserError):
                record.end(outcome)
        release(lock)


def _provenance(run_dir: Path):
    """This invocation's provenance record, beside Hydra's record of its config (none in the processes after the
    first of a data-parallel run, which keep no record)."""
    from .provenance import Provenance

    hydra = HydraConfig.get()
    if hydra.output_subdir is None or not first_process():
        return None
    folder = run_dir / hydra.output_subdir
    try:
        return Provenance(folder, cwd=Path(hydra.runtime.cwd))
    except (OSError, UserError) as e:  # a full disk, say: the run goes on, and stops where it must write what it cannot
        log.warning("no provenance record: %s", e)
        return None


def _fit(cfg: DictConfig, run_dir: Path, record) -> dict:
    from pytorch_lightning.callbacks import ModelCheckpoint, Timer
    from pytorch_lightning.loggers import WandbLogger

    from ..writers.files import write_json

    try:
        datamodule, module, trainer, ckpt_path = setup(cfg)
    except UserError:
        forget_refused_record()
        raise
    if record is not None:
        record.device(str(trainer.strategy.root_device))
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
    hparams_loggers = hparams.loggers_of(trainer, cfg, _monitor(cfg), record.record if record else None)
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    except Exception as error:
        if type(error).__name__ == "MisconfigurationException":  # Lightning refusing a setting as it meets it
            from .checks import misconfigured

            raise UserError(misconfigured(cfg, error)) from None
        if ckpt_path is not None and raised_restoring(error):
            forget_refused_record()
            raise UserError(
                f"ckpt_path={ckpt_path!r} cannot be resumed: its training state does not load into this "
                f"run ({' '.join(str(error).split())[:300] or type(error).__name__}). The file was altered, "
                "or is not a state of this run; resume from another checkpoint of the run (last.ckpt or "
                "interrupted.ckpt), or start a new run. Nothing in the run directory was changed."
            ) from None
        raise
    timer = next(cb for cb in trainer.callbacks if isinstance(cb, Timer))
    train_seconds = timer.time_elapsed("train")  # over every start of the run
    pruned = next((cb.pruned_at for cb in trainer.callbacks if getattr(cb, "pruned_at", None)), None)
    if pruned is not None:
        return _pruned(cfg, trainer, run_dir, *pruned)

    chosen = next((cb for cb in trainer.checkpoint_callbacks if isinstance(cb, ModelCheckpoint) and cb.monitor), None)
    best = chosen.best_model_path if chosen else ""
    (test_metrics,) = trainer.test(
        module, datamodule=datamodule, ckpt_path=best or None, verbose=False, weights_only=True
    )
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
    hparams.log_final(hparams_loggers, trainer, metrics, _monitor(cfg))
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
    from ..writers.files import write_json

    monitor = _monitor(cfg) or "val/elbo"
    record = {
        "trial": cfg.search.trial,
        "epoch": epoch,
        "monitor": monitor,
        "value": value,
        "global_step": trainer.global_step,
    }
    for lg in trainer.loggers:
        lg.finalize("success")
    if trainer.is_global_zero:
        write_json(run_dir / run_files.PRUNED, record)
    log.info(
        "pruned by the search after epoch %d (%s %.4f): trial %s stops here (%s)",
        epoch,
        monitor,
        value,
        cfg.search.trial,
        run_dir / run_files.PRUNED,
    )
    return {"pruned": record}


class CheckedSettings(Callback):
    """A run's settings checked before Hydra makes its directory: a refused command leaves nothing behind. (The
    jobs of a sweep check theirs as they start.)"""

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        from .. import settings as rules
        from .checks import check_train_config
        from .errors import fail

        why = rules.folder_key("hydra.run.dir", config.hydra.run.dir, must_exist=False)
        if why:
            fail("vae-train", f"{why}.")
        HydraConfig.instance().set_config(config)  # as Hydra does when it starts the run: ${hydra:...} resolves
        settings = OmegaConf.masked_copy(config, [k for k in config if k != "hydra"])
        settings.run_dir = config.hydra.run.dir  # hydra.runtime.output_dir is set once Hydra makes the directory
        run_or_exit("vae-train", check_train_config, settings)


class SweepSummary(Callback):
    """Says where a sweep goes when it starts; when it ends, finished or not, prints its table (vae-report's, which
    also writes report.md, report.csv and the figures into the sweep directory) and where to see its curves, and
    says whether every job finished."""

    started: str | None = None  # the sweep directory of the sweep this process runs, until its table is printed
    unfinished: str | None = None  # what the command ends with when a job did not finish
    search = False  # hparams_search=optuna: the study, not the folders, says how its trials ended (a retried one)

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        SweepSummary.started, SweepSummary.unfinished = str(config.hydra.sweep.dir), None
        SweepSummary.search = "vae_cli_search" in str(config.hydra.sweeper.get("_target_"))
        print(f"vae-train: sweep directory {config.hydra.sweep.dir} (one run directory per job)", flush=True)

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        summarize_sweep(finished=True)


def summarize_sweep(finished: bool) -> None:
    """The table of the sweep this process ran (once); SweepSummary.unfinished says when a job did not finish."""
    import importlib.util

    from . import report
    from .sweep.jobs import read_sweep

    sweep, SweepSummary.started = SweepSummary.started, None
    if sweep is None:
        return
    said = "sweep done" if finished else "sweep stopped"
    print(f"vae-train: {said}: {sweep}   (curves: tensorboard --logdir {sweep})", flush=True)
    figures = [] if importlib.util.find_spec("matplotlib") else ["--no-figures"]
    try:
        report.report(report.parse_args([sweep, *figures]))
        unfinished = [j for j in read_sweep(Path(sweep)) if j.status not in ("ok", "pruned")]
    except (UserError, OSError) as e:  # the sweep itself is done and recorded: say why there is no table
        print(f"vae-train: no report of the sweep ({e}); run vae-report {sweep} once that is fixed", flush=True)
        return
    if unfinished and not SweepSummary.search:
        first = unfinished[0]
        SweepSummary.unfinished = (
            f"{len(unfinished)} of the sweep's jobs did not finish (the table above says how "
            f"each ended); job {first.num}: {first.error or first.status}"
        )


@hydra.main(version_base="1.3", config_path="pkg://vae_cli.configs", config_name="train")
def train(cfg: DictConfig):
    """Hydra's task function; returns the best value of the checkpoint's monitor (the validation ELBO by default)
    so any sweeper can optimise what the run itself selects on; in a sweep, a failed job's JobFailed."""
    try:
        metrics = run_or_exit("vae-train", fit, cfg)
    except UserError as e:  # a job of a sweep (a single run exits instead): recorded and said; the others go on
        return JobFailed(own_message(e))
    except Exception as e:  # noqa: BLE001 (a bug in a job of a sweep: its traceback is in the job's log)
        return JobFailed(
            f"a bug in vae-cli ({type(e).__name__}: {e}); the traceback is in "
            f"{getattr(e, 'traceback_in', 'the job log')}",
            exit_status=1,
        )
    if "pruned" in metrics:
        from .study import Pruned

        return Pruned(metrics["pruned"]["epoch"], metrics["pruned"]["value"])
    best = metrics.get(best_val_key(_monitor(cfg)))
    return best if best is not None else metrics["test/elbo"]


def main() -> None:
    signals.catch()  # before Hydra and the imports: a signal from the start ends the command cleanly
    mask_log_lines()
    exit_without_collecting()
    try:
        with command("vae-train"):
            check_optional_parts(sys.argv[1:])
            check_command_line_values(sys.argv[1:], TRAIN_RULES)
            check_config_files(sys.argv[1:])
            check_callback_choices(sys.argv[1:])
            try:
                train()
            finally:  # a sweep ends with its table whatever ended it (a no-op when it was printed at its end)
                signals.finished()
                summarize_sweep(finished=False)
            unfinished, SweepSummary.unfinished = SweepSummary.unfinished, None
            if unfinished:
                raise UserError(unfinished)
    except Interrupted as stop:  # before a run began (composing the config), or in a sweep
        then = ""
        if slurm.batch_job() is not None and slurm.wanted(stop.signum, "requeue=false" not in sys.argv[1:]):
            requeued, why = slurm.requeue()  # nothing to save: the restart starts (or resumes) the run afresh
            then = "; SLURM has requeued the job" if requeued else f"; could not requeue the SLURM job ({why})"
        print(f"vae-train: stopped by {stop.name} {stop.where}{then}", file=sys.stderr)
        raise SystemExit(128 + stop.signum) from None
    signals.ignore()


if __name__ == "__main__":
    main()
