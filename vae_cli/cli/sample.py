"""vae-sample: PNG grids from a checkpoint: prior samples, reconstructions, latent traversals,
interpolations, and the 2-D manifold when K = 2."""

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from .errors import command, exit_without_collecting, run_or_exit


def run_sample(cfg: DictConfig) -> dict[str, Path]:
    from .checks import SAMPLE_RULES, check_known, check_values
    from .loading import load_vae, resolve_checkpoint, resolve_device, saved_datamodule

    check_known(cfg, "vae-sample")  # before torch is imported: a mistyped value is named at once
    check_values(cfg, SAMPLE_RULES)
    ckpt = resolve_checkpoint(cfg.ckpt_path, default_name="best.ckpt")
    import torch

    from ..writers import images
    from ..writers.files import atomic_write, make_folder

    device = resolve_device(cfg.device)
    trust = tuple(cfg.trust)
    vae, data_config = load_vae(ckpt, map_location=device, trust=trust)
    out = Path(cfg.out) if cfg.out else ckpt.parent.parent / "samples"
    make_folder(out)
    overrides = {k: v for k, v in {"data_dir": cfg.data_dir}.items() if v is not None}
    x = saved_datamodule(data_config, ckpt, trust, **overrides).head(cfg.split, cfg.n)[0].to(device)
    torch.manual_seed(cfg.seed)

    grids = {
        "prior_samples": images.prior_samples(vae, cfg.n),
        "reconstructions": images.reconstructions(vae, x),
        "traversals": images.traversals(vae, x, steps=cfg.steps),
        "interpolations": images.interpolations(vae, x, steps=cfg.steps),
    }
    if cfg.draw:
        grids["prior_draws"] = images.prior_samples(vae, cfg.n, draw=True)
    if vae.latent_dim == 2:
        grids["manifold"] = images.manifold(vae, steps=cfg.manifold_steps)
    written = {}
    for name, grid in grids.items():
        written[name] = out / f"{name}.png"
        atomic_write(written[name], lambda f, grid=grid: f.write(images.png(grid)))
    print(f"vae-sample: {', '.join(p.name for p in written.values())} written to {out}")
    return written


@hydra.main(version_base="1.3", config_path="pkg://vae_cli.configs", config_name="sample")
def sample(cfg: DictConfig) -> None:
    run_or_exit("vae-sample", run_sample, cfg)


def main() -> None:
    exit_without_collecting()
    with command("vae-sample"):
        from .checks import SAMPLE_RULES
        from .startup import check_command_line_values

        check_command_line_values(sys.argv[1:], SAMPLE_RULES)
        sample()


if __name__ == "__main__":
    main()
