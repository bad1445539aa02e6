"""The data modules: the digits' splits and binarisation, MNIST's offline message, Fashion-MNIST from the Debian
package, the tensor batches' shuffling and sharding, CIFAR-10 (offline message, a tiny fake copy on disk) and the
image-folder datamodule, which reads a user's own files batch by batch. Every folder of images is built here on the
fly."""

import json
import pickle
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from vae_cli.data import CIFAR10, DEBIAN_FASHION_MNIST, MNIST, Digits, FashionMNIST, ImageFolder
from vae_cli.errors import BadArgument, UserError

from conftest import train

CLASSES = ("cat", "dog", "owl")


def offline(monkeypatch):
    # A proxy that refuses connections: the same failure as a machine without network.
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)


def on_grid(x: torch.Tensor) -> bool:
    """Every value is k/255 for an integer k in 0..255, as ToTensor makes of 8-bit pixels."""
    return bool(0 <= x.min() and x.max() <= 1 and torch.equal(x, (x * 255).round() / 255))


# --- Digits, MNIST and Fashion-MNIST (held in memory) --------------------------------------------
def test_the_shipped_digits_are_scikit_learns_image_for_image_and_label_for_label():
    sklearn = pytest.importorskip("sklearn.datasets")  # installed with the test extra (MLflow needs it)
    reference = sklearn.load_digits()
    x, y, x_test, y_test = Digits(binarize=False).load()
    perm = torch.randperm(1797, generator=torch.Generator().manual_seed(12345))  # the fixed test hold-out
    images = torch.empty(1797, 1, 8, 8)
    labels = torch.empty(1797, dtype=torch.long)
    images[perm[:297]], images[perm[297:]] = x_test, x
    labels[perm[:297]], labels[perm[297:]] = y_test, y
    assert torch.equal(images * 16, torch.tensor(reference.images, dtype=torch.float32).unsqueeze(1))
    assert torch.equal(labels, torch.tensor(reference.target))


def test_digits_splits_are_disjoint_and_sized_as_configured():
    dm = Digits(val_size=150, test_size=297, binarize=False)
    (tr, _), (va, _), (te, _) = dm.split("train"), dm.split("val"), dm.split("test")
    assert (len(tr), len(va), len(te)) == (1350, 150, 297)
    assert tr.shape[1:] == (1, 8, 8) and 0 <= tr.min() and tr.max() <= 1
    rows = {tuple(r.flatten().tolist()) for r in torch.cat([tr, va, te])}
    assert len(rows) > 1700  # nothing duplicated by the split (the raw data has a few exact repeats)
    assert len(Digits(val_size=0.2, binarize=False).split("val")[0]) == 300


def test_val_and_test_binarisation_is_fixed_and_independent_of_the_run_seed():
    torch.manual_seed(0)
    a = Digits(binarize=True)
    torch.manual_seed(99)
    b = Digits(binarize=True)
    for split in ("val", "test"):
        xa, xb = a.split(split)[0], b.split(split)[0]
        assert set(xa.unique().tolist()) == {0.0, 1.0}
        assert torch.equal(xa, xb)
    grey = Digits(binarize=False).split("test")[0]
    # A Bernoulli(x) draw: the binarised mean follows the grey mean.
    assert abs(a.split("test")[0].mean() - grey.mean()) < 0.01


def test_training_batches_are_binarised_afresh_each_step():
    import types

    from vae_cli.data.lightning import LightningData

    dm = Digits(binarize=True)
    x = dm.split("train")[0][:256]
    lightning = LightningData(dm)
    lightning.trainer = types.SimpleNamespace(training=True)
    b1, b2 = lightning.on_after_batch_transfer([x], 0)[0], lightning.on_after_batch_transfer([x], 0)[0]
    assert set(b1.unique().tolist()) == {0.0, 1.0} and not torch.equal(b1, b2)
    lightning.trainer.training = False  # validation and test: their fixed bits, as loaded
    assert torch.equal(lightning.on_after_batch_transfer([x], 0)[0], x)
    assert torch.equal(Digits(binarize=False).train_batch([x])[0], x)


def test_loader_yields_whole_batches_of_aligned_rows():
    dm = Digits(batch_size=100, binarize=False)
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (100, 1, 8, 8) and y.shape == (100,)
    n = sum(len(b[0]) for b in dm.val_dataloader())
    assert n == 150


@pytest.mark.parametrize("val_size", [0, 2.5, -0.1, "10", True])
def test_a_val_size_of_the_wrong_form_is_refused_when_the_datamodule_is_built(val_size):
    with pytest.raises(BadArgument) as e:
        Digits(val_size=val_size)
    message = e.value.named(lambda name: f"data.{name}")
    assert message.startswith("data.val_size=") and "not a valid number of examples" in message


def test_a_val_size_larger_than_the_training_set_is_a_user_error():
    with pytest.raises(UserError, match="data.val_size"):
        Digits(val_size=1350 + 150).setup()


def test_missing_dataset_offline_gives_a_clear_message(tmp_path, monkeypatch):
    offline(monkeypatch)  # the real torchvision download, refused, whether or not this machine has a network
    with pytest.raises(UserError) as e:
        MNIST(data_dir=str(tmp_path)).prepare_data()
    msg = str(e.value)
    assert "could not be downloaded" in msg and str(tmp_path / "MNIST" / "raw") in msg
    assert "Connection refused" in msg  # the reason, not just "Error downloading ...:"
    assert "train-images-idx3-ubyte" in msg and "data.data_dir" in msg


@pytest.mark.skipif(not DEBIAN_FASHION_MNIST.is_dir(), reason="Debian package dataset-fashion-mnist not installed")
def test_fashion_mnist_is_read_from_the_debian_package(tmp_path):
    dm = FashionMNIST(data_dir=str(tmp_path), val_size=10000, binarize=False)
    dm.prepare_data()
    tr, va, te = (dm.split(s)[0] for s in ("train", "val", "test"))
    assert (len(tr), len(va), len(te)) == (50000, 10000, 10000)
    assert tr.shape[1:] == (1, 28, 28)
    full = torch.cat([tr, va])
    assert abs(full.mean().item() - 0.2860) < 5e-4  # the published mean pixel of the training set
    assert (tmp_path / "FashionMNIST" / "raw" / "train-images-idx3-ubyte").is_file()


def test_tensor_batches_shuffle_by_seed_and_epoch_and_shard_by_rank():
    from vae_cli.data.batching import TensorBatches

    x = torch.arange(10)

    def order(seed, epoch, rank=0, world=1, shuffle=True):
        tb = TensorBatches(
            [x], batch_size=3, shuffle=shuffle, seed=seed, epoch=lambda: epoch, rank=rank, world_size=world
        )
        batches = [b[0] for b in tb]
        assert len(batches) == len(tb) and all(len(b) <= 3 for b in batches)
        return torch.cat(batches).tolist()

    assert sorted(order(0, 0)) == list(range(10))
    assert order(0, 0) == order(0, 0)  # a resumed run replays the same epoch order
    assert order(0, 0) != order(0, 1) and order(0, 0) != order(1, 0)
    assert order(0, 0, shuffle=False) == list(range(10))
    shards = [order(0, 3, rank=r, world=2) for r in (0, 1)]
    assert sorted(shards[0] + shards[1]) == list(range(10)) and len(shards[0]) == 5


@pytest.mark.slow
@pytest.mark.skipif(not DEBIAN_FASHION_MNIST.is_dir(), reason="Debian package dataset-fashion-mnist not installed")
def test_two_processes_preparing_fashion_mnist_at_once_both_get_it_whole(tmp_path):
    """The jobs of a sweep starting together on a data_dir that holds nothing yet."""
    import subprocess
    import sys

    script = (
        "import sys; from vae_cli.data import FashionMNIST; dm = FashionMNIST(data_dir=sys.argv[1]); "
        "dm.prepare_data(); print(len(dm.split('train')[0]) + len(dm.split('val')[0]))"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert [o[0].split() for o in outs] == [["60000"], ["60000"]]
    raw = tmp_path / "FashionMNIST" / "raw"
    assert sorted(p.name for p in raw.iterdir() if not p.name.startswith(".")) == sorted(FashionMNIST.files)
    assert not list(raw.glob("*.part")) and not list(raw.glob(".*.part"))


# --- CIFAR-10 ------------------------------------------------------------------------------------


def test_cifar10_offline_says_where_it_looked_and_how_to_supply_the_files(tmp_path, monkeypatch):
    offline(monkeypatch)
    with pytest.raises(UserError) as e:
        CIFAR10(data_dir=str(tmp_path)).prepare_data()
    msg = str(e.value)
    assert "could not be downloaded" in msg and str(tmp_path / "cifar-10-batches-py") in msg
    assert "cifar-10-python.tar.gz" in msg and "data.data_dir" in msg and "network" in msg


def test_cifar10_reads_the_pickled_batches_as_chw_images_on_the_255_grid(tmp_path, monkeypatch):
    # torchvision checks each file's MD5 against the real release even with download=False, which
    # a fake copy cannot match: accept any file here (the check lives in torchvision.datasets.cifar).
    import torchvision.datasets.cifar as tv_cifar

    monkeypatch.setattr(tv_cifar, "check_integrity", lambda *args, **kwargs: True)
    offline(monkeypatch)  # should the patch ever stop working: fail fast instead of downloading 170 MB
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    written = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        # The release's layout: rows of 3072 bytes, all red values, then green, then blue, row-major.
        data = rng.integers(0, 256, size=(4, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, size=4).tolist()
        written[name] = (data, labels)
        (folder / name).write_bytes(pickle.dumps({"data": data, "labels": labels}))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": [f"c{i}" for i in range(10)]}))

    dm = CIFAR10(data_dir=str(tmp_path), val_size=5, binarize=False)
    dm.prepare_data()
    (tr, ytr), (va, _), (te, yte) = dm.split("train"), dm.split("val"), dm.split("test")
    assert (len(tr), len(va), len(te)) == (15, 5, 4)
    assert tr.shape[1:] == dm.shape == (3, 32, 32) and tr.dtype == torch.float32 and ytr.dtype == torch.long
    assert all(on_grid(x) for x in (tr, va, te))
    data, labels = written["test_batch"]
    expected = torch.from_numpy(data).view(4, 3, 32, 32).float() / 255  # channel, row, column
    assert torch.equal(te, expected) and yte.tolist() == labels


# --- image folders -------------------------------------------------------------------------------


def make_images(folder: Path, n: int, seed: int, start: int = 0) -> None:
    """n uniformly coloured images of random sizes; the colour is in the file name, so a test can
    check the decoded pixels. PNGs (some grey, some upper-case .PNG) and JPEGs (.jpg and .JPEG)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(start, start + n):
        r, g, b = (int(v) for v in rng.integers(0, 256, size=3))
        w, h = (int(v) for v in rng.integers(6, 40, size=2))
        kind = i % 4
        if kind == 0:  # grey PNG: r = g = b
            Image.new("L", (w, h), r).save(folder / f"im{i:03d}_{r}_{r}_{r}.png")
        elif kind == 1:
            Image.new("RGB", (w, h), (r, g, b)).save(folder / f"im{i:03d}_{r}_{g}_{b}.PNG")
        else:
            ext = ".jpg" if kind == 2 else ".JPEG"
            Image.new("RGB", (w, h), (r, g, b)).save(folder / f"im{i:03d}_{r}_{g}_{b}{ext}", quality=95)


def colour(path: str) -> torch.Tensor:
    return torch.tensor([int(v) for v in Path(path).stem.split("_")[1:]], dtype=torch.float32)


@pytest.fixture
def classes_folder(tmp_path) -> Path:
    """30 images in three class sub-folders, plus files that are not images and must be ignored."""
    root = tmp_path / "pictures"
    for k, name in enumerate(CLASSES):
        make_images(root / name, 10, seed=k, start=10 * k)
    (root / "README.txt").write_text("not an image")
    (root / "cat" / "notes.txt").write_text("not an image")
    (root / "dog" / "._im999_0_0_0.jpg").write_bytes(b"macOS resource fork, not a JPEG")
    return root


def all_batches(batches) -> tuple[torch.Tensor, torch.Tensor]:
    batches = list(batches)
    assert all(isinstance(b, list) and len(b) == 2 for b in batches)
    return torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])


def test_image_folder_splits_labels_shapes_and_pixel_values(classes_folder):
    dm = ImageFolder(
        path=str(classes_folder),
        image_size=[12, 10],
        channels=3,
        val_size=6,
        test_size=0.2,
        eval_batch_size=4,
        num_workers=0,
    )
    assert dm.shape == (3, 12, 10) and dm._datasets is None  # known from the config, before reading
    dm.setup()
    files = {s: dm.dataset(s).files for s in ("train", "val", "test")}
    assert [len(files[s]) for s in ("train", "val", "test")] == [18, 6, 6]
    assert len(set().union(*files.values())) == 30  # disjoint, and the non-images were skipped
    seen = Counter()
    for split in ("train", "val", "test"):
        x, y = all_batches(dm.eval_batches(split))
        assert x.shape == (len(files[split]), 3, 12, 10) and y.dtype == torch.long and on_grid(x)
        for path, xi, yi in zip(files[split], x, y):
            assert CLASSES[yi] == Path(path).parent.name  # label = index of the sorted sub-folder
            # A uniform image stays uniform through the resize: PNG exactly, JPEG within its loss.
            tol = 0 if path.lower().endswith(".png") else 3
            assert (xi * 255 - colour(path)[:, None, None]).abs().max() <= tol + 1e-3, path
            seen[yi.item()] += 1
    assert seen == {0: 10, 1: 10, 2: 10}


def test_image_folder_grey_and_square_size(classes_folder):
    dm = ImageFolder(path=str(classes_folder), image_size=9, channels=1, num_workers=0)
    x, _ = dm.head("train", 8)
    assert x.shape == (8, 1, 9, 9) == (8, *dm.shape) and on_grid(x)
    for path, xi in zip(dm.dataset("train").files, x):
        if path.endswith(".png"):  # grey PNGs: the stored grey level, exactly
            assert torch.all(xi * 255 == colour(path)[0])


def test_flat_folder_gets_label_zero_and_loose_images_beside_classes_get_the_next_label(tmp_path):
    make_images(tmp_path / "flat", 12, seed=5)
    dm = ImageFolder(path=str(tmp_path / "flat"), image_size=8, val_size=2, test_size=2, num_workers=0)
    assert all(y == 0 for s in ("train", "val", "test") for y in dm.dataset(s).labels)
    assert sum(len(dm.dataset(s)) for s in ("train", "val", "test")) == 12
    # vae-eval and vae-sample pass data_dir= when the data has moved: for an image folder, the folder.
    moved = ImageFolder(
        path=str(tmp_path / "gone"),
        data_dir=str(tmp_path / "flat"),
        image_size=8,
        val_size=2,
        test_size=2,
        num_workers=0,
    )
    assert moved.dataset("val").files == dm.dataset("val").files

    mixed = tmp_path / "mixed"
    make_images(mixed / "a", 4, seed=6)
    make_images(mixed / "b" / "deeper", 4, seed=7)  # images below a class folder belong to it
    (mixed / "empty").mkdir()  # a sub-folder without images is no class
    make_images(mixed, 4, seed=8, start=100)
    dm = ImageFolder(path=str(mixed), image_size=8, val_size=1, test_size=1, num_workers=0)
    labels = {
        Path(f).relative_to(mixed).parts[0]: y
        for s in ("train", "val", "test")
        for f, y in zip(dm.dataset(s).files, dm.dataset(s).labels)
    }
    assert {k if k in ("a", "b") else "loose": v for k, v in labels.items()} == {"a": 0, "b": 1, "loose": 2}


def test_head_and_eval_batches_match_the_loaders(classes_folder):
    dm = ImageFolder(path=str(classes_folder), image_size=8, val_size=7, test_size=5, eval_batch_size=3, num_workers=0)
    val = all_batches(dm.val_dataloader())
    head = dm.head("val", 4)
    assert torch.equal(head[0], val[0][:4]) and torch.equal(head[1], val[1][:4])
    assert len(dm.head("val", 100)[0]) == 7
    for a, b in zip(all_batches(dm.eval_batches("test")), all_batches(dm.test_dataloader())):
        assert torch.equal(a, b) and len(a) == 5
    train = all_batches(dm.eval_batches("train"))
    assert torch.allclose(dm.train_pixel_mean(), train[0].mean(0), atol=1e-6)


def test_worker_processes_give_the_same_batches(classes_folder):
    kwargs = dict(path=str(classes_folder), image_size=8, eval_batch_size=4)
    one = all_batches(ImageFolder(**kwargs, num_workers=0).eval_batches("train"))
    two = all_batches(ImageFolder(**kwargs, num_workers=2).eval_batches("train"))
    assert torch.equal(one[0], two[0]) and torch.equal(one[1], two[1])


def test_training_order_is_shuffled_reproducibly_by_seed_and_epoch(classes_folder):
    def order(seed, epoch=0):
        dm = ImageFolder(path=str(classes_folder), image_size=4, batch_size=5, seed=seed, num_workers=0)
        loader = dm.train_dataloader()
        loader.sampler.set_epoch(epoch)  # what Lightning does at the start of each epoch
        x, _ = all_batches(loader)
        return x.flatten(1), dm

    a, dm = order(seed=3)
    fixed = all_batches(dm.eval_batches("train"))[0].flatten(1)
    # The same examples, in another order.
    assert sorted(map(tuple, a.tolist())) == sorted(map(tuple, fixed.tolist())) and not torch.equal(a, fixed)
    assert torch.equal(a, order(seed=3)[0])
    assert not torch.equal(a, order(seed=4)[0]) and not torch.equal(a, order(seed=3, epoch=1)[0])


def test_val_and_test_bits_are_fixed_per_image_whatever_the_batching(classes_folder):
    torch.manual_seed(0)
    a = ImageFolder(path=str(classes_folder), image_size=8, binarize=True, eval_batch_size=2, num_workers=0)
    torch.manual_seed(99)
    b = ImageFolder(path=str(classes_folder), image_size=8, binarize=True, eval_batch_size=5, num_workers=0)
    for split in ("val", "test"):
        xa, xb = all_batches(a.eval_batches(split))[0], all_batches(b.eval_batches(split))[0]
        assert set(xa.unique().tolist()) == {0.0, 1.0} and torch.equal(xa, xb)
        assert torch.equal(a.head(split, 3)[0], xa[:3])
    assert not torch.equal(all_batches(a.eval_batches("val"))[0][:3], a.head("test", 3)[0])
    # Training images stay grey in the loader and are binarised afresh on each training step.
    x = all_batches(a.eval_batches("train"))[0]
    assert len(x.unique()) > 2

    b1, b2 = a.train_batch([x])[0], a.train_batch([x])[0]
    assert set(b1.unique().tolist()) == {0.0, 1.0} and not torch.equal(b1, b2)


def test_bad_folders_and_sizes_are_user_errors_naming_the_key(tmp_path, classes_folder):
    (tmp_path / "empty").mkdir()
    (tmp_path / "texts").mkdir()
    (tmp_path / "texts" / "a.txt").write_text("x")
    for path in (tmp_path / "missing", tmp_path / "empty", tmp_path / "texts"):
        with pytest.raises(UserError, match="data.path") as e:
            ImageFolder(path=str(path), num_workers=0).setup()
        assert str(path) in str(e.value) and ".png" in str(e.value) and ".jpeg" in str(e.value)
    with pytest.raises(ValueError, match="path=None"):
        ImageFolder(path=None)
    with pytest.raises(UserError, match="leaving none to train on"):
        ImageFolder(path=str(classes_folder), val_size=15, test_size=15).setup()
    with pytest.raises(UserError, match="data.test_size"):
        ImageFolder(path=str(classes_folder), test_size=1000).setup()
    with pytest.raises(BadArgument, match="test_size=0 is not a valid number of examples"):
        ImageFolder(path=str(classes_folder), test_size=0)
    # data.channels, data.image_size, data.num_workers and data.batch_size are checked with the other
    # settings, before any data is read (test_config.py).


def test_vae_train_on_an_image_folder_end_to_end(tmp_path, classes_folder):
    run = train(
        tmp_path,
        "run",
        "data=image_folder",
        f"data.path={classes_folder}",
        "data.image_size=[16,16]",
        "data.channels=1",
        "model.likelihood=bernoulli",
        "model.hidden_dims=[32]",
        "trainer.max_epochs=1",
        "callbacks.image_grids.every_n_epochs=1",
    )
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["epochs"] == 1 and metrics["global_step"] == 1  # 24 training images, one batch of 128
    assert np.isfinite(metrics["test/elbo"]) and metrics["test/elbo"] < 0


def test_unreadable_files_are_listed_before_training_or_skipped_on_request(tmp_path, classes_folder, caplog):
    (classes_folder / "cat" / "notes.png").write_text("not an image, whatever its name says")
    (classes_folder / "dog" / "empty.jpg").write_bytes(b"")
    with pytest.raises(UserError) as e:
        ImageFolder(path=str(classes_folder), num_workers=0).setup()
    msg = str(e.value)
    assert "2 of its 32 image files cannot be read" in msg and "notes.png" in msg and "empty.jpg" in msg
    assert "data.skip_unreadable=true" in msg
    dm = ImageFolder(path=str(classes_folder), num_workers=0, skip_unreadable=True)
    with caplog.at_level("WARNING"):
        dm.setup()
    assert sum(len(dm.dataset(s)) for s in ("train", "val", "test")) == 30
    assert "skipping 2 unreadable image files of 32" in caplog.text


def test_a_file_that_fails_to_decode_in_a_worker_reaches_the_user_as_one_message(
    tmp_path, classes_folder, capsys, monkeypatch
):
    import gc

    import torch.utils.data._utils

    from conftest import run_here

    # The failed run leaves its loader's worker behind, which ends only when the loader is collected; its join waits
    # torch's MP_STATUS_CHECK_INTERVAL (5 s) before killing it. Collected here, after 0.2 s, not in a later test.
    monkeypatch.setattr(torch.utils.data._utils, "MP_STATUS_CHECK_INTERVAL", 0.2)
    noise = np.random.default_rng(1).integers(0, 256, size=(40, 40, 3), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "whole.png")
    (classes_folder / "owl" / "cut.png").write_bytes((tmp_path / "whole.png").read_bytes()[:300])  # header, few pixels
    with pytest.raises(SystemExit) as e:
        run_here(
            "vae-train",
            "data=image_folder",
            f"data.path={classes_folder}",
            "data.image_size=[8,8]",
            "data.num_workers=1",
            "model.hidden_dims=[16]",
            "trainer.max_epochs=1",
            "trainer.enable_progress_bar=false",
            f"hydra.run.dir={tmp_path / 'run'}",
            cwd=tmp_path,
        )
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("vae-train: error: data.path: cannot read the image")
    assert "cut.png" in err and "Traceback" not in err and "worker process" not in err
    del e
    gc.collect()


# --- files whose headers lie ---------------------------------------------------------------------------------------


def _chunk(kind: bytes, data: bytes) -> bytes:
    import struct
    import zlib

    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png(width: int, height: int, depth: int = 8, colour: int = 0, rows: bytes = b"") -> bytes:
    """A PNG whose header (IHDR) says what it is given, whatever its pixel data (IDAT) holds; checksums right."""
    import struct
    import zlib

    header = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(rows)) + _chunk(b"IEND", b"")


GREY_8x8 = b"".join(b"\0" + bytes(range(0, 256, 32)) for _ in range(8))  # 8 rows: filter byte, 8 grey pixels


def _zeros_png(side: int) -> bytes:
    """A true PNG of side x side black grey pixels: a few hundred kilobytes that decode to side**2 bytes."""
    import struct
    import zlib

    packer = zlib.compressobj(9)
    row = bytes(side + 1)  # the filter byte and the pixels of a row
    rows = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", rows) + _chunk(b"IEND", b"")


def _lying_images(folder: Path) -> list[str]:
    """Image files whose headers lie, as a user's folder may hold them, and a bomb; their names."""
    import io
    import struct

    jpeg = io.BytesIO()
    Image.new("RGB", (20, 20), (10, 200, 30)).save(jpeg, "jpeg")
    jpeg = jpeg.getvalue()
    sof = jpeg.index(b"\xff\xc0") + 5  # the frame header's height and width
    whole = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(whole, "png")
    files = {
        "bomb.png": _png(60000, 60000, rows=b"\0" * 16),  # PIL's DecompressionBombError
        "over-the-limit.png": _png(12000, 12000, colour=2, rows=b"\0" * 16),  # past PIL's warning: 432 MB
        "true-bomb.png": _zeros_png(10000),  # no lie: 100 MB of pixels, past PIL's warning, under its error
        "bomb.jpg": jpeg[:sof] + struct.pack(">HH", 60000, 60000) + jpeg[sof + 4 :],
        "truncated.png": whole.getvalue()[:300],
        "truncated.jpg": jpeg[:200],
        "larger-than-its-data.png": _png(64, 64, rows=GREY_8x8),
        "rgb-holding-grey.png": _png(8, 8, colour=2, rows=GREY_8x8),
        "16-bit-holding-8.png": _png(8, 8, depth=16, rows=GREY_8x8),
    }
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return sorted(files)


def test_images_whose_headers_lie_are_skipped_on_request_with_a_warning_naming_them(classes_folder, caplog):
    lying = _lying_images(classes_folder / "owl")
    dm = ImageFolder(path=str(classes_folder), image_size=8, num_workers=0, skip_unreadable=True)
    with caplog.at_level("WARNING"):
        dm.setup()
    assert f"skipping {len(lying)} unreadable image files of {30 + len(lying)}" in caplog.text
    assert all(name in caplog.text for name in lying[:5])
    files = [f for s in ("train", "val", "test") for f in dm.dataset(s).files]
    assert len(files) == 30 and not any(Path(f).name in lying for f in files)
    for split in ("train", "val", "test"):  # every image left decodes
        assert len(all_batches(dm.eval_batches(split))[0]) == len(dm.dataset(split))


def test_images_whose_headers_lie_stop_the_run_with_one_line_naming_the_file(tmp_path):
    for name in _lying_images(tmp_path / "lies"):
        folder = tmp_path / name
        make_images(folder / "cat", 6, seed=0)
        (folder / "cat" / name).write_bytes((tmp_path / "lies" / name).read_bytes())
        try:  # refused when the folder is listed (its header), or when the image is read (its pixels)
            dm = ImageFolder(path=str(folder), image_size=8, val_size=1, test_size=1, num_workers=0)
            for split in ("train", "val", "test"):
                all_batches(dm.eval_batches(split))
        except UserError as e:
            assert name in str(e) and "data.skip_unreadable=true" in str(e) and "\n" not in str(e)
        else:
            pytest.fail(f"{name} was read as an image")


@settings(derandomize=True, max_examples=40, deadline=None)
@given(
    width=st.integers(1, 70000),
    height=st.integers(1, 70000),
    depth=st.sampled_from([1, 2, 4, 8, 16, 3]),
    colour=st.sampled_from([0, 2, 3, 4, 6, 1]),
    cut=st.integers(0, 120),
)
def test_any_png_header_is_an_image_or_unreadable_never_a_crash(width, height, depth, colour, cut):
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        make_images(folder / "cat", 4, seed=0)
        data = _png(width, height, depth, colour, rows=GREY_8x8)
        (folder / "cat" / "made.png").write_bytes(data[: len(data) - cut])
        for skip in (True, False):
            try:
                dm = ImageFolder(
                    path=str(folder), image_size=4, val_size=1, test_size=1, num_workers=0, skip_unreadable=skip
                )
                for split in ("train", "val", "test"):
                    all_batches(dm.eval_batches(split))
            except UserError as e:
                assert not skip and "made.png" in str(e)


def test_vae_train_on_a_folder_holding_a_decompression_bomb_stops_with_one_line(tmp_path, classes_folder, capsys):
    from conftest import QUIET, refused

    (classes_folder / "owl" / "bomb.png").write_bytes(_png(60000, 60000, rows=b"\0" * 16))
    err = refused(
        "vae-train",
        "data=image_folder",
        f"data.path={classes_folder}",
        "data.image_size=[8,8]",
        "data.num_workers=0",
        "trainer.max_epochs=1",
        *QUIET,
        f"hydra.run.dir={tmp_path / 'run'}",
        cwd=tmp_path,
        capsys=capsys,
    )
    assert err.startswith("vae-train: error: data.path=") and "bomb.png" in err and err.count("\n") == 1


def test_a_data_path_that_is_a_file_stops_vae_train_with_one_line(tmp_path, capsys):
    from conftest import QUIET, refused

    (tmp_path / "f").write_text("not a folder")
    err = refused(
        "vae-train",
        "data=image_folder",
        "data.path=f",
        "trainer.max_epochs=1",
        *QUIET,
        f"hydra.run.dir={tmp_path / 'run'}",
        cwd=tmp_path,
        capsys=capsys,
    )
    assert err.startswith("vae-train: error: data.path='f'") and err.count("\n") == 1 and "folder" in err


# --- files written beside the data, never through links ----------------------------------------------------------


def test_fashion_mnist_unpacks_never_through_a_link(tmp_path, monkeypatch):
    import gzip
    import os

    package = tmp_path / "package"  # the Debian package's folder, as gzipped files
    package.mkdir()
    for f in FashionMNIST.files:
        (package / f"{f}.gz").write_bytes(gzip.compress(f"the bytes of {f}".encode()))
    monkeypatch.setattr(FashionMNIST, "_extra_sources", lambda self: [package])
    victim = tmp_path / "victim"
    victim.write_text("precious")
    raw = tmp_path / "data" / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    (raw / f".{FashionMNIST.files[0]}.{os.getpid()}.part").symlink_to(victim)  # the name it is unpacked under
    (raw / ".unpack.lock").symlink_to(tmp_path / "made-through-the-link")
    FashionMNIST(data_dir=str(tmp_path / "data"))._copy_from_extra_sources()
    assert victim.read_text() == "precious" and not (tmp_path / "made-through-the-link").exists()
    assert all((raw / f).read_text() == f"the bytes of {f}" for f in FashionMNIST.files)
