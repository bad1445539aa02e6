"""hydra/launcher=slurm (configs/hydra/launcher/slurm.yaml): Hydra's submitit SLURM launcher, made to fail fast and
to end, whatever becomes of the jobs (slurm_launcher.py)."""
