"""vae-eval: score a checkpoint on a data split: the ELBO's terms, the importance-weighted estimate
of log p(x) with k samples, the inference gap log p(x) - ELBO, active units and the KL per latent
dimension (core/scoring.py), printed and written beside the run with the per-image values."""

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from .. import inputs
from ..errors import UserError
from .checks import EVAL_RULES
from .errors import command, exit_without_collecting, run_or_exit
from .startup import check_command_line_values


def report_path(ckpt: Path, split: str, iw_samples: int, limit: int | None = None) -> Path:
    """Where vae-eval writes its report by default: in the checkpoint's run directory, named with the split, k,
    the checkpoint and any limit, so scoring best.ckpt and last.ckpt, or a first look and the whole split, keeps
    each."""
    run = ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent
    first = "" if limit is None else f"_first{limit}"
    return run / f"eval_{split}_k{iw_samples}_{ckpt.stem}{first}.json"


def read_per_example(path: str, split: str, iw_samples: int) -> dict:
    """Another vae-eval's per-image results: its .pt (or the .json beside it), or a run directory's
    evaluation of its best.ckpt with this split and k (eval_<split>_k<k>_best.pt; eval_<split>_k<k>.pt as earlier
    versions named it)."""
    p = Path(path).expanduser()
    if p.is_dir():
        named = [p / f"eval_{split}_k{iw_samples}_best.pt", p / f"eval_{split}_k{iw_samples}.pt"]
        p = next((f for f in named if f.is_file()), named[0])
    p = p.with_suffix(".pt")
    if not p.is_file():
        raise UserError(
            f"compare_to={path!r}: no per-image results at {p}. Give the .json or .pt that an earlier "
            "vae-eval wrote (vae-eval writes both), or a run directory where vae-eval ran with the same "
            f"split={split} and iw_samples={iw_samples}."
        )
    import torch

    try:
        other = inputs.load_tensors(p, "vae-eval's per-image results")
    except UserError as e:
        raise UserError(f"compare_to={path!r}: {e}") from None
    values = (other.get("log_px"), other.get("elbo")) if isinstance(other, dict) else (None, None)
    if not (
        isinstance(other, dict)
        and isinstance(other.get("images_sha256"), str)
        and all(torch.is_tensor(v) and v.dim() == 1 and v.dtype.is_floating_point for v in values)
        and len(values[0]) == len(values[1])
    ):
        raise UserError(
            f"compare_to={path!r}: {p} is not a vae-eval per-image file (one log p(x) and one ELBO per "
            "image, and the images' hash). Rerun vae-eval on that checkpoint to write it again."
        )
    other["file"] = str(p)
    return other


def check_same_images(images_sha256: str, other: dict) -> None:
    if images_sha256 != other["images_sha256"]:
        raise UserError(
            f"compare_to={other['file']!r} scored other images than this evaluation would (a different "
            "split, data, or binarisation seed). Compare evaluations of the same split of the same data."
        )


def format_table(res: dict) -> str:
    rows = [
        ("elbo", f"{res['elbo']:.4f} ± {res['elbo_se']:.4f}"),
        ("recon_loss", f"{res['recon_loss']:.4f}"),
        ("kl", f"{res['kl']:.4f}"),
        ("bpd", f"{res['bpd']:.5f}"),
        (f"nll_iw (k={res['iw_samples']})", f"{res['nll_iw']:.4f} ± {res['nll_iw_se']:.4f}"),
        ("inference_gap", f"{res['inference_gap']:.4f} ± {res['inference_gap_se']:.4f}"),
        ("active_units", f"{res['active_units']} / {res['latent_dim']}"),
    ]
    order = sorted(range(len(res["kl_per_dim"])), key=lambda j: -res["kl_per_dim"][j])
    kl_dims = (
        "  ".join(f"z{j}:{res['kl_per_dim'][j]:.3f}" for j in order) or "none (the KL is not a sum over dimensions)"
    )
    head = (
        f"{res['checkpoint']}  split={res['split']} ({res['n_examples']} examples), nats per example, ± standard error"
    )
    lines = [head, *(f"  {name:<22}{value}" for name, value in rows), f"  kl per dim (sorted)   {kl_dims}"]
    if "gaps" in res:
        g = res["gaps"]
        lines += [
            f"  gaps (Cremer et al. 2018) on the first {g['n_images']} images, q's {g['optimised']} optimised "
            f"({g['steps']} Adam steps, lr {g['lr']}, {g['samples']} draws a step; {g['seconds']:.1f} s):"
        ]
        lines += [
            f"    {name:<20}{g[key]:.4f} ± {g[key + '_se']:.4f}"
            for name, key in (
                (f"log p(x) (k={res['iw_samples']})", "log_px"),
                ("amortised elbo", "amortised_elbo"),
                ("optimised elbo", "optimised_elbo"),
                ("approximation_gap", "approximation_gap"),
                ("amortisation_gap", "amortisation_gap"),
            )
        ]
    if "compared_to" in res:
        c = res["compared_to"]
        lines += [
            f"  minus {c['file']} (paired, same {c['n_paired']} images):",
            f"    nll_iw {c['nll_iw_diff']:+.4f} ± {c['nll_iw_diff_se']:.4f}   elbo {c['elbo_diff']:+.4f} ± "
            f"{c['elbo_diff_se']:.4f}",
        ]
    return "\n".join(lines)


def run_eval(cfg: DictConfig) -> dict:
    from .checks import EVAL_RULES, check_known, check_values
    from .loading import load_vae, resolve_checkpoint, resolve_device, saved_datamodule

    check_known(cfg, "vae-eval")  # before torch is imported: a mistyped value is named at once
    check_values(cfg, EVAL_RULES)
    ckpt = resolve_checkpoint(cfg.ckpt_path, default_name="best.ckpt")
    import torch

    from ..core.scoring import fingerprint, paired_difference, score, summarize
    from ..writers.files import make_folder, write_json, write_tensors
    from .progress import Progress

    device = resolve_device(cfg.device)
    trust = tuple(cfg.trust)
    vae, data_config = load_vae(ckpt, map_location=device, trust=trust)
    overrides = {k: v for k, v in {"data_dir": cfg.data_dir}.items() if v is not None}
    dm = saved_datamodule(data_config, ckpt, trust, **overrides)
    images, n_images = fingerprint(dm.eval_batches(cfg.split))
    baseline = read_per_example(cfg.compare_to, cfg.split, cfg.iw_samples) if cfg.compare_to else None
    if baseline is not None:
        check_same_images(images, baseline)  # before the (long) scoring
    torch.manual_seed(cfg.seed)
    n_scored = n_images if cfg.limit is None else min(cfg.limit, n_images)
    with Progress(n_scored, f"{cfg.split} images scored with k={cfg.iw_samples}") as progress:
        scored = score(
            vae, dm.eval_batches(cfg.split), cfg.iw_samples, cfg.iw_batch, device, limit=cfg.limit, progress=progress
        )
    res = {
        "checkpoint": str(ckpt),
        "split": cfg.split,
        "iw_samples": cfg.iw_samples,
        "seed": cfg.seed,
        **summarize(scored, vae.n_dims),
        "kl_estimate": getattr(vae, "kl_estimate", "analytic"),
    }
    mine = {
        "log_px": scored.log_px.double().cpu(),
        "elbo": scored.elbo.double().cpu(),
        "images_sha256": images,
        "checkpoint": str(ckpt),
    }
    if cfg.gaps:
        res["gaps"], per_image = inference_gaps(cfg, vae, dm, scored.log_px, device)
        mine.update(per_image)
    if baseline is not None:
        res["compared_to"] = {
            "file": baseline["file"],
            "checkpoint": baseline.get("checkpoint"),
            **paired_difference(mine, baseline),
        }
    out = Path(cfg.out) if cfg.out else report_path(ckpt, cfg.split, cfg.iw_samples, cfg.limit)
    make_folder(out.parent)
    write_json(out, res)
    write_tensors(out.with_suffix(".pt"), mine)  # per image, for later paired comparisons (compare_to=)
    print(format_table(res))
    print(f"  written to {out}")
    if cfg.figures:
        print("  " + write_figure(out.with_suffix(""), res, (scored.log_px - scored.elbo).tolist()))
        if cfg.gaps:
            print("  " + write_gaps_figure(out.with_name(out.stem + "_gaps"), res, mine))
    return res


OPTIMISED = {
    "diagonal": "mu and log-variance",
    "full": "mu, log-variance and Cholesky factor",
    "iaf": "base Gaussian's mu and log-variance (the flow's weights fixed)",
}


def inference_gaps(cfg: DictConfig, vae, dm, log_px, device) -> tuple[dict, dict]:
    """The inference gap log p(x) - ELBO split into the approximation gap log p(x) - ELBO(q*) and the amortisation
    gap ELBO(q*) - ELBO(q(z|x)) on the first gaps_images scored images (core/gaps.py): the summary, and per image."""
    import time

    from ..core.gaps import gaps
    from ..core.scoring import mean_se
    from .progress import Progress

    n = min(cfg.gaps_images, len(log_px))
    start = time.perf_counter()
    with Progress(n, "images' q optimised") as progress:
        g = gaps(
            vae,
            dm.eval_batches(cfg.split),
            device,
            n,
            cfg.gaps_steps,
            cfg.gaps_lr,
            cfg.gaps_samples,
            cfg.gaps_eval_samples,
            cfg.iw_batch,
            seed=cfg.seed,
            progress=progress,
        )
    seconds = time.perf_counter() - start
    per_image = {
        "gaps_log_px": log_px[:n].double().cpu(),
        "gaps_amortised_elbo": g.amortised_elbo.double().cpu(),
        "gaps_optimised_elbo": g.optimised_elbo.double().cpu(),
    }
    per_image["approximation_gap"] = per_image["gaps_log_px"] - per_image["gaps_optimised_elbo"]
    per_image["amortisation_gap"] = per_image["gaps_optimised_elbo"] - per_image["gaps_amortised_elbo"]
    res = {
        "n_images": n,
        "optimised": OPTIMISED[vae.posterior.family],
        "steps": cfg.gaps_steps,
        "lr": cfg.gaps_lr,
        "samples": cfg.gaps_samples,
        "eval_samples": cfg.gaps_eval_samples,
        "seed": cfg.seed,
        "seconds": round(seconds, 3),
    }
    for key, values in (
        ("log_px", per_image["gaps_log_px"]),
        ("amortised_elbo", per_image["gaps_amortised_elbo"]),
        ("optimised_elbo", per_image["gaps_optimised_elbo"]),
        ("approximation_gap", per_image["approximation_gap"]),
        ("amortisation_gap", per_image["amortisation_gap"]),
    ):
        res[key], res[key + "_se"] = mean_se(values)
    return res, per_image


def write_gaps_figure(stem: Path, res: dict, per_image: dict) -> str:
    """The mean gaps as a stacked bar beside histograms of the per-image gaps, as stem.png and stem.svg."""
    from ..writers import figures

    fig = figures.gaps_figure(res, per_image["approximation_gap"].tolist(), per_image["amortisation_gap"].tolist())
    if fig is None:
        return figures.not_installed("gaps figure")
    return "gaps figure: " + ", ".join(str(p) for p in figures.write(fig, stem))


def write_figure(stem: Path, res: dict, gap: list[float]) -> str:
    """The KL bars and the inference-gap histogram as stem.png and stem.svg; what to tell the user."""
    from ..core.scoring import ACTIVE_UNIT_THRESHOLD
    from ..writers import figures

    fig = figures.evaluation_figure(res, gap, ACTIVE_UNIT_THRESHOLD)
    if fig is None:
        return figures.not_installed("figure")
    return "figure: " + ", ".join(str(p) for p in figures.write(fig, stem))


@hydra.main(version_base="1.3", config_path="pkg://vae_cli.configs", config_name="eval")
def evaluate(cfg: DictConfig) -> None:
    run_or_exit("vae-eval", run_eval, cfg)


def main() -> None:
    exit_without_collecting()
    with command("vae-eval"):
        check_command_line_values(sys.argv[1:], EVAL_RULES)
        evaluate()


if __name__ == "__main__":
    main()
