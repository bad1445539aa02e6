"""A user's own folder of images, which need not fit in memory: read batch by batch through
DataLoader workers."""

import contextlib
import logging
import os
import warnings
from pathlib import Path

import torch

from ..errors import UserError
from ..settings import check_data
from .base import BaseDataModule, Feed
from .batching import TEST_BINARIZE_SEED, VAL_BINARIZE_SEED, binarize

log = logging.getLogger(__name__)


IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def _images_in(folder: Path, recursive: bool) -> list[Path]:
    """The image files in a folder (and below it, when recursive), sorted. Hidden files and
    folders are skipped: macOS "._name.jpg" resource forks and .ipynb_checkpoints are not images."""
    found = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(
        p
        for p in found
        if p.suffix.lower() in IMAGE_EXTENSIONS
        and p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


class Unreadable(Exception):
    """A file that does not read as an image: not one, truncated, or with a header that lies."""


@contextlib.contextmanager
def _image(path: str):
    """The image in a file, opened (its header read, not yet decoded). Whatever goes wrong while it is opened or
    decoded in the block is the file's fault, raised as Unreadable. Among those: a header claiming more pixels than
    PIL's limit (Image.MAX_IMAGE_PIXELS, about 89 million), refused before anything is allocated for them."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                yield im
    except Exception as e:  # OSError, SyntaxError, ValueError...: each decoder fails its own way
        raise Unreadable(" ".join(str(e).split())[:200] or type(e).__name__) from e


def _decoded(path: str, mode: str, size: tuple[int, int]):
    """The image in a file, decoded upright as `mode` (L or RGB), for resizing to `size`; Unreadable if it is not."""
    from PIL import ImageOps

    with _image(path) as im:
        # JPEG only: decode at a reduced scale that still covers the target size, which makes
        # a camera photo shrunk to 32x32 several times cheaper to read.
        im.draft(mode, (max(size),) * 2)
        return ImageOps.exif_transpose(im).convert(mode)  # camera photos upright


def _readable(path: Path, decode_as: tuple | None = None) -> bool:
    """Whether the file opens as an image: its header only, or decoded as _decoded(path, *decode_as) would."""
    try:
        if decode_as:
            _decoded(path, *decode_as)
        else:
            with _image(path):
                pass
        return True
    except Unreadable:
        return False


class _ImageFiles(torch.utils.data.Dataset):
    """(x, label) pairs read from image files on every access: decoded, converted to grey or RGB,
    resized to (H, W) and scaled to [0, 1]. The image is resized as 8-bit PIL pixels before
    ToTensor divides by 255, so x stays on the k/255 grid the discretised likelihoods assume.

    With `binarize_seed`, x is binarised with a generator seeded by (binarize_seed, the image's
    index in the folder's file list): each image gets the same bits however it is batched, in
    whichever worker process, in every run."""

    def __init__(
        self,
        files: list[str],
        labels: list[int],
        ids: list[int],
        channels: int,
        size: tuple[int, int],
        binarize_seed: int | None = None,
    ):
        from torchvision import transforms

        self.files, self.labels, self.ids = files, labels, ids
        self.mode = "L" if channels == 1 else "RGB"
        self.size = size
        self.transform = transforms.Compose([transforms.Resize(size), transforms.ToTensor()])
        self.binarize_seed = binarize_seed

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        try:
            im = _decoded(self.files[i], self.mode, self.size)
        except Unreadable as e:
            raise UserError(
                f"data.path: cannot read the image {self.files[i]} ({e}). Remove or replace it, or "
                "train without the files that do not decode with data.skip_unreadable=true."
            ) from None
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
        data_dir: str | None = None,  # where the images are now, when they have moved: replaces path
        skip_unreadable: bool = False,  # train without files that do not open as images, instead of stopping
        likelihood: str = "discretized_logistic",
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
        # vae-eval and vae-sample pass data_dir= for data that has moved since training; for a folder
        # of images that is the folder itself.
        path = data_dir if data_dir is not None else path
        check_data(
            path=path,
            channels=channels,
            image_size=image_size,
            test_size=test_size,
            num_workers=num_workers,
            skip_unreadable=skip_unreadable,
        )
        self.path = Path(os.path.expanduser(str(path)))
        self.skip_unreadable = skip_unreadable
        self.image_size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        self.channels = channels
        self.shape = (channels, *self.image_size)  # known from the config alone, before any image is read
        self.test_size = test_size
        self.num_workers = num_workers
        self._datasets: dict[str, _ImageFiles] | None = None
        self._pixel_mean: torch.Tensor | None = None

    def _list_images(self) -> tuple[list[Path], list[int]]:
        accepted = (
            f"files ending in {', '.join(IMAGE_EXTENSIONS)} (any case), directly in it or in one sub-folder per class"
        )
        if not self.path.is_dir():
            raise UserError(
                f"data.path={str(self.path)!r} is not a folder; point it at a folder of images: {accepted}."
            )
        classes = [d for d in sorted(self.path.iterdir()) if d.is_dir() and not d.name.startswith(".")]
        per_class = [imgs for imgs in (_images_in(d, recursive=True) for d in classes) if imgs]
        loose = _images_in(self.path, recursive=False)
        if loose and per_class:
            log.warning(
                "%s: %d images lie directly in data.path beside %d class sub-folders; they get label %d",
                self.name,
                len(loose),
                len(per_class),
                len(per_class),
            )
        files, labels = [], []
        for label, imgs in enumerate([*per_class, loose]):
            files += imgs
            labels += [label] * len(imgs)
        if not files:
            raise UserError(f"data.path={str(self.path)!r} holds no images; expected {accepted}.")
        # Headers only, which is quick; with skip_unreadable, every image decoded once, so that the files left out
        # include those whose header lies (truncated, or claiming another size or mode), not only non-images.
        decode_as = ("L" if self.channels == 1 else "RGB", self.image_size) if self.skip_unreadable else None
        bad = [i for i, f in enumerate(files) if not _readable(f, decode_as)]
        shown = ", ".join(str(files[i]) for i in bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        if bad and not self.skip_unreadable:
            raise UserError(
                f"data.path={str(self.path)!r}: {len(bad)} of its {len(files)} image files cannot be read "
                f"as images: {shown}. Remove or replace them, or train without them with "
                "data.skip_unreadable=true."
            )
        if bad:
            log.warning(
                "%s: skipping %d unreadable image files of %d (data.skip_unreadable=true): %s",
                self.name,
                len(bad),
                len(files),
                shown,
            )
            keep = [i for i in range(len(files)) if i not in set(bad)]
            files, labels = [files[i] for i in keep], [labels[i] for i in keep]
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
                f"the {n} images in {pool}, leaving none to train on; make them smaller (counts or fractions)."
            )
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(self.split_seed)).tolist()
        order = {"test": perm[:n_test], "val": perm[n_test : n_test + n_val], "train": perm[n_test + n_val :]}
        fixed = {"train": None, "val": VAL_BINARIZE_SEED, "test": TEST_BINARIZE_SEED}
        self._datasets = {
            split: _ImageFiles(
                [str(files[i]) for i in ids],
                [labels[i] for i in ids],
                ids,
                self.channels,
                self.image_size,
                fixed[split] if self.binarize else None,
            )
            for split, ids in order.items()
        }
        log.info(
            "%s: %d train, %d val, %d test images from %s, resized to %s%s",
            self.name,
            n - n_val - n_test,
            n_val,
            n_test,
            self.path,
            tuple(self.shape),
            ", binarised" if self.binarize else "",
        )

    def prepare_data(self) -> None:
        # Nothing to download; listing the folder here stops a bad data.path before anything else.
        self.setup()

    def dataset(self, split: str) -> _ImageFiles:
        self.setup()
        return self._datasets[split]

    def _loader(self, dataset, batch_size: int, sampler=None, persistent: bool = False, feed: Feed = Feed()):
        from torch.utils.data import DataLoader

        # No more workers than batches: a handful of images is read faster than a process starts.
        workers = min(self.num_workers, -(-len(dataset) // batch_size))
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            num_workers=workers,
            persistent_workers=persistent and workers > 0,  # no new processes every epoch
            pin_memory=feed.device.type == "cuda",
            # A private generator for the workers' base seed: building a loader leaves the global
            # RNG (weight init, reparameterisation noise) untouched.
            generator=torch.Generator().manual_seed(self.seed),
        )

    def train_dataloader(self, feed: Feed = Feed()):
        from torch.utils.data import DistributedSampler

        if feed.in_order:  # in order (a DataLoader's default sampler), as Lightning requires for overfitting
            return self._loader(self.dataset("train"), self.batch_size, persistent=True, feed=feed)
        # DistributedSampler even in one process: a permutation that depends only on (seed, epoch),
        # advanced by Lightning's set_epoch (so a resumed run replays the same order), and sharded
        # by rank in multi-process runs, where Lightning then leaves it as it is.
        sampler = DistributedSampler(
            self.dataset("train"),
            shuffle=True,
            seed=self.seed * 100_003,  # seed s, epoch e: no overlap with s+1
            num_replicas=feed.world_size,
            rank=feed.rank,
        )
        return self._loader(self.dataset("train"), self.batch_size, sampler=sampler, persistent=True, feed=feed)

    def _eval_sampler(self, split: str, feed: Feed):
        if feed.world_size == 1:
            return None
        return _Shard(self.dataset(split), num_replicas=feed.world_size, rank=feed.rank)

    def val_dataloader(self, feed: Feed = Feed()):
        return self._loader(
            self.dataset("val"),
            self.eval_batch_size,
            sampler=self._eval_sampler("val", feed),
            persistent=True,
            feed=feed,
        )

    def test_dataloader(self, feed: Feed = Feed()):
        return self._loader(
            self.dataset("test"), self.eval_batch_size, sampler=self._eval_sampler("test", feed), feed=feed
        )

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
