"""vae-train's run built from its config, once: the datamodule, the VAE and its objective, the optimiser and
schedule, the loggers, every callback and the trainer, and the checkpoint it resumes from. Everything that can
refuse the run is checked here, before anything is written."""

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from ..core.metrics import MONITOR
from ..errors import UserError
from . import slurm
from .checks import binarizes, check_fits_data, named, optimizer_and_schedule
from .lightning_logs import route_lightning_logs
from .loading import (
    build_vae,
    check_compatible,
    check_same_meaning,
    make_datamodule,
    newest_state,
    read_checkpoint,
    resolve_checkpoint,
)
from .startup import check_logger_packages

log = logging.getLogger("vae_cli")


@dataclass
class Run:
    """What vae-train fits, tests and records."""

    datamodule: object  # data.lightning.LightningData
    module: object  # training.module.VAEModule
    trainer: object  # pytorch_lightning.Trainer
    ckpt_path: str | None  # the checkpoint it resumes from
    timer: object  # training time over every start of the run (timing.json)
    pruning: object | None  # a trial of hparams_search=optuna: the pruner's callback, which says when it stopped it


def checkpoint_monitor(cfg: DictConfig) -> str | None:
    """The metric best.ckpt is chosen on (None when the run keeps no best checkpoint)."""
    return (cfg.callbacks.get("model_checkpoint") or {}).get("monitor")


def build(cfg: DictConfig) -> Run:
    optimizer, scheduler = optimizer_and_schedule(cfg)
    check_logger_packages(cfg)
    import pytorch_lightning as pl  # imported here, not at the top, so `vae-train --help` starts fast
    from pytorch_lightning.callbacks import Timer
    from pytorch_lightning.plugins.environments import SLURMEnvironment

    from ..data.lightning import LightningData
    from ..training.checkpointing import AtomicCheckpointIO

    route_lightning_logs()
    slurm.follow_cpus_per_task()
    ckpt_path = _resumed(cfg)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule, data_config = _data(cfg)
    module = _module(cfg, datamodule, data_config, optimizer, scheduler, ckpt_path)
    loggers = [named(f"logger.{name}", instantiate, c) for name, c in (cfg.get("logger") or {}).items()]
    callbacks, timer, pruning = _callbacks(cfg, loggers, scheduler)
    plugins = [AtomicCheckpointIO()]
    if slurm.in_slurm():  # Interruption handles SLURM's signals, not Lightning's handler (cli/slurm.py)
        plugins.append(SLURMEnvironment(auto_requeue=False))
    trainer = named("trainer", instantiate, cfg.trainer, callbacks=callbacks, logger=loggers, plugins=plugins)
    if trainer.strategy.root_device.type == "cpu":
        # Lightning asks torch to test for CUDA through NVML (fork safety); without a GPU that test
        # is not cached and costs a library load on every optimiser step. Nothing forks CUDA here.
        os.environ.pop("PYTORCH_NVML_BASED_CUDA_CHECK", None)
    if timer is None:  # trainer.max_time: Lightning's own Timer, which counts the same way
        timer = next(cb for cb in trainer.callbacks if isinstance(cb, Timer))
    return Run(LightningData(datamodule), module, trainer, ckpt_path, timer, pruning)


def _settings(cfg: DictConfig, group: str) -> dict:
    return OmegaConf.to_container(cfg[group], resolve=True)


def _resumed(cfg: DictConfig) -> str | None:
    ckpt_path = str(resolve_checkpoint(cfg.ckpt_path, default_name=None)) if cfg.ckpt_path is not None else None
    if ckpt_path is None and slurm.restarted():  # SLURM started this job again: it continues where it stopped
        saved = newest_state(Path(cfg.run_dir))
        ckpt_path = str(saved) if saved else None
    return ckpt_path


def _data(cfg: DictConfig):
    """The datamodule, loaded and split, and its config as checkpoints keep it."""
    from ..data import BaseDataModule

    binarize = binarizes(cfg)
    datamodule = named("data", make_datamodule, _settings(cfg, "data"), binarize=binarize, seed=cfg.seed)
    if not isinstance(datamodule, BaseDataModule):
        raise UserError(
            f"data._target_={cfg.data._target_!r} does not build a datamodule (a {type(datamodule).__name__}); "
            "name a subclass of vae_cli.data.BaseDataModule."
        )
    datamodule.prepare_data()
    datamodule.setup("fit")  # loads and splits now, so data problems stop the run before training
    check_fits_data(cfg.model.likelihood, datamodule.head("train", 1000)[0], binarize)
    # Saved in every checkpoint, so vae-eval and vae-sample can rebuild the data from the file alone.
    data_config = {**_settings(cfg, "data"), "binarize": binarize}
    for key in ("data_dir", "path"):  # absolute, so the checkpoint finds its data from any directory
        if isinstance(data_config.get(key), str):
            data_config[key] = str(Path(data_config[key]).expanduser().resolve())
    return datamodule, data_config


def _module(cfg: DictConfig, datamodule, data_config: dict, optimizer, scheduler, ckpt_path: str | None):
    from ..training.module import VAEModule
    from ..training.objective import Objective

    model = {**_settings(cfg, "model"), "data_shape": list(datamodule.shape)}
    module = VAEModule(
        build_vae(model),
        model,
        Objective(**_settings(cfg, "objective")),
        optimizer=optimizer,
        scheduler=scheduler,
        normalize_grads=cfg.optim.normalize_grads,
        monitor=checkpoint_monitor(cfg) or MONITOR,
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
    return module


def _callbacks(cfg: DictConfig, loggers: list, scheduler):
    """Those the config chooses (configs/callbacks/, each a user can turn off), around those a run cannot work
    without; and, of these, the timer and the pruner's callback, which the run reads when it ends."""
    from pytorch_lightning.callbacks import LearningRateMonitor, Timer
    from pytorch_lightning.loggers import TensorBoardLogger

    from ..training.callbacks import EMA, TENSORBOARD_ONLY, EpochLines, NonFiniteGuard, ProgressBar, RNGState
    from ..training.interruption import Interruption

    chosen = [named(f"callbacks.{name}", instantiate, c) for name, c in cfg.callbacks.items()]
    if not any(isinstance(lg, TensorBoardLogger) for lg in loggers):
        skipped = [cb for cb in chosen if isinstance(cb, TENSORBOARD_ONLY)]
        if skipped:
            log.info(
                "no TensorBoard logger (logger=[%s]): the image grids, KL histograms and latent projector are skipped",
                ",".join(cfg.get("logger") or {}),
            )
            chosen = [cb for cb in chosen if cb not in skipped]
    if scheduler is not None and loggers:  # the learning rate follows a schedule: log it (lr-Adam)
        chosen.append(LearningRateMonitor(logging_interval="epoch"))
    timer = Timer(duration=None) if cfg.trainer.get("max_time") is None else None
    pruning = None
    if cfg.get("search", {}).get("trial") is not None:  # a trial of hparams_search=optuna
        from ..training.callbacks import Pruning
        from .study import trial_reporter

        pruning = Pruning(trial_reporter(cfg.search.trial), checkpoint_monitor(cfg) or MONITOR)
    # The callbacks a run cannot work without, in the order they must run, each with why; none is a config choice.
    first = [
        NonFiniteGuard(),  # a NaN or inf stops the run, naming the first non-finite metric
        RNGState(),
    ]  # a resumed run draws the random numbers an unbroken one would have drawn
    last = [
        ProgressBar()
        if cfg.trainer.get("enable_progress_bar", True)  # without a bar, still a line per epoch
        else EpochLines(),
        *([timer] if timer else []),  # timing.json's training time, over every start (it travels in checkpoints)
        Interruption(Path(cfg.run_dir) / "checkpoints"),  # a signal saves interrupted.ckpt, after the run's own
        *([pruning] if pruning else []),
    ]  # the search's pruner hears of each validation
    # The weight average last: the diagnostics' validation-end hooks run while its weights are swapped in.
    return [*first, *sorted(chosen, key=lambda cb: isinstance(cb, EMA)), *last], timer, pruning
