"""vae-train: compose the config (Hydra), check it, build the run, fit, test, record; in a sweep, once per job."""

import contextlib
import logging
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from ..compat import raised_restoring
from ..core.metrics import best_val_key
from ..errors import UserError
from ..training import signals
from ..training.signals import Interrupted
from . import hparams, slurm
from . import run_dir as runs
from .build import build, checkpoint_monitor
from .checks import TRAIN_RULES, check_train_config, misconfigured
from .errors import command, exit_without_collecting, own_message, run_or_exit
from .loading import unresumable
from .provenance import provenance_of
from .results import test_and_record
from .secrets import mask_log_lines
from .startup import check_callback_choices, check_command_line_values, check_config_files, check_optional_parts
from .study import Pruned, pruned
from .sweep.jobs import JobFailed
from .sweep.summary import SweepSummary, summarize_sweep

log = logging.getLogger("vae_cli")


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
        then = slurm.requeued_note(stop.signum, sys.argv[1:])
        print(f"vae-train: stopped by {stop.name} {stop.where}{then}", file=sys.stderr)
        raise SystemExit(128 + stop.signum) from None
    signals.ignore()


@hydra.main(version_base="1.3", config_path="pkg://vae_cli.configs", config_name="train")
def train(cfg: DictConfig):
    """Hydra's task function; returns the best value of the checkpoint's monitor (the validation ELBO by default)
    so any sweeper can optimise what the run itself selects on; in a sweep, a failed job's JobFailed."""
    try:
        metrics = run_or_exit("vae-train", fit, cfg)
    except UserError as e:  # a job of a sweep (a single run exits instead): recorded and said; the others go on
        return JobFailed(own_message(e))
    except Exception as e:  # noqa: BLE001 (a bug in a job of a sweep: its traceback is in the job's log)
        where = getattr(e, "traceback_in", "the job log")
        return JobFailed(f"a bug in vae-cli ({type(e).__name__}: {e}); the traceback is in {where}", exit_status=1)
    if "pruned" in metrics:
        return Pruned(metrics["pruned"]["epoch"], metrics["pruned"]["value"])
    best = metrics.get(best_val_key(checkpoint_monitor(cfg)))
    return best if best is not None else metrics["test/elbo"]


def fit(cfg: DictConfig) -> dict:
    """Train and test one run; returns the metrics written to metrics.json."""
    run_dir = Path(cfg.run_dir)
    mask_log_lines()  # again: a job of a sweep may run in a process of its own (joblib, SLURM)
    if not runs.first_process():  # a data-parallel run's other processes: their lines would repeat the first's
        logging.getLogger("vae_cli").setLevel(logging.WARNING)
    signals.reset()
    signals.catch()
    try:
        check_train_config(cfg)  # before torch is imported: a mistyped value is named at once
    except UserError as refusal:  # a job of a sweep (a single run is refused before its directory is made)
        runs.record_failure(run_dir, refusal)  # the sweep's table reads why
        raise
    try:
        lock = runs.claim(run_dir)
    except UserError:
        runs.forget_refused_record()
        raise
    try:
        record = provenance_of(run_dir)
    except BaseException:
        runs.release(lock)
        raise
    outcome = "failed"
    try:
        metrics = _fit(cfg, run_dir, record)
        signals.finished()
        outcome = "pruned" if "pruned" in metrics else "finished"
        return metrics
    except Interrupted as stop:
        outcome = f"stopped by {stop.name}"
        runs.record_stop(cfg, run_dir, stop)
        raise SystemExit(128 + stop.signum) from None  # the shell's convention for a process ended by a signal
    except Exception as error:  # a UserError or a bug; a signal's stop is not a failure
        fault = runs.outside_fault(error, run_dir)  # a refused write or a vanished directory: one message
        runs.record_failure(run_dir, fault)
        if fault is error:
            raise
        raise fault from error
    finally:
        if record is not None and record.path.parent.is_dir():  # not for an invocation refused (its record withdrawn)
            # A full disk: the error that ended the run still reaches the user.
            with contextlib.suppress(OSError, UserError):
                record.end(outcome)
        runs.release(lock)


def _fit(cfg: DictConfig, run_dir: Path, record) -> dict:
    try:
        run = build(cfg)
    except UserError:
        runs.forget_refused_record()
        raise
    if record is not None:
        record.device(str(run.trainer.strategy.root_device))
    runs.announce(run_dir)
    if run.ckpt_path is not None:
        log.info("resuming %s", run.ckpt_path)
    hparams_loggers = hparams.loggers_of(run.trainer, cfg, checkpoint_monitor(cfg), record.record if record else None)
    try:
        run.trainer.fit(run.module, datamodule=run.datamodule, ckpt_path=run.ckpt_path, weights_only=True)
    except Exception as error:
        if type(error).__name__ == "MisconfigurationException":  # Lightning refusing a setting as it meets it
            raise UserError(misconfigured(cfg, error)) from None
        if run.ckpt_path is not None and raised_restoring(error):
            runs.forget_refused_record()
            raise unresumable(run.ckpt_path, error) from None
        raise
    if run.pruning is not None and run.pruning.pruned_at is not None:
        return pruned(cfg, run.trainer, run_dir, run.pruning.monitor, *run.pruning.pruned_at)
    return test_and_record(cfg, run, run_dir, hparams_loggers)


if __name__ == "__main__":
    main()
