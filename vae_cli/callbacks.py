"""Training-time diagnostics for TensorBoard: image grids, the KL per latent dimension, the
importance-weighted NLL on the validation set, and the test set's latent means in the projector.
Each reads data through the datamodule's head() and eval_batches() and writes through the run's
TensorBoard logger."""
import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import TensorBoardLogger

from . import images


def _tensorboard(trainer: pl.Trainer):
    for lg in trainer.loggers:
        if isinstance(lg, TensorBoardLogger):
            return lg.experiment
    return None


def _due(trainer: pl.Trainer, every_n_epochs: int) -> bool:
    return (not trainer.sanity_checking and every_n_epochs > 0 and trainer.is_global_zero
            and (trainer.current_epoch + 1) % every_n_epochs == 0)


class ImageGrids(pl.Callback):
    """Every `every_n_epochs`: reconstructions of validation images and prior samples under IMAGES,
    and the KL of each latent dimension as a histogram."""

    def __init__(self, every_n_epochs: int = 10, n: int = 64):
        self.every_n_epochs, self.n = every_n_epochs, n

    def on_validation_epoch_end(self, trainer, pl_module):
        tb = _tensorboard(trainer)
        if tb is None or not _due(trainer, self.every_n_epochs):
            return
        x = trainer.datamodule.head("val", self.n)[0].to(pl_module.device)
        step = trainer.global_step
        was_training = pl_module.training
        pl_module.eval()
        tb.add_image("val/reconstructions", images.reconstructions(pl_module, x), step)
        tb.add_image("samples/prior_mean", images.prior_samples(pl_module, self.n), step)
        kl = images.kl_per_dim(pl_module, trainer.datamodule.head("val", 2000)[0].to(pl_module.device))
        # One value per latent dimension: how many dimensions carry how much information.
        tb.add_histogram("val/kl_per_dim", kl, step)
        pl_module.train(was_training)


class ImportanceWeightedNLL(pl.Callback):
    """val/nll_iw: the k-sample importance-weighted estimate of -log p(x) on the validation set every
    `every_n_epochs` (off when iw_samples = 0: it costs k decoder passes per example)."""

    def __init__(self, iw_samples: int = 0, every_n_epochs: int = 10, iw_batch: int = 50_000):
        self.iw_samples, self.every_n_epochs, self.iw_batch = iw_samples, every_n_epochs, iw_batch

    def on_validation_epoch_end(self, trainer, pl_module):
        if self.iw_samples < 1 or trainer.sanity_checking or (trainer.current_epoch + 1) % self.every_n_epochs:
            return
        from .evaluate import score_batches

        log_px = score_batches(pl_module, trainer.datamodule.eval_batches("val"), self.iw_samples, self.iw_batch,
                               pl_module.device)["log_px"]
        pl_module.log("val/nll_iw", -log_px.mean(), on_epoch=True, sync_dist=True)


class LatentProjector(pl.Callback):
    """After testing: the test set's posterior means in TensorBoard's embedding projector, labelled
    by class, with each image as its thumbnail."""

    def __init__(self, max_points: int = 10_000):
        self.max_points = max_points

    def on_test_end(self, trainer, pl_module):
        tb = _tensorboard(trainer)
        if tb is None or not trainer.is_global_zero or self.max_points < 1:
            return
        xs, ys, mus = [], [], []
        with torch.no_grad():
            for x, y in trainer.datamodule.eval_batches("test"):
                x, y = x[: self.max_points - sum(map(len, xs))], y[: self.max_points - sum(map(len, xs))]
                mus.append(pl_module.encoder(x.to(pl_module.device))[0].float().cpu())
                xs.append(x.cpu())
                ys.append(y.cpu())
                if sum(map(len, xs)) >= self.max_points:
                    break
        x, y, mu = torch.cat(xs), torch.cat(ys), torch.cat(mus)
        tb.add_embedding(mu, metadata=y.tolist(), label_img=x[:, :3].float(), global_step=trainer.global_step,
                         tag="test/posterior_mean")
