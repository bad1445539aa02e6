"""The Optuna study of hparams_search=optuna, as both sides open it: the sweeper (hydra_plugins/vae_cli_search),
which asks it for trials and tells it how they ended, and each trial's job, which reports its validation metric
after every epoch so that the study's pruner can stop it (training/callbacks.py Pruning). The study lives in its
storage: an SQLite file in the sweep directory unless hydra.sweeper.storage names another SQLAlchemy URL."""

import logging
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf

from ..errors import UserError
from .secrets import mask

log = logging.getLogger("vae_cli")

# hydra.sweeper.pruner by name; any optuna.pruners class is also accepted as {_target_: ..., its arguments}.
PRUNERS = {
    # A trial stops when its value at an epoch is below the median of earlier trials' values at that epoch,
    # once 5 trials have finished and after its own first 2 epochs (early ELBOs mostly measure the warm-up).
    "median": ("optuna.pruners.MedianPruner", {"n_startup_trials": 5, "n_warmup_steps": 2}),
    "halving": ("optuna.pruners.SuccessiveHalvingPruner", {}),
    "hyperband": ("optuna.pruners.HyperbandPruner", {}),
    "none": ("optuna.pruners.NopPruner", {}),
}
STUDY_FILE = "optuna.db"


@dataclass
class SearchConfig:
    """hydra.sweeper for hparams_search=optuna (configs/hparams_search/optuna.yaml sets the search itself)."""

    _target_: str = "hydra_plugins.vae_cli_search.OptunaStudySweeper"
    study_name: str = "vae"
    storage: Any = None  # an SQLAlchemy URL; None: sqlite:///<sweep dir>/optuna.db
    direction: str = "maximize"
    n_trials: int = 20  # trials to run to an end (complete, pruned or failed), over every run of the command
    max_failures_in_a_row: int = 3  # a worker stops after this many failed trials in a row (0: never), with the
    # first failure's error
    n_jobs: int = 1  # trials launched together (a parallel launcher runs them at once)
    sampler: Any = field(default_factory=lambda: {"_target_": "optuna.samplers.TPESampler"})
    pruner: Any = "median"  # median, halving, hyperband, none, or {_target_: optuna.pruners.X, ...}
    params: Any = None  # key: Hydra sweep syntax, e.g. optim.lr: tag(log, interval(1e-4, 3e-3))
    heartbeat_interval: int = 60  # seconds between a running trial's signs of life in the storage
    grace_period: int = 180  # a running trial silent this long was killed: failed, and its settings retried
    max_retry: int = 1  # how often a killed or interrupted trial's settings are tried again


@dataclass
class Pruned:
    """What a job returns when the study's pruner stopped it."""

    epoch: int
    value: float


def storage_url(storage, sweep_dir) -> str:
    return str(storage) if storage else f"sqlite:///{Path(sweep_dir).resolve() / STUDY_FILE}"


def built(spec):
    """An object from its config; Hydra has already built the sweeper's own nested configs."""
    return instantiate(spec) if isinstance(spec, (dict, DictConfig)) else spec


def make_pruner(spec):
    if isinstance(spec, str):
        if spec not in PRUNERS:
            raise UserError(
                f"hydra.sweeper.pruner={spec}: no such pruner; use one of {', '.join(PRUNERS)}, or a "
                "config naming any Optuna pruner: {_target_: optuna.pruners.PercentilePruner, ...}."
            )
        target, kwargs = PRUNERS[spec]
        return get_class(target)(**kwargs)
    return built(spec)


@contextmanager
def quiet_experimental():
    """Optuna marks its heartbeat as experimental and says so at every use; that note is not for our users."""
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        yield


def open_storage(url: str, heartbeat_interval: int | None = None, grace_period: int | None = None, max_retry: int = 0):
    """The study's database. With a heartbeat, a trial that stops sending it (its process was killed) is failed
    by the next worker that looks, and its settings are queued again (Optuna's own retry callback)."""
    import optuna
    from optuna.storages import RDBStorage

    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    kwargs = {}
    if url.startswith("sqlite"):
        # Workers on one machine share the file: wait for another's write instead of failing at once.
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": 60}}
    if heartbeat_interval:
        new = hasattr(optuna.storages, "RetryHeartbeatStaleTrialCallback")  # the name since Optuna 4.9
        with quiet_experimental():
            retry = (
                optuna.storages.RetryHeartbeatStaleTrialCallback if new else optuna.storages.RetryFailedTrialCallback
            )(max_retry=max_retry)
        kwargs.update(
            heartbeat_interval=heartbeat_interval,
            grace_period=grace_period,
            **{"heartbeat_stale_trial_callback" if new else "failed_trial_callback": retry},
        )
    for attempt in range(3):
        try:
            with quiet_experimental():
                return RDBStorage(url, **kwargs)
        except Exception as e:  # a driver that is not installed, a server that does not answer, a bad URL
            error = e
            # Workers started together race to create a new database's tables: the losers try again.
            time.sleep(1 + attempt)
    reason = str(error).splitlines()[0] if str(error) else ""
    raise UserError(
        f"hydra.sweeper.storage={mask(url)}: Optuna cannot open this database ({type(error).__name__}: "
        f"{mask(reason)}). Check the URL (SQLAlchemy's form, e.g. sqlite:///path/study.db or "
        "postgresql+psycopg2://user@host/db), that the server is running and that its driver is "
        "installed (for PostgreSQL: pip install psycopg2-binary)."
    )


def trial_id(storage, study, number: int) -> int:
    """The storage's id of a study's trial, through the storage's public methods (Optuna's Trial keeps it private)."""
    return storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name(study.study_name), number)


def trial_reporter(number: int):
    """For a job of the search: report(epoch, value) records the value at that epoch in trial `number` and says
    whether the study's pruner stops the trial."""
    import optuna
    from hydra.core.hydra_config import HydraConfig

    hydra = HydraConfig.get()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    s = SearchConfig(
        **{k: v for k, v in OmegaConf.to_container(hydra.sweeper, resolve=True).items() if k != "_target_"}
    )
    storage = open_storage(storage_url(s.storage, hydra.sweep.dir))
    study = optuna.load_study(study_name=s.study_name, storage=storage, pruner=make_pruner(s.pruner))
    # Optuna has no public way to take up a trial that another process asked for: its Trial is built from the
    # trial's storage id, as Study.ask builds it.
    trial = optuna.trial.Trial(study, trial_id(storage, study, number))

    def report(epoch: int, value: float) -> bool:
        trial.report(value, step=epoch)
        return trial.should_prune()

    return report


def pruned(cfg: DictConfig, trainer, run_dir: Path, monitor: str, epoch: int, value: float) -> dict:
    """A trial that the search's pruner stopped: no test, no metrics.json; pruned.json says when and why."""
    from ..writers.files import write_json
    from . import run_files

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
