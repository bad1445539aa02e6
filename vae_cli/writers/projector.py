"""TensorBoard's embedding projector for a run: the points (tensors.tsv), their labels (metadata.tsv), their images
tiled into one sprite (sprite.png) and an entry in the log folder's projector_config.pbtxt, in the layout that
SummaryWriter.add_embedding writes. Written here because add_embedding draws the sprite in RGB and compresses it at
PIL's default level: most of a run's time after its test. A grey sprite compressed lightly is the same picture.
Each entry is added to the config (add_embedding rewrites it with its own writer's entries only, so a resumed run
would drop the first part's)."""

import math
from pathlib import Path

import torch

from .files import atomic_write, make_folder
from .images import png

CONFIG = "projector_config.pbtxt"


def folder(tag: str, step: int) -> str:
    """The entry's folder, relative to the log folder: <step, 5 digits>/<tag with % / \\ escaped>."""
    return f"{step:05d}/" + tag.replace("%", "%25").replace("/", "%2f").replace("\\", "%5c")


def sprite(images: torch.Tensor) -> bytes:
    """(N, C, H, W) images in [0, 1], C = 1 or 3, tiled row by row into a square of ceil(sqrt(N)) per side (where the
    projector looks for image i), as PNG bytes."""
    n, c, h, w = images.shape
    side = math.ceil(math.sqrt(n))
    tiles = torch.zeros(side * side, c, h, w)
    tiles[:n] = images.float().clamp(0, 1).cpu()
    grid = tiles.view(side, side, c, h, w).permute(2, 0, 3, 1, 4).reshape(c, side * h, side * w)
    return png(grid, compress_level=1)


def write(log_dir: Path, tag: str, step: int, points: torch.Tensor, labels: list, images: torch.Tensor) -> None:
    """One embedding: `points` (N, K) labelled by `labels` and shown as `images` (N, C, H, W), named tag:<step>."""
    log_dir, sub = Path(log_dir), folder(tag, step)
    make_folder(log_dir / sub)  # a refusal names the folder, as every other write of a run does
    rows = "".join("\t".join(f"{v:.7g}" for v in row) + "\n" for row in points.float().tolist())
    atomic_write(log_dir / sub / "tensors.tsv", lambda f: f.write(rows.encode()))
    atomic_write(log_dir / sub / "metadata.tsv", lambda f: f.write("".join(f"{y}\n" for y in labels).encode()))
    png = sprite(images)
    atomic_write(log_dir / sub / "sprite.png", lambda f: f.write(png))
    h, w = images.shape[-2:]
    entry = (
        f'embeddings {{\n  tensor_name: "{tag}:{step:05d}"\n  tensor_path: "{sub}/tensors.tsv"\n'
        f'  metadata_path: "{sub}/metadata.tsv"\n  sprite {{\n    image_path: "{sub}/sprite.png"\n'
        f"    single_image_dim: {w}\n    single_image_dim: {h}\n  }}\n}}\n"
    )
    config = log_dir / CONFIG
    before = config.read_text() if config.is_file() else ""
    if f'tensor_name: "{tag}:{step:05d}"' not in before:  # written again at the same step: its entry stands
        atomic_write(config, lambda f: f.write((before + entry).encode()))
