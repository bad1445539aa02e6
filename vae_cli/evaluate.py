"""vae-eval: score a checkpoint on a data split.

Besides the ELBO's terms it estimates log p(x) itself by importance sampling with q(z|x) as the
proposal (the IWAE bound with k samples, Burda et al. 2016), which makes the seed's identity
log p(x) = ELBO + KL(q(z|x) || p(z|x)) measurable: the inference gap is log p(x) - ELBO.
"""
import hashlib
import logging
import math
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig

from .elbo import kl_analytic, log_importance_weights
from .errors import UserError, exit_on_user_error
from .checkpoints import load_vae, resolve_checkpoint, resolve_device, write_json, write_tensors
from .data import build_datamodule

log = logging.getLogger("vae_cli")

ACTIVE_UNIT_THRESHOLD = 0.01  # Burda et al. 2016: unit j is active when Cov_x(E_q[z_j]) > 0.01


@torch.no_grad()
def score(model, x: torch.Tensor, iw_samples: int, iw_batch: int = 50_000) -> dict[str, torch.Tensor]:
    """Per-example quantities of `model` (with .encoder, .decoder, .likelihood) on data x.

    log_px: the importance-weighted estimate log (1/k sum_i w_i), w_i = p(x, z_i) / q(z_i|x);
    recon:  -E_q[log p(x|z)], averaged over the same k samples; kl_dims: the analytic KL per
    latent dimension; elbo = -(recon + KL); mu: the posterior means.
    At most `iw_batch` (example, sample) pairs go through the decoder at once, so memory is
    bounded for any k.
    """
    k = int(iw_samples)
    chunk = min(k, iw_batch)
    per_pass = max(1, iw_batch // chunk)  # examples per pass
    out: dict[str, list[torch.Tensor]] = {"log_px": [], "recon": [], "kl_dims": [], "mu": []}
    for xb in x.split(per_pass):
        mu, logvar = model.encoder(xb)
        std = torch.exp(0.5 * logvar)
        lse = torch.full((len(xb),), -math.inf, device=xb.device, dtype=mu.dtype)
        log_px_z_sum = torch.zeros(len(xb), device=xb.device, dtype=mu.dtype)
        for start in range(0, k, chunk):
            c = min(chunk, k - start)
            z = mu + std * torch.randn(c, *mu.shape, device=mu.device, dtype=mu.dtype)  # (c, B, K)
            params = model.decoder(z.flatten(0, 1))
            x_rep = xb.expand(c, *xb.shape).flatten(0, 1)
            log_px_z = model.likelihood.log_prob(x_rep, params).view(c, len(xb))
            log_w = log_importance_weights(log_px_z, z, mu, logvar)
            lse = torch.logaddexp(lse, torch.logsumexp(log_w, dim=0))  # running log sum_i w_i
            log_px_z_sum += log_px_z.sum(0)
        out["log_px"].append(lse - math.log(k))
        out["recon"].append(-log_px_z_sum / k)
        out["kl_dims"].append(kl_analytic(mu, logvar))
        out["mu"].append(mu)
    res = {name: torch.cat(v) for name, v in out.items()}
    res["elbo"] = -(res["recon"] + res["kl_dims"].sum(-1))
    return res


def score_batches(model, batches, iw_samples: int, iw_batch: int, device, limit: int | None = None) -> dict:
    """score() over an iterable of [x, y] batches (at most `limit` examples), concatenated."""
    parts, seen = [], 0
    for batch in batches:
        x = batch[0][: None if limit is None else limit - seen].to(device)
        parts.append(score(model, x, iw_samples, iw_batch))
        seen += len(x)
        if limit is not None and seen >= limit:
            break
    return {name: torch.cat([p[name] for p in parts]) for name in parts[0]}


def _mean_se(v: torch.Tensor) -> tuple[float, float]:
    v = v.double()
    se = v.std().item() / math.sqrt(len(v)) if len(v) > 1 else float("nan")
    return v.mean().item(), se


def summarize(per_example: dict[str, torch.Tensor], n_dims: int) -> dict:
    """Means over examples (with standard errors where they are estimates), in nats per example."""
    elbo, elbo_se = _mean_se(per_example["elbo"])
    nll, nll_se = _mean_se(-per_example["log_px"])
    gap, gap_se = _mean_se(per_example["log_px"] - per_example["elbo"])
    mu = per_example["mu"].double()
    mu_var = mu.var(0) if len(mu) > 1 else torch.zeros(mu.shape[1], dtype=mu.dtype)
    return {
        "elbo": elbo, "elbo_se": elbo_se,
        "recon_loss": per_example["recon"].double().mean().item(),
        "kl": per_example["kl_dims"].double().sum(-1).mean().item(),
        "bpd": -elbo / (n_dims * math.log(2)),
        "nll_iw": nll, "nll_iw_se": nll_se,
        "inference_gap": gap, "inference_gap_se": gap_se,
        "active_units": int((mu_var > ACTIVE_UNIT_THRESHOLD).sum()),
        "latent_dim": mu.shape[1],
        "kl_per_dim": per_example["kl_dims"].double().mean(0).tolist(),
        "posterior_mean_var_per_dim": mu_var.tolist(),
        "n_examples": len(mu),
    }


def read_per_example(path: str, split: str, iw_samples: int) -> dict:
    """Another vae-eval's per-image results: its .pt (or the .json beside it), or a run directory's
    eval_<split>_k<iw_samples>.pt."""
    p = Path(path).expanduser()
    if p.is_dir():
        p = p / f"eval_{split}_k{iw_samples}.pt"
    p = p.with_suffix(".pt")
    if not p.is_file():
        raise UserError(f"compare_to={path!r}: no per-image results at {p}. Give the .json or .pt that an earlier "
                        "vae-eval wrote (vae-eval writes both), or a run directory where vae-eval ran with the same "
                        f"split={split} and iw_samples={iw_samples}.")
    try:
        other = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:
        other = f"{type(e).__name__}: {e}"
    if not (isinstance(other, dict) and {"log_px", "elbo", "images_sha256"} <= other.keys()):
        raise UserError(f"compare_to={path!r}: {p} is not a vae-eval per-image file ({str(other)[:200]}). "
                        "Rerun vae-eval on that checkpoint to write it again.")
    other["file"] = str(p)
    return other


def fingerprint(batches) -> str:
    """SHA-256 of the images in order: two evaluations with the same one scored the same pixels."""
    h = hashlib.sha256()
    for batch in batches:
        h.update(batch[0].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def check_same_images(images_sha256: str, other: dict) -> None:
    if images_sha256 != other["images_sha256"]:
        raise UserError(f"compare_to={other['file']!r} scored other images than this evaluation would (a different "
                        "split, data, or binarisation seed). Compare evaluations of the same split of the same data.")


def paired_difference(mine: dict, other: dict) -> dict:
    """This model minus the other on the same images: the mean per-image difference in nll_iw and
    elbo, with the standard error of that mean. Most of the per-image variance is the images' own
    (some are harder for every model), so this is far tighter than the two nll_iw_se together."""
    check_same_images(mine["images_sha256"], other)
    d_nll, d_nll_se = _mean_se(other["log_px"] - mine["log_px"])
    d_elbo, d_elbo_se = _mean_se(mine["elbo"] - other["elbo"])
    return {"file": other["file"], "checkpoint": other.get("checkpoint"), "nll_iw_diff": d_nll,
            "nll_iw_diff_se": d_nll_se, "elbo_diff": d_elbo, "elbo_diff_se": d_elbo_se}


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
    order = sorted(range(res["latent_dim"]), key=lambda j: -res["kl_per_dim"][j])
    kl_dims = "  ".join(f"z{j}:{res['kl_per_dim'][j]:.3f}" for j in order)
    head = f"{res['checkpoint']}  split={res['split']} ({res['n_examples']} examples), nats per example, ± standard error"
    lines = [head, *(f"  {name:<22}{value}" for name, value in rows), f"  kl per dim (sorted)   {kl_dims}"]
    if "compared_to" in res:
        c = res["compared_to"]
        lines += [f"  minus {c['file']} (paired, same {res['n_examples']} images):",
                  f"    nll_iw {c['nll_iw_diff']:+.4f} ± {c['nll_iw_diff_se']:.4f}   elbo {c['elbo_diff']:+.4f} ± "
                  f"{c['elbo_diff_se']:.4f}"]
    return "\n".join(lines)


def run_eval(cfg: DictConfig) -> dict:
    ckpt = resolve_checkpoint(cfg.ckpt_path, default_name="best.ckpt")
    if not (isinstance(cfg.iw_samples, int) and cfg.iw_samples >= 1):
        raise UserError(f"iw_samples={cfg.iw_samples!r} must be an integer >= 1 (5000 is the literature's choice).")
    if cfg.split not in ("val", "test"):
        raise UserError(f"split={cfg.split!r} is not a split vae-eval scores; use split=test or split=val.")
    device = resolve_device(cfg.device)
    model, data_config = load_vae(ckpt, map_location=device)
    model.eval()
    overrides = {k: v for k, v in {"data_dir": cfg.data_dir}.items() if v is not None}
    dm = build_datamodule(data_config, **overrides)
    images = fingerprint(dm.eval_batches(cfg.split))
    baseline = read_per_example(cfg.compare_to, cfg.split, cfg.iw_samples) if cfg.compare_to else None
    if baseline is not None:
        check_same_images(images, baseline)  # before the (long) scoring
    torch.manual_seed(cfg.seed)
    per_example = score_batches(model, dm.eval_batches(cfg.split), cfg.iw_samples, cfg.iw_batch, device)
    res = {"checkpoint": str(ckpt), "split": cfg.split, "iw_samples": cfg.iw_samples, "seed": cfg.seed,
           **summarize(per_example, model.n_dims)}
    mine = {"log_px": per_example["log_px"].double().cpu(), "elbo": per_example["elbo"].double().cpu(),
            "images_sha256": images, "checkpoint": str(ckpt)}
    if baseline is not None:
        res["compared_to"] = paired_difference(mine, baseline)
    out = Path(cfg.out) if cfg.out else ckpt.parent.parent / f"eval_{cfg.split}_k{cfg.iw_samples}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, res)
    write_tensors(out.with_suffix(".pt"), mine)  # per image, for later paired comparisons (compare_to=)
    print(format_table(res))
    print(f"  written to {out}")
    return res


@hydra.main(version_base="1.3", config_path="configs", config_name="eval")
def evaluate(cfg: DictConfig) -> None:
    exit_on_user_error("vae-eval", run_eval, cfg)


def main() -> None:
    evaluate()


if __name__ == "__main__":
    main()
