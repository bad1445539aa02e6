"""The prepared splits of an in-memory dataset, kept in one file beside its data so that later runs (and every job
of a sweep) skip decoding, splitting and binarising: the same tensors, bit for bit, in a fraction of a second,
without reading the sources again or importing the libraries that read them (torchvision).

The file's name holds a fingerprint of everything the splits depend on: the sources' paths, sizes and
modification times, the split and binarisation settings, and the torch and numpy versions whose generators drew
the bits. Any change names another file, so a stale one is never read. Files are written under a name of their
own and renamed into place, so jobs starting together each write a whole file and readers never see half of
one. Pixel values on a grid k/s (8-bit images, digits' 17 levels, bits) are stored as bytes and divided back
exactly as they were made; anything else as float32."""
import hashlib
import io
import json
import logging
import os
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch

log = logging.getLogger(__name__)
FORMAT = 1  # what a file holds and how; raised when that changes
FOLDER = "vae-cli-cache"
SPLITS = ("train", "val", "test")
SCALES = (255.0, 16.0, 1.0)  # the grids pixel values are checked against, k/s for integers k in 0..255


def _version(package: str) -> str | None:
    try:
        return version(package)
    except PackageNotFoundError:
        return None


def path(data_dir: Path, name: str, settings: dict, sources: list[Path]) -> Path:
    """Where the splits of dataset `name`, made with `settings` from `sources`, are kept."""
    stats = [(str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in sources]
    key = {"format": FORMAT, "settings": settings, "sources": stats,
           "torch": torch.__version__, "numpy": _version("numpy")}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return Path(data_dir) / FOLDER / f"{name}-{digest}.pt"


def _pack(x: torch.Tensor) -> dict:
    if x.dtype == torch.float32 and len(x):
        for s in SCALES:
            k = (x * s).round()
            if k.min() >= 0 and k.max() <= 255 and torch.equal(k.to(torch.uint8).to(torch.float32) / s, x):
                return {"k": k.to(torch.uint8), "scale": s}
    return {"x": x}


def _unpack(packed: dict) -> torch.Tensor:
    return packed["k"].to(torch.float32) / packed["scale"] if "k" in packed else packed["x"]


def read(file: Path) -> dict | None:
    """The splits {split: (x, y)} kept in `file`; None when there is none, or it cannot be read (then it is
    prepared again and written anew)."""
    try:
        kept = torch.load(file, map_location="cpu", weights_only=True)
        return {s: (_unpack(kept[s]["x"]), kept[s]["y"]) for s in SPLITS}
    except FileNotFoundError:
        return None
    except Exception as e:  # truncated by a full disk, or not ours
        log.warning("%s cannot be read (%s); the data is prepared again", file, " ".join(str(e).split())[:200])
        return None


def write(file: Path, splits: dict) -> None:
    """Keep the splits in `file`, whole or not at all. A folder that cannot be written (read-only data, a full
    disk) costs only the time saved next time."""
    part = file.with_name(f".{file.name}.{os.getpid()}.part")
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()  # serialised first: a refused write is then the file system's OSError, nothing else
        torch.save({s: {"x": _pack(x), "y": y} for s, (x, y) in splits.items()}, buffer)
        part.write_bytes(buffer.getbuffer())
        os.replace(part, file)
    except OSError as e:
        part.unlink(missing_ok=True)
        log.info("no cache of the prepared data at %s (%s); the next run prepares it again", file, e.strerror or e)
