"""The prepared splits of an in-memory dataset, kept in one file beside its data so that later runs (and every job
of a sweep) skip decoding, splitting and binarising: the same tensors, bit for bit, in a fraction of a second,
without reading the sources again or importing the libraries that read them (torchvision).

The file's name holds a fingerprint of everything the splits depend on (the key): the sources' paths, sizes and
modification times, the split and binarisation settings, and the torch and numpy versions whose generators drew
the bits. Any change names another file, so a stale one is never read. The name is only a claim: a file is used
when its content matches it (the whole key it was made for, the count, dtype and shape of each split against the
image shape the dataset expects, and a sha256 of the tensors' bytes); anything else is named in a warning, and the
data is prepared again and the file written anew. Files are written under a name of their own (never through a
link) and renamed into place, so jobs starting together each write a whole file and readers never see half of
one. Pixel values on a grid k/s (8-bit images, digits' 17 levels, bits) are stored as bytes and divided back
exactly as they were made; anything else as float32."""

import contextlib
import hashlib
import io
import json
import logging
import os
import warnings
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch

from .. import inputs

log = logging.getLogger(__name__)
FORMAT = 2  # what a file holds and how; raised when that changes
FOLDER = "vae-cli-cache"
SPLITS = ("train", "val", "test")
SCALES = (255.0, 16.0, 1.0)  # the grids pixel values are checked against, k/s for integers k in 0..255


def _version(package: str) -> str | None:
    try:
        return version(package)
    except PackageNotFoundError:
        return None


def key(name: str, settings: dict, sources: list[Path]) -> str:
    """Everything the splits of dataset `name`, made with `settings` from `sources`, depend on, as text: the
    sources' paths, sizes and modification times, the settings, and the versions whose generators drew the bits."""
    stats = [(str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in sources]
    return json.dumps(
        {
            "format": FORMAT,
            "name": name,
            "settings": settings,
            "sources": stats,
            "torch": torch.__version__,
            "numpy": _version("numpy"),
        },
        sort_keys=True,
        default=str,
    )


def path(data_dir: Path, name: str, key: str) -> Path:
    """Where the splits with this key are kept: a file named by the key's fingerprint."""
    return Path(data_dir) / FOLDER / f"{name}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.pt"


def _pack(x: torch.Tensor) -> tuple[torch.Tensor, float | None]:
    """The pixels as stored, and the scale they are divided by when read (None: stored as they are)."""
    if x.dtype == torch.float32 and len(x):
        for s in SCALES:
            k = (x * s).round()
            if k.min() >= 0 and k.max() <= 255 and torch.equal(k.to(torch.uint8).to(torch.float32) / s, x):
                return k.to(torch.uint8), s
    return x, None


def _unpack(x: torch.Tensor, scale: float | None) -> torch.Tensor:
    return x.to(torch.float32) / scale if scale is not None else x


def _digest(stored: dict) -> str:
    """sha256 over the bytes of every tensor kept, split by split."""
    h = hashlib.sha256()
    for s in SPLITS:
        for t in (stored[s]["x"], stored[s]["y"]):
            h.update(t.contiguous().view(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def _manifest(stored: dict) -> dict:
    """What a file claims to hold: per split, the count, and the dtype and shape of its pixels and labels."""
    return {
        s: {
            "count": len(stored[s]["y"]),
            "scale": stored[s]["scale"],
            "x": [str(stored[s]["x"].dtype), list(stored[s]["x"].shape)],
            "y": [str(stored[s]["y"].dtype), list(stored[s]["y"].shape)],
        }
        for s in SPLITS
    }


def _record(key: str, splits: dict) -> dict:
    """What a file holds: the splits, the key they were made for, what they are and a hash of their bytes."""
    stored = {}
    for s, (x, y) in splits.items():
        k, scale = _pack(x)
        stored[s] = {"x": k, "scale": scale, "y": y}
    return {"format": FORMAT, "key": key, "splits": stored, "manifest": _manifest(stored), "sha256": _digest(stored)}


def _mismatch(kept, key: str, shape: tuple[int, ...]) -> str | None:
    """Why a file's content is not the splits its name claims; None when it is."""
    if not isinstance(kept, dict) or kept.get("format") != FORMAT:
        return "not a vae-cli cache of this format"
    if kept.get("key") != key:
        return "made for other sources or settings"
    stored = kept.get("splits")
    if not isinstance(stored, dict) or set(stored) != set(SPLITS):
        return "its splits are missing"
    for s in SPLITS:
        entry = stored[s]
        if not isinstance(entry, dict) or set(entry) != {"x", "scale", "y"}:
            return f"its {s} split is not pixels, scale and labels"
        x, scale, y = entry["x"], entry["scale"], entry["y"]
        if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
            return f"its {s} split holds no tensors"
        packed = type(scale) is float and scale in SCALES and x.dtype == torch.uint8
        if not (packed or scale is None and x.is_floating_point()):
            return f"its {s} pixels are {x.dtype}, scaled by {type(scale).__name__}"
        if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
            return f"its {s} labels are {y.dtype}, not integers"
        if y.dim() != 1 or tuple(x.shape) != (len(y), *shape):
            expected = ", ".join(map(str, ("N", *shape)))
            return f"its {s} split is shaped {tuple(x.shape)} with labels {tuple(y.shape)}, not ({expected}) and (N,)"
    if kept.get("manifest") != _manifest(stored):
        return "its tensors are not those it lists"
    if kept.get("sha256") != _digest(stored):
        return "its bytes do not match their hash"
    return None


def read(file: Path, key: str, shape: tuple[int, ...]) -> dict | None:
    """The splits {split: (x, y)} kept in `file`, when its content is what its name claims: the splits made for
    `key`, pixels shaped (N, *shape), whole (counts, dtypes and the hash of their bytes as written). None when there
    is no such file, or it is not that (then a warning names it, and the data is prepared again and written anew).
    Never raises: whatever is in the file is data."""
    if not os.path.lexists(file):
        return None
    try:
        with warnings.catch_warnings():  # torch's own about a foreign file: the one warning below says it
            warnings.simplefilter("ignore")
            kept = inputs.load_tensors(file, "a cache of prepared data")
        why = _mismatch(kept, key, tuple(shape))
        if why is None:
            return {
                s: (_unpack(kept["splits"][s]["x"], kept["splits"][s]["scale"]), kept["splits"][s]["y"]) for s in SPLITS
            }
    except inputs.Unreadable as e:
        why = f"it cannot be read as one: {e.reason}"
    except Exception as e:  # noqa: BLE001 (a content _mismatch did not foresee: the same for the user)
        why = f"it cannot be read as one: {' '.join(str(e).split())[:200] or type(e).__name__}"
    log.warning("%s is not the cache of prepared data its name claims (%s); the data is prepared again", file, why)
    return None


def write(file: Path, key: str, splits: dict) -> None:
    """Keep the splits in `file`, whole or not at all, never written through a link. A folder that cannot be written
    (read-only data, a full disk) costs only the time saved next time."""
    part = file.with_name(f".{file.name}.{os.getpid()}.part")
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()  # serialised first: a refused write is then the file system's OSError, nothing else
        torch.save(_record(key, splits), buffer)
        with create(part) as f:
            f.write(buffer.getbuffer())
        os.replace(part, file)  # over a link, not through it
    except OSError as e:
        with contextlib.suppress(OSError):  # a part never made, in a folder that is not one
            part.unlink(missing_ok=True)
        log.info("no cache of the prepared data at %s (%s); the next run prepares it again", file, e.strerror or e)


def create(path: Path):
    """A new file at `path`, open for writing, made without following a link: whatever already has that name (a
    part a killed process left, a link someone planted) is removed first, never written through. (The same as
    writers/files.py's, which this layer does not import.)"""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    return os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o666), "wb")
