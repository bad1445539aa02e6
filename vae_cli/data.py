"""Data modules. The built-in datasets fit in memory, so each split is held as one tensor
of pixel values in [0, 1] with shape (N, C, H, W) and batched by index, with no per-example
Python work (InMemoryDataModule). A user's folder of images need not fit: ImageFolder reads
the files batch by batch through DataLoader workers. Both offer the same interface (BaseDataModule).

Binarisation (for the Bernoulli likelihood): training batches are re-sampled every step
(dynamic binarisation, on the device the batch lands on); validation and test sets are
binarised once with fixed seeds, so every run and every checkpoint is scored on the same bits.
"""
import gzip
import logging
import math
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


class BaseDataModule(pl.LightningDataModule):
    """What every datamodule here shares, in memory or not: checked batch sizes, split sizes given
    as a count or a fraction, and dynamic binarisation of training batches.

    Subclasses set `shape` (C, H, W) and `name`, and provide setup(), the three Lightning loaders,
    and the two ways the evaluation code reads data: head(split, n) and eval_batches(split)."""

    shape: tuple[int, int, int]
    name = "dataset"

    def __init__(self, batch_size: int = 128, eval_batch_size: int = 1000, val_size: int | float = 0.1,
                 binarize: bool | None = True, split_seed: int = 0, seed: int = 0):
        super().__init__()
        for key, value in (("batch_size", batch_size), ("eval_batch_size", eval_batch_size)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise UserError(f"data.{key}={value!r} is not a valid batch size; use an integer >= 1, e.g. data.{key}=128.")
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.val_size = val_size
        self.binarize = bool(binarize)
        self.split_seed = split_seed
        self.seed = seed  # the run's seed: the order of training batches

    def _count(self, key: str, value, n: int, what: str, pool: str) -> int:
        """The number of examples that data.<key> (a count, or a fraction in (0, 1) of n) asks for,
        checked to lie in 1..n-1 so that both sides of the split are non-empty."""
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

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        # Dynamic binarisation: a fresh Bernoulli draw of each training batch, on its device.
        if self.binarize and self.trainer is not None and self.trainer.training:
            batch = [binarize(batch[0]), *batch[1:]]
        return batch


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
        likelihood: str | None = None,  # the dataset's default p(x|z), read by the model config
    ):
        super().__init__(batch_size=batch_size, eval_batch_size=eval_batch_size, val_size=val_size,
                         binarize=binarize, split_seed=split_seed, seed=seed)
        self.data_dir = Path(os.path.expanduser(str(data_dir)))
        self.on_device = bool(on_device)
        self._on_device: dict[str, list[torch.Tensor]] = {}
        self._splits: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None

    def load(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        raise NotImplementedError

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


class _Torchvision(InMemoryDataModule):
    """A torchvision dataset read from `data_dir`, downloaded there if absent. When it is neither on
    disk nor downloadable, a UserError says where it looked and how to supply the files."""

    install_hint = ""

    @property
    def dataset_class(self):
        raise NotImplementedError

    def _looked_in(self) -> list[Path]:
        raise NotImplementedError

    def _how_to_copy(self) -> str:
        """How to put the files on disk by hand, completing "Supply the files ... or by ..."."""
        raise NotImplementedError

    def prepare_data(self) -> None:
        if self._splits is not None:  # already loaded: Lightning calls this again at fit and at test
            return
        self._open(train=True)
        self._open(train=False)

    def _open(self, train: bool):
        cls = self.dataset_class
        try:
            return cls(str(self.data_dir), train=train, download=False)
        except RuntimeError:
            pass  # not on disk: try the real download below
        try:
            return cls(str(self.data_dir), train=train, download=True)
        except Exception as e:  # offline, proxy, HTTP errors: all end the same way for the user
            raise UserError(
                f"{self.name} is not on disk and could not be downloaded ({str(e).strip().splitlines()[0]}). "
                f"Looked in: {'; '.join(map(str, self._looked_in()))}. Supply the files by running once with "
                f"network access (it downloads into data.data_dir={str(self.data_dir)!r}), or by "
                f"{self._how_to_copy()}, or point data.data_dir at a folder that already holds them.{self.install_hint}"
            ) from e


class _TorchvisionIDX(_Torchvision):
    """MNIST-format datasets read through torchvision from `data_dir`, downloaded if absent."""

    shape = (1, 28, 28)
    files = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")

    def _raw_dir(self) -> Path:
        return self.data_dir / self.dataset_class.__name__ / "raw"

    def _extra_sources(self) -> list[Path]:
        """Other folders holding the gzipped IDX files (e.g. a distribution's package)."""
        return []

    def _looked_in(self) -> list[Path]:
        return [self._raw_dir(), *self._extra_sources()]

    def _how_to_copy(self) -> str:
        return f"copying the four files {', '.join(self.files)} (optionally .gz) into {self._raw_dir()}"

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

    def _open(self, train: bool):
        self._copy_from_extra_sources()
        return super()._open(train)

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


class CIFAR10(_Torchvision):
    """CIFAR-10 through torchvision: 50,000 training and 10,000 test colour images of 32x32 in ten
    classes, read from `<data_dir>/cifar-10-batches-py`, downloaded and extracted there if absent."""

    shape = (3, 32, 32)
    name = "cifar10"

    @property
    def dataset_class(self):
        from torchvision.datasets import CIFAR10 as cls
        return cls

    def _looked_in(self) -> list[Path]:
        return [self.data_dir / self.dataset_class.base_folder]

    def _how_to_copy(self) -> str:
        return (f"extracting cifar-10-python.tar.gz (https://www.cs.toronto.edu/~kriz/cifar.html) into "
                f"{self.data_dir}, so that {self._looked_in()[0]} holds data_batch_1 to data_batch_5, "
                f"test_batch and batches.meta")

    def load(self):
        def xy(ds):
            # torchvision keeps the images as uint8 (N, H, W, C); make them (N, C, H, W) in [0, 1].
            x = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous().to(torch.float32).div_(255.0)
            return x, torch.tensor(ds.targets, dtype=torch.long)
        return (*xy(self._open(train=True)), *xy(self._open(train=False)))


IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def _images_in(folder: Path, recursive: bool) -> list[Path]:
    """The image files in a folder (and below it, when recursive), sorted. Hidden files and
    folders are skipped: macOS "._name.jpg" resource forks and .ipynb_checkpoints are not images."""
    found = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in found if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


class _ImageFiles(torch.utils.data.Dataset):
    """(x, label) pairs read from image files on every access: decoded, converted to grey or RGB,
    resized to (H, W) and scaled to [0, 1]. The image is resized as 8-bit PIL pixels before
    ToTensor divides by 255, so x stays on the k/255 grid the discretised likelihoods assume.

    With `binarize_seed`, x is binarised with a generator seeded by (binarize_seed, the image's
    index in the folder's file list): each image gets the same bits however it is batched, in
    whichever worker process, in every run."""

    def __init__(self, files: list[str], labels: list[int], ids: list[int], channels: int,
                 size: tuple[int, int], binarize_seed: int | None = None):
        from torchvision import transforms

        self.files, self.labels, self.ids = files, labels, ids
        self.mode = "L" if channels == 1 else "RGB"
        self.size = size
        self.transform = transforms.Compose([transforms.Resize(size), transforms.ToTensor()])
        self.binarize_seed = binarize_seed

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        from PIL import Image, ImageOps

        try:
            with Image.open(self.files[i]) as im:
                # JPEG only: decode at a reduced scale that still covers the target size, which makes
                # a camera photo shrunk to 32x32 several times cheaper to read.
                im.draft(self.mode, (max(self.size),) * 2)
                im = ImageOps.exif_transpose(im).convert(self.mode)  # camera photos upright
        except OSError as e:
            raise UserError(f"data.path: cannot read the image {self.files[i]} ({e}).") from e
        x = self.transform(im)
        if self.binarize_seed is not None:
            x = binarize(x, (self.binarize_seed << 32) + self.ids[i])
        return x, self.labels[i]


class _Shard(torch.utils.data.DistributedSampler):
    """Every num_replicas-th example from rank on, in order and without padding: the processes of a
    multi-process run score the validation or test split exactly once between them (Lightning's own
    sampler pads the shards to equal length by repeating examples, which would count some twice)."""

    def _indices(self) -> range:
        return range(self.rank, len(self.dataset), self.num_replicas)

    def __iter__(self):
        return iter(self._indices())

    def __len__(self) -> int:
        return len(self._indices())


class ImageFolder(BaseDataModule):
    """A user's own images, read from `path` batch by batch through DataLoader workers (never all in
    memory): PNG, JPEG, BMP or WebP files, resized to `image_size` (H, W) (the aspect ratio is not
    kept: crop beforehand if it matters), as grey (channels=1) or RGB (channels=3) in [0, 1].

    Labels, only used to colour the latent projector: with sub-folders, each sub-folder holding
    images (at any depth below it) is a class, numbered in sorted order; images directly in `path`
    get label 0 when there are no class sub-folders, and otherwise the next label after the last
    class (a warning says so). The validation and test sets (`val_size`, `test_size`: counts or
    fractions of all images) are drawn with the fixed `split_seed`, independent of the run's seed.
    """

    name = "image_folder"

    def __init__(
        self,
        path: str | None = None,
        image_size: int | tuple[int, int] = 32,
        channels: int = 3,
        val_size: int | float = 0.1,
        test_size: int | float = 0.1,
        batch_size: int = 128,
        eval_batch_size: int = 256,
        num_workers: int = 2,
        binarize: bool | None = False,
        split_seed: int = 0,
        seed: int = 0,
        likelihood: str | None = None,  # the dataset's default p(x|z), read by the model config
        data_dir: str | None = None,  # where the images are now, when they have moved: replaces path
    ):
        super().__init__(batch_size=batch_size, eval_batch_size=eval_batch_size, val_size=val_size,
                         binarize=binarize, split_seed=split_seed, seed=seed)
        # vae-eval and vae-sample pass data_dir= for data that has moved since training; for a folder
        # of images that is the folder itself.
        path = data_dir if data_dir is not None else path
        if path is None or str(path).strip() == "":
            raise UserError("data.path is not set: point it at a folder of images, e.g. data=image_folder data.path=~/pictures.")
        self.path = Path(os.path.expanduser(str(path)))
        size = [image_size] * 2 if isinstance(image_size, int) else list(image_size)
        if len(size) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in size):
            raise UserError(f"data.image_size={image_size!r} must be an integer >= 1 or a pair [height, width], e.g. data.image_size=[32,32].")
        if channels not in (1, 3) or isinstance(channels, bool):
            raise UserError(f"data.channels={channels!r} must be 1 (grey) or 3 (RGB).")
        if not isinstance(num_workers, int) or isinstance(num_workers, bool) or num_workers < 0:
            raise UserError(f"data.num_workers={num_workers!r} must be an integer >= 0 (0: read images in the main process).")
        self.image_size = tuple(size)
        self.channels = channels
        self.shape = (channels, *self.image_size)  # known from the config alone, before any image is read
        self.test_size = test_size
        self.num_workers = num_workers
        self._datasets: dict[str, _ImageFiles] | None = None
        self._pixel_mean: torch.Tensor | None = None

    def _list_images(self) -> tuple[list[Path], list[int]]:
        accepted = f"files ending in {', '.join(IMAGE_EXTENSIONS)} (any case), directly in it or in one sub-folder per class"
        if not self.path.is_dir():
            raise UserError(f"data.path={str(self.path)!r} is not a folder; point it at a folder of images: {accepted}.")
        classes = [d for d in sorted(self.path.iterdir()) if d.is_dir() and not d.name.startswith(".")]
        per_class = [imgs for imgs in (_images_in(d, recursive=True) for d in classes) if imgs]
        loose = _images_in(self.path, recursive=False)
        if loose and per_class:
            log.warning("%s: %d images lie directly in data.path beside %d class sub-folders; they get label %d",
                        self.name, len(loose), len(per_class), len(per_class))
        files, labels = [], []
        for label, imgs in enumerate([*per_class, loose]):
            files += imgs
            labels += [label] * len(imgs)
        if not files:
            raise UserError(f"data.path={str(self.path)!r} holds no images; expected {accepted}.")
        return files, labels

    def setup(self, stage: str | None = None) -> None:
        if self._datasets is not None:
            return
        files, labels = self._list_images()
        n = len(files)
        pool = f"data.path={str(self.path)!r}"
        n_test = self._count("test_size", self.test_size, n, "test", pool)
        n_val = self._count("val_size", self.val_size, n, "validation", pool)
        if n_val + n_test >= n:
            raise UserError(
                f"data.val_size={self.val_size!r} and data.test_size={self.test_size!r} take {n_val} + {n_test} of "
                f"the {n} images in {pool}, leaving none to train on; make them smaller (counts or fractions).")
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(self.split_seed)).tolist()
        order = {"test": perm[:n_test], "val": perm[n_test:n_test + n_val], "train": perm[n_test + n_val:]}
        fixed = {"train": None, "val": VAL_BINARIZE_SEED, "test": TEST_BINARIZE_SEED}
        self._datasets = {
            split: _ImageFiles([str(files[i]) for i in ids], [labels[i] for i in ids], ids, self.channels,
                               self.image_size, fixed[split] if self.binarize else None)
            for split, ids in order.items()
        }
        log.info("%s: %d train, %d val, %d test images from %s, resized to %s%s", self.name, n - n_val - n_test,
                 n_val, n_test, self.path, tuple(self.shape), ", binarised" if self.binarize else "")

    def prepare_data(self) -> None:
        # Nothing to download; listing the folder here stops a bad data.path before anything else.
        self.setup()

    def dataset(self, split: str) -> _ImageFiles:
        self.setup()
        return self._datasets[split]

    def _loader(self, dataset, batch_size: int, sampler=None, persistent: bool = False):
        from torch.utils.data import DataLoader

        # No more workers than batches: a handful of images is read faster than a process starts.
        workers = min(self.num_workers, -(-len(dataset) // batch_size))
        trainer = self.trainer
        return DataLoader(
            dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
            persistent_workers=persistent and workers > 0,  # no new processes every epoch
            pin_memory=trainer is not None and trainer.strategy.root_device.type == "cuda",
            # A private generator for the workers' base seed: building a loader leaves the global
            # RNG (weight init, reparameterisation noise) untouched.
            generator=torch.Generator().manual_seed(self.seed),
        )

    def train_dataloader(self):
        from torch.utils.data import DistributedSampler

        trainer = self.trainer
        # DistributedSampler even in one process: a permutation that depends only on (seed, epoch),
        # advanced by Lightning's set_epoch (so a resumed run replays the same order), and sharded
        # by rank in multi-process runs, where Lightning then leaves it as it is.
        sampler = DistributedSampler(
            self.dataset("train"), shuffle=True, seed=self.seed * 100_003,  # seed s, epoch e: no overlap with s+1
            num_replicas=trainer.world_size if trainer is not None else 1,
            rank=trainer.global_rank if trainer is not None else 0,
        )
        return self._loader(self.dataset("train"), self.batch_size, sampler=sampler, persistent=True)

    def _eval_sampler(self, split: str):
        trainer = self.trainer
        if trainer is None or trainer.world_size == 1:
            return None
        return _Shard(self.dataset(split), num_replicas=trainer.world_size, rank=trainer.global_rank)

    def val_dataloader(self):
        return self._loader(self.dataset("val"), self.eval_batch_size, sampler=self._eval_sampler("val"), persistent=True)

    def test_dataloader(self):
        return self._loader(self.dataset("test"), self.eval_batch_size, sampler=self._eval_sampler("test"))

    def eval_batches(self, split: str):
        """The whole split in order, as [x, y] batches of eval_batch_size."""
        return self._loader(self.dataset(split), self.eval_batch_size)

    def head(self, split: str, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The first n examples (x, y) of a split, for image grids."""
        from torch.utils.data import Subset

        ds = self.dataset(split)
        batches = list(self._loader(Subset(ds, range(min(n, len(ds)))), self.eval_batch_size))
        if not batches:
            return torch.empty(0, *self.shape), torch.empty(0, dtype=torch.long)
        return torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])

    def train_pixel_mean(self) -> torch.Tensor:
        """Mean of the training images, per pixel: one pass over the files, then cached."""
        if self._pixel_mean is None:
            total, count = torch.zeros(self.shape, dtype=torch.float64), 0
            for x, _ in self.eval_batches("train"):
                total += x.sum(0, dtype=torch.float64)
                count += len(x)
            self._pixel_mean = (total / count).float()
        return self._pixel_mean


def build_datamodule(data_config: dict | None, **overrides) -> BaseDataModule:
    """The datamodule described by a saved data config (a `_target_` and its arguments)."""
    from hydra.utils import instantiate

    if not data_config:
        raise UserError("the checkpoint holds no data config (it was not written by vae-train), so its data is unknown.")
    return instantiate({**data_config, **overrides})
