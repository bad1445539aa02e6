"""hparams_search=optuna: an Optuna study kept in a database, driven by ask-and-tell from a Hydra sweeper.

The sweeper asks the study for a trial's settings, runs the trial as a job through whatever Hydra launcher is
configured (one process, joblib, SLURM), and tells the study how it ended. The study lives in its storage (an SQLite
file in the sweep directory unless `hydra.sweeper.storage` names another SQLAlchemy URL), so the same command run
again continues it, and several workers running that command at once share it, until `n_trials` trials have
finished. Each job reports its validation metric to its trial after every epoch, and the study's pruner stops a
hopeless one (training/callbacks.py Pruning).
"""
import logging
import threading
import time
import warnings
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep
from hydra.core.plugins import Plugins
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf

from ..errors import UserError

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
RESULTS_FILE = "optimization_results.yaml"


@dataclass
class SearchConfig:
    """hydra.sweeper for hparams_search=optuna (configs/hparams_search/optuna.yaml sets the search itself)."""
    _target_: str = "hydra_plugins.vae_cli_search.OptunaStudySweeper"
    study_name: str = "vae"
    storage: Any = None            # an SQLAlchemy URL; None: sqlite:///<sweep dir>/optuna.db
    direction: str = "maximize"
    n_trials: int = 20             # trials to finish (complete or pruned), counted over every run of the command
    n_jobs: int = 1                # trials launched together (a parallel launcher runs them at once)
    sampler: Any = field(default_factory=lambda: {"_target_": "optuna.samplers.TPESampler"})
    pruner: Any = "median"         # median, halving, hyperband, none, or {_target_: optuna.pruners.X, ...}
    params: Any = None             # key: Hydra sweep syntax, e.g. optim.lr: tag(log, interval(1e-4, 3e-3))
    heartbeat_interval: int = 60   # seconds between a running trial's signs of life in the storage
    grace_period: int = 180        # a running trial silent this long was killed: failed, and its settings retried
    max_retry: int = 1             # how often a killed or interrupted trial's settings are tried again


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
            raise UserError(f"hydra.sweeper.pruner={spec}: no such pruner; use one of {', '.join(PRUNERS)}, or a "
                            "config naming any Optuna pruner: {_target_: optuna.pruners.PercentilePruner, ...}.")
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


def open_storage(url: str, heartbeat_interval: int | None = None, grace_period: int | None = None,
                 max_retry: int = 0):
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
            retry = (optuna.storages.RetryHeartbeatStaleTrialCallback if new
                     else optuna.storages.RetryFailedTrialCallback)(max_retry=max_retry)
        kwargs.update(heartbeat_interval=heartbeat_interval, grace_period=grace_period,
                      **{"heartbeat_stale_trial_callback" if new else "failed_trial_callback": retry})
    for attempt in range(3):
        try:
            with quiet_experimental():
                return RDBStorage(url, **kwargs)
        except Exception as e:  # a driver that is not installed, a server that does not answer, a bad URL
            error = e
            # Workers started together race to create a new database's tables: the losers try again.
            time.sleep(1 + attempt)
    reason = str(error).splitlines()[0] if str(error) else ""
    raise UserError(f"hydra.sweeper.storage={url}: Optuna cannot open this database ({type(error).__name__}: "
                    f"{reason}). Check the URL (SQLAlchemy's form, e.g. sqlite:///path/study.db or "
                    "postgresql+psycopg2://user@host/db), that the server is running and that its driver is "
                    "installed (for PostgreSQL: pip install psycopg2-binary).")


def search_space(params, arguments: list[str]) -> tuple[dict, list[str]]:
    """Optuna distributions from the config's params and any sweep on the command line (choice, range,
    interval, with tag(log, ...) for a log scale); the other command-line overrides, fixed for every trial."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    parser = OverridesParser.create()
    given = [f"{k}={v}" for k, v in (params or {}).items()]
    space, fixed = {}, []
    for override in parser.parse_overrides(given + list(arguments)):
        key, value = override.get_key_element(), override.value()
        log_scale = "log" in getattr(value, "tags", ())
        if isinstance(value, ChoiceSweep):
            space[key] = CategoricalDistribution([v for v in value.list])
        elif isinstance(value, IntervalSweep):  # real-valued in Hydra's grammar; range(...) for integers
            space[key] = FloatDistribution(value.start, value.end, log=log_scale)
        elif isinstance(value, RangeSweep):
            values = list(override.sweep_iterator())
            ints = all(isinstance(v, int) for v in values)
            space[key] = (IntDistribution(values[0], values[-1], step=value.step, log=log_scale) if ints
                          else CategoricalDistribution(values))
        elif override.is_sweep_override():
            raise UserError(f"{override.input_line}: a search takes choice(...), range(...) or interval(...).")
        else:
            fixed.append(override.input_line)
    return space, fixed


def trial_id(storage, study, number: int) -> int:
    """The storage's id of a study's trial, through the storage's public methods (Optuna's Trial keeps it private)."""
    return storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name(study.study_name), number)


@contextmanager
def heartbeat(storage, study, trials, interval):
    """Signs of life for the trials in flight, from this process, while the launcher runs them."""
    stop = threading.Event()
    ids = [trial_id(storage, study, t.number) for t in trials]

    def beat():
        while True:
            for i in ids:
                storage.record_heartbeat(i)
            if stop.wait(interval):
                return

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


class Search:
    """The sweeper's work (Hydra requires the plugin class itself to live in hydra_plugins/)."""

    def __init__(self, **settings) -> None:
        self.settings = SearchConfig(**settings)
        self.job_idx = 0

    def setup(self, *, hydra_context, task_function, config: DictConfig) -> None:
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(hydra_context=hydra_context,
                                                                task_function=task_function, config=config)

    def sweep(self, arguments: list[str]) -> None:
        from .errors import run_or_exit

        run_or_exit("vae-train", self._sweep, arguments, job=False)

    def _sweep(self, arguments: list[str]) -> None:
        import optuna

        s = self.settings
        optuna.logging.set_verbosity(optuna.logging.WARNING)  # our own lines say what each trial did
        space, fixed = search_space(s.params, arguments)
        sweep_dir = Path(self.config.hydra.sweep.dir)
        url = storage_url(s.storage, sweep_dir)
        storage = open_storage(url, s.heartbeat_interval, s.grace_period, s.max_retry)
        study = optuna.create_study(study_name=s.study_name, storage=storage, direction=s.direction,
                                    sampler=built(s.sampler), pruner=make_pruner(s.pruner), load_if_exists=True)
        log.info("study %s in %s: %d of %d trials finished", s.study_name, url, len(finished(study)), s.n_trials)
        failed = []
        while len(finished(study)) < s.n_trials:
            with quiet_experimental():
                optuna.storages.fail_stale_trials(study)
            room = s.n_trials - len(finished(study)) - len(running(study))
            if room <= 0:  # the rest are running in other workers: wait for them, or for them to go silent
                time.sleep(s.heartbeat_interval)
                continue
            with warnings.catch_warnings():
                # Optuna expects its own optimize loop to send the heartbeat; here heartbeat() below sends it.
                warnings.filterwarnings("ignore", "Heartbeat of storage is supposed to be used with Study.optimize")
                asked = [study.ask(space) for _ in range(min(s.n_jobs, room))]
            batch = [t for t in asked if not self.surplus(study, t)]
            if batch:
                failed += self.run(study, storage, batch, fixed)
        self.write_results(study, sweep_dir)
        if failed:
            raise failed[0]  # like Hydra's own sweepers: the sweep fails with the first failed job's error

    def surplus(self, study, trial) -> bool:
        """Workers that asked at the same moment may hold more trials than the study needs: the earliest
        started keep theirs, the others give theirs up (failed, marked surplus, never run)."""
        from optuna.trial import TrialState

        keep = sorted(running(study), key=lambda t: (t.datetime_start, t.number))
        if trial.number in {t.number for t in keep[:max(self.settings.n_trials - len(finished(study)), 0)]}:
            return False
        trial.set_user_attr("surplus", True)
        study.tell(trial, state=TrialState.FAIL)
        return True

    def run(self, study, storage, batch, fixed) -> list[BaseException]:
        from optuna.trial import TrialState

        overrides = [[*fixed, *(f"{k}={v}" for k, v in t.params.items()), f"search.trial={t.number}"] for t in batch]
        try:
            with heartbeat(storage, study, batch, self.settings.heartbeat_interval):
                returns = self.launcher.launch(overrides, initial_job_idx=self.job_idx)
        except BaseException:
            # Interrupted (a signal, Ctrl-C) or the launcher failed: these trials did not end, so their settings
            # are queued again for the next run of the command.
            for t in batch:
                study.tell(t, state=TrialState.FAIL, skip_if_finished=True)
                study.enqueue_trial(t.params, user_attrs={"retry_of": t.number})
            raise
        self.job_idx += len(batch)
        failed = []
        for t, ret in zip(batch, returns):
            try:
                value = ret.return_value  # the job's result; Hydra writes the overrides of a failed one to stderr
            except Exception as error:
                value = error
            if isinstance(value, Pruned):
                study.tell(t, state=TrialState.PRUNED)
                log.info("trial %d pruned at epoch %d (%.4f)", t.number, value.epoch, value.value)
            elif isinstance(value, BaseException):
                study.tell(t, state=TrialState.FAIL)
                log.error("trial %d failed: %s", t.number, value)
                failed.append(value)
            else:
                study.tell(t, float(value))
                log.info("trial %d: %.4f", t.number, float(value))
        return failed

    def write_results(self, study, sweep_dir: Path) -> None:
        from optuna.trial import TrialState

        from ..training.files import atomic_write

        counts = Counter(t.state.name.lower() for t in study.get_trials(deepcopy=False))
        results = {"name": study.study_name, "trials": dict(counts)}
        if study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            best = study.best_trial
            results.update(best_trial=best.number, best_value=best.value, best_params=best.params)
            log.info("best trial: %d, %.4f (%s)", best.number, best.value, sweep_dir / RESULTS_FILE)
        atomic_write(sweep_dir / RESULTS_FILE, lambda f: f.write(OmegaConf.to_yaml(results).encode()))
        plot_study(study, sweep_dir, f"best {self.config.callbacks.model_checkpoint.monitor} (nats)")


def finished(study) -> list:
    from optuna.trial import TrialState

    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))


def running(study) -> list:
    from optuna.trial import TrialState

    return study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))


def plot_study(study, sweep_dir: Path, target: str = "objective") -> list[Path]:
    """Optuna's own figures of the study: the optimisation history, and the parameters' importances."""
    from optuna.trial import TrialState

    from ..training import figures

    if figures.figure_class() is None:
        log.info(figures.not_installed("the study's figures"))
        return []
    import matplotlib

    matplotlib.use("Agg")  # Optuna draws through pyplot; no window, whatever the user's default backend
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as ovm

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:  # nothing to draw: every trial was pruned or failed
        return []
    plots = {"optimization_history": ovm.plot_optimization_history}
    if len(complete) >= 2:  # importances compare trials
        plots["param_importances"] = ovm.plot_param_importances
    written = []
    for name, plot in plots.items():
        with quiet_experimental():
            fig = plot(study, target_name=target).figure
        fig.set_size_inches(8, 5)
        fig.tight_layout()
        written += figures.write(fig, sweep_dir / name)
        plt.close(fig)
    return written


def trial_reporter(number: int):
    """For a job of the search: report(epoch, value) records the value at that epoch in trial `number` and says
    whether the study's pruner stops the trial."""
    import optuna
    from hydra.core.hydra_config import HydraConfig

    hydra = HydraConfig.get()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    s = SearchConfig(**{k: v for k, v in OmegaConf.to_container(hydra.sweeper, resolve=True).items() if k != "_target_"})
    storage = open_storage(storage_url(s.storage, hydra.sweep.dir))
    study = optuna.load_study(study_name=s.study_name, storage=storage, pruner=make_pruner(s.pruner))
    # Optuna has no public way to take up a trial that another process asked for: its Trial is built from the
    # trial's storage id, as Study.ask builds it.
    trial = optuna.trial.Trial(study, trial_id(storage, study, number))

    def report(epoch: int, value: float) -> bool:
        trial.report(value, step=epoch)
        return trial.should_prune()

    return report
