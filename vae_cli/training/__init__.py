"""Training with Lightning: the thin LightningModule, the objective, the callbacks, the loggers and checkpoint
files. Imports the core and the writers; never Hydra."""
