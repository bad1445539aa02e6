"""What a finished run leaves: its test on the best checkpoint, metrics.json, timing.json and the final line."""

import logging
import os
from pathlib import Path

from omegaconf import DictConfig

from ..core.metrics import SUMMARY, run_summary
from . import hparams, run_files
from .build import Run, checkpoint_monitor

log = logging.getLogger("vae_cli")


def test_and_record(cfg: DictConfig, run: Run, run_dir: Path, hparams_loggers: list) -> dict:
    """The test metrics of the checkpoint the run chose (its last state when it keeps no best), as written to
    metrics.json."""
    from pytorch_lightning.callbacks import ModelCheckpoint
    from pytorch_lightning.loggers import WandbLogger

    from ..writers.files import write_json

    trainer, module, datamodule = run.trainer, run.module, run.datamodule
    train_seconds = run.timer.time_elapsed("train")  # over every start of the run
    chosen = next((cb for cb in trainer.checkpoint_callbacks if isinstance(cb, ModelCheckpoint) and cb.monitor), None)
    best = chosen.best_model_path if chosen else ""
    (test_metrics,) = trainer.test(
        module, datamodule=datamodule, ckpt_path=best or None, verbose=False, weights_only=True
    )
    best_score = chosen.best_model_score if chosen else None
    summary = run_summary(checkpoint_monitor(cfg))  # its last name is the best validation value's
    metrics = {
        **{k: float(v) for k, v in sorted(test_metrics.items())},
        summary[-1]: float(best_score) if best_score is not None else None,
        "best_checkpoint": os.path.relpath(best, run_dir) if best else None,
        "epochs": trainer.current_epoch,
        "global_step": trainer.global_step,
        "seed": cfg.seed,
    }
    hparams.log_final(hparams_loggers, trainer, metrics, checkpoint_monitor(cfg))
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
