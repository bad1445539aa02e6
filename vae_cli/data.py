"""Data modules. Every dataset here fits in memory, so each split is held as one tensor
of pixel values in [0, 1] with shape (N, C, H, W) and batched by index, with no per-example
Python work.

Binarisation (for the Bernoulli likelihood): training batches are re-sampled every step
(dynamic binarisation, on the device the batch lands on); validation and test sets are
binarised once with fixed seeds, so every run and every checkpoint is scored on the same bits.
"""
import gzip
import logging
import os
import shutil
from pathlib import Path

import pytorch_lightning as pl
import torch

from .errors import UserError

log = logging.getLogger(__name__)

# Fixed seeds for the data splits and the val/test binarisation: independent of the run's
# `seed`, so runs with different seeds are compared on the same examples.
VAL_BINARIZE_SEED = 1
TEST_BINARIZE_SEED = 2


class TensorBatches:
    """Batches of rows of aligned in-memory tensors, by index: one permutation per epoch (when
    shuffling), then slices of it. No DataLoader, sampler or collate step, so a batch costs one
    gather per tensor; with the tensors on the training device no copy is made at all.

    The permutation of epoch e depends only on (seed, e), so a resumed run sees the same order
    as an uninterrupted one; `epoch` is read from the trainer when one is attached.
    """

    def __init__(self, tensors: list[torch.Tensor], batch_size: int, shuffle: bool, seed: int = 0,
                 epoch=lambda: 0, rank: int = 0, world_size: int = 1):
        self.tensors, self.batch_size, self.shuffle = tensors, batch_size, shuffle
        self.seed, self.epoch, self.rank, self.world_size = seed, epoch, rank, world_size

    def _indices(self) -> torch.Tensor:
        n = len(self.tensors[0])
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch())
            idx = torch.randperm(n, generator=g)
        else:
            idx = torch.arange(n)
        # Each process of a multi-process run takes every world_size-th example.
        return idx[self.rank::self.world_size].to(self.tensors[0].device)

    def __len__(self) -> int:
        n = len(range(self.rank, len(self.tensors[0]), self.world_size))
        return -(-n // self.batch_size)

    def __iter__(self):
        idx = self._indices()
        for start in range(0, len(idx), self.batch_size):
            rows = idx[start:start + self.batch_size]
            yield [t[rows] for t in self.tensors]


def binarize(x: torch.Tensor, seed: int | None = None) -> torch.Tensor:
    """x_bin ~ Bernoulli(x), with a private generator when a seed is given.

    Written as (u < x), u ~ U(0, 1): the same distribution as torch.bernoulli, about 3x faster on
    the CPU, which matters when every training batch is binarised afresh."""
    g = None if seed is None else torch.Generator(device=x.device).manual_seed(seed)
    u = torch.rand(x.shape, generator=g, device=x.device, dtype=x.dtype)
    return (u < x).to(x.dtype)


class InMemoryDataModule(pl.LightningDataModule):
    """A dataset held as tensors. Subclasses set `shape` (C, H, W) and implement `load()`,
    returning (train_x, train_y, test_x, test_y) with x as floats in [0, 1]."""

    shape: tuple[int, int, int]
    name = "dataset"

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
        likelihood: str | None = None,  # the dataset's default p(x|z), read by the model config
    ):
        super().__init__()
        for key, value in (("batch_size", batch_size), ("eval_batch_size", eval_batch_size)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise UserError(f"data.{key}={value!r} is not a valid batch size; use an integer >= 1, e.g. data.{key}=128.")
        self.data_dir = Path(os.path.expanduser(str(data_dir)))
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.val_size = val_size
        self.binarize = bool(binarize)
        self.split_seed = split_seed
        self.seed = seed  # the run's seed: the order of training batches
        self.on_device = bool(on_device)
        self._on_device: dict[str, list[torch.Tensor]] = {}
        self._splits: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None

    def load(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def _n_val(self, n: int) -> int:
        v = self.val_size
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise UserError(f"data.val_size={v!r} must be a number of examples or a fraction in (0, 1).")
        fraction = isinstance(v, float) and 0 < v < 1
        n_val = round(v * n) if fraction else int(v)
        if not (fraction or float(v).is_integer()) or not 1 <= n_val < n:
            raise UserError(
                f"data.val_size={v!r} gives {n_val} validation examples, but the {self.name} training set has {n}; "
                f"use a count between 1 and {n - 1} or a fraction in (0, 1), e.g. data.val_size=0.1."
            )
        return n_val

    def setup(self, stage: str | None = None) -> None:
        if self._splits is not None:
            return
        train_x, train_y, test_x, test_y = self.load()
        n_val = self._n_val(len(train_x))
        perm = torch.randperm(len(train_x), generator=torch.Generator().manual_seed(self.split_seed))
        val_idx, train_idx = perm[:n_val], perm[n_val:]
        val_x = train_x[val_idx]
        if self.binarize:
            val_x, test_x = binarize(val_x, VAL_BINARIZE_SEED), binarize(test_x, TEST_BINARIZE_SEED)
        self._splits = {
            "train": (train_x[train_idx], train_y[train_idx]),
            "val": (val_x, train_y[val_idx]),
            "test": (test_x, test_y),
        }
        log.info("%s: %d train, %d val, %d test examples of shape %s%s", self.name, len(train_idx), n_val,
                 len(test_x), tuple(self.shape), ", binarised" if self.binarize else "")

    def split(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        self.setup()
        return self._splits[name]

    # The two ways the evaluation code reads data, shared by every datamodule (in memory or not).
    def head(self, split: str, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The first n examples (x, y) of a split, for image grids."""
        x, y = self.split(split)
        return x[:n], y[:n]

    def eval_batches(self, split: str):
        """The whole split in order, as [x, y] batches of eval_batch_size."""
        return TensorBatches(list(self.split(split)), self.eval_batch_size, shuffle=False)

    def train_pixel_mean(self) -> torch.Tensor:
        """Mean of the training images, per pixel: what a factorised model of x would predict."""
        return self.split("train")[0].mean(0)

    def _loader(self, split: str, batch_size: int, shuffle: bool) -> TensorBatches:
        tensors = list(self.split(split))
        trainer = self.trainer
        if trainer is not None and self.on_device:
            # The whole split lives on the training device: batches are gathered there, no copies.
            device = trainer.strategy.root_device
            cached = self._on_device.get(split)
            if cached is None or cached[0].device != device:
                self._on_device[split] = cached = [t.to(device) for t in tensors]
            tensors = cached
        return TensorBatches(tensors, batch_size, shuffle, seed=self.seed,
                             epoch=(lambda: trainer.current_epoch) if trainer is not None else (lambda: 0),
                             rank=trainer.global_rank if trainer is not None else 0,
                             world_size=trainer.world_size if trainer is not None else 1)

    def train_dataloader(self) -> TensorBatches:
        return self._loader("train", self.batch_size, shuffle=True)

    def val_dataloader(self) -> TensorBatches:
        return self._loader("val", self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> TensorBatches:
        return self._loader("test", self.eval_batch_size, shuffle=False)

    def transfer_batch_to_device(self, batch, device, dataloader_idx: int):
        # Device-resident splits arrive where they belong; skip Lightning's generic per-step walk.
        if all(t.device == device for t in batch):
            return batch
        return [t.to(device, non_blocking=True) for t in batch]

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        # Dynamic binarisation: a fresh Bernoulli draw of each training batch, on its device.
        if self.binarize and self.trainer is not None and self.trainer.training:
            batch = [binarize(batch[0]), *batch[1:]]
        return batch


class Digits(InMemoryDataModule):
    """scikit-learn's bundled 8x8 handwritten digits (1,797 images, values 0..16): no download.

    There is no official test split, so a fixed `test_size` examples (chosen with a fixed seed)
    are held out as the test set.
    """

    shape = (1, 8, 8)
    name = "digits"

    def __init__(self, test_size: int = 297, **kwargs):
        super().__init__(**kwargs)
        self.test_size = test_size

    def load(self):
        from sklearn.datasets import load_digits

        d = load_digits()
        x = torch.tensor(d.data, dtype=torch.float32).view(-1, *self.shape) / 16.0
        y = torch.tensor(d.target, dtype=torch.long)
        if not 1 <= self.test_size < len(x) - 1:
            raise UserError(f"data.test_size={self.test_size!r} must be between 1 and {len(x) - 2} for digits.")
        perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(12345))
        test, train = perm[: self.test_size], perm[self.test_size:]
        return x[train], y[train], x[test], y[test]


class _TorchvisionIDX(InMemoryDataModule):
    """MNIST-format datasets read through torchvision from `data_dir`, downloaded if absent."""

    shape = (1, 28, 28)
    install_hint = ""
    files = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")

    @property
    def dataset_class(self):
        raise NotImplementedError

    def _raw_dir(self) -> Path:
        return self.data_dir / self.dataset_class.__name__ / "raw"

    def _extra_sources(self) -> list[Path]:
        """Other folders holding the gzipped IDX files (e.g. a distribution's package)."""
        return []

    def _copy_from_extra_sources(self) -> None:
        raw = self._raw_dir()
        if all((raw / f).exists() for f in self.files):
            return
        for src in self._extra_sources():
            if all((src / f"{f}.gz").exists() for f in self.files):
                raw.mkdir(parents=True, exist_ok=True)
                for f in self.files:
                    tmp = raw / f"{f}.part"
                    with gzip.open(src / f"{f}.gz", "rb") as fin, open(tmp, "wb") as fout:
                        shutil.copyfileobj(fin, fout)
                    tmp.replace(raw / f)  # rename last: a killed copy never looks complete
                log.info("%s: unpacked the IDX files from %s into %s", self.name, src, raw)
                return

    def prepare_data(self) -> None:
        self._open(train=True)
        self._open(train=False)

    def _open(self, train: bool):
        cls = self.dataset_class
        self._copy_from_extra_sources()
        try:
            return cls(str(self.data_dir), train=train, download=False)
        except RuntimeError:
            pass  # not on disk: try the real download below
        try:
            return cls(str(self.data_dir), train=train, download=True)
        except Exception as e:  # offline, proxy, HTTP errors: all end the same way for the user
            where = [str(self._raw_dir())] + [str(p) for p in self._extra_sources()]
            raise UserError(
                f"{self.name} is not on disk and could not be downloaded ({str(e).strip().splitlines()[0]}). "
                f"Looked in: {'; '.join(where)}. Supply the files by running once with network access "
                f"(it downloads into data.data_dir={str(self.data_dir)!r}), or by copying the four files "
                f"{', '.join(self.files)} (optionally .gz) into {self._raw_dir()}, or point data.data_dir "
                f"at a folder that already holds them.{self.install_hint}"
            ) from e

    def load(self):
        train, test = self._open(train=True), self._open(train=False)
        def x(ds):
            return ds.data.to(torch.float32).div_(255.0).unsqueeze(1)
        return x(train), train.targets.long(), x(test), test.targets.long()


class MNIST(_TorchvisionIDX):
    name = "mnist"

    @property
    def dataset_class(self):
        from torchvision.datasets import MNIST as cls
        return cls


DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


class FashionMNIST(_TorchvisionIDX):
    """Fashion-MNIST; besides `data_dir` and the download, also found in the files of the
    Debian package dataset-fashion-mnist, which are unpacked into `data_dir` on first use."""

    name = "fashion_mnist"
    install_hint = " On Debian or Ubuntu, `apt-get install dataset-fashion-mnist` provides them."

    @property
    def dataset_class(self):
        from torchvision.datasets import FashionMNIST as cls
        return cls

    def _extra_sources(self) -> list[Path]:
        return [DEBIAN_FASHION_MNIST]


def build_datamodule(data_config: dict | None, **overrides) -> InMemoryDataModule:
    """The datamodule described by a saved data config (a `_target_` and its arguments)."""
    from hydra.utils import instantiate

    if not data_config:
        raise UserError("the checkpoint holds no data config (it was not written by vae-train), so its data is unknown.")
    return instantiate({**data_config, **overrides})
