"""Training with Lightning: the thin LightningModule, the objective, the callbacks, checkpoint files
and image grids. Imports the core; never Hydra."""
