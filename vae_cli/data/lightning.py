"""The datamodules as Lightning sees them: the one module of the data layer that imports Lightning, so that
vae-eval and vae-sample, which read data without training, never do."""

import pytorch_lightning as pl

from .base import BaseDataModule, Feed


class LightningData(pl.LightningDataModule):
    """Lightning's datamodule over `data` (a BaseDataModule, torch only): its loaders made for this run (the
    training device, the epoch and step, this process of how many), training batches binarised afresh on their
    device. The data itself (head(), eval_batches(), shape) is `.data`."""

    def __init__(self, data: BaseDataModule):
        super().__init__()
        self.data = data

    def _feed(self) -> Feed:
        trainer = self.trainer
        loop = trainer.fit_loop.epoch_loop.batch_progress
        return Feed(
            device=trainer.strategy.root_device,
            epoch=lambda: trainer.current_epoch,
            progress=lambda: loop.current.processed,
            rank=trainer.global_rank,
            world_size=trainer.world_size,
            in_order=trainer.overfit_batches > 0,
        )

    def prepare_data(self) -> None:
        self.data.prepare_data()

    def setup(self, stage: str) -> None:
        self.data.setup(stage)

    def train_dataloader(self):
        return self.data.train_dataloader(self._feed())

    def val_dataloader(self):
        return self.data.val_dataloader(self._feed())

    def test_dataloader(self):
        return self.data.test_dataloader(self._feed())

    def transfer_batch_to_device(self, batch, device, dataloader_idx: int):
        # Device-resident splits arrive where they belong; skip Lightning's generic per-step walk.
        if all(t.device == device for t in batch):
            return batch
        return [t.to(device, non_blocking=True) for t in batch]

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        return self.data.train_batch(batch) if self.trainer.training else batch
