"""The torchvision datasets (MNIST, Fashion-MNIST, CIFAR-10), read from data_dir or downloaded
there. When a dataset is neither on disk nor downloadable, the message says where it looked and how
to supply the files. Files are prepared once however many runs start together (the jobs of a sweep):
one process at a time writes them, each file under a name of its own, renamed into place when whole."""

import contextlib
import fcntl
import gzip
import logging
import os
import shutil
from pathlib import Path

import torch

from ..errors import UserError
from .cache import create
from .in_memory import InMemoryDataModule

log = logging.getLogger(__name__)
NOFOLLOW, NONBLOCK = getattr(os, "O_NOFOLLOW", 0), getattr(os, "O_NONBLOCK", 0)


@contextlib.contextmanager
def _one_at_a_time(folder: Path, name: str):
    """Held by one process at a time (an advisory lock on a file in `folder`; released when the process ends,
    however it ends). Where the folder cannot be made or written, nothing is locked: whatever writes there then
    fails on its own, naming the folder."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        # Never through a link, nor waiting on a FIFO: either at the lock's name leaves this unlocked.
        fd = os.open(folder / f".{name}.lock", os.O_WRONLY | os.O_CREAT | NOFOLLOW | NONBLOCK, 0o666)
    except OSError:
        yield
        return
    with os.fdopen(fd, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


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
        kept = self.cache_file()
        if self._splits is not None or kept is not None and kept.is_file():  # loaded, or prepared by an earlier run
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
            with _one_at_a_time(self.data_dir, self.name):  # a second process waits, then finds the files
                return cls(str(self.data_dir), train=train, download=True)
        except Exception as e:  # offline, proxy, HTTP errors: all end the same way for the user
            why = " ".join(str(e).split()) or type(e).__name__  # every mirror's reason, on one line
            raise UserError(
                f"{self.name} is not on disk and could not be downloaded ({why}). "
                f"Looked in: {'; '.join(map(str, self._looked_in()))}. Supply the files by running once with "
                f"network access (it downloads into data.data_dir={str(self.data_dir)!r}), or by "
                f"{self._how_to_copy()}, or point data.data_dir at a folder that already holds them.{self.install_hint}"
            ) from e


class _TorchvisionIDX(_Torchvision):
    """MNIST-format datasets read through torchvision from `data_dir`, downloaded if absent."""

    shape = (1, 28, 28)
    files = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")

    def _raw_dir(self) -> Path:
        return self.data_dir / self.folder / "raw"

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
                with _one_at_a_time(raw, "unpack"):
                    for f in (f for f in self.files if not (raw / f).exists()):  # another process may have done it
                        tmp = raw / f".{f}.{os.getpid()}.part"
                        try:
                            with gzip.open(src / f"{f}.gz", "rb") as fin, create(tmp) as fout:
                                shutil.copyfileobj(fin, fout)
                            tmp.replace(raw / f)  # rename last: a killed copy never looks complete
                        finally:
                            tmp.unlink(missing_ok=True)
                log.info("%s: unpacked the IDX files from %s into %s", self.name, src, raw)
                return

    def _open(self, train: bool):
        self._copy_from_extra_sources()
        return super()._open(train)

    def sources(self) -> list[Path]:
        return [self._raw_dir() / f for f in self.files]

    def load(self):
        train, test = self._open(train=True), self._open(train=False)

        def x(ds):
            return ds.data.to(torch.float32).div_(255.0).unsqueeze(1)

        return x(train), train.targets.long(), x(test), test.targets.long()


class MNIST(_TorchvisionIDX):
    name = "mnist"
    folder = "MNIST"  # torchvision's folder under data_dir

    @property
    def dataset_class(self):
        from torchvision.datasets import MNIST as cls

        return cls


DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


class FashionMNIST(_TorchvisionIDX):
    """Fashion-MNIST; besides `data_dir` and the download, also found in the files of the
    Debian package dataset-fashion-mnist, which are unpacked into `data_dir` on first use."""

    name = "fashion_mnist"
    folder = "FashionMNIST"
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
    folder = "cifar-10-batches-py"  # torchvision's, as extracted from its archive
    files = ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch")

    @property
    def dataset_class(self):
        from torchvision.datasets import CIFAR10 as cls

        return cls

    def _looked_in(self) -> list[Path]:
        return [self.data_dir / self.folder]

    def sources(self) -> list[Path]:
        return [self.data_dir / self.folder / f for f in self.files]

    def _how_to_copy(self) -> str:
        return (
            f"extracting cifar-10-python.tar.gz (https://www.cs.toronto.edu/~kriz/cifar.html) into "
            f"{self.data_dir}, so that {self._looked_in()[0]} holds data_batch_1 to data_batch_5, "
            f"test_batch and batches.meta"
        )

    def load(self):
        def xy(ds):
            # torchvision keeps the images as uint8 (N, H, W, C); make them (N, C, H, W) in [0, 1].
            x = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous().to(torch.float32).div_(255.0)
            return x, torch.tensor(ds.targets, dtype=torch.long)

        return (*xy(self._open(train=True)), *xy(self._open(train=False)))
