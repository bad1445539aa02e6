"""hparams_search=optuna's sweeper in this process: a real Optuna study in an SQLite file under tmp_path, trials run by
a fake launcher that returns what a job would (a value, a failure, a pruned trial). How the search counts trials
(those of earlier runs, those still running in another worker), stops, prunes, retries and reports. The same search
driving real vae-train jobs is in test_sweeps.py (slow)."""

import logging
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import OmegaConf

from vae_cli.cli.study import Pruned, open_storage, trial_id
from vae_cli.cli.sweep.jobs import JobFailed
from vae_cli.errors import UserError

optuna = pytest.importorskip("optuna", reason="install the test extra: pip install -e '.[test]'")
from optuna.trial import TrialState  # noqa: E402

from hydra_plugins.vae_cli_search import _impl  # noqa: E402

SETTINGS = {
    "sampler": {"_target_": "optuna.samplers.RandomSampler", "seed": 0},
    "pruner": "none",
    "params": {"optim.lr": "interval(0.001, 0.01)"},
}


def trial_of(overrides: list[str]) -> int:
    return int(next(o for o in overrides if o.startswith("search.trial=")).split("=")[1])


class Launcher:
    """Runs each job as `outcome(trial number)` says it ended: a value, a JobFailed, Pruned, or an exception (a job
    whose return Hydra raises)."""

    def __init__(self, sweep: Path, outcome):
        self.sweep, self.outcome, self.launches = sweep, outcome, []

    def launch(self, job_overrides, initial_job_idx):
        self.launches.append(([list(o) for o in job_overrides], initial_job_idx))
        assert len(self.launches) <= 20, "the search went on launching"  # fails at once, not at a timeout
        returns = []
        for o in job_overrides:
            value = self.outcome(trial_of(o))
            failed = isinstance(value, BaseException)
            ret = JobReturn(overrides=o, status=JobStatus.FAILED if failed else JobStatus.COMPLETED)
            ret.hydra_cfg = OmegaConf.create({"hydra": {"runtime": {"output_dir": str(self.sweep / str(trial_of(o)))}}})
            ret.return_value = value
            returns.append(ret)
        return returns


@pytest.fixture(autouse=True)
def no_waiting(monkeypatch):
    """A search waits for other workers' trials with time.sleep; where a test has none, a wait is a failure, at
    once rather than after the heartbeat's interval."""

    def sleep(seconds):
        raise AssertionError(f"the search waited {seconds} s for trials running elsewhere")

    monkeypatch.setattr(_impl, "time", SimpleNamespace(sleep=sleep))
    looks, fail_stale = [], optuna.storages.fail_stale_trials

    def look(study):  # one look per turn of the search's loop: a loop that spins without running a trial fails
        looks.append(1)
        assert len(looks) < 50, "the search spun without running a trial"
        fail_stale(study)

    monkeypatch.setattr(optuna.storages, "fail_stale_trials", look)


@pytest.fixture
def figures(monkeypatch):
    """The study's figures are drawn in test_plots_*; elsewhere only what they would be drawn of is kept."""
    drawn = []
    monkeypatch.setattr(_impl, "plot_study", lambda study, d, target: drawn.append((study.study_name, d, target)))
    return drawn


def make(tmp_path, outcome, **settings):
    search = _impl.Search(**{**SETTINGS, **settings})
    search.config = OmegaConf.create(
        {"hydra": {"sweep": {"dir": str(tmp_path / "sweep")}}, "callbacks": {"model_checkpoint": {"monitor": "val/x"}}}
    )
    search.launcher = Launcher(tmp_path / "sweep", outcome)
    return search


def study_in(tmp_path, name="vae"):
    storage = open_storage(f"sqlite:///{tmp_path / 'sweep' / 'optuna.db'}", 60, 180, 1)
    return optuna.create_study(study_name=name, storage=storage, direction="maximize", load_if_exists=True), storage


def ask(study):
    """A trial asked as another worker asks it; Optuna warns of a heartbeat used outside Study.optimize, which the
    search itself keeps off the user's screen (test_a_search_runs_n_trials_...)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Heartbeat of storage is supposed to be used with Study.optimize")
        return study.ask()


def states(study) -> list[str]:
    return [t.state.name for t in study.get_trials(deepcopy=False)]


def said(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "vae_cli"]


def results(tmp_path) -> dict:
    return yaml.safe_load((tmp_path / "sweep" / _impl.RESULTS_FILE).read_text())


@pytest.mark.filterwarnings("error")  # Optuna's warnings about its heartbeat outside Study.optimize are not the user's
def test_a_search_runs_n_trials_in_batches_of_n_jobs_each_with_its_settings(tmp_path, figures, caplog):
    search = make(tmp_path, lambda n: -100.0 + n * (3 - n), n_trials=3, n_jobs=2)
    with caplog.at_level(logging.INFO, logger="vae_cli"):
        search.sweep(["trainer.max_epochs=3", "model.latent_dim=choice(8)"])
    study, _ = study_in(tmp_path)
    trials = study.get_trials()
    assert states(study) == ["COMPLETE"] * 3 and [t.value for t in trials] == [-100.0, -98.0, -98.0]
    launches = search.launcher.launches
    assert [(len(o), first) for o, first in launches] == [(2, 0), (1, 2)] and search.job_idx == 3
    assert launches[0][0][1] == [
        "trainer.max_epochs=3",
        f"optim.lr={trials[1].params['optim.lr']}",
        "model.latent_dim=8",
        "search.trial=1",
    ]
    assert [t.user_attrs["run_dir"] for t in trials] == [str((tmp_path / "sweep" / str(n)).resolve()) for n in range(3)]
    assert results(tmp_path) == {
        "name": "vae",
        "trials": {"complete": 3},
        "best_trial": 1,
        "best_value": -98.0,
        "best_params": trials[1].params,
        "best_run_dir": str((tmp_path / "sweep" / "1").resolve()),
    }
    assert figures == [("vae", tmp_path / "sweep", "best val/x (nats)")]
    sweep = tmp_path / "sweep"
    url = f"sqlite:///{(sweep / 'optuna.db').resolve()}"
    assert said(caplog) == [
        f"study vae in {url}: 0 of 3 trials run",
        "trial 0: -100.0000",
        "trial 1: -98.0000",
        "trial 2: -98.0000",
        f"best trial: 1, -98.0000 in {sweep.resolve() / '1'} ({sweep / _impl.RESULTS_FILE})",
    ]


def test_the_configured_sampler_chooses_the_trials_settings(tmp_path, figures):
    make(tmp_path, lambda n: -90.0, n_trials=2).sweep([])
    alone = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    lr = optuna.distributions.FloatDistribution(0.001, 0.01)
    assert [t.params for t in study_in(tmp_path)[0].trials] == [alone.ask({"optim.lr": lr}).params for _ in range(2)]


def test_the_study_is_opened_as_configured_and_named_with_its_password_hidden(tmp_path, figures, monkeypatch, caplog):
    opened = []

    def storage(url, *timing):
        opened.append((url, *timing))
        return study_in(tmp_path)[1]

    monkeypatch.setattr(_impl, "open_storage", storage)
    search = make(
        tmp_path,
        lambda n: 1.0,
        storage="postgresql://me:s3cret@db/s",
        study_name="mine",
        direction="minimize",
        n_trials=2,
        heartbeat_interval=7,
        grace_period=30,
        max_retry=2,
    )
    with caplog.at_level(logging.INFO, logger="vae_cli"):
        search.sweep([])
    assert opened == [("postgresql://me:s3cret@db/s", 7, 30, 2)]
    assert said(caplog)[0] == "study mine in postgresql://me:***@db/s: 0 of 2 trials run"
    study = optuna.load_study(study_name="mine", storage=study_in(tmp_path)[1])
    assert study.direction == optuna.study.StudyDirection.MINIMIZE and len(study.trials) == 2


def test_trials_of_earlier_runs_count_toward_n_trials_but_not_those_interrupted_or_given_up(tmp_path, figures, caplog):
    study, _ = study_in(tmp_path)
    study.add_trial(optuna.trial.create_trial(params={}, distributions={}, value=-90.0))
    study.add_trial(optuna.trial.create_trial(params={}, distributions={}, state=TrialState.PRUNED))
    ran = optuna.trial.create_trial(params={}, distributions={}, state=TrialState.FAIL, user_attrs={"error": "boom"})
    study.add_trial(ran)
    study.add_trial(optuna.trial.create_trial(params={}, distributions={}, state=TrialState.FAIL))  # interrupted
    surplus = optuna.trial.create_trial(params={}, distributions={}, state=TrialState.FAIL, user_attrs={"surplus": 1})
    study.add_trial(surplus)
    search = make(tmp_path, lambda n: -80.0, n_trials=5)
    with caplog.at_level(logging.INFO, logger="vae_cli"):
        search.sweep([])
    assert [n for o, _ in search.launcher.launches for n in map(trial_of, o)] == [5, 6]
    assert said(caplog)[0].endswith(": 3 of 5 trials run")
    assert results(tmp_path)["trials"] == {"complete": 3, "pruned": 1, "fail": 3}


def test_a_search_already_at_n_trials_runs_none_and_still_writes_its_results(tmp_path, figures):
    study, _ = study_in(tmp_path)
    for value in (-90.0, -85.0):
        study.add_trial(optuna.trial.create_trial(params={}, distributions={}, value=value))
    search = make(tmp_path, lambda n: pytest.fail("no trial should run"), n_trials=2)
    search.sweep([])
    assert search.launcher.launches == [] and results(tmp_path)["best_value"] == -85.0


def test_a_trial_still_running_in_another_worker_counts_toward_n_trials(tmp_path, figures, monkeypatch):
    study, storage = study_in(tmp_path)
    study.add_trial(optuna.trial.create_trial(params={}, distributions={}, value=-90.0))
    elsewhere = ask(study)  # another worker's trial, alive: its heartbeat is fresh
    storage.record_heartbeat(elsewhere._trial_id)
    waits = []

    def sleep(seconds):  # while this worker waits, the other's trial ends
        waits.append(seconds)
        study.tell(elsewhere, -70.0)

    monkeypatch.setattr(_impl, "time", SimpleNamespace(sleep=sleep))
    search = make(tmp_path, lambda n: pytest.fail("no trial should run"), n_trials=2, heartbeat_interval=9)
    search.sweep([])
    assert waits == [9] and search.launcher.launches == []
    assert results(tmp_path)["trials"] == {"complete": 2}


def test_a_worker_waits_for_a_trial_running_elsewhere_and_runs_its_settings_again_if_it_is_interrupted(
    tmp_path, figures, monkeypatch
):
    study, storage = study_in(tmp_path)
    study.add_trial(optuna.trial.create_trial(params={}, distributions={}, value=-90.0))
    elsewhere = ask(study)
    storage.record_heartbeat(elsewhere._trial_id)
    waits = []

    def sleep(seconds):  # the other worker's trial runs through one wait, and is interrupted in the second
        waits.append(seconds)
        if len(waits) == 2:
            study.tell(elsewhere, state=TrialState.FAIL)

    monkeypatch.setattr(_impl, "time", SimpleNamespace(sleep=sleep))
    search = make(tmp_path, lambda n: -80.0, n_trials=2, heartbeat_interval=9)
    search.sweep([])
    assert waits == [9, 9] and [trial_of(o) for o, _ in search.launcher.launches for o in o] == [2]
    assert results(tmp_path)["trials"] == {"complete": 2, "fail": 1}


def test_trials_given_up_as_surplus_launch_no_empty_batch(tmp_path, figures, monkeypatch):
    search = make(tmp_path, lambda n: -80.0, n_trials=2)
    given_up = []

    def surplus(study, trial):  # the first trial asked is one too many: another worker asked at the same moment
        if given_up:
            return False
        given_up.append(trial.number)
        study.tell(trial, state=TrialState.FAIL)
        return True

    monkeypatch.setattr(search, "surplus", surplus)
    search.sweep([])
    assert given_up == [0] and [[trial_of(o) for o in os] for os, _ in search.launcher.launches] == [[1], [2]]


def test_a_search_space_takes_real_ranges_as_choices_log_integer_ranges_and_refuses_other_sweeps():
    from optuna.distributions import CategoricalDistribution, IntDistribution

    space, _ = _impl.search_space({"a": "range(0.5, 2.0, 0.5)", "b": "tag(log, range(1, 9))"}, [])
    assert space == {"a": CategoricalDistribution([0.5, 1.0, 1.5]), "b": IntDistribution(1, 8, log=True)}
    with pytest.raises(UserError) as e:
        _impl.search_space(None, ["data.root=glob(*)"])
    assert str(e.value) == "data.root=glob(*): a search takes choice(...), range(...) or interval(...)."


@pytest.mark.filterwarnings("error")  # given up outright: no warning of Optuna's on stderr
def test_trials_asked_at_once_by_several_workers_beyond_n_trials_are_given_up_by_the_later(tmp_path):
    study, _ = study_in(tmp_path)
    study.add_trial(optuna.trial.create_trial(params={}, distributions={}, value=-90.0))
    first, second, third = ask(study), ask(study), ask(study)
    search = make(tmp_path, None, n_trials=3)
    assert not search.surplus(study, first) and not search.surplus(study, second)
    assert search.surplus(study, third)
    given_up = study.get_trials()[third.number]
    assert given_up.state == TrialState.FAIL and given_up.user_attrs == {"surplus": True}
    assert _impl.tried(study) == study.get_trials()[:1]


def test_a_retry_taken_up_after_another_workers_trial_started_is_the_one_given_up(tmp_path):
    study, storage = study_in(tmp_path)
    study.enqueue_trial({}, user_attrs={"retry_of": 7})  # trial 0, waiting
    elsewhere = storage.create_new_trial(study._study_id)  # trial 1, asked and started by another worker
    retry = ask(study)  # trial 0, started later: the lower number, the later start
    assert retry.number == 0 and trial_id(storage, study, 1) == elsewhere
    assert make(tmp_path, None, n_trials=1).surplus(study, retry)


def test_a_trial_asked_when_the_study_already_has_more_than_n_trials_is_given_up(tmp_path):
    study, _ = study_in(tmp_path)
    for value in (-90.0, -91.0):
        study.add_trial(optuna.trial.create_trial(params={}, distributions={}, value=value))
    first, second = ask(study), ask(study)
    search = make(tmp_path, None, n_trials=1)
    assert search.surplus(study, first) and search.surplus(study, second)


@pytest.mark.filterwarnings("error")  # a failed trial is told FAIL outright: no warning of Optuna's on stderr
@pytest.mark.parametrize(
    "failure",
    [JobFailed("optim.lr=0.5: the loss is not finite at step 3"), RuntimeError("optim.lr=0.5: CUDA error")],
    ids=["the job's own account", "an error hydra raises"],
)
def test_failures_in_a_row_stop_the_worker_with_the_first_failures_error(tmp_path, figures, caplog, failure):
    search = make(tmp_path, lambda n: failure, n_trials=10, max_failures_in_a_row=2)
    # A job's own account becomes a UserError (one line, no traceback); an exception is raised as it is.
    with caplog.at_level(logging.INFO, logger="vae_cli"), pytest.raises(Exception) as e:
        search.sweep([])
    assert type(e.value) is (UserError if isinstance(failure, JobFailed) else RuntimeError)
    assert str(e.value) == getattr(failure, "message", str(failure))
    study, _ = study_in(tmp_path)
    assert states(study) == ["FAIL", "FAIL"] and results(tmp_path) == {"name": "vae", "trials": {"fail": 2}}
    assert [t.user_attrs["error"] for t in study.get_trials()] == [str(e.value)] * 2
    assert said(caplog)[1:] == [
        f"trial 0 failed: {e.value}",
        f"trial 1 failed: {e.value}",
        "the last 2 trials failed: the search stops (hydra.sweeper.max_failures_in_a_row=2)",
    ]


def test_failures_not_in_a_row_let_the_search_reach_n_trials_and_end_with_the_first(tmp_path, figures):
    search = make(tmp_path, lambda n: JobFailed(f"trial {n} failed") if n % 2 == 0 else -90.0 - n, n_trials=5)
    search.settings.max_failures_in_a_row = 2
    with pytest.raises(UserError, match=r"^trial 0 failed$"):
        search.sweep([])
    study, _ = study_in(tmp_path)
    assert states(study) == ["FAIL", "COMPLETE", "FAIL", "COMPLETE", "FAIL"]
    assert results(tmp_path)["trials"] == {"fail": 3, "complete": 2} and results(tmp_path)["best_trial"] == 1


def test_max_failures_in_a_row_0_runs_n_trials_whatever_fails(tmp_path, figures):
    search = make(tmp_path, lambda n: JobFailed(f"trial {n} failed"), n_trials=4, max_failures_in_a_row=0)
    with pytest.raises(UserError, match=r"^trial 0 failed$"):
        search.sweep([])
    assert results(tmp_path)["trials"] == {"fail": 4}


def test_a_negative_number_of_failures_in_a_row_is_refused_before_the_study_is_opened(tmp_path):
    search = make(tmp_path, lambda n: pytest.fail("no trial should run"), max_failures_in_a_row=-1)
    with pytest.raises(UserError) as e:
        search.sweep([])
    assert str(e.value) == (
        "hydra.sweeper.max_failures_in_a_row=-1: a count of trials; use 0 to run n_trials whatever fails, or a "
        "positive number, e.g. 3 (the default)."
    )
    assert not (tmp_path / "sweep").exists()


def test_a_pruner_that_does_not_exist_is_refused_before_any_trial_runs(tmp_path):
    search = make(tmp_path, lambda n: pytest.fail("no trial should run"), pruner="medain")
    with pytest.raises(UserError, match=r"^hydra.sweeper.pruner=medain: no such pruner; use one of median, "):
        search.sweep([])


def test_a_bug_in_the_search_leaves_its_traceback_in_a_file_named_for_vae_train(tmp_path, figures, monkeypatch):
    def bug(n):
        raise RuntimeError("a bug")

    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    root = logging.getLogger()  # no run's log file to hold the traceback (pytest's own log file aside)
    monkeypatch.setattr(root, "handlers", [h for h in root.handlers if not isinstance(h, logging.FileHandler)])
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    with pytest.raises(RuntimeError) as e:
        make(tmp_path, bug, n_trials=1).sweep([])
    where = Path(e.value.traceback_in)
    assert where.parent == tmp_path and where.name.startswith("vae-train-bug-")
    assert where.read_text().startswith("vae-train ") and "RuntimeError: a bug" in where.read_text()


def test_a_failed_trials_error_is_kept_with_any_password_hidden(tmp_path, figures):
    search = make(tmp_path, lambda n: JobFailed("cannot reach postgresql://me:s3cret@db/s"), n_trials=1)
    with pytest.raises(UserError):
        search.sweep([])
    assert study_in(tmp_path)[0].trials[0].user_attrs["error"] == "cannot reach postgresql://me:***@db/s"


def test_a_pruned_trial_is_told_pruned_and_counts_as_run(tmp_path, figures, caplog):
    search = make(tmp_path, lambda n: Pruned(epoch=3 + n, value=-95.25), n_trials=2)
    with caplog.at_level(logging.INFO, logger="vae_cli"):
        search.sweep([])
    assert states(study_in(tmp_path)[0]) == ["PRUNED", "PRUNED"]
    assert results(tmp_path) == {"name": "vae", "trials": {"pruned": 2}}
    assert said(caplog)[1:] == ["trial 0 pruned at epoch 3 (-95.2500)", "trial 1 pruned at epoch 4 (-95.2500)"]


@pytest.mark.filterwarnings("error")
def test_a_launch_interrupted_queues_its_trials_settings_to_run_again(tmp_path, figures):
    def interrupted(n):
        # Meanwhile another worker took trial 0 for killed (its heartbeat had stopped) and failed it.
        study_in(tmp_path)[0].tell(0, state=TrialState.FAIL, skip_if_finished=True)
        raise KeyboardInterrupt

    search = make(tmp_path, interrupted, n_trials=2, n_jobs=2)
    with pytest.raises(KeyboardInterrupt):
        search.sweep([])
    study, _ = study_in(tmp_path)
    first = study.get_trials()
    assert states(study) == ["FAIL", "FAIL", "WAITING", "WAITING"] and _impl.tried(study) == []
    assert [t.system_attrs["fixed_params"] for t in first[2:]] == [t.params for t in first[:2]]
    assert [t.user_attrs for t in first[2:]] == [{"retry_of": 0}, {"retry_of": 1}]
    # The command run again runs those settings first.
    again = make(tmp_path, lambda n: -90.0, n_trials=2, n_jobs=2)
    again.sweep([])
    assert [t.params for t in study.get_trials()[2:]] == [t.params for t in first[:2]]
    assert states(study) == ["FAIL", "FAIL", "COMPLETE", "COMPLETE"]


def test_the_trials_in_flight_send_their_heartbeat_again_and_again_while_their_jobs_run(tmp_path, figures, monkeypatch):
    beats = []

    def storage(url, interval, *rest):  # the storage's own interval is whole seconds; the beat's is the setting
        opened = open_storage(url, 1, *rest)
        record = opened.record_heartbeat
        opened.record_heartbeat = lambda i: beats.append(i) or record(i)
        return opened

    monkeypatch.setattr(_impl, "open_storage", storage)
    seen = []

    def run(n):  # a job that runs while the heartbeat's thread beats three times for each trial in flight
        for _ in range(200):
            if len(beats) >= 6:
                break
            time.sleep(0.01)
        seen.append(sorted(beats[:6]))
        return -90.0

    search = make(tmp_path, run, n_trials=2, n_jobs=2, heartbeat_interval=0.01)
    search.sweep([])
    study, storage = study_in(tmp_path)
    ids = [trial_id(storage, study, n) for n in (0, 1)]
    assert seen == [sorted(ids * 3)] * 2


def test_the_sweeper_launches_through_hydras_configured_launcher(tmp_path, monkeypatch):
    made = []
    monkeypatch.setattr(
        _impl.Plugins, "instance", lambda: SimpleNamespace(instantiate_launcher=lambda **kw: made.append(kw) or "L")
    )
    search = _impl.Search()
    config = OmegaConf.create({"a": 1})
    search.setup(hydra_context="ctx", task_function=print, config=config)
    assert made == [{"hydra_context": "ctx", "task_function": print, "config": config}]
    assert search.launcher == "L" and search.config is config and search.job_idx == 0


def test_plots_the_history_of_one_complete_trial_and_the_importances_of_two(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as ovm

    # Optuna's importances import scikit-learn (seconds); a plain axes stands in, drawn with the same target.
    monkeypatch.setattr(ovm, "plot_param_importances", lambda study, target_name: plt.subplots()[1])
    study, _ = study_in(tmp_path)
    assert _impl.plot_study(study, tmp_path) == []
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    lr = optuna.distributions.FloatDistribution(0.001, 0.01)
    study.add_trial(optuna.trial.create_trial(params={"lr": 0.002}, distributions={"lr": lr}, value=-90.0))
    study.add_trial(optuna.trial.create_trial(params={}, distributions={}, state=TrialState.PRUNED))
    one = _impl.plot_study(study, tmp_path / "one", "best val/x (nats)")
    assert [p.name for p in one] == ["optimization_history.png", "optimization_history.svg"]
    assert "best val/x (nats)" in one[1].read_text()
    study.add_trial(optuna.trial.create_trial(params={"lr": 0.005}, distributions={"lr": lr}, value=-80.0))
    # 8 by 5 inches at matplotlib's 110 dpi (figures.write): a PNG's width and height follow its 16-byte header.
    assert one[0].read_bytes()[16:24] == (880).to_bytes(4, "big") + (550).to_bytes(4, "big")
    two = _impl.plot_study(study, tmp_path / "two")
    assert [p.name for p in two] == [
        "optimization_history.png",
        "optimization_history.svg",
        "param_importances.png",
        "param_importances.svg",
    ]


def test_without_matplotlib_the_study_is_not_drawn_and_says_so(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(_impl.figures, "figure_class", lambda: None)
    with caplog.at_level(logging.INFO, logger="vae_cli"):
        assert _impl.plot_study(None, tmp_path) == []
    assert caplog.messages == [_impl.figures.not_installed("the study's figures")]
