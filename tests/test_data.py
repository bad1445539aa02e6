"""Data modules: splits, binarisation, the Debian Fashion-MNIST files and the offline message."""
import pytest
import torch

from vae_cli.data import DEBIAN_FASHION_MNIST, MNIST, Digits, FashionMNIST
from vae_cli.errors import UserError


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


@pytest.mark.parametrize("val_size", [0, 1350 + 150, 2.5, -0.1])
def test_bad_val_size_is_a_user_error(val_size):
    with pytest.raises(UserError, match="data.val_size"):
        Digits(val_size=val_size).setup()


def test_missing_dataset_offline_gives_a_clear_message(tmp_path, monkeypatch):
    # Route the real torchvision download through a proxy that refuses connections: the same
    # failure as a machine without network, whether or not this one has it.
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
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
        tb = TensorBatches([x], batch_size=3, shuffle=shuffle, seed=seed, epoch=lambda: epoch, rank=rank, world_size=world)
        batches = [b[0] for b in tb]
        assert len(batches) == len(tb) and all(len(b) <= 3 for b in batches)
        return torch.cat(batches).tolist()

    assert sorted(order(0, 0)) == list(range(10))
    assert order(0, 0) == order(0, 0)  # a resumed run replays the same epoch order
    assert order(0, 0) != order(0, 1) and order(0, 0) != order(1, 0)
    assert order(0, 0, shuffle=False) == list(range(10))
    shards = [order(0, 3, rank=r, world=2) for r in (0, 1)]
    assert sorted(shards[0] + shards[1]) == list(range(10)) and len(shards[0]) == 5


@pytest.mark.skipif(not DEBIAN_FASHION_MNIST.is_dir(), reason="Debian package dataset-fashion-mnist not installed")
def test_two_processes_preparing_fashion_mnist_at_once_both_get_it_whole(tmp_path):
    """The jobs of a sweep starting together on a data_dir that holds nothing yet."""
    import subprocess
    import sys

    script = ("import sys; from vae_cli.data import FashionMNIST; dm = FashionMNIST(data_dir=sys.argv[1]); "
              "dm.prepare_data(); print(len(dm.split('train')[0]) + len(dm.split('val')[0]))")
    procs = [subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert [o[0].split() for o in outs] == [["60000"], ["60000"]]
    raw = tmp_path / "FashionMNIST" / "raw"
    assert sorted(p.name for p in raw.iterdir() if not p.name.startswith(".")) == sorted(FashionMNIST.files)
    assert not list(raw.glob("*.part")) and not list(raw.glob(".*.part"))
