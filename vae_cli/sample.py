"""vae-sample: PNG grids from a checkpoint: prior samples, reconstructions, latent traversals,
interpolations, and the 2-D manifold when K = 2."""
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig
from torchvision.utils import save_image

from . import images
from .checkpoints import load_vae, resolve_checkpoint, resolve_device
from .data import build_datamodule
from .errors import exit_on_user_error


def run_sample(cfg: DictConfig) -> dict[str, Path]:
    ckpt = resolve_checkpoint(cfg.ckpt_path, default_name="best.ckpt")
    device = resolve_device(cfg.device)
    model, data_config = load_vae(ckpt, map_location=device)
    model.eval()
    out = Path(cfg.out) if cfg.out else ckpt.parent.parent / "samples"
    out.mkdir(parents=True, exist_ok=True)
    overrides = {k: v for k, v in {"data_dir": cfg.data_dir}.items() if v is not None}
    x = build_datamodule(data_config, **overrides).head(cfg.split, cfg.n)[0].to(device)
    torch.manual_seed(cfg.seed)

    grids = {
        "prior_samples": images.prior_samples(model, cfg.n),
        "reconstructions": images.reconstructions(model, x),
        "traversals": images.traversals(model, x, steps=cfg.steps),
        "interpolations": images.interpolations(model, x, steps=cfg.steps),
    }
    if cfg.draw:
        grids["prior_draws"] = images.prior_samples(model, cfg.n, draw=True)
    if model.hparams.latent_dim == 2:
        grids["manifold"] = images.manifold(model, steps=cfg.manifold_steps)
    written = {}
    for name, grid in grids.items():
        written[name] = out / f"{name}.png"
        save_image(grid, written[name])
    print(f"vae-sample: {', '.join(p.name for p in written.values())} written to {out}")
    return written


@hydra.main(version_base="1.3", config_path="configs", config_name="sample")
def sample(cfg: DictConfig) -> None:
    exit_on_user_error("vae-sample", run_sample, cfg)


def main() -> None:
    sample()


if __name__ == "__main__":
    main()
