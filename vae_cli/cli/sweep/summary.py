"""A sweep said as it starts, and its table (vae-report's) printed when it ends, finished or not."""

from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from ...errors import UserError


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

    from .. import report
    from .jobs import read_sweep

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
