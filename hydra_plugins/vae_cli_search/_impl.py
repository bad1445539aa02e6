"""hparams_search=optuna's sweeper: an Optuna study kept in a database, driven by ask-and-tell.

The sweeper asks the study for a trial's settings, runs the trial as a job through whatever Hydra launcher is
configured (one process, joblib, SLURM), and tells the study how it ended. The study lives in its storage (an SQLite
file in the sweep directory unless `hydra.sweeper.storage` names another SQLAlchemy URL), so the same command run
again continues it, and several workers running that command at once share it, until `n_trials` trials have run
to an end (complete, pruned or failed, as Optuna's own Study.optimize counts them). A worker whose last
`max_failures_in_a_row` trials failed stops early. Each job reports its validation metric to its trial after every
epoch, and the study's pruner stops a hopeless one (vae_cli/cli/study.py: the study as both sides open it).
"""

import logging
import threading
import time
import warnings
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep
from hydra.core.plugins import Plugins
from omegaconf import DictConfig, OmegaConf

from vae_cli.cli.errors import run_or_exit
from vae_cli.cli.secrets import mask
from vae_cli.cli.study import (
    Pruned,
    SearchConfig,
    built,
    make_pruner,
    open_storage,
    quiet_experimental,
    storage_url,
    trial_id,
)
from vae_cli.cli.sweep.jobs import JobFailed
from vae_cli.errors import UserError
from vae_cli.writers import figures
from vae_cli.writers.files import atomic_write

log = logging.getLogger("vae_cli")

RESULTS_FILE = "optimization_results.yaml"


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
            space[key] = (
                IntDistribution(values[0], values[-1], step=value.step, log=log_scale)
                if ints
                else CategoricalDistribution(values)
            )
        elif override.is_sweep_override():
            raise UserError(f"{override.input_line}: a search takes choice(...), range(...) or interval(...).")
        else:
            fixed.append(override.input_line)
    return space, fixed


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
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def sweep(self, arguments: list[str]) -> None:

        run_or_exit("vae-train", self._sweep, arguments, job=False)

    def _sweep(self, arguments: list[str]) -> None:
        import optuna

        s = self.settings
        if s.max_failures_in_a_row < 0:
            raise UserError(
                f"hydra.sweeper.max_failures_in_a_row={s.max_failures_in_a_row}: a count of trials; use 0 "
                "to run n_trials whatever fails, or a positive number, e.g. 3 (the default)."
            )
        optuna.logging.set_verbosity(optuna.logging.WARNING)  # our own lines say what each trial did
        space, fixed = search_space(s.params, arguments)
        sweep_dir = Path(self.config.hydra.sweep.dir)
        url = storage_url(s.storage, sweep_dir)
        storage = open_storage(url, s.heartbeat_interval, s.grace_period, s.max_retry)
        study = optuna.create_study(
            study_name=s.study_name,
            storage=storage,
            direction=s.direction,
            sampler=built(s.sampler),
            pruner=make_pruner(s.pruner),
            load_if_exists=True,
        )
        log.info("study %s in %s: %d of %d trials run", s.study_name, mask(url), len(tried(study)), s.n_trials)
        failed, in_a_row = [], 0
        while len(tried(study)) < s.n_trials:
            with quiet_experimental():
                optuna.storages.fail_stale_trials(study)
            room = s.n_trials - len(tried(study)) - len(running(study))
            if room <= 0:  # the rest are running in other workers: wait for them, or for them to go silent
                time.sleep(s.heartbeat_interval)
                continue
            with warnings.catch_warnings():
                # Optuna expects its own optimize loop to send the heartbeat; here heartbeat() below sends it.
                warnings.filterwarnings("ignore", "Heartbeat of storage is supposed to be used with Study.optimize")
                asked = [study.ask(space) for _ in range(min(s.n_jobs, room))]
            batch = [t for t in asked if not self.surplus(study, t)]
            for error in self.run(study, storage, batch, fixed) if batch else []:
                if error is None:
                    in_a_row = 0
                else:
                    in_a_row += 1
                    failed.append(error)
            if s.max_failures_in_a_row and in_a_row >= s.max_failures_in_a_row:
                # A setting that fails every trial (or a broken machine) would otherwise fail trial after trial.
                log.error(
                    "the last %d trials failed: the search stops (hydra.sweeper.max_failures_in_a_row=%d)",
                    in_a_row,
                    s.max_failures_in_a_row,
                )
                break
        self.write_results(study, sweep_dir)
        if failed:
            raise failed[0]  # like Hydra's own sweepers: the sweep fails with the first failed job's error

    def surplus(self, study, trial) -> bool:
        """Workers that asked at the same moment may hold more trials than the study needs: the earliest
        started keep theirs, the others give theirs up (failed, marked surplus, never run)."""
        from optuna.trial import TrialState

        keep = sorted(running(study), key=lambda t: (t.datetime_start, t.number))
        if trial.number in {t.number for t in keep[: max(self.settings.n_trials - len(tried(study)), 0)]}:
            return False
        trial.set_user_attr("surplus", True)
        study.tell(trial, state=TrialState.FAIL)
        return True

    def run(self, study, storage, batch, fixed) -> list[BaseException | None]:
        """Runs the batch's trials and tells the study how each ended; returns each one's error (None: it did not
        fail)."""
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
        errors = []
        for t, ret in zip(batch, returns):
            t.set_user_attr(
                "run_dir", str(Path(ret.hydra_cfg.hydra.runtime.output_dir).resolve())
            )  # the trial's folder
            try:
                value = ret.return_value  # the job's result; Hydra writes the overrides of a failed one to stderr
            except Exception as error:
                value = error
            if isinstance(value, JobFailed):  # the job said why in one line, and recorded it in its error.json
                value = UserError(value.message)
            if isinstance(value, Pruned):
                study.tell(t, state=TrialState.PRUNED)
                log.info("trial %d pruned at epoch %d (%.4f)", t.number, value.epoch, value.value)
            elif isinstance(value, BaseException):
                t.set_user_attr("error", mask(str(value)))  # marks a trial that ran and failed: it counts as tried
                study.tell(t, state=TrialState.FAIL)
                log.error("trial %d failed: %s", t.number, value)
            else:
                study.tell(t, float(value))
                log.info("trial %d: %.4f", t.number, float(value))
            errors.append(value if isinstance(value, BaseException) else None)
        return errors

    def write_results(self, study, sweep_dir: Path) -> None:
        from optuna.trial import TrialState

        counts = Counter(t.state.name.lower() for t in study.get_trials(deepcopy=False))
        results = {"name": study.study_name, "trials": dict(counts)}
        if study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            best = study.best_trial
            results.update(
                best_trial=best.number,
                best_value=best.value,
                best_params=best.params,
                best_run_dir=best.user_attrs.get("run_dir"),
            )
            log.info(
                "best trial: %d, %.4f in %s (%s)",
                best.number,
                best.value,
                best.user_attrs.get("run_dir"),
                sweep_dir / RESULTS_FILE,
            )
        atomic_write(sweep_dir / RESULTS_FILE, lambda f: f.write(OmegaConf.to_yaml(results).encode()))
        plot_study(study, sweep_dir, f"best {self.config.callbacks.model_checkpoint.monitor} (nats)")


def tried(study) -> list:
    """The trials that ran to an end: complete, pruned, or failed in their job. Not those given up before running
    (surplus), nor those interrupted or killed, whose settings are queued to run again."""
    from optuna.trial import TrialState

    ended = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL))
    return [t for t in ended if t.state != TrialState.FAIL or "error" in t.user_attrs]


def running(study) -> list:
    from optuna.trial import TrialState

    return study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))


def plot_study(study, sweep_dir: Path, target: str = "objective") -> list[Path]:
    """Optuna's own figures of the study: the optimisation history, and the parameters' importances."""
    from optuna.trial import TrialState

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
