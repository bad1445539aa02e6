"""The contract every datamodule keeps, in memory or not: what the trainer, the callbacks, vae-eval
and vae-sample read from it. A new dataset is a subclass (of InMemoryDataModule when it fits in
memory) and a config file in configs/data/. Torch only: Lightning sees a datamodule through lightning.py."""

import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..errors import UserError
from ..settings import check_data
from .batching import binarize


@dataclass(frozen=True)
class Feed:
    """What the run that asks for a loader tells the data: where batches go, the epoch, how many of this epoch's
    batches training has taken (so a run resumed mid-epoch goes on at the next one), which process of how many
    this is, and whether every epoch takes the same batches in order (debug=overfit). The default: one process
    on the CPU, epoch 0 (vae-eval, vae-sample, tests)."""

    device: torch.device = torch.device("cpu")
    epoch: Callable[[], int] = lambda: 0
    progress: Callable[[], int] | None = None
    rank: int = 0
    world_size: int = 1
    in_order: bool = False


class BaseDataModule(ABC):
    """A datamodule of images (x, label) with x in [0, 1], shaped (N, C, H, W).

    Besides setup() and three loaders (made for a Feed), a subclass sets `shape` (C, H, W), known from the
    config before any data is read, and `name`, and provides the three ways the rest of vae-cli reads
    data: head(), eval_batches() and train_pixel_mean(). Shared here: split sizes given as a count or
    a fraction, and dynamic binarisation of training batches."""

    shape: tuple[int, int, int]
    name = "dataset"

    def __init__(
        self,
        batch_size: int = 128,
        eval_batch_size: int = 1000,
        val_size: int | float = 0.1,
        binarize: bool | None = True,
        split_seed: int = 0,
        seed: int = 0,
        likelihood: str = "bernoulli",
    ):
        check_data(
            batch_size=batch_size,
            eval_batch_size=eval_batch_size,
            val_size=val_size,
            binarize=binarize,
            split_seed=split_seed,
            seed=seed,
            likelihood=likelihood,
        )
        self.likelihood = likelihood  # the family of p(x|z) this data is modelled with unless model.likelihood says
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.val_size = val_size
        self.binarize = bool(binarize)
        self.split_seed = split_seed  # which examples are validation (and test) examples
        self.seed = seed  # the run's seed: the order of training batches

    def prepare_data(self) -> None:  # noqa: B027 (a hook with nothing to do by default, not an abstract method)
        """Download or check the files (once, before setup); nothing by default."""

    @abstractmethod
    def setup(self, stage: str | None = None) -> None:
        """Read and split the data (once: later calls return at once)."""

    @abstractmethod
    def train_dataloader(self, feed: Feed = Feed()):
        """The training batches [x, y] of one epoch, in the order of (seed, epoch)."""

    @abstractmethod
    def val_dataloader(self, feed: Feed = Feed()):
        """The validation split in order (this process's share of it)."""

    @abstractmethod
    def test_dataloader(self, feed: Feed = Feed()):
        """The test split in order (this process's share of it)."""

    @abstractmethod
    def head(self, split: str, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The first n examples (x, y) of a split ("train", "val" or "test"), for image grids and checks."""

    @abstractmethod
    def eval_batches(self, split: str):
        """The whole split in order, as [x, y] batches of eval_batch_size, for scoring."""

    @abstractmethod
    def train_pixel_mean(self) -> torch.Tensor:
        """Mean of the training images, per pixel (C, H, W): where the decoder's output starts."""

    def _count(self, key: str, value, n: int, what: str, pool: str) -> int:
        """The number of examples that data.<key> (a count, or a fraction in (0, 1) of n) asks for,
        checked to lie in 1..n-1 so that both sides of the split are non-empty. Checked here, not with
        the other settings, because only the data knows n."""
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"data.{key}={value!r} must be a number of examples or a fraction in (0, 1).")
        fraction = isinstance(value, float) and 0 < value < 1
        k = round(value * n) if fraction else int(value) if math.isfinite(value) else 0
        if not (fraction or float(value).is_integer()) or not 1 <= k < n:
            raise UserError(
                f"data.{key}={value!r} gives {k} {what} examples, but {pool} has {n}; "
                f"use a count between 1 and {n - 1} or a fraction in (0, 1), e.g. data.{key}=0.1."
            )
        return k

    def _n_val(self, n: int) -> int:
        return self._count("val_size", self.val_size, n, "validation", f"the {self.name} training set")

    def train_batch(self, batch: list[torch.Tensor]) -> list[torch.Tensor]:
        """A training batch on its device as the model sees it: with dynamic binarisation, a fresh Bernoulli
        draw of its pixels at every step."""
        return [binarize(batch[0]), *batch[1:]] if self.binarize else batch
