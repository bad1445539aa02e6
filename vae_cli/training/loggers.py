"""Lightning's loggers, where a run needs them to behave differently."""

from pathlib import Path

from pytorch_lightning.loggers import MLFlowLogger as LightningMLFlowLogger
from pytorch_lightning.loggers import TensorBoardLogger as LightningTensorBoardLogger
from pytorch_lightning.loggers import WandbLogger as LightningWandbLogger

from ..compat import log_checkpoint_files, mlflow_run_started, wandb_init_arguments


class TensorBoardLogger(LightningTensorBoardLogger):
    """Lightning's TensorBoard logger without the `epoch` scalar Lightning adds to every logged step: a straight
    line that would be the first card of TensorBoard's TIME SERIES, above the ELBO's terms. The step axis is the
    optimiser's step, and each epoch's end has its val/ point."""

    def log_metrics(self, metrics, step=None) -> None:
        super().log_metrics({k: v for k, v in metrics.items() if k != "epoch"}, step)


class MLFlowLogger(LightningMLFlowLogger):
    """Lightning's MLflow logger, with two changes. Without a tracking_uri it logs to a local store in the folder
    `local_store`: an SQLite database (MLflow's file store is deprecated) and the runs' files beside it. With
    log_model=True the files of every checkpoint callback (best.ckpt and last.ckpt) become artifacts when
    training ends: Lightning's keeps only those of the callback that saved last."""

    def __init__(
        self,
        *,
        local_store: str | None = None,
        tracking_uri: str | None = None,
        artifact_location: str | None = None,
        **kwargs,
    ):
        if tracking_uri is None and local_store is not None:
            store = Path(local_store).resolve()
            tracking_uri = f"sqlite:///{store / 'mlflow.db'}"
            artifact_location = artifact_location or str(store / "mlartifacts")
        super().__init__(tracking_uri=tracking_uri, artifact_location=artifact_location, **kwargs)
        self.log_every_callback = kwargs.get("log_model") is True  # "all" logs each file as it is saved
        self.checkpoint_callbacks = {}  # by folder and file name: Lightning hands over a new proxy each time

    def after_save_checkpoint(self, checkpoint_callback) -> None:
        if self.log_every_callback:
            key = (checkpoint_callback.dirpath, checkpoint_callback.filename)
            self.checkpoint_callbacks[key] = checkpoint_callback
        super().after_save_checkpoint(checkpoint_callback)

    def finalize(self, status: str = "success") -> None:
        if mlflow_run_started(self):
            for callback in self.checkpoint_callbacks.values():
                log_checkpoint_files(self, callback)
        super().finalize(status)


class WandbLogger(LightningWandbLogger):
    """Lightning's W&B logger, without two settings it always hands to wandb.init, about which wandb warns:
    `anonymous` (retired, warned about even as None) and, offline, `resume` (which has no effect offline)."""

    def __init__(self, *, offline: bool = False, **kwargs):
        super().__init__(offline=offline, **kwargs)
        init = wandb_init_arguments(self)
        if init.get("anonymous") is None:
            init.pop("anonymous", None)
        if offline:
            init.pop("resume", None)
