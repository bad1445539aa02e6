"""vae-train: compose the config, build data, model and trainer, fit, test, write metrics.json."""
import logging
import os
import sys
import time
import warnings
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from .checkpoints import resolve_checkpoint, write_json
from .errors import UserError

log = logging.getLogger("vae_cli")


def _resume_dir(ckpt_path, default: str) -> str:
    """The run directory: where a resumed checkpoint's run lives (<run>/checkpoints/x.ckpt, or <run>),
    so the run continues in place; otherwise a new one."""
    if ckpt_path is None:
        return default
    p = Path(str(ckpt_path)).expanduser()
    if p.is_dir():
        return str(p)
    if p.parent.name == "checkpoints":
        return str(p.parent.parent)
    return default


OmegaConf.register_new_resolver("vae_resume_dir", _resume_dir, replace=True)


def _route_lightning_logs() -> None:
    # Lightning's loggers carry their own handler and do not propagate, so their lines would
    # miss the run's log file that Hydra sets up on the root logger.
    for name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric"):
        lg = logging.getLogger(name)
        lg.handlers.clear()
        lg.propagate = True
    # In-memory data is batched by index in the main process, where workers would only add cost.
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    # Lightning 2.6 on torch 2.14 warns about its own use of a torch internal; nothing for users to do.
    warnings.filterwarnings("ignore", message=".*isinstance\\(treespec, LeafSpec\\)` is deprecated.*")


def build(node: DictConfig, **kwargs):
    """hydra.utils.instantiate, but a UserError raised by a constructor keeps its own message
    (Hydra would wrap it in an InstantiationException with a traceback)."""
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as e:
        cause = e.__cause__
        while cause is not None and not isinstance(cause, UserError):
            cause = cause.__cause__
        if cause is not None:
            raise cause from None
        raise


HP_METRICS = ("best_val_elbo", "test/elbo", "test/recon_loss", "test/kl", "test/bpd")


def hparams_of(cfg: DictConfig) -> dict:
    """The run's settings as flat scalars for TensorBoard's HPARAMS tab (one row per run of a sweep)."""
    choices = HydraConfig.get().runtime.choices
    flat = {"data": choices.get("data"), "model": choices.get("model"), "seed": cfg.seed, "optim.lr": cfg.optim.lr,
            "data.batch_size": cfg.data.batch_size, "trainer.max_epochs": cfg.trainer.max_epochs}
    for group in ("model", "objective"):
        for key, value in OmegaConf.to_container(cfg[group], resolve=True).items():
            if not key.startswith("_"):
                flat[f"{group}.{key}"] = value if isinstance(value, (int, float, str, bool)) else str(value)
    return flat


def _log_hparams(trainer, cfg: DictConfig) -> None:
    # The HPARAMS tab lists a metric only when it is declared with the hyperparameters, before it is
    # logged; hp/ tags keep the declaration's placeholder out of the real curves.
    from pytorch_lightning.loggers import TensorBoardLogger

    for lg in trainer.loggers:
        if isinstance(lg, TensorBoardLogger):
            lg.log_hyperparams(hparams_of(cfg), {f"hp/{m.replace('/', '_')}": float("nan") for m in HP_METRICS})
        else:
            lg.log_hyperparams(hparams_of(cfg))


def _check_run_settings(cfg: DictConfig) -> None:
    """Top-level and trainer values that no constructor of ours checks, named with their key."""
    def is_int(v):
        return isinstance(v, int) and not isinstance(v, bool)

    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise UserError(f"{', '.join(missing)} must be set (the config marks it ???), e.g. "
                        f"vae-train ... {missing[0]}=VALUE" + (" (the folder of your images)." if "data.path" in missing else "."))
    if not is_int(cfg.seed) or cfg.seed < 0:
        raise UserError(f"seed={cfg.seed!r} must be an integer >= 0, e.g. seed=3.")
    for key in ("max_epochs", "max_steps"):
        v = cfg.trainer.get(key)
        if v is not None and (not is_int(v) or v < -1):
            raise UserError(f"trainer.{key}={v!r} must be an integer (-1 for no limit), e.g. trainer.{key}=20.")


def fit(cfg: DictConfig) -> dict:
    """Train and test one run; returns the metrics written to metrics.json."""
    import pytorch_lightning as pl  # imported here, not at the top, so `vae-train --help` starts fast

    from .checkpoints import atomic_checkpoint_io, check_compatible, read_checkpoint
    from .ema import EMA
    from .guards import NonFiniteGuard, RNGState
    from .likelihoods import check_fits_data

    _route_lightning_logs()
    _check_run_settings(cfg)
    run_dir = Path(cfg.run_dir)
    ckpt_path = str(resolve_checkpoint(cfg.ckpt_path)) if cfg.ckpt_path is not None else None
    pl.seed_everything(cfg.seed, workers=True, verbose=False)

    binarize = cfg.data.binarize
    if binarize is None:
        binarize = cfg.model.likelihood == "bernoulli"
    datamodule = build(cfg.data, binarize=binarize, seed=cfg.seed)
    datamodule.prepare_data()
    datamodule.setup("fit")  # loads and splits now, so data problems stop the run before training
    check_fits_data(cfg.model.likelihood, datamodule.head("train", 1000)[0], binarize)
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    init_output_bias = model_cfg.pop("init_output_bias", False)  # an action at start-up, not a model setting
    model = build(OmegaConf.create(model_cfg), _convert_="all", data_shape=tuple(datamodule.shape),
                  **cfg.optim, **cfg.objective)
    if ckpt_path is not None:
        # Read it here (weights only: no code from the file runs), so a corrupt or mismatching
        # checkpoint stops the run with the parameter named, before anything is written.
        check_compatible(model, read_checkpoint(Path(ckpt_path)), ckpt_path)
    elif init_output_bias:
        model.init_output_bias(datamodule.train_pixel_mean())
    # Saved in every checkpoint, so vae-eval and vae-sample can rebuild the data from the file alone.
    data_config = {**OmegaConf.to_container(cfg.data, resolve=True), "binarize": binarize}
    for key in ("data_dir", "path"):  # absolute, so the checkpoint finds its data from any directory
        if isinstance(data_config.get(key), str):
            data_config[key] = str(Path(data_config[key]).expanduser().resolve())
    model.data_config = data_config
    if cfg.compile:
        # In place (nn.Module.compile), so parameter names and checkpoints are unchanged.
        model.encoder.compile()
        model.decoder.compile()
    callbacks = [cb for cb in (build(c) for c in cfg.callbacks.values()) if getattr(cb, "active", True)]
    # The weight average last: the diagnostics' validation-end hooks run while its weights are swapped in.
    callbacks = [NonFiniteGuard(), RNGState(), *sorted(callbacks, key=lambda cb: isinstance(cb, EMA))]
    loggers = [build(c) for c in cfg.logger.values()]
    trainer = build(cfg.trainer, callbacks=callbacks, logger=loggers, plugins=[atomic_checkpoint_io()])

    if trainer.strategy.root_device.type == "cpu":
        # Lightning asks torch to test for CUDA through NVML (fork safety); without a GPU that test
        # is not cached and costs a library load on every optimiser step. Nothing forks CUDA here.
        os.environ.pop("PYTORCH_NVML_BASED_CUDA_CHECK", None)
    _log_hparams(trainer, cfg)
    start = time.perf_counter()
    trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    train_seconds = time.perf_counter() - start

    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    (test_metrics,) = trainer.test(model, datamodule=datamodule, ckpt_path=best or None, verbose=False,
                                   weights_only=True)
    best_score = trainer.checkpoint_callback.best_model_score if trainer.checkpoint_callback else None
    metrics = {
        **{k: float(v) for k, v in sorted(test_metrics.items())},
        "best_val_elbo": float(best_score) if best_score is not None else None,
        "best_checkpoint": os.path.relpath(best, run_dir) if best else None,
        "epochs": trainer.current_epoch,
        "global_step": trainer.global_step,
        "seed": cfg.seed,
    }
    for lg in trainer.loggers:
        lg.log_metrics({f"hp/{m.replace('/', '_')}": metrics[m] for m in HP_METRICS if metrics[m] is not None},
                       step=trainer.global_step)
        lg.finalize("success")
    if trainer.is_global_zero:  # one writer when several processes train (DDP)
        # metrics.json holds only what the seed determines (same seed, same file); wall time goes beside it.
        write_json(run_dir / "metrics.json", metrics)
        write_json(run_dir / "timing.json", {"train_seconds": round(train_seconds, 3)})
    log.info("test: elbo %.4f  recon_loss %.4f  kl %.4f  bpd %.4f  (%s)", metrics["test/elbo"],
             metrics["test/recon_loss"], metrics["test/kl"], metrics["test/bpd"], run_dir / "metrics.json")
    return metrics


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def train(cfg: DictConfig) -> float:
    """Hydra's task function; returns the best validation ELBO so any sweeper can maximise it."""
    try:
        metrics = fit(cfg)
    except UserError as e:
        # Once on the terminal (no traceback), and in the run's log file for the record.
        record = log.makeRecord(log.name, logging.ERROR, __file__, 0, "%s", (e,), None)
        for handler in logging.getLogger().handlers:
            if isinstance(handler, logging.FileHandler):
                handler.handle(record)
        print(f"vae-train: error: {e}", file=sys.stderr)
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            raise  # Hydra records the failed job, runs the others, and fails the sweep at the end
        raise SystemExit(2) from None
    except Exception:
        log.exception("the run failed")  # the traceback goes to the run's log file too
        raise
    return metrics["best_val_elbo"] if metrics["best_val_elbo"] is not None else metrics["test/elbo"]


def main() -> None:
    train()


if __name__ == "__main__":
    main()
