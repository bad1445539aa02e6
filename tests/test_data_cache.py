"""The prepared splits kept beside the data (data/cache.py): read back bit for bit, without reading the sources,
under a name that changes with anything the splits depend on, and used only when the content is what the name
claims; a broken, foreign or unwritable cache costs only time, never a traceback."""

import copy
import io
import json
import logging
import os
import pickle
import subprocess
import sys

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vae_cli.data import Digits, cache
from vae_cli.errors import UserError

from conftest import QUIET, refused, remount, train

SPLITS = ("train", "val", "test")


def _splits(dm):
    return {s: dm.split(s) for s in SPLITS}


def _same(a, b):
    return all(torch.equal(a[s][i], b[s][i]) and a[s][i].dtype == b[s][i].dtype for s in SPLITS for i in (0, 1))


def _read(dm):
    """What the datamodule's cache file holds, read as the datamodule reads it."""
    key, file = dm._kept()
    return cache.read(file, key, dm.shape)


@pytest.mark.parametrize(
    "settings",
    [{"binarize": True}, {"binarize": False}, {"binarize": True, "eval_binarize_numpy_seed": 777, "val_split": "last"}],
)
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
    for other in (
        {"split_seed": 1},
        {"val_size": 100},
        {"test_size": 200},
        {"binarize": False},
        {"eval_binarize_numpy_seed": 3},
        {"val_split": "last"},
    ):
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
    assert _same(_read(Digits(data_dir=str(tmp_path))), made)


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
    script = (
        "import sys; from vae_cli.data import Digits; "
        "Digits(data_dir=sys.argv[1]).setup(); print(Digits(data_dir=sys.argv[1]).cache_file())"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], stdout=subprocess.PIPE, text=True)
        for _ in range(3)
    ]
    outs = [p.communicate(timeout=300)[0].strip() for p in procs]
    assert all(p.returncode == 0 for p in procs) and len(set(outs)) == 1
    assert [f.name for f in (tmp_path / cache.FOLDER).iterdir()] == [os.path.basename(outs[0])]  # no part left
    assert _same(_read(Digits(data_dir=str(tmp_path))), _splits(Digits(binarize=True)))


@pytest.mark.parametrize(
    "x, as_bytes",
    [
        (torch.rand(5, 1, 4, 4), False),
        (torch.arange(256).reshape(4, 1, 8, 8).float() / 255, True),  # 8-bit images, each level 0 to 255 once
        (torch.randint(0, 17, (5, 1, 8, 8)).float() / 16, True),  # digits' 17 levels
        (torch.randint(0, 2, (5, 1, 2, 2)).float(), True),  # bits
        (torch.empty(0, 1, 2, 2), False),
    ],
)
def test_pixels_on_a_grid_are_kept_as_bytes_and_others_as_floats(x, as_bytes):
    stored, scale = cache._pack(x)
    assert (scale is not None) == as_bytes and (stored.dtype == torch.uint8) == as_bytes
    back = cache._unpack(stored, scale)
    assert torch.equal(back, x) and back.dtype == torch.float32


# --- a cache is trusted only as far as its content matches its name ---------------------------------------------


@pytest.fixture(scope="module")
def kept_digits(tmp_path_factory):
    """Digits' splits prepared without a cache, and a folder whose cache holds them as vae-cli writes it."""
    folder = tmp_path_factory.mktemp("data")
    dm = Digits(data_dir=str(folder))
    made = dm._prepare()
    dm.setup()
    file = dm.cache_file()
    return folder, file, made, torch.load(file, weights_only=True)


def _paths(record, prefix=()):
    """Every field of a record, as the keys leading to it."""
    for k, v in record.items():
        yield (*prefix, k)
        if isinstance(v, dict):
            yield from _paths(v, (*prefix, k))


def _at(record, path):
    for k in path[:-1]:
        record = record[k]
    return record


TENSORS = st.builds(
    lambda shape, dtype: torch.randint(0, 2, shape).to(dtype),
    st.lists(st.integers(0, 9), max_size=4).map(tuple),
    st.sampled_from([torch.uint8, torch.int32, torch.int64, torch.float32, torch.float64, torch.bool]),
)
JUNK = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.complex_numbers(),
    st.text(max_size=12),
    st.binary(max_size=8),
    TENSORS,
    st.lists(st.integers(), max_size=3),
    st.sets(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=6), st.integers(), max_size=3),
    st.fractions() | st.dates() | st.frozensets(st.integers(), max_size=3),
)  # torch.load refuses these


def _saved(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


@st.composite
def foreign(draw, record, made):
    """Other bytes under the name of `record`'s file: not a torch file, a torch file of something else than a dict,
    or a dict of junk, or `record` with a field removed or given another type, a tensor of another shape or dtype
    (listed and hashed as it was, or anew), a pixel changed; or a whole cache made for other settings, or of images of
    another shape."""
    kind = draw(
        st.sampled_from(
            [
                "not a torch file",
                "not a dict",
                "junk dict",
                "removed",
                "retyped",
                "tensor",
                "tensor restamped",
                "bytes changed",
                "other key",
                "other image shape",
            ]
        )
    )
    if kind == "not a torch file":
        return draw(st.binary(max_size=64) | st.sampled_from([_saved(record)[:2000], pickle.dumps([1, 2])]))
    return _saved(draw(_foreign_object(kind, record, made)))


@st.composite
def _foreign_object(draw, kind, record, made):
    if kind == "not a dict":
        return draw(JUNK.filter(lambda v: not isinstance(v, dict)))
    if kind == "junk dict":
        return draw(st.dictionaries(st.sampled_from([*record, "x", "y"]), JUNK, max_size=5))
    if kind == "other key":
        return cache._record(record["key"].replace('"split_seed": 0', '"split_seed": 1'), made)
    if kind == "other image shape":  # the case: 50, 10 and 10 images of 3x5x5
        return cache._record(
            record["key"],
            {s: (torch.rand(n, 3, 5, 5), torch.zeros(n, dtype=torch.long)) for s, n in zip(SPLITS, (50, 10, 10))},
        )
    kept = copy.deepcopy(record)
    if kind == "removed":
        path = draw(st.sampled_from(list(_paths(record))))
        del _at(kept, path)[path[-1]]
    elif kind == "bytes changed":  # a bit rotted, say: the same shapes and dtypes
        x = kept["splits"][draw(st.sampled_from(SPLITS))]["x"].view(-1)
        i = draw(st.integers(0, len(x) - 1))
        x[i] = 255 - x[i]
    elif kind == "retyped":
        path = draw(st.sampled_from(list(_paths(record))))
        before = _at(kept, path)[path[-1]]
        _at(kept, path)[path[-1]] = draw(JUNK.filter(lambda v: type(v) is not type(before)))
    else:
        path = draw(st.sampled_from([("splits", s, t) for s in SPLITS for t in ("x", "y")]))
        before = _at(kept, path)[path[-1]]
        _at(kept, path)[path[-1]] = draw(
            TENSORS.filter(
                lambda t: t.shape != before.shape and t.dim() > 0 or (kind == "tensor" and t.dtype != before.dtype)
            )
        )
        if kind == "tensor restamped":  # listed and hashed anew: only the image shape and the counts can tell
            kept["manifest"], kept["sha256"] = cache._manifest(kept["splits"]), cache._digest(kept["splits"])
    return kept


@settings(
    derandomize=True, max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_foreign_content_under_the_right_name_is_named_and_the_data_prepared_again(kept_digits, caplog, data):
    folder, file, made, record = kept_digits
    file.write_bytes(data.draw(foreign(record, made)))
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        splits = _splits(Digits(data_dir=str(folder)))
    assert _same(splits, made)
    assert str(file) in caplog.text and "the data is prepared again" in caplog.text
    assert _same(_read(Digits(data_dir=str(folder))), made)  # and kept anew


def test_a_run_given_a_foreign_cache_trains_on_the_real_data(tmp_path):
    args = (
        f"data.data_dir={tmp_path / 'data'}",
        "model.hidden_dims=[16]",
        "model.latent_dim=2",
        "trainer.max_epochs=1",
        *QUIET,
    )
    first = json.loads((train(tmp_path, "first", *args) / "metrics.json").read_text())
    [file] = (tmp_path / "data" / cache.FOLDER).iterdir()
    key = torch.load(file, weights_only=True)["key"]
    torch.save(
        cache._record(
            key, {s: (torch.rand(n, 3, 5, 5), torch.zeros(n, dtype=torch.long)) for s, n in zip(SPLITS, (50, 10, 10))}
        ),
        file,
    )
    run = train(tmp_path, "second", *args)
    log = (run / "train.log").read_text()
    assert f"{file} is not the cache of prepared data its name claims" in log
    assert "1350 train, 150 val, 297 test examples" in log
    assert json.loads((run / "metrics.json").read_text()) == first


def test_a_cache_that_is_a_link_is_replaced_not_written_through(tmp_path):
    dm = Digits(data_dir=str(tmp_path))
    file = dm.cache_file()
    file.parent.mkdir()
    victim = tmp_path / "victim.pt"
    victim.write_bytes(b"precious")
    file.symlink_to(victim)
    part = file.with_name(f".{file.name}.{os.getpid()}.part")  # the name the cache is written under first
    part.symlink_to(tmp_path / "made-through-the-link")
    _splits(dm)
    assert victim.read_bytes() == b"precious" and not (tmp_path / "made-through-the-link").exists()
    assert not file.is_symlink() and _same(_read(Digits(data_dir=str(tmp_path))), _splits(dm))


def test_a_fifo_under_the_cache_name_is_not_waited_on(tmp_path):
    file = Digits(data_dir=str(tmp_path)).cache_file()
    file.parent.mkdir()
    os.mkfifo(file)
    script = "import sys; from vae_cli.data import Digits; Digits(data_dir=sys.argv[1]).setup()"
    subprocess.run([sys.executable, "-c", script, str(tmp_path)], check=True, timeout=120)
    assert file.is_file()


# --- data.data_dir that is not a folder ------------------------------------------------------------------------


def test_a_data_dir_that_is_a_file_is_named_with_the_fix(tmp_path):
    (tmp_path / "f").write_text("not a folder")
    for data_dir in ("f", "f/below"):
        with pytest.raises(UserError) as e:
            Digits(data_dir=str(tmp_path / data_dir)).setup()
        assert f"data.data_dir={str(tmp_path / data_dir)!r}" in str(e.value) and "is a file" in str(e.value)
        assert "Point data.data_dir at a folder" in str(e.value)


def test_a_cache_that_cannot_be_made_in_a_folder_that_is_a_file_costs_only_time(tmp_path):
    (tmp_path / "f").write_text("not a folder")
    cache.write(tmp_path / "f" / cache.FOLDER / "digits-0.pt", "key", Digits()._prepare())
    assert (tmp_path / "f").read_text() == "not a folder"


@pytest.mark.parametrize("data", ["digits", "mnist", "fashion_mnist", "cifar10"])
def test_vae_train_with_a_data_dir_that_is_a_file_stops_with_one_line(tmp_path, capsys, data):
    (tmp_path / "f").write_text("not a folder")
    err = refused(
        "vae-train",
        f"data={data}",
        "data.data_dir=f",
        "trainer.max_epochs=1",
        *QUIET,
        f"hydra.run.dir={tmp_path / 'run'}",
        cwd=tmp_path,
        capsys=capsys,
    )
    assert err.startswith("vae-train: error: data.data_dir='f'") and err.count("\n") == 1
    assert "is a file, not a folder" in err and "Traceback" not in err


def _record(shape=(1, 2, 2)):
    splits = {s: (torch.randint(0, 2, (3, *shape)).float(), torch.arange(3)) for s in cache.SPLITS}
    return cache._record("the key", splits)


def _pixels(kept, x):
    kept["splits"]["val"]["x"] = x


@pytest.mark.parametrize(
    "change, why",
    [
        (lambda k: k.update(format=cache.FORMAT + 1), "not a vae-cli cache of this format"),
        (lambda k: k.update(key="another key"), "made for other sources or settings"),
        (lambda k: k["splits"].pop("val"), "its splits are missing"),
        (lambda k: k.update(splits=[1, 2, 3]), "its splits are missing"),
        (lambda k: k["splits"]["val"].pop("scale"), "its val split is not pixels, scale and labels"),
        (lambda k: k["splits"]["test"].update(y=[0, 1, 2]), "its test split holds no tensors"),
        (lambda k: k["splits"]["val"].update(scale=3.0), "its val pixels are torch.uint8, scaled by float"),
        (lambda k: k["splits"]["val"].update(y=torch.zeros(3)), "its val labels are torch.float32, not integers"),
        (
            lambda k: k["splits"]["val"].update(y=torch.ones(3, dtype=torch.bool)),
            "its val labels are torch.bool, not integers",
        ),
        (lambda k: k["splits"]["val"].update(scale=None), "its val pixels are torch.uint8, scaled by NoneType"),
        (lambda k: _pixels(k, torch.zeros(3, 1, 2, 2)), "its val pixels are torch.float32, scaled by float"),
        (
            lambda k: _pixels(k, torch.zeros(3, 1, 2, 3, dtype=torch.uint8)),
            "its val split is shaped (3, 1, 2, 3) with labels (3,), not (N, 1, 2, 2) and (N,)",
        ),
        (lambda k: k.update(manifest={}), "its tensors are not those it lists"),
        (lambda k: k["splits"]["train"]["x"].add_(1), "its bytes do not match their hash"),
    ],
)
def test_a_cache_that_is_not_what_its_name_claims_is_named_with_the_reason(change, why):
    assert cache._mismatch(_record(), "the key", (1, 2, 2)) is None
    kept = _record()
    change(kept)
    assert cache._mismatch(kept, "the key", (1, 2, 2)) == why


def test_the_key_is_each_source_by_path_size_and_time_and_the_settings_in_any_order(tmp_path):
    from pathlib import Path

    import numpy

    a, b = tmp_path / "a", tmp_path / "b"
    for p in (a, b):
        p.write_bytes(b"same")
        os.utime(p, ns=(1, 1))
    key = cache.key("digits", {"x": 1, "root": Path("p")}, [a])
    assert key == cache.key("digits", {"root": Path("p"), "x": 1}, [a])
    assert key != cache.key("digits", {"x": 1, "root": Path("p")}, [b])  # the same size and time: another file
    digest = __import__("hashlib").sha256(key.encode()).hexdigest()
    assert cache.path(tmp_path, "digits", key) == tmp_path / cache.FOLDER / f"digits-{digest[:16]}.pt"
    assert json.loads(key) == {
        "format": cache.FORMAT,
        "name": "digits",
        "settings": {"root": "p", "x": 1},
        "sources": [[str(a.resolve()), 4, 1]],
        "torch": torch.__version__,
        "numpy": numpy.__version__,
    }


@pytest.mark.parametrize(
    "error, why",
    [
        (ValueError("a field\n   it did not expect"), "a field it did not expect"),
        (ValueError(), "ValueError"),
        (ValueError("x" * 300), "x" * 200),
    ],
)
def test_content_no_check_foresaw_is_named_with_its_error_in_one_line(tmp_path, monkeypatch, caplog, error, why):
    file = tmp_path / "c.pt"
    cache.write(file, "k", {s: (torch.zeros(2, 1, 2, 2), torch.arange(2)) for s in cache.SPLITS})

    def unforeseen(*args):
        raise error

    monkeypatch.setattr(cache, "_mismatch", unforeseen)
    with caplog.at_level(logging.INFO):
        assert cache.read(file, "k", (1, 2, 2)) is None
    assert caplog.messages == [
        f"{file} is not the cache of prepared data its name claims (it cannot be read as one: {why}); "
        "the data is prepared again"
    ]


def test_a_cache_that_cannot_be_written_is_one_line_naming_the_file_and_the_cause(tmp_path, caplog):
    (tmp_path / "data").write_text("a file where the cache's folder should be")
    file = tmp_path / "data" / cache.FOLDER / "c.pt"
    with caplog.at_level(logging.INFO):
        cache.write(file, "k", {s: (torch.zeros(2, 1, 2, 2), torch.arange(2)) for s in cache.SPLITS})
    assert caplog.messages == [
        f"no cache of the prepared data at {file} (Not a directory); the next run prepares it again"
    ]


def test_a_new_cache_file_has_the_usual_permissions_and_a_link_planted_in_a_race_is_not_written_through(
    tmp_path, monkeypatch
):
    umask = os.umask(0)
    os.umask(umask)
    with cache.create(tmp_path / "f") as f:
        f.write(b"x")
    assert (tmp_path / "f").stat().st_mode & 0o777 == 0o666 & ~umask

    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    real = os.unlink

    def racing(path):  # another process plants a link between the removal and the opening
        real(path)
        os.symlink(victim, path)

    monkeypatch.setattr(os, "unlink", racing)
    with pytest.raises(FileExistsError):
        cache.create(tmp_path / "f")
    assert victim.read_bytes() == b"precious"
