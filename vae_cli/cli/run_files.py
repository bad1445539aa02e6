"""The records in a run directory, by name: what vae-train writes there, and what vae-report and the SLURM launcher
read. Standard library only (nothing at all), so any command imports it for free."""

METRICS = "metrics.json"  # the test metrics of best.ckpt and the run's summary: what the seed determines
TIMING = "timing.json"  # the training's wall time, over every start of the run
STOP = "interrupted.json"  # where a signal stopped the run, what holds its state, and how it goes on
ERROR = "error.json"  # why the run failed: the log's format is the user's to choose
PRUNED = "pruned.json"  # a search's trial that the study's pruner stopped
LOG = "train.log"  # the run's log (Hydra's job log, named after the job)
