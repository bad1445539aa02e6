"""The prepared splits kept beside the data (data/cache.py): read back bit for bit, without reading the sources,
under a name that changes with anything the splits depend on; a broken or unwritable cache costs only time."""
import logging
import os
import subprocess
import sys

import pytest
import torch

from conftest import remount
from vae_cli.data import Digits
from vae_cli.data import cache

SPLITS = ("train", "val", "test")


def _splits(dm):
    return {s: dm.split(s) for s in SPLITS}


def _same(a, b):
    return all(torch.equal(a[s][i], b[s][i]) and a[s][i].dtype == b[s][i].dtype for s in SPLITS for i in (0, 1))


@pytest.mark.parametrize("settings", [{"binarize": True}, {"binarize": False},
                                      {"binarize": True, "eval_binarize_numpy_seed": 777, "val_split": "last"}])
def test_splits_come_back_bit_for_bit_without_reading_the_sources(tmp_path, monkeypatch, settings):
    fresh = Digits(data_dir=str(tmp_path), **settings)
    made = _splits(fresh)
    assert fresh.cache_file().is_file() and fresh.cache_file().parent == tmp_path / cache.FOLDER

    def no_reading(self):
        raise AssertionError("the sources were read again")

    monkeypatch.setattr(Digits, "load", no_reading)
    assert _same(_splits(Digits(data_dir=str(tmp_path), **settings)), made)


def test_the_name_changes_with_the_settings_and_the_sources(tmp_path, monkeypatch):
    base = Digits(data_dir=str(tmp_path)).cache_file()
    for other in ({"split_seed": 1}, {"val_size": 100}, {"test_size": 200}, {"binarize": False},
                  {"eval_binarize_numpy_seed": 3}, {"val_split": "last"}):
        assert Digits(data_dir=str(tmp_path), **other).cache_file() != base, other
    assert Digits(data_dir=str(tmp_path), seed=5, batch_size=7).cache_file() == base  # the run's, not the splits'
    # A source rewritten (another vae-cli's digits, an edited file): another name, so the old file is never read.
    source = tmp_path / "digits.npz"
    source.write_bytes(Digits().sources()[0].read_bytes())
    monkeypatch.setattr(Digits, "sources", lambda self: [source])
    before = Digits(data_dir=str(tmp_path)).cache_file()
    os.utime(source, ns=(source.stat().st_atime_ns, source.stat().st_mtime_ns + 10**9))
    assert Digits(data_dir=str(tmp_path)).cache_file() != before


def test_a_broken_cache_is_prepared_again_and_rewritten(tmp_path, caplog):
    made = _splits(Digits(data_dir=str(tmp_path)))
    kept = Digits(data_dir=str(tmp_path)).cache_file()
    kept.write_bytes(kept.read_bytes()[:1000])  # as a full disk would leave it, were it not renamed into place
    with caplog.at_level(logging.WARNING):
        again = _splits(Digits(data_dir=str(tmp_path)))
    assert _same(again, made) and "cannot be read" in caplog.text
    assert _same(cache.read(kept), made)


def test_a_folder_that_cannot_be_written_costs_only_time(small_filesystem):
    remount(small_filesystem, "ro")  # a read-only data folder (a shared copy, a mounted share)
    try:
        assert _same(_splits(Digits(data_dir=str(small_filesystem))), _splits(Digits(data_dir=str(small_filesystem))))
        assert not (small_filesystem / cache.FOLDER).exists()
    finally:
        remount(small_filesystem, "rw")
    # and a full one: the 3 MB file system filled, then the cache's write refused part-way
    (small_filesystem / "filler").write_bytes(b"\0" * (3 * 2**20 - 40_000))
    assert _same(_splits(Digits(data_dir=str(small_filesystem))), _splits(Digits(binarize=True)))
    assert not list((small_filesystem / cache.FOLDER).iterdir())  # no half-written file left behind


@pytest.mark.slow
def test_jobs_starting_together_each_leave_a_whole_file(tmp_path):
    script = ("import sys; from vae_cli.data import Digits; "
              "Digits(data_dir=sys.argv[1]).setup(); print(Digits(data_dir=sys.argv[1]).cache_file())")
    procs = [subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], stdout=subprocess.PIPE, text=True)
             for _ in range(3)]
    outs = [p.communicate(timeout=300)[0].strip() for p in procs]
    assert all(p.returncode == 0 for p in procs) and len(set(outs)) == 1
    assert [f.name for f in (tmp_path / cache.FOLDER).iterdir()] == [os.path.basename(outs[0])]  # no part left
    assert _same(cache.read(tmp_path / cache.FOLDER / os.path.basename(outs[0])), _splits(Digits(binarize=True)))


@pytest.mark.parametrize("x, as_bytes", [
    (torch.rand(5, 1, 4, 4), False),
    (torch.randint(0, 256, (5, 3, 4, 4)).float() / 255, True),   # 8-bit images
    (torch.randint(0, 17, (5, 1, 8, 8)).float() / 16, True),     # digits' 17 levels
    (torch.randint(0, 2, (5, 1, 2, 2)).float(), True),           # bits
    (torch.empty(0, 1, 2, 2), False),
])
def test_pixels_on_a_grid_are_kept_as_bytes_and_others_as_floats(x, as_bytes):
    packed = cache._pack(x)
    assert ("k" in packed) == as_bytes
    back = cache._unpack(packed)
    assert torch.equal(back, x) and back.dtype == torch.float32
