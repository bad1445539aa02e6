"""Lightning's log lines into the run's log file, less those that say nothing to a vae-cli user."""

import logging
import warnings


def _not_an_advertisement(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith("💡 Tip")  # Lightning's suggestion of a commercial service


def _not_a_new_experiment(record: logging.LogRecord) -> bool:
    # Lightning's MLflow logger warns when it creates its experiment, which the first run in a new store always does.
    return not str(record.msg).endswith("not found. Creating it.")


def route_lightning_logs() -> None:
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
