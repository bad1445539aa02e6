"""Datasets held in memory: each split is one tensor of pixel values in [0, 1] shaped (N, C, H, W),
on the training device by default, batched by index with no per-example Python work. Digits, the
embedded default, lives here; the torchvision sets in torchvision_sets.py."""

import logging
import os
from abc import abstractmethod
from pathlib import Path

import torch

from ..errors import UserError
from ..settings import check_data
from . import cache
from .base import BaseDataModule, Feed
from .batching import TEST_BINARIZE_SEED, VAL_BINARIZE_SEED, TensorBatches, binarize, binarize_numpy

log = logging.getLogger(__name__)


class InMemoryDataModule(BaseDataModule):
    """A dataset held as tensors. Subclasses set `shape` (C, H, W) and implement `load()`,
    returning (train_x, train_y, test_x, test_y) with x as floats in [0, 1]."""

    def __init__(
        self,
        data_dir: str = "data",
        batch_size: int = 128,
        eval_batch_size: int = 1000,
        val_size: int | float = 0.1,
        binarize: bool | None = True,
        split_seed: int = 0,
        seed: int = 0,
        on_device: bool = True,
        val_split: str = "random",
        eval_binarize_numpy_seed: int | None = None,
        likelihood: str = "bernoulli",
    ):
        super().__init__(
            batch_size=batch_size,
            eval_batch_size=eval_batch_size,
            val_size=val_size,
            binarize=binarize,
            split_seed=split_seed,
            seed=seed,
            likelihood=likelihood,
        )
        check_data(
            val_split=val_split,
            eval_binarize_numpy_seed=eval_binarize_numpy_seed,
            on_device=on_device,
            data_dir=data_dir,
        )
        self.data_dir = Path(os.path.expanduser(str(data_dir)))
        self.on_device = bool(on_device)
        # "random": val_size examples drawn with split_seed; "last": the training file's last val_size examples.
        self.val_split = val_split
        # None: val and test binarised with vae-cli's fixed torch seeds; an integer: with numpy under that seed.
        self.eval_binarize_numpy_seed = eval_binarize_numpy_seed
        self._on_device: dict[str, list[torch.Tensor]] = {}
        self._splits: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None

    @abstractmethod
    def load(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(train_x, train_y, test_x, test_y), x as floats in [0, 1] shaped (N, C, H, W)."""

    def sources(self) -> list[Path]:
        """The files load() reads, which fingerprint the prepared splits kept beside the data (cache.py); none
        (the default): nothing is kept, the data is prepared at every start."""
        return []

    def cache_settings(self) -> dict:
        """Every setting the splits depend on."""
        return {
            "class": type(self).__qualname__,
            "val_size": self.val_size,
            "val_split": self.val_split,
            "split_seed": self.split_seed,
            "binarize": self.binarize,
            "eval_binarize_numpy_seed": self.eval_binarize_numpy_seed,
        }

    def _data_folder(self) -> Path:
        """data_dir, where the data is read and its prepared splits kept; refused when it, or the nearest folder
        above it that exists, is a file."""
        try:
            found = next(p for p in (self.data_dir, *self.data_dir.parents) if p.exists())  # at the latest . or /
        except OSError:  # a folder this user may not look into: what reads or writes there says so
            return self.data_dir
        if not found.is_dir():
            inside = "" if found == self.data_dir else f" lies in {str(found)!r}, which"
            raise UserError(
                f"data.data_dir={str(self.data_dir)!r}{inside} is a file, not a folder. Point "
                f"data.data_dir at a folder (where {self.name}'s files are read and its prepared splits "
                "kept; it is made if missing), or move the file away."
            )
        return self.data_dir

    def cache_file(self) -> Path | None:
        """Where the prepared splits are kept; None while a source is missing (nothing prepared yet)."""
        return self._kept()[1]

    def _kept(self) -> tuple[str | None, Path | None]:
        """The key of the prepared splits (everything they depend on) and the file they are kept in."""
        folder = self._data_folder()
        sources = self.sources()
        if not sources or not all(p.is_file() for p in sources):
            return None, None
        key = cache.key(self.name, self.cache_settings(), sources)
        return key, cache.path(folder, self.name, key)

    def setup(self, stage: str | None = None) -> None:
        if self._splits is not None:
            return
        key, kept = self._kept()
        self._splits = cache.read(kept, key, self.shape) if kept else None
        if self._splits is None:
            self._splits = self._prepare()
            if kept:
                cache.write(kept, key, self._splits)
        n = {s: len(x) for s, (x, _) in self._splits.items()}
        log.info(
            "%s: %d train, %d val, %d test examples of shape %s%s",
            self.name,
            n["train"],
            n["val"],
            n["test"],
            tuple(self.shape),
            ", binarised" if self.binarize else "",
        )

    def _prepare(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """The splits from the sources: read, split, and the evaluation splits binarised with their seeds."""
        train_x, train_y, test_x, test_y = self.load()
        n_val = self._n_val(len(train_x))
        if self.val_split == "last":
            perm = torch.arange(len(train_x)).roll(n_val)  # the last n_val first
        else:
            perm = torch.randperm(len(train_x), generator=torch.Generator().manual_seed(self.split_seed))
        val_idx, train_idx = perm[:n_val], perm[n_val:]
        val_x = train_x[val_idx]
        if self.binarize and self.eval_binarize_numpy_seed is not None:
            val_x, test_x = binarize_numpy([val_x, test_x], self.eval_binarize_numpy_seed)
        elif self.binarize:
            val_x, test_x = binarize(val_x, VAL_BINARIZE_SEED), binarize(test_x, TEST_BINARIZE_SEED)
        return {
            "train": (train_x[train_idx], train_y[train_idx]),
            "val": (val_x, train_y[val_idx]),
            "test": (test_x, test_y),
        }

    def split(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        self.setup()
        return self._splits[name]

    def head(self, split: str, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.split(split)
        return x[:n], y[:n]

    def eval_batches(self, split: str):
        return TensorBatches(list(self.split(split)), self.eval_batch_size, shuffle=False)

    def train_pixel_mean(self) -> torch.Tensor:
        return self.split("train")[0].mean(0)

    def _loader(self, split: str, batch_size: int, shuffle: bool, feed: Feed) -> TensorBatches:
        tensors = list(self.split(split))
        if self.on_device and feed.device.type != "cpu":
            # The whole split lives on the training device: batches are gathered there, no copies.
            cached = self._on_device.get(split)
            if cached is None or cached[0].device != feed.device:
                self._on_device[split] = cached = [t.to(feed.device) for t in tensors]
            tensors = cached
        return TensorBatches(
            tensors,
            batch_size,
            shuffle,
            seed=self.seed,
            epoch=feed.epoch,
            rank=feed.rank,
            world_size=feed.world_size,
            progress=feed.progress if split == "train" else None,
        )

    def train_dataloader(self, feed: Feed = Feed()) -> TensorBatches:
        # debug=overfit: the same few batches every epoch, so in file order.
        return self._loader("train", self.batch_size, shuffle=not feed.in_order, feed=feed)

    def val_dataloader(self, feed: Feed = Feed()) -> TensorBatches:
        return self._loader("val", self.eval_batch_size, shuffle=False, feed=feed)

    def test_dataloader(self, feed: Feed = Feed()) -> TensorBatches:
        return self._loader("test", self.eval_batch_size, shuffle=False, feed=feed)


class Digits(InMemoryDataModule):
    """The 8x8 handwritten digits (1,797 images, values 0..16) that ship inside vae-cli: no download.

    They are the test set of "Optical Recognition of Handwritten Digits" (E. Alpaydin and C. Kaynak, UCI Machine
    Learning Repository, 1998, doi:10.24432/C50P49, CC BY 4.0), as scikit-learn bundles them (load_digits), kept
    here as bytes (digits.npz) so that reading them needs neither scikit-learn nor the SciPy it pulls in.

    There is no official test split, so a fixed `test_size` examples (chosen with a fixed seed)
    are held out as the test set.
    """

    shape = (1, 8, 8)
    name = "digits"
    FILE = Path(__file__).with_name("digits.npz")

    def __init__(self, test_size: int = 297, **kwargs):
        super().__init__(**kwargs)
        check_data(test_size=test_size)
        self.test_size = test_size

    def sources(self) -> list[Path]:
        return [self.FILE]

    def cache_settings(self) -> dict:
        return {**super().cache_settings(), "test_size": self.test_size}

    def load(self):
        import numpy as np

        with np.load(self.FILE) as d:
            x = torch.from_numpy(d["images"]).float().view(-1, *self.shape) / 16.0
            y = torch.from_numpy(d["labels"]).long()
        if not 1 <= self.test_size < len(x) - 1:
            raise UserError(f"data.test_size={self.test_size!r} must be between 1 and {len(x) - 2} for digits.")
        perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(12345))
        test, train = perm[: self.test_size], perm[self.test_size :]
        return x[train], y[train], x[test], y[test]
